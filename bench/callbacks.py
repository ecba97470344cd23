"""Verified callbacks per second through hypay_callback's handler, against the same SQL sent raw.

Two worker processes (spawned, like two execution environments), each with its own database
connection, drive the function's real `lambda_handler` with Hyp redirects signed with the terminal's
KEY (`HYPAY_VERIFY_MODE=hmac`: the HMAC is checked, nothing goes over the network) over fresh pending
payments, each of its own user: first every payment's first delivery (verify, claim, settle, grant),
then every payment's replayed delivery (the browser reloading: the stored outcome).

The baseline is the floor under that: the very statements the handler sent for each callback, recorded
once in a warm-up pass on an identical copy of the database, sent raw through pg8000 by two processes
with their own connections. Each run copies the prepared database twice (handler, raw), so both sides
do the same work on the same rows, and runs both sides at once in turns: each phase is cut into slices,
and one side's two workers do a slice while the other side's wait (ABBA order), so a change in the
machine's load hits both sides alike.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from bench.common import Loads, Section, Server, Spread, database, execute, runs, size
from ops.hypay_simulator import (
    PUBLIC_TEST_TERMINAL_KEY,
    PUBLIC_TEST_TERMINAL_MASOF,
    PUBLIC_TEST_TERMINAL_PASSP,
    redirect_sign,
)
from ops.seed import seed

CALLBACK = "HypayCallbackFunction"
WORKERS = 2
FIRST_TARGET = 0.9
REPLAY_TARGET = 0.6
PIN = os.environ.get("BENCH_PIN") == "1"
STARTER = "aaaaaaaa-0000-4000-8000-000000000001"  # 49.90 ILS, 100 credits (ops.seed)
SUCCESS = "https://app.example.test/payments/success"
SIGNED = ("Id", "CCode", "Amount", "ACode", "Order", "Fild1", "Fild2", "Fild3")
Statements = list[tuple[str, dict[str, Any]]]


def payment_id(i: int) -> str:
    return f"bc000000-0000-4000-8000-{i:012d}"


def user_id(i: int) -> str:
    return f"bd000000-0000-4000-8000-{i:012d}"


def redirect_query(i: int) -> str:
    """What Hyp's page sends the browser back with after approving payment `i` (Sign over the eight fields)."""
    fields = [
        ("Id", str(70_000_000 + i)),
        ("CCode", "0"),
        ("Amount", "49.90"),
        ("ACode", f"{i % 10_000_000:07d}"),
        ("Order", payment_id(i)),
        ("Fild1", "Israel Israeli"),
        ("Fild2", f"bench{i}@example.com"),
        ("Fild3", ""),
        ("Bank", "6"),
        ("TransType", "1"),
        ("Payments", "1"),
        ("UserId", "890108566"),
        ("Brand", "2"),
        ("Issuer", "2"),
        ("L4digit", "5614"),
        ("street", ""),
        ("city", ""),
        ("zip", ""),
        ("cell", ""),
        ("Coin", "1"),
        ("Tmonth", "12"),
        ("Tyear", "2030"),
        ("errMsg", " (0)"),
        ("Hesh", "0"),
        ("UID", f"{i:016x}"),
        ("spType", "0"),
        ("bincard", "532610"),
    ]
    encoded = [(k, quote(v, safe="-_.!~*'()")) for k, v in fields]
    sign = redirect_sign(dict(encoded), PUBLIC_TEST_TERMINAL_KEY)
    head = [kv for kv in encoded if kv[0] in SIGNED]
    rest = [kv for kv in encoded if kv[0] not in SIGNED]
    return "&".join(f"{k}={v}" for k, v in [*head, ("Sign", sign), *rest])


def function_environment(url: str) -> dict[str, str]:
    """The callback function's settings: the template's, then local ones (HMAC only: no network)."""
    from ops.template import load

    return {
        **load().functions[CALLBACK].environment,
        "AWS_LAMBDA_FUNCTION_NAME": CALLBACK,
        "DATABASE_URL": url,
        "HYPAY_URL": "http://127.0.0.1:9/p/",  # never called in hmac mode; a closed port if it were
        "HYPAY_MASOF": PUBLIC_TEST_TERMINAL_MASOF,
        "HYPAY_KEY": PUBLIC_TEST_TERMINAL_KEY,
        "HYPAY_PASSP": PUBLIC_TEST_TERMINAL_PASSP,
        "HYPAY_VERIFY_MODE": "hmac",
        "WEB_APP_SUCCESS_URL": SUCCESS,
        "WEB_APP_FAILURE_URL": "https://app.example.test/payments/failure",
        "WEB_APP_PENDING_URL": "https://app.example.test/payments/confirming",
        "POWERTOOLS_METRICS_NAMESPACE": "PaymentsBench",
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_DEV": "false",
        "LOG_LEVEL": "INFO",
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "eu-west-1"),
    }


