"""Proof, continued: what test_fault_injection.py's crash at every step does not enumerate by itself.

1. The hourly cleanup (every pending payment old enough, max age 0) runs *between* two steps of every money flow
   (purchase, redirect, notify, saved-card charge), at every point the clean run has; and the same with the
   invocation killed right after that point (the retry then meets what the cleanup did).
2. A callback that could not be verified (VERIFY unreachable: kept in hypay_unverified_callbacks), then the
   cleanup, then the genuine redelivery under every fault at every point.
3. A saved-card charge whose answer was lost (needs_review, no journal row), then an operator's resolve `complete`
   naming the Hyp Id Hyp charged, under every fault at every point.
4. The database refusing a statement for good (SQLSTATE 22003, as a balance leaving the integer range) at each
   step of every flow, the retries running on a fixed database.

Same invariants as test_fault_injection.py / test_fault_injection_admin.py (the Harness's own checks). Two answers
are as documented rather than the flow's usual end: a purchase whose payment the cleanup expired before its page
was made is a 409 "retry with a new Idempotency-Key"; a card the database refused to keep is not kept
(`CardNotSaved`, final).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pg8000.exceptions import DatabaseError

from payments.adapters.hypay import HypayClient
from payments.errors import GatewayUnavailable
from payments.services.cleanup import CleanupPolicy, run_cleanup
from payments.settings import api_settings
from tests.integration.test_fault_injection import (
    FLOWS,
    Case,
    Flow,
    Harness,
    _paid_on_the_page,
    describe,
    every_case,
    report,
)
from tests.integration.test_fault_injection_admin import AdminHarness, Asks, admin_post
from tests.integration.test_hypay_callback import notify
from tests.integration.test_review import admin  # noqa: F401 - the admin tokens fixture
from tests.support.faults import DatabaseFaults, Injector, Point, sql_label
from tests.support.payments import CVV, STARTER, Env, post
from tests.support.pg import connect, database

INTERLEAVINGS = ("cleanup", "cleanup_then_killed")


class Interleaver(Injector):
    """The Injector, plus: at point `at`, the hourly cleanup runs from its own connection before the point goes on
    (`cleanup`), or before the point runs and the invocation is then killed after it (`cleanup_then_killed`)."""

    def __init__(self, admin_conn: Any, url: str) -> None:
        super().__init__(admin_conn)
        self.url = url
        self.cleanups = 0
        self.mode: str | None = None  # set per case; the Harness is given fault "killed" (its lost-answer rule)

    def _point(self, point: Point) -> bool:
        fire = super()._point(point)
        if fire and self.mode in INTERLEAVINGS:
            self.armed = False
            try:
                db = database(self.url)
                try:
                    run_cleanup(db, policy=CleanupPolicy(pending_payment_max_age_seconds=0))
                    self.cleanups += 1
                finally:
                    db.close()
            finally:
                self.armed = True
            return self.mode != "cleanup"  # `cleanup`: the point goes on normally; else killed after it ran
        return fire


def _saved_card_converges(h: Harness, ctx: dict[str, Any], first: Any, case: Case) -> str | None:
    final = h.post_until_answered(ctx, first, case)
    # A 409 without Retry-After is final: the cleanup expired the payment before its charge was marked
    if final is None or final.status not in (201, 202, 402, 409):
        return f"the saved-card charge did not end in 201, 202, 402 or 409: {describe(final)}"
    if final.status == 409 and "retry-after" not in final.headers:
        return None
    return None


def _purchase_converges(h: Harness, ctx: dict[str, Any], first: Any, case: Case) -> str | None:
    """As the purchase flow's own, but the cleanup may expire the payment before its page was made: then 409, a new
    key buys."""
    final = h.post_until_answered(ctx, first, case)
    if (
        final is not None
        and final.status == 409
        and "new Idempotency-Key" in final.json.get("detail", "")
        and h.status(final.json.get("payment_id") or _payment_of(h, ctx)) == "expired"
    ):
        return None
    return _FLOW_CONVERGES["purchase"](h, ctx, final, case)


def _payment_of(h: Harness, ctx: dict[str, Any]) -> str:
    [[payment_id]] = h.rows("SELECT id::text FROM payments WHERE idempotency_key LIKE :k", k=f"%:{ctx['key']}")
    return str(payment_id)


_FLOW_CONVERGES = {flow.name: flow.converge for flow in FLOWS}


def _flows() -> list[Flow]:
    out = []
    for flow in FLOWS:
        if flow.name == "saved_card":
            flow = Flow(flow.name, flow.prepare, flow.act, _saved_card_converges)
        if flow.name == "purchase":
            flow = Flow(flow.name, flow.prepare, flow.act, _purchase_converges)
        out.append(flow)
    return out


def _interleaved(harness: Harness) -> Callable[[Flow, int, str, Point], Case]:
    """A case with the cleanup run at the point (`cleanup`), or run and the invocation then killed after the point
    (`cleanup_then_killed`): the harness is given the fault `killed`, its lost-answer rule then applying."""

    def run(flow: Flow, index: int, fault: str, point: Point) -> Case:
        injector = harness.injector
        assert isinstance(injector, Interleaver)
        injector.mode = fault
        try:
            case = harness.run(flow, index, "killed", point)
        finally:
            injector.mode = None
        case.fault = fault
        return case

    return run


@contextmanager
def _installed(
    env: Env,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[Any], Injector],
    cold: Callable[[], None] = Harness.cold_start,
) -> Iterator[Injector]:
    """A proof's run: every payment by one user (no rate limit), a cold start (`cold`: the customer functions', by
    default), the injector `make` builds on its own admin connection installed; the connection closed after."""
    monkeypatch.setenv("CREATE_PAYMENT_RATE_LIMIT", "1000000")
    api_settings.cache_clear()
    cold()
    admin_conn = connect(env.url)
    injector = make(admin_conn)
    injector.install(monkeypatch)
    try:
        yield injector
    finally:
        admin_conn.close()


def _held(
    title: str,
    found: tuple[list[Case], dict[str, list[Point]]],
    injector: Injector,
    started: float,
    capsys: pytest.CaptureFixture[str],
    *,
    extra: str = "",
    also: bool = True,
) -> None:
    """The proof's report printed; every case held (and `also`)."""
    summary, held = report(title, *found, injector, started)
    with capsys.disabled():
        print("\n" + summary + (f"\n  {extra}" if extra else ""))
    assert held and also, summary


