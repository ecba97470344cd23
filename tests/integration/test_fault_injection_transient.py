"""Proof, continued: faults the Injector does not enumerate, found automatically at every step.

1. A statement the database cancels (57014, statement timeout), cannot lock in time (55P03, lock_not_available) or
   fails for a resource or the system (53100 out of disk, 58030 an I/O error), or is refused by a server turned
   read-only (25006, after a failover):
   "not yet" failures that pass by themselves, at every database statement of every money flow (purchase,
   redirect, notify, saved-card charge, every admin refund/settle/resolve flow). The statement does not run (a
   cancelled statement commits nothing; inside a transaction, the transaction is rolled back). Only that one
   send fails: the same statement sent again (a retry) runs.
2. The Lambda deadline at every call to Hyp: the invocation has too little time left when it is about to ask Hyp
   (payments.deadline), so the client raises GatewayNotAsked ("not yet", nothing sent).
3. The cleanup's own statements, each dropped before/after or the cleanup killed there, with a saved-card
   charge whose invocation died after Hyp charged (pending, attempt marked) and a pending page payment.

Same invariants as the other proofs (the Harness's / AdminHarness's own checks).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import pytest
from pg8000.exceptions import DatabaseError

from payments import deadline
from payments.adapters.hypay import HypayClient
from payments.services.cleanup import CleanupPolicy, run_cleanup
from tests.integration.test_fault_injection import Case, Flow, Harness, describe, every_case
from tests.integration.test_fault_injection_admin import FLOWS as ADMIN_FLOWS
from tests.integration.test_fault_injection_admin import AdminHarness, Asks
from tests.integration.test_fault_injection_more import _flows, _held, _installed
from tests.integration.test_review import admin  # noqa: F401 - the admin tokens fixture
from tests.support.faults import FAULTS, DatabaseFaults, Injector, Killed, Point, sql_label
from tests.support.payments import CVV, PRO, Env, post
from tests.support.pg import database

# A statement cancelled or not granted its lock in time, and failures of the classes that pass (out of disk: 53, an
# I/O error: 58): ours and passing, "not yet" wherever they strike.
# A write refused by a server turned read-only (25006, a failover): the connection is dropped, the statement sent anew.
TRANSIENT = {
    "statement_timeout": "57014",
    "lock_timeout": "55P03",
    "disk_full": "53100",
    "io_error": "58030",
    "read_only": "25006",
}


class Transient(DatabaseFaults):
    """At point `at`: a statement fails with a passing SQLSTATE without running (`statement_timeout`,
    `lock_timeout`), or a Hyp call is not made because the invocation's deadline is near (`no_time`)."""

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().install(monkeypatch)
        real = HypayClient._attempt_timeout
        injector = self

        def attempt_timeout(client: HypayClient, action: str, *, moves_money: bool, attempt: int) -> float:
            if injector.armed and injector.fault == "no_time" and len(injector.trace) == injector.at:
                injector._point(Point("hyp", action))
                saved = deadline._deadline
                deadline._deadline = time.monotonic() + 0.05  # the invocation is about to time out
                try:
                    return real(client, action, moves_money=moves_money, attempt=attempt)
                finally:
                    deadline._deadline = saved
            return real(client, action, moves_money=moves_money, attempt=attempt)

        monkeypatch.setattr(HypayClient, "_attempt_timeout", attempt_timeout)

    def _statement(self, conn: Any, sql: str, run: Any) -> Any:
        if self.armed and self.fault in TRANSIENT and len(self.trace) == self.at:
            self._point(Point("db", sql_label(sql)))
            raise DatabaseError({"S": "ERROR", "C": TRANSIENT[self.fault], "M": "canceling statement"})
        if self.armed:
            self._point(Point("db", sql_label(sql)))
        return run()


def _wanted(flows: Any) -> list[Flow]:
    wanted = {n for n in os.environ.get("FAULT_INJECTION_FLOWS", "").split(",") if n}
    return [f for f in flows if not wanted or f.name in wanted]


# -- 1. + 2. the customer flows --------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [*TRANSIENT, "no_time"])
def test_transient_database_errors_and_deadline_at_every_step(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fault: str
) -> None:
    kind = "hyp" if fault == "no_time" else "db"
    started = time.monotonic()
    with _installed(env, monkeypatch, Transient, Harness.cold_start) as injector:
        harness = Harness(env, injector)
        harness.save_a_card()
        found = every_case(harness, _wanted(_flows()), faults=(fault,), points=lambda p: p.kind == kind)
    _held(f"{fault} at every step", found, injector, started, capsys)


# -- the admin flows -------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("fault", [*TRANSIENT, "no_time"])
def test_transient_database_errors_and_deadline_at_every_admin_step(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fault: str
) -> None:
    kind = "hyp" if fault == "no_time" else "db"
    admin_proof(env, monkeypatch, capsys, Transient, fault, kind, f"admin {fault} at every step")


