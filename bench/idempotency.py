"""The Postgres idempotency layer against raw pg8000 statements.

For each case the layer (Powertools' `idempotent_function` on `PostgresPersistenceLayer`) and the
baseline (the same raw SQL statements sent directly through pg8000 on the layer's own connection)
are measured interleaved call by call, so drift on the machine hits both alike. Each run uses a fresh
database; the ratio of each run's medians is reported, with the min and median across runs.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function

from bench.common import Loads, Section, Server, Spread, database, percentile, runs, size
from ops.pgcount import counting_class
from payments.adapters.db import bind
from payments.idempotency import PostgresPersistenceLayer

RATIO_TARGET = 1.5
RAW_TARGET = 1.2  # issue 14: layer ÷ the same SQL sent raw, median of the runs
CASES = ("first call (claim + complete)", "replay (stored result)")


class _Invocation:
    """The Lambda context the layer reads: a minute left, always."""

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def one_run(url: str, n: int, warmup: int) -> list[dict[str, Any]]:
    """One run on a fresh, migrated database: both cases, `n` measured calls each after `warmup`."""
    layer_cls = counting_class()
    layer_db = database(url, layer_cls)
    # The baselines go over the layer's own connection: the same server process answers both sides, so where
    # the operating system runs it (the same core as this process or the other one, which moves a round trip
    # by tens of microseconds) is the same for both.
    raw = layer_db._connection()

    config = IdempotencyConfig(event_key_jmespath="order_id", payload_validation_jmespath="amount")
    # As every function does: claims carry an in-progress expiry.
    config.register_lambda_context(cast(Any, _Invocation()))
    store = PostgresPersistenceLayer(database=layer_db)
    statements = store._sql
    inside = {"ms": 0.0}  # time spent inside the persistence layer's own operations

    def timed(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                inside["ms"] += (time.perf_counter() - start) * 1000

        return wrapper

    for name in ("_put_record", "_update_record", "_get_record", "_delete_record"):
        setattr(store, name, timed(getattr(store, name)))

    @idempotent_function(data_keyword_argument="order", config=config, persistence_store=store)
    def charge(order: dict) -> dict:
        return {"charged": order["amount"], "order_id": order["order_id"]}

    def claim_args(key: str) -> dict[str, Any]:
        now = time.time()
        return dict(
            key=key,
            claim=str(uuid.uuid4()),
            expiry=int(now) + 3600,
            in_progress_expiry=int(now * 1000) + 60_000,  # as the layer, with its Lambda context
            hash="0" * 32,
            now=int(now),
            now_ms=int(now * 1000),
        )

    # Baselines are rendered before the clock starts: they time the statements alone.
    def same_first(i: int) -> list[str]:
        key = f"same#{i}"
        return [
            bind(statements.claim, **claim_args(key)),
            bind(
                statements.complete,
                key=key,
                claim=None,
                text='{"charged": 4990}',
                data='{"charged": 4990}',
                expiry=int(time.time()) + 3600,
                hash="0" * 32,
            ),
        ]

    def same_replay(i: int) -> list[str]:
        return [bind(statements.claim, **claim_args(f"same#{i}"))]

    def minimal_first(i: int) -> list[str]:
        key = f"min#{i}"
        return [
            bind(
                "INSERT INTO idempotency_keys (key, status, expiry_timestamp, request_hash, created_at, updated_at) "
                "VALUES (:k, 'pending', :e, :h, now(), now())",
                k=key,
                e=int(time.time()) + 3600,
                h="0" * 32,
            ),
            bind(
                "UPDATE idempotency_keys SET status = 'completed', response_data = :d::jsonb, updated_at = now() "
                "WHERE key = :k",
                k=key,
                d='{"charged": 4990}',
            ),
        ]

    def minimal_replay(i: int) -> list[str]:
        return [bind(statements.get, key=f"min#{i}")]

    cases = (
        (CASES[0], same_first, minimal_first),
        (CASES[1], same_replay, minimal_replay),
    )
    results = []
    for case, same_sql, minimal_sql in cases:
        samples: dict[str, list[float]] = {"layer": [], "inside": [], "same": [], "minimal": []}
        trips = {"layer": 0, "same": 0, "minimal": 0}
        for i in range(-warmup, n):
            index = i if i >= 0 else 10_000_000 - i
            order = {"order_id": f"o-{index}", "amount": 4990}
            before, inside["ms"] = layer_cls.round_trips, 0.0
            start = time.perf_counter()
            charge(order=order)
            layer_ms = (time.perf_counter() - start) * 1000
            layer_trips = layer_cls.round_trips - before
            measured = {"layer": layer_ms, "inside": inside["ms"]}
            for name, render in (("same", same_sql), ("minimal", minimal_sql)):
                sqls = render(index)
                before = layer_cls.round_trips
                start = time.perf_counter()
                for sql in sqls:
                    raw.run(sql)
                measured[name] = (time.perf_counter() - start) * 1000
                if i >= 0:
                    trips[name] += layer_cls.round_trips - before
            if i >= 0:
                trips["layer"] += layer_trips
                for name, value in measured.items():
                    samples[name].append(value)
        row: dict[str, Any] = {"case": case}
        for name, values in samples.items():
            row[f"{name}_p50"] = statistics.median(values)
            row[f"{name}_p99"] = percentile(values, 0.99)
        for name, count in trips.items():
            row[f"{name}_statements"] = count / n
        results.append(row)
    layer_db.close()
    return results


class IdempotencyBench:
    """`make bench`'s first measurement: one `run()` per run, a fresh database each."""

    name = "idempotency"

    def __init__(self) -> None:
        self.runs = runs(6)
        self.n = size("BENCH_N", 1000, 50)
        self.warmup = size("BENCH_WARMUP", 100, 10)
        self.loads = Loads()
        self.results: list[list[dict[str, Any]]] = []  # per run, per case

    def setup(self, server: Server) -> None:
        self.server = server

    def run(self) -> None:
        name = self.server.create(template=self.server.migrated())
        try:
            with self.loads.around():
                self.results.append(one_run(self.server.url_of(name), self.n, self.warmup))
        finally:
            self.server.drop(name)

    def close(self) -> None:
        pass

    def spread(self, case: int, figure: str) -> Spread:
        return Spread([run[case][figure] for run in self.results])

    def ratio(self, case: int, a: str, b: str, q: str = "p50") -> Spread:
        return Spread([run[case][f"{a}_{q}"] / run[case][f"{b}_{q}"] for run in self.results])

    def section(self) -> Section:
        runs_done = len(self.results)
        lines = [
            "## Postgres idempotency layer vs raw pg8000",
            "",
            f"{runs_done} runs, each on a fresh database: {self.n} calls per case after {self.warmup} warm-up calls,",
            "all four measurements interleaved call by call so that drift on the machine hits them alike.",
            "Statements are counted as round trips on the connection (each wait for the server's ReadyForQuery),",
            "not assumed.",
            "",
            "- **layer**: a call through Powertools' `@idempotent_function` on `PostgresPersistenceLayer`",
            "  (payload validation on): hashing, the claim, the function, the completion.",
            "- **inside the layer**: the part of that spent in the persistence layer's own operations (SQL rendering,",
            "  the round trips, turning rows into records).",
            "- **raw, same SQL**: the layer's own statements, pre-rendered, sent directly through pg8000 on the",
            "  layer's own connection (the same server process answers both sides): the baseline.",
            "- **raw, minimal SQL**: what a naive store would send (a plain INSERT + UPDATE; a plain SELECT by key),",
            "  which cannot claim atomically: the price of the one-statement claim.",
            "",
            "Medians across the runs of each run's figures:",
            "",
            "| case | statements/call: layer · raw | p50 ms: layer · inside · raw same · raw minimal "
            "| p99 ms: layer · raw same | inside ÷ raw same (p50) | layer ÷ raw minimal (p50) |",
            "|---|---|---|---|---|---|",
        ]
        for c, case in enumerate(CASES):

            def med(figure: str, c: int = c) -> float:
                return self.spread(c, figure).median

            lines.append(
                f"| {case} | {med('layer_statements'):.2f} · {med('same_statements'):.2f} "
                f"| {med('layer_p50'):.3f} · {med('inside_p50'):.3f} · {med('same_p50'):.3f} · "
                f"{med('minimal_p50'):.3f} | {med('layer_p99'):.3f} · {med('same_p99'):.3f} "
                f"| {self.ratio(c, 'inside', 'same').median:.2f}× | {self.ratio(c, 'layer', 'minimal').median:.2f}× |"
            )
        lines += [
            "",
            "**Layer ÷ raw same SQL** (each run's p50 ÷ p50), per run in order, then min and median:",
            "",
            "| case | each run | min | **median** |",
            "|---|---|---|---|",
        ]
        for c, case in enumerate(CASES):
            ratio = self.ratio(c, "layer", "same")
            lines.append(f"| {case} | {ratio.each()} | {ratio.min:.2f}× | **{ratio.median:.2f}×** |")
        lines += ["", f"Load (1 min) before→after each run: {self.loads.text()}.", ""]
        first, replay = 0, 1
        targets = [
            ("idempotency: replay = 1 statement", all(run[replay]["layer_statements"] == 1 for run in self.results)),
            (
                "idempotency: first call = 2 statements",
                all(run[first]["layer_statements"] == 2 for run in self.results),
            ),
        ]
        for limit in (RATIO_TARGET, RAW_TARGET):
            targets += [
                (
                    f"idempotency, {case}: layer p50 within {limit}× of the raw statements (same SQL), "
                    f"median of {runs_done} runs ({self.ratio(c, 'layer', 'same').median:.2f}×)",
                    self.ratio(c, "layer", "same").median <= limit,
                )
                for c, case in enumerate(CASES)
            ]
        return Section(lines, targets)
