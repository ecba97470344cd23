"""`make prove`: every part of the proof suite at release size against `make run`'s stack; writes docs/proof.md.

Each part gets a fresh stack (its own database, simulator and workers), so one part's faults never explain
another's results. Sizes come from the command line (`python -m proof --quick` runs the small sizes `make
test` uses); exit status 1 when any part found a failure: the report still says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proof.stack import Stack, stack

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "proof.md"


@dataclasses.dataclass
class Part:
    name: str
    what: str
    run: Callable[[Stack], Any]
    settings: dict[str, str] = dataclasses.field(default_factory=dict)  # the stack's, as NAME=value make run


def parts(quick: bool, seed: int | None) -> list[Part]:
    from proof import callback_fuzz, chaos, contract, flows

    return [
        Part(
            "chaos",
            "callback deliveries (redirects and notifies, duplicated, concurrent, out of order) while database "
            "connections are terminated, workers killed and VERIFY fails; then the money invariants",
            lambda s: chaos.run(
                s,
                deliveries=400 if quick else 10_000,
                payments=30 if quick else 300,
                users=3 if quick else 12,
                seed=seed,
            ),
            chaos.SETTINGS,
        ),
        Part(
            "contract",
            "schemathesis, all checks, against docs/openapi.json: with a user's token, without, with the admin token",
            lambda s: contract.run(s, examples=25 if quick else 300),
        ),
        Part(
            "callback fuzz",
            "hypothesis over /hypay/return and /hypay/notify: mutated real callbacks and random ones, every "
            "content type and encoding; tables compared before and after each rejected request",
            lambda s: callback_fuzz.run(s, examples=200 if quick else 3000, seed=seed),
        ),
        Part(
            "saved card and refunds",
            "saved-card charges and refunds with Hyp's answers lost, dropped, failed or slow, database "
            "connections terminated and workers killed; client retries with the same key; then the invariants",
            lambda s: flows.run(s, rounds=10 if quick else 120, seed=seed),
            flows.SETTINGS,
        ),
    ]


def _counts(result: Any) -> dict[str, Any]:
    counts = getattr(result, "counts", None)
    if callable(counts):
        counts = counts()
    if counts is None and dataclasses.is_dataclass(result):
        # not dataclasses.asdict: it rebuilds a Counter from its pairs, counting each pair once
        counts = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "failures"}
    return dict(counts or {})


def _failures(result: Any) -> list[str]:
    return [str(f) for f in (getattr(result, "failures", None) or [])]


def report(rows: list[tuple[Part, dict[str, Any], list[str], float]], quick: bool) -> str:
    load = os.getloadavg()
    lines = [
        "# Proof",
        "",
        "What `make prove` found, run against `make run`'s stack (the local API with its worker processes, the",
        "embedded PostgreSQL, the Hypay simulator). Each part ran on a fresh stack. Pass: no 5xx outside the",
        "contract's own (503 for \"not yet\"; API Gateway's 502 only for a request whose worker was killed), no",
        "response outside docs/openapi.json, no row written by a rejected request, and the money invariants.",
        "`make test` runs the same parts at a small size (tests/proof).",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load {load[0]:.2f}; {'quick sizes' if quick else 'release sizes'}.",
        "",
        "| part | result | seconds |",
        "|---|---|---|",
    ]
    for part, _, failures, seconds in rows:
        verdict = "pass" if not failures else f"**{len(failures)} failures**"
        lines.append(f"| {part.name} | {verdict} | {seconds:.0f} |")
    for part, counts, failures, _ in rows:
        lines += ["", f"## {part.name}", "", part.what + ".", ""]
        if counts:
            lines += ["| count | value |", "|---|---|"]
            lines += [f"| {k.replace('_', ' ')} | {_cell(v)} |" for k, v in counts.items()]
        if failures:
            lines += ["", "Failures:", ""] + [f"- {f}" for f in failures[:50]]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple, set)):
        return ", ".join(_cell(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proof", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small sizes `make test` runs")
    parser.add_argument("--only", action="append", help="run just this part (repeatable)")
    parser.add_argument("--seed", type=int, default=None, help="the chaos schedule's seed (default: random)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the report goes (default docs/proof.md)")
    args = parser.parse_args(argv)
    rows = []
    for part in parts(args.quick, args.seed):
        if args.only and part.name not in args.only:
            continue
        print(f"prove: {part.name} ...", flush=True)
        started = time.monotonic()
        with stack(part.settings) as running:
            result = part.run(running)
        seconds = time.monotonic() - started
        failures = _failures(result)
        print(f"prove: {part.name}: {'pass' if not failures else f'{len(failures)} failures'} in {seconds:.0f} s")
        rows.append((part, _counts(result), failures, seconds))
    args.out.write_text(report(rows, args.quick), encoding="utf-8")
    print(f"wrote {args.out}")
    return 1 if any(failures for _, _, failures, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