def admin_proof(
    env: Env,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    make: Any,
    fault: str,
    kind: str,
    title: str,
) -> None:
    """Every admin flow run with `fault` (of the injector `make` builds) at each of its points of `kind`, the refunds
    asked a day after the payment (zikoyAPI) unless a flow moves its own clock; every case held."""
    import datetime as dt

    from payments.services import refund as refund_module
    from tests.integration.test_fault_injection_admin import TOMORROW

    monkeypatch.setattr(env.sim, "cancel_until_hour", 24)
    real_deps = refund_module.RefundsDeps
    harness: AdminHarness | None = None

    def clock() -> dt.datetime:
        return dt.datetime.now(dt.UTC) + (harness.later if harness is not None else TOMORROW)

    monkeypatch.setattr(refund_module, "RefundsDeps", lambda s, g: real_deps(s, g, clock=clock, cancel_until_hour=24))
    asks = Asks(env, monkeypatch)
    started = time.monotonic()
    try:
        with _installed(env, monkeypatch, make, AdminHarness.cold_start) as injector:
            harness = AdminHarness(env, injector, asks, monkeypatch)
            found = every_case(
                harness, _wanted(ADMIN_FLOWS), harness.clean, faults=(fault,), points=lambda p: p.kind == kind
            )
    finally:
        asks.close()
    _held(title, found, injector, started, capsys)


# -- 3. the cleanup's own statements faulted --------------------------------------------------------------------


def test_cleanup_faulted_at_every_step(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A saved-card charge killed after Hyp charged (pending, attempt marked, answer lost) and a pending page
    payment; the cleanup (max age 0) runs under each fault at each of its statements, then again cleanly, then the
    web app retries the charge's key: the charged payment must end in needs_review (never expired), and the
    invariants hold."""

    soft_at: dict[str, int] = {}

    def prepare(h: Harness, key: str) -> dict[str, Any]:
        h.buy(f"{key}-page")  # a pending page payment: the cleanup expires it
        body = {"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}
        inj = h.injector
        if "soft" not in soft_at:  # the soft call's index in a clean charge (one clean charge, once)
            with inj.invocation():
                post(body, key=f"{key}-probe-trace")
                soft_at["soft"] = inj.trace.index(Point("hyp", "soft"))
        before = set(h.env.sim.transactions)
        user = h.own_user(key)  # its charge left unsettled would refuse the next case's by the same user
        # the charge's invocation is killed while Hyp answers: Hyp charged, nothing stored
        with inj.invocation(at=soft_at["soft"], fault="killed"), contextlib.suppress(Killed):
            post(body, key=key, user=user)
        h.cold_start()
        h.lost_answers |= {t.id for i, t in h.env.sim.transactions.items() if i not in before and not t.redirect_query}
        [[pid]] = h.rows("SELECT id::text FROM payments WHERE idempotency_key LIKE :k", k=f"%:{key}")
        assert h.status(pid) == "pending"
        return {"payment_id": pid, "key": key, "body": body, "user": user}

    def act(ctx: dict[str, Any]) -> Any:
        db = database(env.url)
        try:
            return run_cleanup(db, policy=CleanupPolicy(pending_payment_max_age_seconds=0))
        finally:
            db.close()

    def converge(h: Harness, ctx: dict[str, Any], first: Any, case: Case) -> str | None:
        h.cleanup()  # the next hour's run
        if h.status(ctx["payment_id"]) != "needs_review":
            return f"the charged payment is {h.status(ctx['payment_id'])} after the cleanup"
        h.expire_in_progress()
        final = h.post_until_answered(ctx, None, case)
        if final is None or final.status != 202:
            return f"the retried charge answered {describe(final)}"
        return None

    def acted(ctx: dict[str, Any]) -> Any:
        with contextlib.suppress(Exception):  # a faulted cleanup run fails; the next one goes on
            act(ctx)
        return None

    flow = Flow("cleanup", prepare, acted, converge)
    started = time.monotonic()
    with _installed(env, monkeypatch, Injector, Harness.cold_start) as injector:
        harness = Harness(env, injector)
        harness.save_a_card()

        real_run = harness.run

        def run(flow: Flow, at: int | None = None, fault: str | None = None, expected: Point | None = None) -> Case:
            case = real_run(flow, at, fault, expected)
            # the cleanup has no HTTP answer
            case.problems = [p for p in case.problems if "no answer although" not in p]
            return case

        harness.run = run  # type: ignore[method-assign]
        found = every_case(harness, [flow], faults=FAULTS)
    _held("cleanup faulted", found, injector, started, capsys)