def test_cleanup_between_every_step_of_every_flow(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    with _installed(env, monkeypatch, lambda conn: Interleaver(conn, env.url)) as injector:
        harness = Harness(env, injector)
        harness.save_a_card()
        found = every_case(harness, _flows(), faults=INTERLEAVINGS, run=_interleaved(harness))
    assert isinstance(injector, Interleaver)
    _held(
        "cleanup interleaved", found, injector, started, capsys, extra=f"cleanups run inside flows: {injector.cleanups}"
    )


# -- 2. unverified, kept, cleaned up, then verified under faults --------------------------------------------


def test_unverified_callback_kept_then_verified_under_every_fault(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_verify = HypayClient.verify_redirect

    def prepare(h: Harness, key: str) -> dict[str, Any]:
        ctx = _paid_on_the_page(h, key)

        def unreachable(self: HypayClient, raw: str) -> bool:
            raise GatewayUnavailable("Hyp could not be reached")

        monkeypatch.setattr(HypayClient, "verify_redirect", unreachable)
        try:
            first = notify(ctx["raw"])
            assert first.status == 503, describe(first)
        finally:
            monkeypatch.setattr(HypayClient, "verify_redirect", real_verify)
        kept = h.rows(
            "SELECT count(*) FROM hypay_unverified_callbacks WHERE payment_id = :p::uuid", p=ctx["payment_id"]
        )
        assert kept == [[1]], kept
        h.cleanup()  # an hour later: the payment must stay pending (it may be paid)
        assert h.status(ctx["payment_id"]) == "pending", h.status(ctx["payment_id"])
        return ctx

    flow = Flow(
        "unverified_then_verified",
        prepare,
        lambda ctx: notify(ctx["raw"]),
        lambda h, ctx, first, case: h.notify_until_acknowledged(ctx["raw"], first, case),
    )
    started = time.monotonic()
    with _installed(env, monkeypatch, Injector) as injector:
        harness = Harness(env, injector)
        found = every_case(harness, [flow])
        # and each payment's journal row is verified now, its unverified callback no longer pending review
        left = harness.rows("""
            SELECT count(*) FROM hypay_unverified_callbacks u
             WHERE NOT EXISTS (SELECT 1 FROM hypay_transactions j WHERE j.hypay_id = u.hypay_id AND j.verified)""")
    extra = f"unverified callbacks never verified: {left}"
    _held("unverified then verified", found, injector, started, capsys, extra=extra, also=left == [[0]])


# -- 3. resolve complete naming the Id of a saved-card charge whose answer was lost ------------------------


@pytest.mark.usefixtures("admin")
def test_resolve_complete_of_a_lost_saved_card_charge_under_every_fault(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CREATE_PAYMENT_RATE_LIMIT", "1000000")
    monkeypatch.setenv("ADMIN_CHARGE_SETTLE_SECONDS", "0")
    api_settings.cache_clear()
    AdminHarness.cold_start()

    def prepare(h: Harness, key: str) -> dict[str, Any]:
        ah: AdminHarness = h  # type: ignore[assignment]
        if not ah.card_saved:
            ah.save_a_card()
            ah.card_saved = True
        real = env.sim._soft
        charged: list[str] = []

        def soft(params: dict[str, str]) -> str:
            answer = real(params)
            charged.append(next(p[3:] for p in answer.split("&") if p.startswith("Id=")))
            return "garbage"  # Hyp charged; its answer is unreadable: the outcome is unknown

        monkeypatch.setattr(env.sim, "_soft", soft)
        try:
            answer = post({"credit_pack_id": STARTER, "saved_card": True, "cvv": CVV}, key=key)
        finally:
            monkeypatch.setattr(env.sim, "_soft", real)
        assert answer.status == 202 and len(charged) == 1, answer.body
        h.lost_answers.add(charged[0])
        pid = answer.json["payment_id"]
        assert h.status(pid) == "needs_review"
        return {
            "payment_id": pid,
            "txn": charged[0],
            "admin_key": f"{key}-resolve",
            "body": {"action": "complete", "reason": "Hyp shows the charge", "hypay_id": charged[0]},
        }

    def send(ctx: dict[str, Any]) -> Any:
        return admin_post(ctx["payment_id"], "resolve", ctx["body"], ctx["admin_key"])

    def converge(h: Harness, ctx: dict[str, Any], first: Any, case: Case) -> str | None:
        ah: AdminHarness = h  # type: ignore[assignment]
        final = ah.until_final(lambda: send(ctx), first, case)
        pid = ctx["payment_id"]
        [[grants]] = h.rows(
            "SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid AND type = 'purchase'", p=pid
        )
        journal = h.rows("SELECT decision, verified FROM hypay_transactions WHERE hypay_id = :h", h=ctx["txn"])
        if final is None or final.status != 200 or h.status(pid) != "completed" or grants != 1:
            return f"resolve: {describe(final)}, payment {h.status(pid)}, {grants} grants, journal {journal}"
        if journal != [["granted", True]]:
            return f"journal row of {ctx['txn']}: {journal}"
        return None

    flow = Flow("resolve_lost_saved_card_charge", prepare, send, converge)
    asks = Asks(env, monkeypatch)
    admin_conn = connect(env.url)
    injector = Injector(admin_conn)
    injector.install(monkeypatch)
    started = time.monotonic()
    try:
        harness = AdminHarness(env, injector, asks, monkeypatch)
        harness.clean = {}
        cases, traces = every_case(harness, [flow])
    finally:
        asks.close()
        admin_conn.close()
    _held("resolve lost charge", (cases, traces), injector, started, capsys)


# -- 4. the database refusing a statement for good (a constraint, an overflow) at each step ----------------


class Refuser(DatabaseFaults):
    """At point `at` (a statement), the database refuses it for good (SQLSTATE 22003, numeric value out of range, as a
    balance leaving the integer range would): it, and every later send of the same statement in that invocation, is
    refused without running. A transaction's BEGIN or COMMIT refused stands for that transaction refused (a deferred
    constraint at its commit, say): it alone, not every later transaction of the invocation (another transaction's
    BEGIN is not the same statement: its fallback's, say). The retries after it run on a fixed database (the fix
    deployed)."""

    refused_label: str | None = None
    refused_after: Point | None = None  # the point just before the refused one
    refused_again: bool = False  # its later sends are refused too (not a BEGIN or a COMMIT)

    def _statement(self, conn: Any, sql: str, run: Any) -> Any:
        if not self.armed:
            return run()
        label = sql_label(sql)
        if self.refused_again and label == self.refused_label and self.fault == "refused":
            self._point(Point("db", label))
            raise DatabaseError({"S": "ERROR", "C": "22003", "M": "integer out of range"})
        if self.fault == "refused" and len(self.trace) == self.at:
            self.refused_after = self.trace[-1] if self.trace else None
            self._point(Point("db", label))
            self.refused_label = label
            self.refused_again = not label.startswith(("BEGIN", "COMMIT"))
            raise DatabaseError({"S": "ERROR", "C": "22003", "M": "integer out of range"})
        self._point(Point("db", label))
        return run()

    @contextmanager
    def invocation(self, at: int | None = None, fault: str | None = None) -> Iterator[None]:
        self.refused_label, self.refused_after, self.refused_again = None, None, False
        with super().invocation(at, fault):
            yield


class RefusedHarness(Harness):
    """A card the database refused to keep is not kept: final (`CardNotSaved`, docs/operations.md), not owed."""

    def invariants(self) -> list[str]:
        found = super().invariants()
        injector = self.injector
        if isinstance(injector, Refuser) and _card_transaction_refused(injector):
            found = [problem for problem in found if "but no card from it is saved" not in problem]
        return found


def _card_transaction_refused(injector: Refuser) -> bool:
    """The refused statement is the card's own transaction (right after Hyp's getToken): its BEGIN, its INSERT or its
    COMMIT (a deferred constraint refuses there)."""
    return (
        injector.refused_label == "insert saved_cards"
        or (injector.refused_label == "BEGIN" and injector.refused_after == Point("hyp", "getToken"))
        or (injector.refused_label == "COMMIT" and injector.refused_after == Point("db", "insert saved_cards"))
    )


def test_database_refusing_each_statement_for_good(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    with _installed(env, monkeypatch, Refuser) as injector:
        harness = RefusedHarness(env, injector)
        harness.save_a_card()
        found = every_case(harness, _flows(), faults=("refused",), points=lambda point: point.kind == "db")
    _held("refused for good", found, injector, started, capsys)
