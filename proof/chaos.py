"""Chaos: thousands of Hyp callbacks while the database connections and the workers die, and VERIFY fails.

`run(stack, deliveries, payments, users, seed)`:

1. Setup: `users` users buy `payments` packs over HTTP (`POST /payments`), and pay them on the simulator's
   page like a browser: most approved, some declined (CVV 999: CCode 6), some never paid. Each paid one
   leaves its signed callback query (the 302 Location's query).
2. Deliveries: `deliveries` callbacks over those transactions (the browser's redirect `GET /hypay/return`,
   Hyp's notify `POST /hypay/notify` and `GET /hypay/notify`), each transaction many times, in bursts of
   concurrent duplicates, in random order, from a pool of clients. Meanwhile a chaos thread, paced by the
   deliveries done: terminates every database connection but its own (`pg_terminate_backend`), SIGKILLs a
   worker process of HypayCallbackFunction (`GET /_local/workers`), and makes the simulator's VERIFY fail
   (`/_sim/faults`: HTTP 500, an HTML page, a dropped connection, an answer cut short, a short hang).
   What may be answered: a redirect is a 302 to the web app's result page naming the payment; a notify is a
   200, or a 503 with Retry-After ("not yet": our outage); a 502 is API Gateway's answer for an execution
   environment that died, accepted only when a worker was killed while the request was in flight (counted
   apart; at most one per kill: the killed environment's own invocation). Anything else (a 500 first of all)
   is a failure.
3. Settle: the faults cleared, each paid transaction's notify is sent again until it gets a 200 (Hyp retries
   until then), and the hourly cleanup runs once.
4. Invariants, read as the database's superuser against the simulator's own list of transactions: a payment
   Hyp approved is completed (by that transaction, with exactly one purchase grant) or in needs_review; a
   declined one is failed with no grant; an unpaid one is still pending with no journal row; every Hyp
   transaction has its verified journal row with the right decision and no journal row is unknown to Hyp;
   each user's balance equals the sum of their grants and of the packs Hyp charged them for; no callback's
   idempotency record is left in progress; and nothing the functions printed meanwhile holds a secret or a card
   number (`tests.support.leaks`).

The payment creation rate limit (10 a minute per user by default) would make the setup of hundreds of payments
take minutes: `SETTINGS` raises it, and when the stack was started without it the setup clears the users'
rate-limit windows as the superuser (setup, not what is under test).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from payments.adapters.db import Database, bind
from payments.settings import DatabaseSettings
from proof.stack import Reply, Stack, http
from tests.support.leaks import find_leaks
from tests.support.payments import CVV as TESTS_CVV

SETTINGS = {"CREATE_PAYMENT_RATE_LIMIT": "100000"}
"""What the stack should be started with for this part (`stack(settings=SETTINGS)`)."""

CALLBACK_FUNCTION = "HypayCallbackFunction"
KINDS = ("redirect", "notify", "notify_get")
FAULT_KINDS = ("http500", "html", "drop", "cut", "hang")
# A request whose execution environment was killed while it ran answers 502 (API Gateway's answer for a crashed
# environment); the kill's moment is taken on the proof's clock just before the signal: a little slack.
KILL_GRACE_SECONDS = 0.5
SETTLE_SECONDS = 120.0  # a killed worker's in-progress record blocks its transaction for the function's timeout


@dataclass
class Purchase:
    """One payment of the run and what Hyp did with it. `query` is the signed callback (never printed)."""

    payment_id: str
    user: str
    pack: str
    credits: int
    amount: Decimal
    fate: str  # approved | declined | unpaid
    hyp_id: str | None = None
    ccode: int | None = None
    query: str = field(default="", repr=False)


@dataclass
class ChaosResult:
    """Counts of a run and its failures (each a short reproducible description, no card data, no secrets)."""

    seed: int
    deliveries: int = 0
    payments: int = 0
    users: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)  # "notify 503"
    not_yet: Counter[str] = field(default_factory=Counter)  # the details of the 503s
    logged: Counter[str] = field(default_factory=Counter)  # the functions' warnings and errors, by message
    expected_502: int = 0
    db_terminations: int = 0  # rounds of pg_terminate_backend
    backends_terminated: int = 0  # connections ended by those rounds
    worker_kills: int = 0
    verify_outages: int = 0  # fault rules injected
    verify_outage_kinds: Counter[str] = field(default_factory=Counter)
    settle_deliveries: int = 0
    settle_statuses: Counter[str] = field(default_factory=Counter)
    completed: int = 0
    declined: int = 0
    review: int = 0
    unpaid: int = 0
    unverified_callbacks_kept: int = 0
    verify_calls: int = 0  # VERIFY calls the simulator received (retries included)
    left_in_progress: int = 0  # callbacks' idempotency records a killed worker left in progress (before the settle)
    terminated_roles: list[str] = field(default_factory=list)  # the roles of the sessions terminated
    elapsed: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        """A few lines for a report."""
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.by_kind.items()))
        statuses = ", ".join(f"{k}: {n}" for k, n in sorted(self.by_status.items()))
        outages = ", ".join(f"{k} {n}" for k, n in sorted(self.verify_outage_kinds.items()))
        settle = ", ".join(f"{k}: {n}" for k, n in sorted(self.settle_statuses.items()))
        times = ", ".join(f"{k} {v:.1f} s" for k, v in self.elapsed.items())
        return "\n".join(
            [
                f"chaos (seed {self.seed}): {self.deliveries} deliveries over {self.payments} payments of"
                f" {self.users} users: {'OK' if self.ok else f'{len(self.failures)} FAILURES'}",
                f"  deliveries by kind: {kinds}",
                f"  answers: {statuses} (502s while a worker was killed: {self.expected_502})",
                f"  chaos: {self.db_terminations} database terminations ({self.backends_terminated} connections),"
                f" {self.worker_kills} worker kills, {self.verify_outages} VERIFY outages ({outages});"
                f" {self.verify_calls} VERIFY calls in all",
                f"  503s: {', '.join(f'{k}: {n}' for k, n in self.not_yet.most_common())}",
                f"  logged: {', '.join(f'{k}: {n}' for k, n in self.logged.most_common(12))}",
                f"  settle: {self.left_in_progress} callbacks left in progress by the kills;"
                f" {self.settle_deliveries} notifies ({settle})",
                f"  payments: {self.completed} completed, {self.declined} declined, {self.review} in review,"
                f" {self.unpaid} never paid; {self.unverified_callbacks_kept} unverified callbacks kept",
                f"  roles of the sessions terminated: {', '.join(self.terminated_roles) or '?'}",
                f"  elapsed: {times}",
                *[f"  FAILURE: {f}" for f in self.failures[:50]],
                *([f"  ... and {len(self.failures) - 50} more"] if len(self.failures) > 50 else []),
            ]
        )


class _Output:
    """What `make run` printed during the part (the functions log to it; `proof.stack` keeps reading it into
    `run.lines`): the lines where the local API says a function raised, and the functions' warnings and errors
    counted by message and reason (never their other fields)."""

    def __init__(self, stack: Stack) -> None:
        self._lines = stack.run.lines
        if getattr(stack.run, "_reader", None) is None:
            stack.run.drain()  # a full pipe would block every worker that logs
        self._start = len(self._lines)

    def read(self) -> tuple[list[str], Counter[str], list[str]]:
        """(the local API's "unhandled" lines, the warnings counted, what leaked: a secret or card number)."""
        unhandled: list[str] = []
        warnings: Counter[str] = Counter()
        lines = self._lines[self._start :]
        # The tests' own CVV (a bare 4-digit number: a PID or a duration in the local API's lines can equal it)
        # is never sent here; every other forbidden value, card number and token is looked for.
        leaked = [found for found in find_leaks("".join(lines)) if found != TESTS_CVV]
        for line in lines:
            if "] unhandled " in line:
                unhandled.append(line.strip()[:200])
            if not line.startswith("{") or '"level":"INFO"' in line or '"level":"DEBUG"' in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or "level" not in record:  # metrics (EMF), not a log record
                continue
            why = record.get("reason") or record.get("code") or record.get("exception_name")
            warnings[f"{record.get('message')}" + (f" ({why})" if why else "")] += 1
        return unhandled, warnings, leaked


def run(stack: Stack, deliveries: int, payments: int, users: int, seed: int | None = None) -> ChaosResult:
    """The whole part: setup, deliveries under chaos, settle, invariants. See the module's docstring."""
    seed = random.randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    result = ChaosResult(seed=seed, payments=payments, users=users)
    output = _Output(stack)
    started = time.monotonic()
    purchases = _setup(stack, rng, payments, users, result)
    result.elapsed["setup"] = time.monotonic() - started
    if result.failures:
        return result
    mark = time.monotonic()
    _deliver_under_chaos(stack, rng, purchases, deliveries, result)
    result.elapsed["deliveries"] = time.monotonic() - mark
    [[result.left_in_progress]] = stack.sql(
        "SELECT count(*) FROM public.idempotency_keys WHERE key LIKE 'hypay_callback#%' AND status = 'pending'"
    )
    mark = time.monotonic()
    _settle(stack, purchases, result)
    result.elapsed["settle"] = time.monotonic() - mark
    _check(stack, purchases, result)
    unhandled, result.logged, leaked = output.read()
    result.failures += [f"the local API logged a function failure: {line}" for line in unhandled]
    if leaked:  # named by its first four characters only: this report is output too
        result.failures.append(
            f"the functions' output held a secret or card number: {leaked[0][:4]}... ({len(leaked)} found)"
        )
    result.elapsed["total"] = time.monotonic() - started
    return result


# -- 1. setup ----------------------------------------------------------------------------------


def _sim_base(stack: Stack) -> str:
    return stack.simulator.removesuffix("/").removesuffix("/p")


def _setup(stack: Stack, rng: random.Random, payments: int, users: int, result: ChaosResult) -> list[Purchase]:
    packs = {
        pid: (int(credits), Decimal(price))
        for pid, credits, price in stack.sql(
            "SELECT id::text, credits, price::text FROM public.credit_packs WHERE is_active ORDER BY price"
        )
    }
    people = [stack.new_user() for _ in range(users)]
    tokens = {user: stack.token(user) for user in people}
    plan = []
    for i in range(payments):
        roll = rng.random()
        fate = "approved" if roll < 0.75 else "declined" if roll < 0.9 else "unpaid"
        plan.append((people[i % users], rng.choice(sorted(packs)), fate, rng.random() < 0.2))

    def buy(item: tuple[str, str, str, bool]) -> Purchase | str:
        user, pack, fate, save_card = item
        # Some buyers keep their card: a grant then also asks Hyp for the card's token (getToken).
        body = json.dumps({"credit_pack_id": pack, **({"save_card": True} if save_card else {})}).encode()
        headers = {
            "Authorization": f"Bearer {tokens[user]}",
            "Content-Type": "application/json",
            "Idempotency-Key": str(uuid.uuid4()),
        }
        for _ in range(5):
            reply = http(f"{stack.base}/payments", "POST", body, headers)
            if reply.status != 429:
                break
            # Setup, not what is under test: the stack runs with the default rate limit.
            stack.sql("DELETE FROM public.rate_limits WHERE bucket = :b", b=f"create_payment:{user}")
        if reply.status != 201:
            return f"setup: POST /payments (pack {pack}) answered {reply.status}"
        created = reply.json
        credits, price = packs[pack]
        purchase = Purchase(created["payment_id"], user, pack, credits, price, fate)
        if fate != "unpaid":
            problem = _pay(stack, created["payment_url"], purchase, cvv="125" if fate == "approved" else "999")
            if problem:
                return problem
        return purchase

    with ThreadPoolExecutor(max_workers=8) as pool:
        done = list(pool.map(buy, plan))
    result.failures += [d for d in done if isinstance(d, str)]
    return [d for d in done if isinstance(d, Purchase)]


def _pay(stack: Stack, payment_url: str, purchase: Purchase, *, cvv: str) -> str | None:
    """The customer's browser on the simulator's page; fills in purchase's Hyp Id, code and callback query."""
    query, problem = stack.pay(payment_url, cvv=cvv)
    if query is None:
        return f"setup: paying {purchase.payment_id}: {problem}"
    purchase.query = query
    fields = parse_qs(purchase.query)
    purchase.hyp_id = fields["Id"][0]
    purchase.ccode = int(fields["CCode"][0])
    return None


# -- 2. deliveries under chaos -------------------------------------------------------------------


@dataclass
class _Delivery:
    purchase: Purchase
    kind: str


def _schedule(rng: random.Random, paid: list[Purchase], deliveries: int) -> list[_Delivery]:
    """`deliveries` callbacks. Each transaction's arrive in a stretch of the run starting at a random point (so
    that first deliveries, the ones that do the work, happen all along the chaos, not only at the start), in
    bursts of 1-4 identical ones sent together (concurrent duplicates), its kinds in random order (a notify
    before the redirect, a reload before the first redirect), the transactions' stretches overlapping."""
    share, extra = divmod(deliveries, len(paid))
    timed: list[tuple[float, list[_Delivery]]] = []
    for n, purchase in enumerate(paid):
        count = share + (1 if n < extra else 0)
        start, span = rng.uniform(0, 0.9), rng.uniform(0.01, 0.1)
        kinds = rng.sample(KINDS, len(KINDS))  # each kind at least once when there is room
        while count > 0:
            size = min(rng.choice((1, 1, 2, 2, 3, 4)), count)
            kind = kinds.pop() if kinds else rng.choice(KINDS)
            timed.append((start + rng.uniform(0, span), [_Delivery(purchase, kind) for _ in range(size)]))
            count -= size
    timed.sort(key=lambda item: item[0])
    return [d for _, burst in timed for d in burst]


def _send(stack: Stack, purchase: Purchase, kind: str) -> Reply | None:
    """One callback as Hyp or the browser sends it; None when no answer came (connection refused, reset)."""
    try:
        if kind == "redirect":
            return http(f"{stack.base}/hypay/return?{purchase.query}")
        if kind == "notify":
            form = {"Content-Type": "application/x-www-form-urlencoded"}
            return http(f"{stack.base}/hypay/notify", "POST", purchase.query.encode(), form)
        return http(f"{stack.base}/hypay/notify?{purchase.query}")
    except OSError:  # urllib's URLError, a reset or a timeout: the local API owes an answer
        return None


class _Chaos:
    """The chaos thread: one action each time the deliveries pass a threshold (so that a small run gets a few
    of each, a large one many), actions in shuffled rounds of terminate / kill / VERIFY outage."""

    def __init__(self, stack: Stack, rng: random.Random, deliveries: int, result: ChaosResult) -> None:
        self.stack = stack
        self.rng = rng
        self.result = result
        rounds = max(3, deliveries // 150)
        self.actions = [a for _ in range(rounds) for a in rng.sample(["terminate", "kill", "outage"], 3)]
        n = len(self.actions)
        # Spread over the first 90% of the deliveries: the last ones run after the last blow.
        self.thresholds = [int(0.9 * deliveries * (i + rng.uniform(0.1, 0.9)) / n) for i in range(n)]
        self.kills: list[float] = []
        self.done = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._db = Database.from_settings(DatabaseSettings(DATABASE_URL=stack.database_url))
        self._thread = threading.Thread(target=self._loop, name="chaos", daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> _Chaos:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._db.close()

    def delivered(self) -> None:
        with self._lock:
            self.done += 1

    def killed_near(self, start: float, end: float) -> bool:
        with self._lock:
            return any(start - KILL_GRACE_SECONDS <= k <= end + KILL_GRACE_SECONDS for k in self.kills)

    def _loop(self) -> None:
        for action, threshold in zip(self.actions, self.thresholds, strict=True):
            while not self._stop.is_set():
                with self._lock:
                    if self.done >= threshold:
                        break
                self._stop.wait(0.01)
            if self._stop.is_set():
                return
            try:
                {"terminate": self._terminate, "kill": self._kill, "outage": self._outage}[action]()
            except Exception as exc:  # the proof's own tooling failed: reported, the run goes on
                self.errors.append(f"chaos action {action} failed: {type(exc).__name__}: {exc}")

    def _terminate(self) -> None:
        # Every session but ours, or a random half. By pid, not by role: `make run` hands the functions the
        # stack's DATABASE_URL, so they log in as the same role as the proof.
        share = self.rng.choice((1.0, 1.0, 0.5))
        rows = self._db.run(
            bind(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)), array_agg(DISTINCT usename::text)"
                " FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " AND datname = current_database() AND random() < :share",
                share=Decimal(str(share)),
            )
        )
        ended, names = rows[0]
        self.result.db_terminations += 1
        self.result.backends_terminated += int(ended or 0)
        for name in names or []:
            if name not in self.result.terminated_roles:
                self.result.terminated_roles.append(name)

    def _kill(self) -> None:
        deadline = time.monotonic() + 2
        while True:
            pids = http(f"{self.stack.base}/_local/workers").json.get(CALLBACK_FUNCTION) or []
            if pids or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not pids:
            self.errors.append("chaos: no live HypayCallbackFunction worker to kill")
            return
        with self._lock:
            self.kills.append(time.monotonic())
        try:
            os.kill(self.rng.choice(pids), signal.SIGKILL)
        except ProcessLookupError:
            return  # already gone (its pool was being replaced)
        self.result.worker_kills += 1

    def _outage(self) -> None:
        kind = self.rng.choice(FAULT_KINDS)
        rule = {"action": "VERIFY", "kind": kind, "times": self.rng.randint(5, 30)}
        if kind == "hang":
            rule["seconds"] = round(self.rng.uniform(0.3, 1.5), 2)
        reply = http(f"{_sim_base(self.stack)}/_sim/faults", "POST", json.dumps(rule).encode())
        if reply.status != 204:
            self.errors.append(f"chaos: the simulator refused the fault {rule}: {reply.status}")
            return
        self.result.verify_outages += 1
        self.result.verify_outage_kinds[kind] += 1


def _judge(
    stack: Stack, delivery: _Delivery, reply: Reply | None, window: tuple[float, float], chaos: _Chaos | None
) -> tuple[str, str | None]:
    """(the status's label, a failure or None) for one delivery."""
    purchase, kind = delivery.purchase, delivery.kind
    where = f"{kind} of Hyp transaction {purchase.hyp_id} (payment {purchase.payment_id}, CCode {purchase.ccode})"
    if reply is None:
        return f"{kind} no answer", f"{where}: no answer (connection refused, reset or timed out)"
    label = f"{kind} {reply.status}"
    if reply.status == 502 and chaos is not None and chaos.killed_near(*window):
        return label, None
    if kind == "redirect":
        location = reply.headers.get("location", "")
        if reply.status != 302:
            return label, f"{where}: answered {reply.status}, not a 302 redirect"
        if not location.startswith(f"{stack.base}/demo/result") or f"payment_id={purchase.payment_id}" not in location:
            return label, f"{where}: redirected to {location.split('?')[0]} without its payment id (refused?)"
        return label, None
    if reply.status == 200:
        return label, None
    if reply.status == 503 and reply.headers.get("retry-after"):
        return label, None
    return label, f"{where}: answered {reply.status} {reply.body[:120]!r}"


def _deliver_under_chaos(
    stack: Stack, rng: random.Random, purchases: list[Purchase], deliveries: int, result: ChaosResult
) -> None:
    paid = [p for p in purchases if p.fate != "unpaid"]
    if not paid:
        result.failures.append("setup: no paid payment to deliver callbacks for")
        return
    schedule = _schedule(rng, paid, deliveries)
    lock = threading.Lock()

    with _Chaos(stack, rng, deliveries, result) as chaos:

        def one(delivery: _Delivery) -> None:
            start = time.monotonic()
            reply = _send(stack, delivery.purchase, delivery.kind)
            label, failure = _judge(stack, delivery, reply, (start, time.monotonic()), chaos)
            with lock:
                result.deliveries += 1
                result.by_kind[delivery.kind] += 1
                result.by_status[label] += 1
                if reply is not None and reply.status == 502 and failure is None:
                    result.expected_502 += 1
                if reply is not None and reply.status == 503:
                    result.not_yet[_detail(reply)] += 1
                if failure:
                    result.failures.append(failure)
            chaos.delivered()

        with ThreadPoolExecutor(max_workers=24) as pool:
            list(pool.map(one, schedule))
    result.failures += chaos.errors
    if result.expected_502 > result.worker_kills:
        # An environment runs one invocation: each kill may fail one request, never the other environments' ones
        result.failures.append(
            f"{result.expected_502} requests answered 502 for {result.worker_kills} environments killed"
        )


def _sessions(stack: Stack) -> list[list[Any]]:
    """The client sessions (state, what they wait on, the start of their last statement, how long) and the
    locks waited on: what to look at when the callbacks stay "not yet" after the chaos."""
    sessions = stack.sql(
        "SELECT state, wait_event_type, wait_event, left(regexp_replace(query, '\\s+', ' ', 'g'), 70),"
        " extract(epoch FROM now() - xact_start)::int FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    waiting = stack.sql("SELECT locktype, mode, relation::regclass::text FROM pg_locks WHERE NOT granted")
    return [*sessions, ["locks waited on:", *waiting]]


def _detail(reply: Reply) -> str:
    """What a problem+json answer says (our own words, never the callback's fields)."""
    try:
        return str(reply.json.get("detail"))[:100]
    except (ValueError, AttributeError):
        return reply.body[:100].decode("utf-8", "replace")


# -- 3. settle -----------------------------------------------------------------------------------


def _settle(stack: Stack, purchases: list[Purchase], result: ChaosResult) -> None:
    """No more chaos: every paid transaction's notify until a 200, as Hyp retries it; then the cleanup."""
    http(f"{_sim_base(stack)}/_sim/faults", "DELETE")
    deadline = time.monotonic() + SETTLE_SECONDS
    lock = threading.Lock()

    def until_ok(purchase: Purchase) -> None:
        while True:
            reply = _send(stack, purchase, "notify")
            status = reply.status if reply is not None else 0
            with lock:
                result.settle_deliveries += 1
                result.settle_statuses[f"notify {status or 'no answer'}"] += 1
                if reply is not None and status == 503:
                    result.not_yet[f"settle: {_detail(reply)}"] += 1
            if status == 200:
                return
            if status != 503 or time.monotonic() > deadline:
                with lock:
                    result.failures.append(
                        f"settle: notify of Hyp transaction {purchase.hyp_id} (payment {purchase.payment_id})"
                        f" answered {status or 'nothing'} after the chaos stopped"
                        + (" (gave up waiting)" if status == 503 else "")
                    )
                return
            time.sleep(0.5)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(until_ok, [p for p in purchases if p.fate != "unpaid"]))
    if any(f.startswith("settle:") for f in result.failures):
        result.failures.append(f"settle: the database's sessions then: {_sessions(stack)}")
    cleanup = http(f"{stack.base}/_local/schedules/CleanupFunction", "POST")
    if cleanup.status != 200:
        result.failures.append(f"settle: the cleanup run answered {cleanup.status}")


# -- 4. invariants -------------------------------------------------------------------------------


def _check(stack: Stack, purchases: list[Purchase], result: ChaosResult) -> None:
    fail = result.failures.append
    listing = http(f"{_sim_base(stack)}/_sim/transactions").json
    simulated = listing["transactions"]
    result.verify_calls = int(listing["calls"].get("VERIFY", 0))
    by_order: dict[str, list[dict[str, Any]]] = {}
    for t in simulated:
        by_order.setdefault(t["order"], []).append(t)
    ours = {p.payment_id: p for p in purchases}
    ids = list(ours)
    payments = {
        pid: (status, txn)
        for pid, status, txn in _rows(
            stack,
            "SELECT id::text, status, hypay_transaction_id FROM public.payments WHERE id::text = ANY(:ids)",
            ids,
        )
    }
    grants: dict[str, int] = Counter()
    for pid, n in _rows(
        stack,
        "SELECT payment_id::text, count(*) FROM public.credit_transactions WHERE type = 'purchase'"
        " AND payment_id::text = ANY(:ids) GROUP BY payment_id",
        ids,
    ):
        grants[pid] = int(n)
    journal: dict[str, list[tuple[str, str, bool]]] = {}
    for hyp_id, pid, decision, verified in _rows(
        stack,
        "SELECT hypay_id, payment_id::text, decision, verified FROM public.hypay_transactions"
        " WHERE payment_id::text = ANY(:ids)",
        ids,
    ):
        journal.setdefault(pid, []).append((hyp_id, decision, bool(verified)))

    for pid, purchase in ours.items():
        status, txn = payments.get(pid, (None, None))
        charged = [t for t in by_order.get(pid, []) if t["ccode"] == 0]
        refused = [t for t in by_order.get(pid, []) if t["ccode"] != 0]
        rows = journal.get(pid, [])
        where = f"payment {pid} ({purchase.fate}, Hyp transaction {purchase.hyp_id})"
        if len(charged) + len(refused) != (0 if purchase.fate == "unpaid" else 1):
            fail(f"{where}: the simulator holds {len(charged) + len(refused)} transactions for it")
        journaled = {hyp_id for hyp_id, _, _ in rows}
        missing = {t["id"] for t in charged + refused} - journaled
        if missing:
            fail(f"{where}: Hyp transaction(s) {sorted(missing)} have no journal row")
        if journaled - {t["id"] for t in charged + refused}:
            fail(f"{where}: journal rows {sorted(journaled)} for transactions Hyp does not know")
        if any(not verified or decision == "unverified" for _, decision, verified in rows):
            fail(f"{where}: journal rows still unverified after every notify got a 200: {rows}")
        if charged:
            if status == "completed":
                result.completed += 1
                if txn != charged[0]["id"]:
                    fail(f"{where}: completed by {txn}, not by the transaction Hyp charged")
                if grants[pid] != 1:
                    fail(f"{where}: completed with {grants[pid]} purchase grants")
                if [d for _, d, _ in rows] != ["granted"]:
                    fail(f"{where}: completed, journal decisions {[d for _, d, _ in rows]}")
            elif status == "needs_review":
                result.review += 1
                if grants[pid]:
                    fail(f"{where}: in review with {grants[pid]} purchase grants")
            else:
                fail(f"{where}: Hyp charged it, the payment is {status}")
        elif refused:
            result.declined += 1
            if status != "failed" or grants[pid]:
                fail(f"{where}: Hyp declined it, the payment is {status} with {grants[pid]} grants")
            if [d for _, d, _ in rows] != ["declined"]:
                fail(f"{where}: declined, journal decisions {[d for _, d, _ in rows]}")
        else:
            result.unpaid += 1
            if status != "pending" or grants[pid] or rows:
                fail(f"{where}: never paid, the payment is {status}, {grants[pid]} grants, {len(rows)} journal rows")

    # Balances: what the profile says = the sum of its grants = the packs Hyp charged it for (completed ones).
    users = sorted({p.user for p in purchases})
    balances = dict(_rows(stack, "SELECT id::text, credits FROM public.profiles WHERE id::text = ANY(:ids)", users))
    granted = dict(
        _rows(
            stack,
            "SELECT user_id::text, COALESCE(sum(amount), 0) FROM public.credit_transactions"
            " WHERE user_id::text = ANY(:ids) GROUP BY user_id",
            users,
        )
    )
    for user in users:
        paid_for = sum(
            p.credits for p in purchases if p.user == user and payments.get(p.payment_id, ("", ""))[0] == "completed"
        )
        balance, total = int(balances.get(user, 0)), int(granted.get(user, 0))
        if not balance == total == paid_for:
            fail(f"user {user}: balance {balance}, grants {total}, packs completed {paid_for}")

    # Hyp's side: every transaction the simulator made for our payments is journaled (checked above per
    # payment); nothing journaled for them that Hyp never made (above); no callback left in progress.
    [[in_progress]] = stack.sql(
        "SELECT count(*) FROM public.idempotency_keys WHERE key LIKE 'hypay_callback#%' AND status = 'pending'"
    )
    if in_progress:
        fail(f"{in_progress} callback idempotency records still in progress after the settle")
    [[kept]] = _rows(
        stack, "SELECT count(*) FROM public.hypay_unverified_callbacks WHERE payment_id::text = ANY(:ids)", ids
    )
    result.unverified_callbacks_kept = int(kept)


def _rows(stack: Stack, statement: str, ids: list[str]) -> list[list[Any]]:
    """`statement` with `:ids` bound to a text array (the proof's superuser connection)."""
    array = "ARRAY[" + ",".join(bind(":v", v=i) for i in ids) + "]::text[]" if ids else "ARRAY[]::text[]"
    return stack.sql(statement.replace(":ids", array))


__all__ = ["SETTINGS", "ChaosResult", "run"]
