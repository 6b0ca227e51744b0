"""At its file-descriptor limit a worker can only refuse new connections; tether says
so (once per interval, with a count) and counts it in /metrics, on a real process
started under a small ``ulimit -n``."""

from __future__ import annotations

import os
import socket
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support import EXAMPLES, free_port, get_when_serving, tether_process

LIMIT = 64


def fd_limit_count(admin_port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "tether_fd_limit_reached":
            return sum(sample.value for sample in family.samples)
    return 0.0


def test_a_worker_at_its_fd_limit_says_so_and_counts_it() -> None:
    admin_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    with tether_process("serve", "hello:app", "--port", "0", "--admin-port", str(admin_port),
                        "--no-access-log", cwd=EXAMPLES, env=env, max_fds=LIMIT) as server:
        held: list[socket.socket] = []
        try:
            for _ in range(LIMIT + 20):
                held.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            line = server.wait_for_line("at the file-descriptor limit", timeout=15)
            assert f"ulimit -n {LIMIT}" in line
            deadline = time.monotonic() + 10
            while fd_limit_count(admin_port) < 1:
                assert time.monotonic() < deadline, "tether_fd_limit_reached_total stayed 0"
                time.sleep(0.1)
        finally:
            for sock in held:
                sock.close()
        # Once descriptors are free again the worker serves as before.
        answer = get_when_serving(f"http://127.0.0.1:{server.port}/", 10,
                                  "the worker serving again")
        assert answer.status_code == 200
        assert sum("at the file-descriptor limit" in line for line in server.lines) <= 2
