"""Registers one process's share of a grid of services x providers, for the registry
scale test and benchmark.

``python -m tests.apps.registry_share URL INDEX PROCESSES SERVICES PROVIDERS TTL``:
provider ``p`` of service ``svc-s`` (address ``10.0.<s>.<p>:<8000 + p>``, metadata
``owner=INDEX``) belongs to process ``(s * PROVIDERS + p) % PROCESSES``. Prints
``registered N`` once all of its share is registered, then waits for stdin to close,
deregisters everything, prints ``deregistered N`` and exits.
"""

from __future__ import annotations

import asyncio
import sys

from tether.registry import Registration, Registry, open_registry


def address(service: int, provider: int) -> str:
    return f"10.0.{service}.{provider}:{8000 + provider}"


def share(index: int, processes: int, services: int, providers: int) -> list[tuple[str, str]]:
    """The (service, address) pairs process ``index`` registers."""
    return [
        (f"svc-{s}", address(s, p))
        for s in range(services) for p in range(providers)
        if (s * providers + p) % processes == index
    ]


async def register_share(
    registry: Registry, index: int, processes: int, services: int, providers: int,
    ttl: float, concurrency: int = 32,
) -> list[Registration]:
    """Register this process's share, ``concurrency`` at a time."""
    pairs = share(index, processes, services, providers)
    limit = asyncio.Semaphore(concurrency)

    async def one(service: str, addr: str) -> Registration:
        async with limit:
            return await registry.register(service, addr, {"owner": str(index)}, ttl)

    return list(await asyncio.gather(*(one(s, a) for s, a in pairs)))


async def main(argv: list[str]) -> None:
    url = argv[0]
    index, processes, services, providers = (int(a) for a in argv[1:5])
    ttl = float(argv[5])
    registry = open_registry(url)
    try:
        handles = await register_share(registry, index, processes, services, providers, ttl)
        print(f"registered {len(handles)}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        limit = asyncio.Semaphore(32)

        async def deregister(handle: Registration) -> None:
            async with limit:
                await registry.deregister(handle)

        await asyncio.gather(*(deregister(h) for h in handles))
        print(f"deregistered {len(handles)}", flush=True)
    finally:
        await registry.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
