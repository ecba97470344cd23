"""Keep-alive through the local API: sequential requests on one kept-alive connection vs a new connection each.

Run by hand: `.venv/bin/python -m bench.local_api_keepalive` (BENCH_N requests each, default 200). Uses the
test fixture's one-function template (tests/fixtures/local_api), so no database is needed. A kept-alive
connection should be at least as fast as a fresh one per request; before TCP_NODELAY and one write per
response it was ~40 ms per request (Nagle + delayed ACK), several times slower than reconnecting.
"""

from __future__ import annotations

import http.client
import os
import statistics
import time
from pathlib import Path

from ops.local_api import LocalApi
from ops.template import load

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "local_api" / "template.yaml"
N = int(os.environ.get("BENCH_N", "200"))
BODY = b'{"k": "v"}'
HEADERS = {"Content-Type": "application/json"}


def request(conn: http.client.HTTPConnection) -> None:
    conn.request("POST", "/echo", BODY, HEADERS)
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status


def kept_alive(port: int, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    samples = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            request(conn)
            samples.append(time.perf_counter() - start)
    finally:
        conn.close()
    return samples


def fresh(port: int, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            request(conn)
        finally:
            conn.close()
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    api = LocalApi(load(FIXTURE), {}, port=0, workers=1, run_schedules=False)
    api.start()
    port = api.server.server_address[1]
    try:
        kept_alive(port, 20)  # warm the execution environment
        alive, new = kept_alive(port, N), fresh(port, N)
    finally:
        api.stop()
    a, f = statistics.median(alive), statistics.median(new)
    print(f"{N} requests each, POST /echo, 1 worker")
    print(f"  kept-alive connection   median {a * 1000:7.2f} ms   {len(alive) / sum(alive):8.1f} req/s")
    print(f"  new connection each     median {f * 1000:7.2f} ms   {len(new) / sum(new):8.1f} req/s")
    print(f"  kept-alive / new (median time): {a / f:.2f}")


if __name__ == "__main__":
    main()
