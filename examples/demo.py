"""``make demo``: run tether on examples/hello.py as a real process and show what it does.

It grows with each subsystem. Today: the server. It starts ``tether serve``, sends
real requests with a real client (httpx), shows keep-alive reuse, streaming, a
malformed request answered 400, and a graceful stop that finishes the request in
flight. Exits non-zero if anything is not as it should be.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


class Server:
    """``tether serve hello:app`` on a free port, stopped by PID when done."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tether", "serve", "hello:app", "--port", "0",
             "--no-access-log", "--graceful-timeout", "10"],
            cwd=HERE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.log: list[str] = []
        self.port = 0
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(20) or not self.port:
            self.proc.kill()
            raise SystemExit("tether did not start:\n" + "".join(self.log))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if "serving on http://" in line:
                self.port = int(line.rsplit(":", 1)[1])
                self._ready.set()
        self._ready.set()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def show(label: str, value: object) -> None:
    print(f"  {label:<42} {value}")


async def main() -> int:
    server = Server()
    base = f"http://127.0.0.1:{server.port}"
    print(f"tether serve hello:app  (pid {server.proc.pid}, {base})")
    failures = 0

    def check(ok: bool, label: str, value: object) -> None:
        nonlocal failures
        failures += 0 if ok else 1
        show(("ok   " if ok else "FAIL ") + label, value)

    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            r = await client.get("/")
            check(r.status_code == 200, "GET /", f"{r.status_code} {r.text.strip()!r}")
            r = await client.get("/json")
            check(r.json()["path"] == "/json", "GET /json", r.json())
            r = await client.post("/echo", content=b"x" * 100_000)
            check(len(r.content) == 100_000, "POST /echo (100 kB)", f"{len(r.content)} bytes back")
            async with client.stream("GET", "/stream") as s:
                parts = [chunk async for chunk in s.aiter_text()]
            check(s.headers.get("transfer-encoding") == "chunked", "GET /stream (chunked)",
                  f"{len(''.join(parts).splitlines())} lines")
            t0 = time.perf_counter()
            slow = await asyncio.gather(*(client.get("/slow?seconds=0.5") for _ in range(20)))
            took = time.perf_counter() - t0
            check(all(x.status_code == 200 for x in slow), "20 x GET /slow 0.5s concurrently",
                  f"all 200 in {took:.2f}s")
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        check(raw.startswith(b"HTTP/1.1 400"), "malformed request", raw.split(b"\r\n")[0].decode())

        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            in_flight = asyncio.create_task(client.get("/slow?seconds=1"))
            await asyncio.sleep(0.2)  # demo pacing: let the request reach the handler
            server.proc.send_signal(signal.SIGTERM)
            r = await in_flight
            check(r.status_code == 200 and r.headers.get("connection") == "close",
                  "SIGTERM with a request in flight", f"{r.status_code} {r.text.strip()!r}, "
                  f"connection: {r.headers.get('connection')}")
        code = server.stop()
        check(code == 0, "exit status after graceful stop", code)
    finally:
        server.stop()
    print("\nserver log:")
    for line in server.log:
        print("  " + line.rstrip())
    print(f"\n{'all good' if not failures else f'{failures} problem(s)'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