# -- the worker processes --------------------------------------------------------------------------

# A step of a run: every worker (handler's and raw's) waits at the barrier, then one side's two workers do their
# slice of one phase while the other side's wait at the next barrier. Sides alternate slice by slice (ABBA), so
# a change in the machine's load hits both alike.
Step = tuple[str, str, int]  # (side "handler" | "raw", phase "first" | "replay", slice)
Span = tuple[str, int, float, float]  # (phase, slice, start, end): monotonic clock, comparable across processes


@dataclass
class Work:
    """One worker's share: payment indexes to warm up on (not timed) and to measure, in slices."""

    warm: list[int]
    measured: list[int]
    slices: int

    def slice(self, k: int) -> slice:
        size = -(-len(self.measured) // self.slices)
        return slice(k * size, (k + 1) * size)


def schedule(slices: int, handler_first: bool) -> list[Step]:
    steps: list[Step] = []
    for phase in ("first", "replay"):
        for k in range(slices):
            ahead = handler_first == (k % 2 == 0)
            steps += [(side, phase, k) for side in (("handler", "raw") if ahead else ("raw", "handler"))]
    return steps


def pin(worker: int, backend_pid: int, url: str) -> bool:
    """With BENCH_PIN=1: this worker and the server process answering its connection, both on one core (worker
    number modulo the cores), so that each side's pairs always sit as the other side's do. Left to the scheduler
    (the default), a worker and its server process share a core in some runs and not in others, which moves a round
    trip by tens of microseconds: the raw side, all round trips, varies by up to a fifth from run to run. Pinned, the
    runs agree closely, but the handler loses the scheduler's use of the other core while its pair waits, so every
    ratio is lower: a different setting, not a truer one. False when not asked, or when the operating system does
    not let this process move the server's (another user's, without the privilege), and for a server that is not
    on this machine's Unix socket (a remote or containerised server's process id names no process here)."""
    from payments.adapters.db import parse_database_url

    if not PIN or not hasattr(os, "sched_setaffinity") or parse_database_url(url).unix_sock is None:
        return False
    cores = sorted(os.sched_getaffinity(0))
    core = {cores[worker % len(cores)]}
    os.sched_setaffinity(0, core)
    try:
        os.sched_setaffinity(backend_pid, core)
    except OSError:
        os.sched_setaffinity(0, set(cores))
        return False
    return True


def _follow(steps: list[Step], side: str, barrier: Any, do: Any) -> list[Span]:
    """Goes through the run's steps with every other worker, doing this side's: the spans it timed."""
    spans: list[Span] = []
    for step_side, phase, k in steps:
        barrier.wait(timeout=300)
        if step_side == side:
            start = time.monotonic()
            do(phase, k)
            spans.append((phase, k, start, time.monotonic()))
    barrier.wait(timeout=300)
    return spans


def _handler_worker(
    worker: int, env: dict[str, str], work: Work, steps: list[Step] | None, barrier: Any, results: Any
) -> None:
    """Drives the real handler: `steps` None records each callback's statements, one callback at a time."""
    try:
        for name in [k for k in os.environ if k.startswith(("POWERTOOLS_", "HYPAY_", "WEB_APP_", "DB_", "LOG_"))]:
            del os.environ[name]
        os.environ.update(env)
        # Logs and metrics are written as in Lambda (JSON at INFO, EMF per invocation), to /dev/null: the
        # Logger binds sys.stdout when it is built, so before the handler is imported.
        assert "payments.observability" not in sys.modules, "the Logger was built before stdout was redirected"
        # stderr too (Powertools warns there, e.g. of a replay that published no metric): a failure comes back
        # as the traceback put on the results queue.
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        results.put({"worker": worker, **_drive_handler(worker, work, steps, barrier)})
    except BaseException:
        barrier.abort()
        results.put({"worker": worker, "error": traceback.format_exc()})


def _drive_handler(worker: int, work: Work, steps: list[Step] | None, barrier: Any) -> dict[str, Any]:
    from ops.lambda_context import LocalLambdaContext
    from ops.local_api import build_event
    from ops.pgcount import recording_class
    from ops.template import load, load_handler
    from payments.adapters import db as db_module

    recorder = recording_class()
    if steps is None:
        db_module.GuardedConnection = recorder  # type: ignore[misc]  # what Database.from_settings connects with
    function = load().functions[CALLBACK]
    handler = load_handler(function)
    answers: list[tuple[int, str]] = []

    def event(i: int) -> dict[str, Any]:
        return build_event(
            method="GET",
            target=f"/hypay/return?{redirect_query(i)}",
            headers={"accept": "text/html", "user-agent": "Mozilla/5.0 (bench)", "host": "api.example.test"},
            body=b"",
            source_ip="203.0.113.7",
            route_key="GET /hypay/return",
            path_parameters={},
            claims=None,
        )

    def context() -> LocalLambdaContext:
        return LocalLambdaContext(function_name=CALLBACK, timeout_seconds=function.timeout)

    def call(invocations: list[tuple[dict[str, Any], LocalLambdaContext]]) -> None:
        for e, c in invocations:
            result = handler(e, c.invoked())
            answers.append((result["statusCode"], (result.get("headers") or {}).get("Location", "")))

    if steps is None:  # one callback at a time, in the measured order, so each one's statements are known
        recorded: dict[str, list[Statements]] = {"warm": [], "first": [], "replay": []}
        for phase, indexes in (("warm", work.warm), ("warm", work.warm), ("first", work.measured),
                               ("replay", work.measured)):  # fmt: skip
            for i in indexes:
                before = len(recorder.statements)
                call([(event(i), context())])
                recorded[phase].append(list(recorder.statements[before:]))
        return {"answers": answers, "recorded": recorded}
    for _ in ("first", "replay"):
        call([(event(i), context()) for i in work.warm])
    # The function's own connection (opened by the warm-up): its server process is pinned with this worker.
    [[backend]] = db_module.default_database().run("SELECT pg_backend_pid()")
    pinned = pin(worker, backend, os.environ["DATABASE_URL"])
    # Events and Lambda contexts are built before the clock starts (API Gateway builds the event, Lambda's runtime the
    # context, not the function); each delivery its own. A context's deadline is started as its invocation starts
    # (`invoked`): its function's timeout away, as in Lambda, however long before the context was built (a statement
    # near an invocation's end is sent with shorter time limits).
    events = {phase: [(event(i), context()) for i in work.measured] for phase in ("first", "replay")}
    spans = _follow(steps, "handler", barrier, lambda phase, k: call(events[phase][work.slice(k)]))
    return {"answers": answers, "spans": spans, "pinned": pinned}


def _raw_worker(
    worker: int, url: str, recorded: dict[str, list[Statements]], work: Work, steps: list[Step], barrier: Any,
    results: Any,
) -> None:  # fmt: skip
    """Sends the recorded statements of its share's callbacks, slice by slice, on a connection of its own."""
    try:
        from bench.common import Server

        conn = Server.connect(url)

        def send(batches: list[Statements]) -> None:
            for statements in batches:
                for sql, params in statements:
                    conn.run(sql, **params)

        send(recorded["warm"])
        [[backend]] = conn.run("SELECT pg_backend_pid()")
        pinned = pin(worker, backend, url)
        spans = _follow(steps, "raw", barrier, lambda phase, k: send(recorded[phase][work.slice(k)]))
        conn.close()
        results.put({"worker": worker, "spans": spans, "pinned": pinned})
    except BaseException:
        barrier.abort()
        results.put({"worker": worker, "error": traceback.format_exc()})


def _rate(count: int, spans: list[Span], phase: str) -> float:
    """Callbacks per second of one side's workers together: all its callbacks of `phase` ÷ the sum, over the
    slices, of the time from the first worker's start to the last worker's end."""
    busy = 0.0
    for k in {k for p, k, _, _ in spans if p == phase}:
        mine = [(start, end) for p, j, start, end in spans if p == phase and j == k]
        busy += max(end for _, end in mine) - min(start for start, _ in mine)
    return count / busy


# -- the measurement --------------------------------------------------------------------------------


class CallbacksBench:
    """Handler ÷ raw floor, first and replayed delivery; one `run()` per run."""

    name = "callbacks"

    def __init__(self) -> None:
        self.runs = runs(6)
        self.per_worker = size("BENCH_CALLBACKS", 2000, 20) // WORKERS
        self.warm_per_worker = size("BENCH_CALLBACKS_WARMUP", 50, 3)
        self.slices = min(self.per_worker, size("BENCH_CALLBACK_SLICES", 20, 2))
        self.loads = Loads()
        self.rates = {side: Spread() for side in ("handler_first", "handler_replay", "raw_first", "raw_replay")}
        self.statements: dict[str, float] = {}
        self.pinned: list[bool] = []  # per run: every worker pinned with its server process (BENCH_PIN=1)
        self.context = multiprocessing.get_context("spawn")

    def setup(self, server: Server) -> None:
        self.server = server
        warm = WORKERS * self.warm_per_worker
        self.total = warm + WORKERS * self.per_worker
        self.work = [
            Work(list(range(w, warm, WORKERS)), list(range(warm + w, self.total, WORKERS)), self.slices)
            for w in range(WORKERS)
        ]
        self.prepared = server.create(template=server.migrated())
        db = database(server.url_of(self.prepared))
        seed(db)
        db.close()
        execute(
            server.url_of(self.prepared),
            "INSERT INTO public.profiles (id, email, full_name, credits) "
            "SELECT ('bd000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, 'bench' || g || '@example.com', "
            f"'Israel Israeli', 0 FROM generate_series(0, {self.total - 1}) g",
            "INSERT INTO public.payments (id, user_id, credit_pack_id, amount, currency, credits, status, "
            "idempotency_key, payment_url) "
            "SELECT ('bc000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, "
            "('bd000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, "
            f"'{STARTER}'::uuid, 49.90, 'ILS', 100, 'pending', 'bench-' || g, 'https://pay.hyp.co.il/p/?action=pay' "
            f"FROM generate_series(0, {self.total - 1}) g",
            "VACUUM ANALYZE",
        )
        # The warm-up pass: the handler's own statements for every callback, recorded on a copy.
        copy = server.create(template=self.prepared)
        try:
            env = function_environment(server.url_of(copy))
            gathered = self._processes([(_handler_worker, (w, env, work, None)) for w, work in enumerate(self.work)])
            self._check(copy, gathered)
        finally:
            server.drop(copy)
        self.recorded = [g["recorded"] for g in gathered]
        count = WORKERS * self.per_worker
        for phase in ("first", "replay"):
            self.statements[phase] = sum(len(s) for r in self.recorded for s in r[phase]) / count

    def _processes(self, jobs: list[tuple[Any, tuple[Any, ...]]]) -> list[dict[str, Any]]:
        """One process per (target, args): args start with the job's number and get a barrier shared by all and
        the results queue appended. Their results, in the order of the jobs."""
        results = self.context.Queue()
        barrier = self.context.Barrier(len(jobs))
        processes = [self.context.Process(target=target, args=(*args, barrier, results)) for target, args in jobs]
        for p in processes:
            p.start()
        try:
            gathered = [results.get(timeout=900) for _ in processes]
        finally:
            for p in processes:
                p.join(timeout=60)
                if p.is_alive():
                    p.terminate()
        errors = [g["error"] for g in gathered if "error" in g]
        if errors:
            raise RuntimeError("a benchmark worker failed:\n" + "\n".join(errors))
        return sorted(gathered, key=lambda g: g["worker"])

    def _check(self, name: str, gathered: list[dict[str, Any]]) -> None:
        """Every answer the success redirect (for the handler), then the rows."""
        for g in gathered:
            for status, location in g.get("answers", []):
                if status != 302 or not location.startswith(SUCCESS + "?payment_id="):
                    raise RuntimeError(f"hypay_callback answered {status} {location!r}, not the success redirect")
        self._check_rows(name)

    def _check_rows(self, name: str) -> None:
        """Every payment completed, its credits granted once (the raw statements must have done the same)."""
        [[completed, grants, credits]] = execute(
            self.server.url_of(name),
            "SELECT (SELECT count(*) FROM public.payments WHERE status = 'completed'), "
            "       (SELECT count(*) FROM public.credit_transactions WHERE type = 'purchase'), "
            "       (SELECT sum(credits) FROM public.profiles WHERE id::text LIKE 'bd000000-%')",
        )
        if (completed, grants, credits) != (self.total, self.total, 100 * self.total):
            raise RuntimeError(
                f"after the callbacks: {completed} payments completed, {grants} grants, {credits} credits; "
                f"expected {self.total}, {self.total}, {100 * self.total}"
            )

    def run(self) -> None:
        """Both sides at once, slice by slice in turns, each on its own fresh copy of the prepared database."""
        count = WORKERS * self.per_worker
        steps = schedule(self.slices, handler_first=len(self.loads.pairs) % 2 == 0)
        handler_db, raw_db = self.server.create(template=self.prepared), self.server.create(template=self.prepared)
        try:
            env = function_environment(self.server.url_of(handler_db))
            raw_url = self.server.url_of(raw_db)
            with self.loads.around():
                gathered = self._processes(
                    [(_handler_worker, (w, env, work, steps)) for w, work in enumerate(self.work)]
                    + [
                        (_raw_worker, (WORKERS + w, raw_url, self.recorded[w], work, steps))
                        for w, work in enumerate(self.work)
                    ]
                )
            self._check(handler_db, gathered[:WORKERS])
            self._check_rows(raw_db)
        finally:
            self.server.drop(handler_db)
            self.server.drop(raw_db)
        self.pinned.append(all(g.get("pinned") for g in gathered))
        for side, part in (("handler", gathered[:WORKERS]), ("raw", gathered[WORKERS:])):
            spans = [span for g in part for span in g["spans"]]
            for phase in ("first", "replay"):
                self.rates[f"{side}_{phase}"].values.append(_rate(count, spans, phase))

    def close(self) -> None:
        self.server.drop(self.prepared)

    def ratio(self, phase: str) -> Spread:
        handler, raw = self.rates[f"handler_{phase}"].values, self.rates[f"raw_{phase}"].values
        return Spread([h / r for h, r in zip(handler, raw, strict=True)])

    def section(self) -> Section:
        runs_done = len(self.rates["handler_first"].values)
        lines = [
            "## Verified callbacks per second: hypay_callback's handler vs the same SQL sent raw",
            "",
            f"{runs_done} runs of {WORKERS} worker processes (spawned, each its own database connection), "
            f"{self.per_worker} fresh pending payments each",
            f"(after {self.warm_per_worker} warm-up payments each, not timed), every payment of its own user.",
            "",
            "- **handler**: the function's real `lambda_handler` with a payload 2.0 event of `GET /hypay/return?...`,",
            "  a redirect signed with the terminal's KEY (`HYPAY_VERIFY_MODE=hmac`: the `Sign` HMAC is checked, no",
            "  network); logs at INFO and the metrics written as in Lambda, to /dev/null. Events and Lambda",
            "  contexts are built before the clock starts (API Gateway and Lambda's runtime build them); a context's",
            "  deadline starts with its invocation, as in Lambda. Every answer is checked (the success redirect), and",
            "  after each pass every payment is completed with its credits granted once.",
            "  **First delivery**: every payment's first callback; **replayed**: then the same callback again",
            "  (a reload).",
            "- **raw floor**: the statements the handler sent for each callback, recorded in a warm-up pass on an",
            "  identical copy of the database, sent through pg8000 by two processes with their own connections",
            "  (they complete and grant the same payments, checked the same way).",
            "- Each side works on its own fresh copy of the same prepared database. The two sides take turns within",
            f"  a run: each phase is cut into {self.slices} slices, one side's two workers do a slice while the other",
            "  side's wait, in ABBA order. Callbacks/s: a side's callbacks ÷ the sum over its slices of (last",
            "  worker's end − first worker's start).",
            "- Where the workers and their server processes run is left to the scheduler"
            + (
                ": pinned here (BENCH_PIN=1), each worker with its server process on one core."
                if self.pinned and all(self.pinned)
                else " (BENCH_PIN=1 pins each worker with its server process on one core: the runs then agree"
                " closely, every ratio lower). Whether a worker and its server process share a core changes from"
                " run to run and moves the raw side's rate most (it is all round trips): hence the spread of the"
                " raw floor."
            ),
            "",
            f"Statements per callback (recorded): first delivery {self.statements['first']:.2f}, "
            f"replayed {self.statements['replay']:.2f}.",
            "",
            "| delivery | callbacks/s, each run: handler | raw floor | handler ÷ raw floor, each run | min "
            "| **median** |",
            "|---|---|---|---|---|---|",
        ]
        for phase, label in (("first", "first"), ("replay", "replayed")):
            ratio = self.ratio(phase)
            lines.append(
                f"| {label} | {self.rates[f'handler_{phase}'].each('{:.0f}')} "
                f"| {self.rates[f'raw_{phase}'].each('{:.0f}')} | {ratio.each()} | {ratio.min:.2f} "
                f"| **{ratio.median:.2f}** |"
            )
        lines += ["", f"Load (1 min) before→after each run: {self.loads.text()}.", ""]
        targets = [
            (
                f"callbacks, first delivery: handler ≥ {FIRST_TARGET} of the raw floor, median of {runs_done} runs "
                f"({self.ratio('first').median:.2f})",
                self.ratio("first").median >= FIRST_TARGET,
            ),
            (
                f"callbacks, replayed delivery: handler ≥ {REPLAY_TARGET} of the raw floor, median of {runs_done} "
                f"runs ({self.ratio('replay').median:.2f})",
                self.ratio("replay").median >= REPLAY_TARGET,
            ),
        ]
        return Section(lines, targets)
