"""Saved cards and refunds under faults: many saved-card charges and refunds while Hyp's answers are lost.

`run(stack, rounds, seed)`: `rounds` rounds, eight at a time, each a new user who

1. buys a pack on Hyp's page asking to keep the card (`save_card`), pays it on the simulator like a browser,
   and has the redirect and Hyp's notify delivered (sometimes both at once, or the notify twice) until the
   notify gets its 200, while Hyp's getToken fails or loses its answer, and in turn the database connections
   are terminated, or a callback worker is killed during the grant or while Hyp is asked for the card's token;
2. charges the saved card 2 to 4 times at once (`POST /payments` with `saved_card`, each its own Idempotency-Key,
   sometimes sent 2-3 times at once with the same key), while Hyp's `soft` answer is lost after the charge
   (`lost`, `drop`, `cut` short), fails (`http500`, `html`), hangs past the client's timeout, is slow, or is a
   chosen CCode (4 declined, 999 communication error, 902 our terminal refused, 425 duplicate);
3. refunds the first payment (alongside the charges) and/or some charged ones (`POST /admin/payments/{id}/refund`):
   all of it (a same-day `CancelTrans`), part of it, part then the rest, two different keys racing for more
   than was paid, or the same key sent at once, while `zikoyAPI` / `CancelTrans` fail the same ways (and
   CCode 920: not cancellable, 901: this terminal may not cancel).

Around the charges and refunds: the functions' database connections terminated (once, or again and again for
half a second) while Hyp is asked, or a worker of the function serving the call SIGKILLed once the simulator
has the request (its answer slowed, the proof waits for the simulator to count the call): Hyp does the work,
the answer reaches no one. Each round's first calls get every kind of fault in turn, the rest at random. Every
client retries like a web app or an operator: 503, 429, 409 with Retry-After (in progress), a 202 "pending"
(the answer is being stored) and API Gateway's 502 again with the same key until a final answer (201, 402, 202
being confirmed, 409, 422, 502 refused by Hyp); then, the faults cleared, whatever is still open (a key, a
notify) is sent again until it has one.

What may be answered: no 500 (nor 504, nor no answer) anywhere; API Gateway's 502 only for a request in flight
while a worker of its function was killed; our failures are "not yet" (503, 409, 202), never "rejected" (a 502
problem only when Hyp refused a refund; a charge's final answer is 201, 402, 202, 409 no saved card, or 409 another
charge of the user unsettled: a user's card is charged by one payment at a time, so of the charges sent at once one
goes to Hyp and the others are refused, as are the user's later ones while a charge's answer is lost).

Invariants, from Hyp's side (`GET /_sim/transactions`: transactions and reversals) against ours (the tables as
the superuser, `GET /admin/review`):
- one payment per Idempotency-Key, and Hyp charged each saved-card payment (its Order) at most once;
- every transaction Hyp approved has its journal row and its payment completed by it with exactly one
  purchase grant, or is in the review queue (its journal row, or its payment when the answer never came);
  no completed payment without Hyp's approved transaction of its amount;
- each user's balance is the sum of their credit rows; a purchase grant at most once per payment;
- the answers agree with the tables (201 completed, 402 failed and not charged, 202 in review, a refused
  request wrote nothing, a 409 "no saved card" only for a user without one; a 409 "another charge unsettled" asked
  Hyp nothing, and wrote at most a pending payment no charge was marked on, when refused at its mark);
- refunds: never more than paid, at Hyp nor reserved in our table; every reversal Hyp made is a succeeded
  `refunds` row (its Id, or the cancellation) or covered by one whose outcome is unknown and in the review
  queue; no succeeded row without its reversal at Hyp; so no refund key reached Hyp twice;
- no card number, KEY, PassP or card token in any answer or in the functions' logs.
A buyer who asked to keep the card, paid, and whose card was not kept is counted by cause (issue 15 item 6).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import ROUND_UP, Decimal
from typing import Any

from ops.hypay_simulator import APPROVING_CARD, PUBLIC_TEST_TERMINAL_KEY, PUBLIC_TEST_TERMINAL_PASSP
from payments.adapters.db import Database
from payments.errors import DatabaseUnavailable
from payments.settings import DatabaseSettings
from proof.stack import Reply, Stack, http

SETTINGS = {"CREATE_PAYMENT_RATE_LIMIT": "100000", "HYPAY_TIMEOUT": "2", "HYPAY_BUDGET": "5"}
"""What the stack should be started with for this part (`stack(settings=SETTINGS)`): no rate limit in the way,
and a short Hyp timeout so that a hang costs seconds. Without them the part still runs (slower hangs; the
users' rate-limit windows are cleared as the superuser when a 429 comes, which is setup, not under test)."""

CREATE = "CreatePaymentFunction"
ADMIN = "AdminFunction"
CALLBACK = "HypayCallbackFunction"
KILL_GRACE_SECONDS = 2.0  # a request sent just after a kill may still land in the dying pool
OP_SECONDS = 45.0  # one call's retries: a killed worker's in-progress record holds its key for the function's 20 s
SETTLE_SECONDS = 60.0
CONCURRENCY = 8  # rounds at a time
LOCAL_502 = b'{"message":"Internal Server Error"}'
SOFT_CCODES = (4, 999, 902, 425)
REFUND_CCODES = (999, 902, 33, 4)
CANCEL_CCODES = (920, 901, 999, 902)
HYP_FAULTS = ("lost", "drop", "cut", "http500", "html", "hang", "latency", "ccode")
SIDES = ("kill", "terminate", "flap")  # what happens on our side while Hyp is asked
_TOKENISH = re.compile(r"(?<!\d)4\d{18}(?!\d)")  # the simulator's card tokens: 19 digits starting with 4


# -- the result ------------------------------------------------------------------------------------


@dataclass
class FlowsResult:
    """Counts of a run and its failures (each a short reproducible description: no card data, no secrets)."""

    seed: int
    rounds: int = 0
    charges: int = 0  # saved-card charge keys
    refunds: int = 0  # refund keys
    requests: Counter[str] = field(default_factory=Counter)  # "charge 201", "refund 503", "notify 200"
    faults: Counter[str] = field(default_factory=Counter)  # "soft lost", "database terminate", "kill AdminFunction"
    outcomes: Counter[str] = field(default_factory=Counter)  # each key's final answer, in words
    hyp: Counter[str] = field(default_factory=Counter)  # what the simulator did for the run's payments
    expected_502: int = 0
    settled_late: int = 0  # keys still open after their retries, answered in the settle pass
    cards_not_kept: Counter[str] = field(default_factory=Counter)  # issue 15 item 6, by cause
    elapsed: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def counts(self) -> dict[str, Any]:
        """What `make prove`'s report tabulates."""
        return {
            "seed": self.seed,
            "rounds": self.rounds,
            "saved-card charge keys": self.charges,
            "refund keys": self.refunds,
            "faults": dict(sorted(self.faults.items())),
            "answers": dict(sorted(self.requests.items())),
            "502s while a worker was killed": self.expected_502,
            "outcomes": dict(sorted(self.outcomes.items())),
            "at Hyp": dict(sorted(self.hyp.items())),
            "keys answered only in the settle pass": self.settled_late,
            "cards asked to keep but not kept (issue 15 item 6)": dict(self.cards_not_kept) or "none",
            "seconds": {k: round(v, 1) for k, v in self.elapsed.items()},
        }

    def summary(self) -> str:
        lines = [
            f"flows (seed {self.seed}): {self.rounds} rounds, {self.charges} saved-card charges, {self.refunds}"
            f" refunds: {'OK' if self.ok else f'{len(self.failures)} FAILURES'}"
        ]
        for name, value in self.counts().items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
            lines.append(f"  {name}: {value}")
        lines += [f"  FAILURE: {f}" for f in self.failures[:60]]
        if len(self.failures) > 60:
            lines.append(f"  ... and {len(self.failures) - 60} more")
        return "\n".join(lines)


@dataclass
class _Keyed:
    """One Idempotency-Key's request (a charge or a refund) and every answer it got."""

    what: str  # first (the page payment keeping the card) | charge | refund
    round: int
    user: str
    key: str
    path: str
    body: dict[str, Any]
    statuses: list[int] = field(default_factory=list)
    payment_ids: set[str] = field(default_factory=set)
    final: Reply | None = None  # the last final answer (None: never got one)
    finals: list[int] = field(default_factory=list)  # the final answer of each copy sent
    faults: list[str] = field(default_factory=list)

    def describe(self) -> str:
        body = {k: v for k, v in self.body.items() if k != "reason"}
        faults = f"; faults {', '.join(self.faults)}" if self.faults else ""
        return f"round {self.round} {self.what} POST {self.path} {json.dumps(body)} key {self.key}{faults}"


@dataclass(frozen=True)
class _Plan:
    """A fault a call must get: one of Hyp's (`kind`), or on our side while Hyp is asked (`side`)."""

    kind: str | None = None
    side: str | None = None


@dataclass
class _Paid:
    payment_id: str
    amount: Decimal


_DEFERRED = _Paid("", Decimal(0))  # the first payment's notify did not land during the round


# -- plumbing: output, HTTP with judging, chaos --------------------------------------------------


class _Output:
    """What `make run` printed during the part (the functions log to it; `proof.stack` keeps reading it into
    `run.lines`, so no worker ever blocks on a full pipe): the lines where a function raised, and anything
    shaped like a secret, for the checks."""

    def __init__(self, stack: Stack) -> None:
        self._lines = stack.run.lines
        if getattr(stack.run, "_reader", None) is None:
            stack.run.drain()
        self._start = len(self._lines)

    def _scan(self) -> tuple[list[str], list[str]]:
        unhandled: list[str] = []
        suspect: list[str] = []  # token-shaped numbers and the terminal's secrets seen in the logs
        for line in self._lines[self._start :]:
            if "] unhandled " in line:
                unhandled.append(line.strip()[:200])
            suspect += _TOKENISH.findall(line)
            if (
                APPROVING_CARD in line
                or PUBLIC_TEST_TERMINAL_KEY in line
                or f"PassP={PUBLIC_TEST_TERMINAL_PASSP}" in line
            ):
                suspect.append("<a card number, KEY or PassP>")
        return unhandled, suspect

    @property
    def unhandled(self) -> list[str]:
        return self._scan()[0]

    @property
    def suspect(self) -> list[str]:
        return self._scan()[1]


class _Chaos:
    """Faults at the simulator, database terminations and worker kills, each counted; remembers the kills."""

    def __init__(self, stack: Stack, result: FlowsResult, lock: threading.Lock) -> None:
        self.stack = stack
        self.result = result
        self.lock = lock
        self.sim = stack.simulator.removesuffix("/").removesuffix("/p")
        self.kills: list[tuple[str, float]] = []
        self.errors: list[str] = []
        self._db = Database.from_settings(DatabaseSettings(DATABASE_URL=stack.database_url))
        self._db_lock = threading.Lock()
        timeout = float(getattr(stack.run, "env", {}).get("HYPAY_TIMEOUT", "6"))
        self.hang_seconds = round(timeout + 0.5, 2)  # past the client's timeout: the answer never comes in time

    def close(self) -> None:
        self._db.close()

    def _count(self, name: str) -> None:
        with self.lock:
            self.result.faults[name] += 1

    def fault(
        self, action: str, kind: str, *, ccode: int | None = None, seconds: float = 0.5, counted: bool = True
    ) -> str:
        """One call of Hyp's `action` fails as `kind` (`counted` False: a latency placed only to time a kill)."""
        rule: dict[str, Any] = {"action": action, "kind": kind, "times": 1}
        if kind == "hang":
            rule["seconds"] = self.hang_seconds
        if kind == "latency":
            rule["seconds"] = seconds
        if kind == "ccode":
            rule["ccode"] = ccode
        reply = http(f"{self.sim}/_sim/faults", "POST", json.dumps(rule).encode())
        name = f"{action} {kind}" + (f" {ccode}" if kind == "ccode" else "")
        if reply.status != 204:
            self.errors.append(f"the simulator refused the fault {rule}: {reply.status}")
        elif counted:
            self._count(name)
        return name

    def clear(self) -> None:
        http(f"{self.sim}/_sim/faults", "DELETE")

    def terminate(self, *, flap: bool = False) -> str:
        """Every database connection but this one (the functions', and the proof's reads, which send again);
        `flap`: again and again for half a second."""
        until = time.monotonic() + (0.5 if flap else 0)
        while True:
            with self._db_lock:
                self._db.run(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                    " AND datname = current_database()"
                )
            if time.monotonic() >= until:
                break
            time.sleep(0.03)
        name = "database terminations for 0.5 s" if flap else "database terminate"
        self._count(name)
        return name

    def kill(self, function: str) -> str:
        """SIGKILL a live worker of `function` (its in-flight invocations answer 502, the pool is replaced)."""
        deadline = time.monotonic() + 2
        pids: list[int] = []
        while not pids and time.monotonic() < deadline:
            pids = (http(f"{self.stack.base}/_local/workers").json or {}).get(function) or []
            if not pids:
                time.sleep(0.05)
        if not pids:
            return f"no {function} worker to kill"
        with self.lock:
            self.kills.append((function, time.monotonic()))
        try:
            os.kill(random.choice(pids), signal.SIGKILL)
        except ProcessLookupError:
            return f"{function} worker already gone"
        self._count(f"kill {function}")
        return f"kill {function}"

    def calls(self, action: str) -> int:
        """How many times Hyp's `action` has been asked (answered or not)."""
        return int((http(f"{self.sim}/_sim/transactions").json or {}).get("calls", {}).get(action, 0))

    def kill_when_asked(self, function: str, action: str, asked_before: int) -> str:
        """Kill a worker of `function` once Hyp has been asked `action` again (its answer slowed by a latency
        armed with it), so that the kill lands after Hyp got the request: the work is done at Hyp, the answer
        reaches no one. Gives up waiting after 5 s (the call never came) and kills anyway."""
        deadline = time.monotonic() + 5
        while self.calls(action) <= asked_before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
        return self.kill(function)

    def killed_during(self, function: str, start: float, end: float) -> bool:
        with self.lock:
            return any(
                f == function and start - KILL_GRACE_SECONDS <= t <= end + KILL_GRACE_SECONDS for f, t in self.kills
            )


def _function_of(path: str) -> str:
    if path.startswith("/admin/"):
        return ADMIN
    if path.startswith("/hypay/"):
        return CALLBACK
    return CREATE


def _json(reply: Reply | None) -> dict[str, Any]:
    """The answer's JSON object, or {} (no answer, no body, not JSON, not an object)."""
    try:
        value = reply.json if reply is not None else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _is_gateway_502(reply: Reply | None) -> bool:
    """API Gateway's own 502 (the execution environment died), not a problem answer of ours."""
    return reply is not None and reply.status == 502 and reply.body.strip() == LOCAL_502


class _Client:
    """HTTP to the local API: every answer counted and judged against what may be answered at all."""

    def __init__(self, stack: Stack, chaos: _Chaos, result: FlowsResult, lock: threading.Lock) -> None:
        self.stack = stack
        self.chaos = chaos
        self.result = result
        self.lock = lock
        self.bodies: list[bytes] = []

    def send(
        self, what: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Reply | None:
        start = time.monotonic()
        try:
            reply: Reply | None = http(f"{self.stack.base}{path}", method, body, headers, timeout=60)
        except OSError:  # refused, reset or timed out: the local API owes an answer
            reply = None
        end = time.monotonic()
        status = reply.status if reply is not None else 0
        failure = None
        expected_502 = False
        where = f"{what} {method} {path.split('?')[0]}" + (
            f" key {headers['Idempotency-Key']}" if headers and "Idempotency-Key" in headers else ""
        )
        if reply is None:
            failure = f"{where}: no answer (connection refused, reset or timed out)"
        elif _is_gateway_502(reply):
            expected_502 = self.chaos.killed_during(_function_of(path), start, end)
            if not expected_502:
                failure = f"{where}: API Gateway's 502 with no worker of {_function_of(path)} killed"
        elif status >= 500 and status not in (502, 503):
            failure = f"{where}: answered {status} {reply.body[:160]!r}"
        with self.lock:
            self.result.requests[f"{what} {status or 'no answer'}"] += 1
            self.result.expected_502 += expected_502
            if reply is not None:
                self.bodies.append(reply.body)
            if failure:
                self.result.failures.append(failure)
        return reply


# -- the run -------------------------------------------------------------------------------------


class _Run:
    def __init__(self, stack: Stack, seed: int, result: FlowsResult) -> None:
        self.stack = stack
        self.seed = seed
        self.result = result
        self.lock = threading.Lock()
        self.sql_lock = threading.Lock()
        self.chaos = _Chaos(stack, result, self.lock)
        self.client = _Client(stack, self.chaos, result, self.lock)
        self.users: list[str] = []
        self.tokens: dict[str, str] = {}
        self.keyed: list[_Keyed] = []
        self.first: dict[str, str] = {}  # user -> their first (page) payment
        self.deferred: list[tuple[int, str, str, str]] = []  # (round, user, payment, callback query): notify later
        self.packs = {
            pid: Decimal(price)
            for pid, price in self.sql("SELECT id::text, price::text FROM public.credit_packs WHERE is_active")
        }

    def sql(self, statement: str, **params: Any) -> list[list[Any]]:
        return self._own(lambda: self.stack.sql(statement, **params))

    def _own[T](self, work: Callable[[], T]) -> T:
        """The proof's own statement, sent again while the chaos terminates its connection too (setup and
        reading, not what is under test)."""
        for attempt in range(50):
            try:
                with self.sql_lock:
                    return work()
            except DatabaseUnavailable:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def fail(self, text: str) -> None:
        with self.lock:
            self.result.failures.append(text)

    def outcome(self, text: str) -> None:
        with self.lock:
            self.result.outcomes[text] += 1

    # -- one keyed request, retried like a client ------------------------------------------------

    def _headers(self, keyed: _Keyed) -> dict[str, str]:
        token = self.stack.admin_token if keyed.path.startswith("/admin/") else self.tokens[keyed.user]
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Idempotency-Key": keyed.key}

    @staticmethod
    def _final(keyed: _Keyed, reply: Reply | None) -> bool:
        """Whether a client stops retrying on this answer (a 500 stops too: it is a failure already)."""
        if reply is None or _is_gateway_502(reply) or reply.status in (429, 503, 504):
            return False
        if reply.status == 409:
            return "retry-after" not in reply.headers  # in progress: later; a plain conflict is an answer
        if reply.status == 202:
            return _json(reply).get("status") != "pending"  # pending: the answer is still being stored
        return True

    def _until_final(self, keyed: _Keyed, deadline: float) -> Reply | None:
        body = json.dumps(keyed.body).encode()
        reply = None
        while True:
            reply = self.client.send(keyed.what, "POST", keyed.path, body, self._headers(keyed))
            with self.lock:
                keyed.statuses.append(reply.status if reply is not None else 0)
                named = _json(reply).get("payment_id") if reply is not None and reply.status < 500 else None
                if named:
                    keyed.payment_ids.add(str(named))
            if self._final(keyed, reply):
                return reply
            if reply is not None and reply.status == 429:  # setup, not under test: the default rate limit
                self.sql("DELETE FROM public.rate_limits WHERE bucket = :b", b=f"create_payment:{keyed.user}")
            if time.monotonic() > deadline:
                return None
            wait = 0.3
            if reply is not None and reply.headers.get("retry-after", "").isdigit():
                wait = min(float(reply.headers["retry-after"]), 2.0)
            time.sleep(wait)

    def keyed_call(
        self, keyed: _Keyed, *, copies: int = 1, during: Callable[[], None] | None = None, seconds: float = OP_SECONDS
    ) -> Reply | None:
        """`copies` identical requests at once, each retried until a final answer; `during` runs alongside."""
        with self.lock:
            self.keyed.append(keyed)
        deadline = time.monotonic() + seconds
        with ThreadPoolExecutor(max_workers=copies + 1) as pool:
            side = pool.submit(during) if during else None
            answers = list(pool.map(lambda _: self._until_final(keyed, deadline), range(copies)))
            if side is not None:
                side.result()
        final = [a for a in answers if a is not None]
        with self.lock:
            keyed.finals = [a.status for a in final]
            keyed.final = final[-1] if len(final) == len(answers) else None
        if len({a.status for a in final}) > 1:
            self.fail(f"{keyed.describe()}: copies of one request got different final answers {keyed.finals}")
        return keyed.final

    def _timed(self, action: Callable[[], str], *, after: float) -> Callable[[], None]:
        def run() -> None:
            time.sleep(after)
            try:
                action()
            except Exception as exc:  # the proof's own tooling failed: reported
                self.chaos.errors.append(f"chaos action failed: {type(exc).__name__}: {exc}")

        return run

    # -- a round -------------------------------------------------------------------------------

    def round(self, n: int) -> None:
        started = time.monotonic()
        try:
            self._round(n)
        finally:
            with self.lock:
                slowest = self.result.elapsed.get("slowest round", 0.0)
                self.result.elapsed["slowest round"] = max(slowest, time.monotonic() - started)

    def _round(self, n: int) -> None:
        rng = random.Random(f"{self.seed}:{n}")
        user = self._own(self.stack.new_user)
        with self.lock:
            self.users.append(user)
            self.tokens[user] = self.stack.token(user)
        first = self._first_payment(rng, n, user)
        if first is _DEFERRED:
            return
        # Each round's first two charges and its first refund call get faults in turn (so that even a few rounds
        # see every kind of Hyp fault and of our side's); the others at random.
        charge_plans = [_Plan(kind=HYP_FAULTS[n % len(HYP_FAULTS)]), _Plan(side=SIDES[n % len(SIDES)])]
        refund_plans = [_Plan(kind=HYP_FAULTS[(n + 3) % len(HYP_FAULTS)], side=SIDES[(n + 1) % len(SIDES)])]
        charges = rng.randint(2, 4)
        refund_first = first is not None and rng.random() < 0.5
        # The charges at once (the buyer in several tabs), and the first payment's refund alongside them.
        with ThreadPoolExecutor(max_workers=charges + 1) as pool:
            started = [
                pool.submit(
                    self._charge,
                    random.Random(f"{self.seed}:{n}:charge {j}"),
                    n,
                    user,
                    j,
                    charge_plans[j] if j < len(charge_plans) else None,
                )
                for j in range(charges)
            ]
            if refund_first and first is not None:
                pool.submit(self._refunds, random.Random(f"{self.seed}:{n}:refund"), n, user, first, refund_plans)
            paid = [charged for charged in (s.result() for s in started) if charged is not None]
        later = rng.sample(paid, k=min(len(paid), rng.choice((0, 1) if refund_first else (1, 1, 2))))
        if not refund_first and not later and first is not None:
            later = [first]  # every round refunds something
        with ThreadPoolExecutor(max_workers=max(1, len(later))) as pool:
            for m, payment in enumerate(later):
                pool.submit(self._refunds, random.Random(f"{self.seed}:{n}:refund {m}"), n, user, payment, refund_plans)

    def _first_payment(self, rng: random.Random, n: int, user: str) -> _Paid | None:
        """Pay on Hyp's page, keeping the card; the callbacks delivered until Hyp's notify gets its 200."""
        pack = rng.choice(sorted(self.packs))
        keyed = _Keyed("first", n, user, str(uuid.uuid4()), "/payments", {"credit_pack_id": pack, "save_card": True})
        created = self.keyed_call(keyed)
        if created is None or created.status != 201:
            self.fail(f"{keyed.describe()}: answered {created.status if created else 'nothing final'}, not 201")
            return None
        payment_id = created.json["payment_id"]
        with self.lock:
            self.first[user] = payment_id
        query = self._pay(created.json["payment_url"], keyed)
        if query is None:
            return None
        # Our side while the callbacks are handled, in turn: nothing, a kill during the grant, a termination, half
        # a second of them, a kill while Hyp is asked for the card's token (after the grant committed), nothing.
        # (Kills land on rounds whose first charges and refund get none: a kill holds its key for 20 s.)
        side = (None, "kill", "terminate", "flap", "kill during getToken", None)[n % 6]
        actions: list[tuple[float, Callable[[], str]]] = []
        if side == "kill during getToken":
            asked = self.chaos.calls("getToken")
            self.chaos.fault("getToken", "latency", seconds=1.0, counted=False)
            actions.append((0.0, lambda: self.chaos.kill_when_asked(CALLBACK, "getToken", asked)))
        elif rng.random() < 0.5:  # armed before the delivery: the getToken that follows the grant takes it
            self.chaos.fault("getToken", rng.choice(HYP_FAULTS), ccode=902, seconds=round(rng.uniform(0.2, 1.0), 2))
        if side == "kill":
            actions.append((rng.uniform(0, 0.08), lambda: self.chaos.kill(CALLBACK)))
        if side in ("terminate", "flap"):
            actions.append((rng.uniform(0, 0.08), lambda: self.chaos.terminate(flap=side == "flap")))
        mode = rng.choice(("notify", "redirect", "both", "notify twice"))
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        sends: list[Callable[[], Reply | None]] = []
        if mode in ("redirect", "both"):
            sends.append(lambda: self.client.send("redirect", "GET", f"/hypay/return?{query}"))
        if mode in ("notify", "both", "notify twice"):
            sends.append(lambda: self.client.send("notify", "POST", "/hypay/notify", query.encode(), form))
        if mode == "notify twice":
            sends.append(sends[-1])
        with ThreadPoolExecutor(max_workers=len(sends) + len(actions)) as pool:
            during = [pool.submit(self._timed(action, after=delay)) for delay, action in actions]
            list(pool.map(lambda send: send(), sends))
            for done in during:
                done.result()
        # Hyp sends the notify again until it gets a 200.
        deadline = time.monotonic() + OP_SECONDS
        while True:
            reply = self.client.send("notify", "POST", "/hypay/notify", query.encode(), form)
            if reply is not None and reply.status == 200:
                break
            if reply is None or reply.status not in (502, 503):
                self.fail(f"round {n} notify of payment {payment_id}: {reply.status if reply else 'no answer'}")
                return None
            if time.monotonic() > deadline:
                # Still "not yet" (the other rounds' kills keep its callback in progress): Hyp keeps sending it;
                # the settle pass does, and this round ends here (no card to charge before it lands).
                with self.lock:
                    self.deferred.append((n, user, payment_id, query))
                self.outcome("first payment: notify answered only in the settle pass")
                return _DEFERRED
            time.sleep(0.5)
        state = self._status(user, payment_id)
        self.outcome(f"first payment {state}")
        if state != "completed":  # approved at Hyp, the amount right, its notify answered 200
            self.fail(f"{keyed.describe()}: paid, its notify answered 200, and the payment reads {state}")
            return None
        return _Paid(payment_id, self.packs[pack])

    def _pay(self, payment_url: str, keyed: _Keyed) -> str | None:
        """The buyer's browser on the simulator's page (Hyp's test card): the signed redirect's query."""
        query, problem = self.stack.pay(payment_url)
        if query is None:
            self.fail(f"{keyed.describe()}: {problem}")
        return query

    def _status(self, user: str, payment_id: str) -> str:
        """The payment's status as its owner reads it (again after a 502 or 503, as the web app polls)."""
        deadline = time.monotonic() + OP_SECONDS
        while True:
            reply = self.client.send(
                "status", "GET", f"/payments/{payment_id}", headers={"Authorization": f"Bearer {self.tokens[user]}"}
            )
            if reply is not None and reply.status == 200:
                return str(_json(reply).get("status"))
            if reply is None or reply.status not in (502, 503) or time.monotonic() > deadline:
                return f"unreadable ({reply.status if reply else 'no answer'})"
            time.sleep(0.3)

    def _charge(self, rng: random.Random, n: int, user: str, j: int, plan: _Plan | None) -> _Paid | None:
        pack = rng.choice(sorted(self.packs))
        keyed = _Keyed("charge", n, user, f"flows-{n}-{j}-{uuid.uuid4().hex[:8]}", "/payments", {})
        keyed.body = {"credit_pack_id": pack, "saved_card": True}
        with self.lock:
            self.result.charges += 1
        during = self._hyp_chaos(rng, keyed, ("soft",), CREATE, SOFT_CCODES, plan)
        final = self.keyed_call(keyed, copies=rng.choice((1, 1, 1, 2, 3)), during=during)
        words = _charge_words(final)
        self.outcome(f"charge {words}")
        if final is not None and final.status in (201, 202, 402) and rng.random() < 0.15:
            other = next(p for p in sorted(self.packs) if p != pack)
            self._reuse(keyed, {"credit_pack_id": other, "saved_card": True})
        if final is not None and final.status == 201 and _json(final).get("status") == "completed":
            return _Paid(str(_json(final)["payment_id"]), self.packs[pack])
        return None

    def _reuse(self, original: _Keyed, body: dict[str, Any]) -> None:
        """The same Idempotency-Key with another request (a client's bug), after the first got its stored final
        answer: 422, and nothing done (no second charge or refund at Hyp: the invariants count them)."""
        keyed = _Keyed("key reused", original.round, original.user, original.key, original.path, body)
        reply = self._until_final(keyed, time.monotonic() + OP_SECONDS)
        status = reply.status if reply is not None else "no final answer"
        self.outcome(f"{original.what} key reused with another request: {status}")
        if status != 422:
            self.fail(f"{keyed.describe()}: {status}, not 422 (the key's first request, {original.body}, was answered)")

    def _hyp_chaos(
        self,
        rng: random.Random,
        keyed: _Keyed,
        actions: tuple[str, ...],
        function: str,
        ccodes: tuple[int, ...],
        plan: _Plan | None,
    ) -> Callable[[], None] | None:
        """Arms a fault of Hyp's `actions` now (for the call about to be made) and returns what to do during it:
        a kill of `function`'s worker while Hyp is asked (Hyp's answer slowed so that the kill lands after Hyp
        got the request), or the database connections terminated while Hyp is asked. `plan` forces either."""
        kind = plan.kind if plan else (rng.choice(HYP_FAULTS) if rng.random() < 0.5 else None)
        if kind is not None:
            action = actions[0] if plan else rng.choice(actions)
            ccode = rng.choice(CANCEL_CCODES if action == "CancelTrans" else ccodes)
            keyed.faults.append(self.chaos.fault(action, kind, ccode=ccode, seconds=round(rng.uniform(0.2, 1.0), 2)))
        roll = rng.random()
        side = plan.side if plan else ("kill" if roll < 0.15 else rng.choice(SIDES[1:]) if roll < 0.3 else None)
        if side == "kill":
            asked = self.chaos.calls(actions[-1])
            for action in actions:
                self.chaos.fault(action, "latency", seconds=0.8, counted=False)
            keyed.faults.append(f"kill {function} while Hyp is asked")
            return self._timed(lambda: self.chaos.kill_when_asked(function, actions[-1], asked), after=0.0)
        if side is not None:
            flap = side == "flap"
            for action in actions:
                self.chaos.fault(action, "latency", seconds=0.5, counted=False)
            keyed.faults.append("database " + ("terminations for 0.5 s" if flap else "terminate") + " during")
            return self._timed(lambda: self.chaos.terminate(flap=flap), after=rng.uniform(0.1, 0.45))
        return None

    def _refunds(self, rng: random.Random, n: int, user: str, paid: _Paid, plans: list[_Plan]) -> None:
        path = f"/admin/payments/{paid.payment_id}/refund"
        reason = f"flows proof round {n}"
        scenario = rng.choice(("full", "partial", "partial then rest", "race", "same key at once"))
        cents = int(paid.amount * 100)

        def ask(amount: Decimal | None, copies: int = 1) -> _Keyed:
            body: dict[str, Any] = {"reason": reason}
            if amount is not None:
                body["amount"] = f"{amount:.2f}"
            keyed = _Keyed("refund", n, user, f"refund-{n}-{uuid.uuid4().hex[:12]}", path, body)
            with self.lock:
                self.result.refunds += 1
            actions = ("CancelTrans", "zikoyAPI") if amount is None else ("zikoyAPI",)
            with self.lock:
                plan = plans.pop(0) if plans else None
            during = self._hyp_chaos(rng, keyed, actions, ADMIN, REFUND_CCODES, plan)
            self.keyed_call(keyed, copies=copies, during=during)
            self.outcome(f"refund {_refund_words(keyed.final)}")
            if keyed.final is not None and keyed.final.status in (201, 202, 502) and rng.random() < 0.15:
                self._reuse(keyed, {"reason": reason, "amount": "1.00" if amount is None else None})
            return keyed

        def part() -> Decimal:
            return Decimal(rng.randint(100, max(100, cents - 1))) / 100 if cents > 100 else Decimal("0.50")

        if scenario == "full":
            ask(None)
        elif scenario == "partial":
            ask(part())
        elif scenario == "partial then rest":
            ask(part())
            ask(None)
        elif scenario == "same key at once":
            ask(rng.choice((None, part())), copies=rng.choice((2, 3)))
        else:  # two keys at once, each for 60%: together more than was paid
            share = (paid.amount * Decimal("0.6")).quantize(Decimal("0.01"), rounding=ROUND_UP)
            with ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(lambda _: ask(share), range(2)))

    # -- the settle pass ----------------------------------------------------------------------------

    def settle(self) -> None:
        """The faults cleared: every key without a final answer (or "pending") is sent again until it has one."""
        self.chaos.clear()
        open_ = [k for k in self.keyed if k.final is None]
        with self.lock:
            self.result.settled_late = len(open_) + len(self.deferred)

        def notify(deferred: tuple[int, str, str, str]) -> None:
            n, user, payment_id, query = deferred
            form = {"Content-Type": "application/x-www-form-urlencoded"}
            deadline = time.monotonic() + SETTLE_SECONDS
            reply = self.client.send("notify", "POST", "/hypay/notify", query.encode(), form)
            while (reply is None or reply.status != 200) and time.monotonic() < deadline:
                time.sleep(0.5)
                reply = self.client.send("notify", "POST", "/hypay/notify", query.encode(), form)
            state = self._status(user, payment_id)
            if reply is None or reply.status != 200 or state != "completed":
                status = reply.status if reply else "no answer"
                self.fail(f"round {n} notify of payment {payment_id}: {status} after the faults stopped ({state})")

        def again(keyed: _Keyed) -> None:
            keyed.final = self._until_final(keyed, time.monotonic() + SETTLE_SECONDS)
            if keyed.final is None:
                self.fail(f"{keyed.describe()}: no final answer even after the faults stopped: {keyed.statuses}")

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(again, open_))
            list(pool.map(notify, self.deferred))


def _charge_words(final: Reply | None) -> str:
    if final is None:
        return "no final answer yet"
    body = _json(final)
    return {
        201: f"201 {body.get('status')}",
        202: f"202 being confirmed ({body.get('status')})",
        402: "402 declined",
        409: "409 another charge unsettled" if _another_charge(final) else "409 no saved card",
    }.get(final.status, f"{final.status}")


def _another_charge(reply: Reply) -> bool:
    """The final 409 of a saved-card charge asked while another charge of the user had no stored outcome."""
    return reply.status == 409 and b"another saved-card charge" in reply.body


def _refund_words(final: Reply | None) -> str:
    if final is None:
        return "no final answer yet"
    return {
        201: "201 succeeded",
        202: "202 outcome unknown (review)",
        422: "422 more than remains",
        409: "409 nothing refundable",
        502: "502 refused by Hyp",
    }.get(final.status, f"{final.status}")


# -- the invariants ----------------------------------------------------------------------------------


def _agorot(amount: str | Decimal) -> int:
    return int(Decimal(str(amount)) * 100)


class _Check:
    def __init__(self, run: _Run) -> None:
        self.run = run
        self.result = run.result
        self.fail = self.result.failures.append
        ids = ",".join(run.users)
        sim = http(f"{run.chaos.sim}/_sim/transactions").json
        self.rows = run.sql
        payments = self.rows(
            "SELECT id::text, user_id::text, status, amount::text, credits, hypay_transaction_id, idempotency_key,"
            " charge_attempt_id IS NOT NULL, save_card FROM public.payments"
            " WHERE user_id = ANY (string_to_array(:ids, ',')::uuid[])",
            ids=ids,
        )
        self.payments = {r[0]: r for r in payments}
        self.by_key = {r[6]: r[0] for r in payments}
        pids = ",".join(self.payments) or None
        self.transactions = [t for t in sim["transactions"] if t["order"] in self.payments]
        self.orders = {t["order"] for t in self.transactions}  # the payments Hyp was asked to charge
        originals = {t["id"] for t in self.transactions}
        self.reversals = [r for r in sim["reversals"] if r["original_id"] in originals]
        self.journal = {
            r[0]: r
            for r in self.rows(
                "SELECT hypay_id, payment_id::text, decision, ccode, amount::text, source"
                " FROM public.hypay_transactions WHERE payment_id = ANY (string_to_array(:ids, ',')::uuid[])",
                ids=pids,
            )
        }
        self.credit_rows = self.rows(
            "SELECT user_id::text, payment_id::text, type, amount FROM public.credit_transactions"
            " WHERE user_id = ANY (string_to_array(:ids, ',')::uuid[])",
            ids=ids,
        )
        self.balances = {
            r[0]: int(r[1])
            for r in self.rows(
                "SELECT id::text, credits FROM public.profiles WHERE id = ANY (string_to_array(:ids, ',')::uuid[])",
                ids=ids,
            )
        }
        self.refund_rows = self.rows(
            "SELECT id::text, payment_id::text, original_hypay_id, method, amount::text, status, hypay_refund_id,"
            " idempotency_key FROM public.refunds WHERE payment_id = ANY (string_to_array(:ids, ',')::uuid[])",
            ids=pids,
        )
        self.cards = {
            r[0]: r[1]
            for r in self.rows(
                "SELECT user_id::text, token FROM public.saved_cards"
                " WHERE user_id = ANY (string_to_array(:ids, ',')::uuid[])",
                ids=ids,
            )
        }
        self.queue = self._queue()

    def _queue(self) -> set[str]:
        """The review queue's item ids (p:<payment>, j:<hyp id>, r:<refund>), every page."""
        found: set[str] = set()
        after = ""
        headers = {"Authorization": f"Bearer {self.run.stack.admin_token}"}
        while True:
            reply = self.run.client.send("review", "GET", f"/admin/review?limit=200{after}", headers=headers)
            if reply is None or reply.status != 200:
                self.fail(f"GET /admin/review answered {reply.status if reply else 'nothing'}")
                return found
            found |= {item["id"] for item in reply.json["items"]}
            if not reply.json.get("next"):
                return found
            after = f"&after={reply.json['next']}"

    def all(self) -> None:
        self.hyp_counts()
        self.keys()
        self.charges_at_hyp()
        self.credits()
        self.answers()
        self.refunds()
        self.cards_kept()
        self.secrets()

    def hyp_counts(self) -> None:
        soft = {p for p, r in self.payments.items() if r[6] and self._saved_card_payment(p)}
        for t in self.transactions:
            kind = "saved-card charges" if t["order"] in soft else "page payments"
            self.result.hyp[f"{kind} {'approved' if t['ccode'] == 0 else 'declined'}"] += 1
        for r in self.reversals:
            self.result.hyp[{"refund": "refunds (zikoyAPI)", "cancel": "cancellations (CancelTrans)"}[r["kind"]]] += 1

    def _saved_card_payment(self, payment_id: str) -> bool:
        return payment_id not in self.run.first.values()

    def keys(self) -> None:
        """One payment per Idempotency-Key; every answer of a key names that payment; a refused request wrote
        nothing."""
        for keyed in self.run.keyed:
            if keyed.what == "refund":
                continue
            stored = self.by_key.get(f"api:{keyed.user}:{keyed.key}")
            if len(keyed.payment_ids) > 1 or (keyed.payment_ids and stored not in keyed.payment_ids):
                self.fail(f"{keyed.describe()}: answers named payments {sorted(keyed.payment_ids)}, stored {stored}")
            if keyed.final is not None and keyed.final.status == 409 and stored is not None:
                if _another_charge(keyed.final) and not self.payments[stored][7] and stored not in self.orders:
                    continue  # refused at its mark (another charge marked meanwhile): pending, Hyp never asked
                self.fail(f"{keyed.describe()}: refused with 409 but a payment {stored} was written")

    def charges_at_hyp(self) -> None:
        """At most one charge per saved-card payment; every approved transaction journaled and granted once, or
        in the review queue; no completed payment without the approved transaction that paid it."""
        by_order: dict[str, list[dict[str, Any]]] = {}
        for t in self.transactions:
            by_order.setdefault(t["order"], []).append(t)
        for pid, found in by_order.items():
            if self._saved_card_payment(pid) and len(found) > 1:
                self.fail(f"payment {pid}: Hyp charged the saved card {len(found)} times ({[t['id'] for t in found]})")
        refunded_in_full = self._refunded_in_full()
        for t in self.transactions:
            if t["ccode"] != 0:
                continue
            pid = t["order"]
            payment = self.payments[pid]
            status, paid_by = payment[2], payment[5]
            where = f"Hyp transaction {t['id']} ({t['amount']}, Order {pid}, payment {status})"
            entry = self.journal.get(t["id"])
            if entry is None:
                if status != "needs_review" or f"p:{pid}" not in self.queue:
                    self.fail(f"{where}: approved at Hyp, no journal row, and its payment is not in review")
                continue
            decision = entry[2]
            if decision == "granted":
                if status != "completed" or paid_by != t["id"]:
                    self.fail(f"{where}: journaled granted but the payment is {status} paid by {paid_by}")
            elif decision in ("review", "unverified", "unmatched"):
                if not ({f"j:{t['id']}", f"p:{pid}"} & self.queue) and t["id"] not in refunded_in_full:
                    self.fail(f"{where}: journaled {decision} but not in the review queue")
            else:
                self.fail(f"{where}: an approved transaction journaled {decision}")
        approved = {t["id"]: t for t in self.transactions if t["ccode"] == 0}
        charged = {t["order"] for t in approved.values()}
        for pid, payment in self.payments.items():
            if payment[2] == "needs_review" and self._saved_card_payment(pid):
                made = "charged" if pid in charged else "not charged"
                self.result.hyp[f"saved-card payments in review, {made} at Hyp"] += 1
            if payment[2] != "completed":
                continue
            paying = approved.get(payment[5] or "")
            if paying is None or paying["order"] != pid or _agorot(paying["amount"]) != _agorot(payment[3]):
                self.fail(f"payment {pid}: completed by {payment[5]}, which is not Hyp's approved charge of it")

    def _refunded_in_full(self) -> set[str]:
        done: Counter[str] = Counter()
        for r in self.refund_rows:
            if r[5] == "succeeded":
                done[r[2]] += _agorot(r[4])
        return {t["id"] for t in self.transactions if done[t["id"]] >= _agorot(t["amount"])}

    def credits(self) -> None:
        """Each balance is the sum of its credit rows; one purchase grant per completed payment, none otherwise."""
        sums: Counter[str] = Counter()
        grants: Counter[str] = Counter()
        for user, pid, kind, amount in self.credit_rows:
            sums[user] += int(amount)
            if kind == "purchase":
                grants[pid] += 1
        for user, balance in self.balances.items():
            if balance != sums[user]:
                self.fail(f"user {user}: balance {balance} but the credit rows add up to {sums[user]}")
        for pid, payment in self.payments.items():
            expected = 1 if payment[2] == "completed" else 0
            if grants[pid] != expected and not (payment[2] == "needs_review" and grants[pid] == 1):
                self.fail(f"payment {pid} ({payment[2]}): {grants[pid]} purchase grants")

    def answers(self) -> None:
        """The final answers agree with the tables."""
        charged = {t["order"] for t in self.transactions if t["ccode"] == 0}
        for keyed in self.run.keyed:
            final = keyed.final
            if keyed.what != "charge" or final is None:
                continue
            pid = self.by_key.get(f"api:{keyed.user}:{keyed.key}")
            status = self.payments[pid][2] if pid else None
            body = _json(final)
            if final.status == 201 and not (body.get("status") == "completed" == status):
                self.fail(f"{keyed.describe()}: 201 {body.get('status')} but the payment is {status}")
            elif final.status == 402 and (status != "failed" or pid in charged):
                self.fail(f"{keyed.describe()}: 402 but the payment is {status}, charged at Hyp: {pid in charged}")
            elif final.status == 202 and (status != "needs_review" or f"p:{pid}" not in self.queue):
                self.fail(f"{keyed.describe()}: 202 but the payment is {status} and not in the review queue")
            elif final.status == 409 and _another_charge(final):
                if pid is not None and (self.payments[pid][7] or pid in self.orders):
                    self.fail(f"{keyed.describe()}: 409 another charge unsettled, but its own payment was charged")
            elif final.status == 409 and keyed.user in self.cards:
                self.fail(f"{keyed.describe()}: 409 no saved card, but the user has one")
            elif final.status not in (201, 202, 402, 409):
                self.fail(f"{keyed.describe()}: final answer {final.status} {final.body[:160]!r}")

    def refunds(self) -> None:
        """Never more than paid; every reversal at Hyp recorded (or unknown and in review); none recorded that
        Hyp did not make; a refused request wrote nothing."""
        fail = self.fail
        paid = {t["id"]: _agorot(t["amount"]) for t in self.transactions if t["ccode"] == 0}
        at_hyp: dict[str, list[dict[str, Any]]] = {}
        for r in self.reversals:
            at_hyp.setdefault(r["original_id"], []).append(r)
        ours: dict[str, list[list[Any]]] = {}
        for row in self.refund_rows:
            ours.setdefault(row[2], []).append(row)
        for original in set(at_hyp) | set(ours):
            hyp = at_hyp.get(original, [])
            rows = ours.get(original, [])
            where = f"refunds of Hyp transaction {original}"
            moved = sum(_agorot(r["amount"]) for r in hyp)
            reserved = sum(_agorot(r[4]) for r in rows if r[5] in ("attempted", "succeeded", "unknown"))
            if moved > paid.get(original, 0) or reserved > paid.get(original, 0):
                fail(f"{where}: paid {paid.get(original, 0)} agorot, Hyp refunded {moved}, we reserved {reserved}")
            unmatched = list(hyp)
            for row in rows:
                if row[5] != "succeeded":
                    continue
                match = next(
                    (
                        r
                        for r in unmatched
                        if (r["kind"] == "refund" and r["id"] == row[6])
                        or (r["kind"] == "cancel" and row[3] == "cancel" and row[6] is None)
                    ),
                    None,
                )
                if match is None:
                    fail(f"{where}: refund {row[0]} succeeded ({row[3]} {row[4]}) but Hyp made no such reversal")
                else:
                    unmatched.remove(match)
            unknown = [row for row in rows if row[5] in ("unknown", "attempted")]
            for row in unknown:
                if row[5] == "attempted" or f"r:{row[0]}" not in self.queue:
                    fail(f"{where}: refund {row[0]} is {row[5]} and not in the review queue")
            for r in unmatched:  # made at Hyp, not recorded as succeeded: an unknown row of that amount covers it
                cover = next((row for row in unknown if _agorot(row[4]) == _agorot(r["amount"])), None)
                if cover is None:
                    fail(f"{where}: Hyp's {r['kind']} {r['id'] or ''} of {r['amount']} is recorded nowhere")
                else:
                    unknown.remove(cover)
                    self.result.hyp["refunds of unknown outcome, made at Hyp"] += 1
            self.result.hyp["refunds of unknown outcome, not made at Hyp"] += len(unknown)
        stored = {row[7] for row in self.refund_rows}
        for keyed in self.run.keyed:
            if keyed.what != "refund" or keyed.final is None:
                continue
            pid = keyed.path.split("/")[3]
            written = f"refund:{pid}:{keyed.key}" in stored
            if keyed.final.status in (404, 409, 422) and written:
                fail(f"{keyed.describe()}: refused with {keyed.final.status} but a refunds row was written")
            if keyed.final.status in (201, 202) and not written:
                fail(f"{keyed.describe()}: answered {keyed.final.status} without a refunds row")
            if keyed.final.status == 502 and _is_gateway_502(keyed.final):
                fail(f"{keyed.describe()}: a final 502 from API Gateway")
            if keyed.final.status not in (201, 202, 422, 502):
                fail(f"{keyed.describe()}: final answer {keyed.final.status} {keyed.final.body[:160]!r}")

    def cards_kept(self) -> None:
        """A buyer who asked to keep the card and paid: kept, or counted by cause (issue 15 item 6)."""
        tokened = {t["order"] for t in self.transactions if t["saved_card"]}
        for user, pid in self.run.first.items():
            payment = self.payments.get(pid)
            if payment is None or payment[2] != "completed" or user in self.cards:
                continue
            cause = "Hyp issued the token, not stored" if pid in tokened else "no token asked of Hyp (or it failed)"
            self.result.cards_not_kept[cause] += 1

    def secrets(self) -> None:
        tokens = set(self.cards.values())
        for body in self.run.client.bodies:
            text = body.decode("utf-8", "replace")
            if APPROVING_CARD in text or PUBLIC_TEST_TERMINAL_KEY in text or any(t in text for t in tokens):
                self.fail(f"an answer carries a card number, the terminal's KEY or a card token: {len(text)} chars")
                break
            if f"PassP={PUBLIC_TEST_TERMINAL_PASSP}" in text:
                self.fail("an answer carries the terminal's PassP")
                break


def run(stack: Stack, rounds: int, seed: int | None = None) -> FlowsResult:
    """The whole part: the rounds under faults, the settle pass, the invariants. See the module's docstring."""
    seed = random.randrange(2**32) if seed is None else seed
    result = FlowsResult(seed=seed, rounds=rounds)
    output = _Output(stack)
    started = time.monotonic()
    flows = _Run(stack, seed, result)
    try:
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            for done in [pool.submit(flows.round, n) for n in range(rounds)]:
                exc = done.exception()
                if exc is not None:
                    result.failures.append(f"a round of the proof itself failed: {type(exc).__name__}: {exc}")
        result.elapsed["rounds"] = time.monotonic() - started
        mark = time.monotonic()
        flows.settle()
        result.elapsed["settle"] = time.monotonic() - mark
        _Check(flows).all()
    finally:
        flows.chaos.clear()
        flows.chaos.close()
    result.failures += flows.chaos.errors
    result.failures += [f"the local API logged a function failure: {line}" for line in output.unhandled]
    if output.suspect:
        result.failures.append(f"the functions' logs carry {len(set(output.suspect))} card tokens or secrets")
    result.elapsed["total"] = time.monotonic() - started
    return result


__all__ = ["SETTINGS", "FlowsResult", "run"]
