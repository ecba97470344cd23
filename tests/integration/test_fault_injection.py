"""Proof: crash at every step of every money flow, then retry as the real clients do; money stays right.

The flows: the hosted-page purchase (POST /payments), Hyp's redirect (GET /hypay/return), Hyp's
notification (POST /hypay/notify) and the saved-card charge (POST /payments with saved_card). Each is
run once cleanly with `tests.support.faults.Injector` recording its points in order (every database
statement the function sends, every call to Hyp, each attempt of a retried one), so a statement or call
added to a flow adds points here without touching this file. Then, for every point and every fault
(`drop_before`, `drop_after`, `killed`; see faults.py), a fresh payment goes through the same flow with
that one fault, and the clients retry as they do:

- the web app repeats POST /payments with the same Idempotency-Key while it gets no answer, 409 or 503
  (after a 409 the dead holder's in-progress deadline is let pass); a 202 "being confirmed" is final
  (it polls GET /payments/{id} then);
- the browser reloads the redirect until it lands on the success or failure page (or on the pending
  page of a payment in review); Hyp sends the notification again until it gets 200;
- the hourly cleanup runs (stale pending payments: any age).

Checked after every case, over the whole database and everything the simulator charged:

1. A card is charged at most once per Idempotency-Key: at most one approved Hyp transaction per
   payment (`Order`), and Hyp asked at most once to charge a saved card for it; one payment per key.
2. Every approved Hyp transaction is in the journal (`hypay_transactions`: verified, same payment,
   decided granted or review). Only exception: a saved-card charge whose answer no live invocation
   ever read (the fault was Hyp's answer lost, or the invocation killed between asking Hyp and
   committing the outcome); its payment must then be in needs_review. A saved-card charge whose answer the
   database would not store is on its payment's row instead: in needs_review, its review reason naming the Id.
3. Each user's balance change equals the sum of their purchase grants equals the credits of their
   completed payments; each completed payment has exactly one purchase row (of its credits), any other
   payment none.
4. A payment Hyp approved a transaction for ends completed or needs_review, nothing else.
5. No 5xx answer except 503 with Retry-After; once the fault is gone the retries converge (bounded).
6. A payment completed with "keep my card" has its card saved (or a newer one), whatever step failed.

It prints (with -s, and in the failure message) how many points x faults it covered, each flow's points,
and every case that broke an invariant; FAULT_INJECTION_VERBOSE=1 lists every case with its answers.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

from ops.hypay_simulator import APPROVING_CARD, Transaction
from ops.seed import DEMO_USER_ID
from payments.adapters import db as db_module
from payments.services.cleanup import CleanupPolicy, run_cleanup
from payments.settings import api_settings
from tests.integration.test_hypay_callback import browser, notify
from tests.support.api import Answer, reset_function_state
from tests.support.faults import FAULTS, Injector, Killed, Point
from tests.support.payments import (
    CALLBACK,
    CREATE,
    CVV,
    FAILURE_PAGE,
    PENDING_PAGE,
    PRO,
    STARTER,
    SUCCESS_PAGE,
    Env,
    post,
    user_with_the_saved_card,
)
from tests.support.pg import connect, database

ATTEMPTS = 8  # how many times a client retries before the case is reported as not converging


def page(answer: Answer | None) -> str | None:
    if answer is None or answer.status != 302:
        return None
    parts = urlsplit(answer.headers.get("location", ""))
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def describe(answer: Answer | None) -> str:
    if answer is None:
        return "no answer (killed)"
    if answer.status == 302:
        return f"302 -> {page(answer)}"
    return f"{answer.status} {str(answer.body)[:160]}"


def is_token_charge(transaction: Transaction) -> bool:
    """A saved-card charge (action=soft): the simulator records no redirect for it."""
    return transaction.redirect_query == ""


@dataclass
class Case:
    flow: str
    at: int | None = None
    fault: str | None = None
    point: Point | None = None
    trace: list[Point] = field(default_factory=list)
    answers: list[tuple[str, Answer | None]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if self.at is None:
            return f"{self.flow}, no fault"
        return f"{self.flow}, point {self.at} ({self.point}), {self.fault}"


@dataclass(frozen=True)
class Flow:
    name: str
    prepare: Callable[[Harness, str], dict[str, Any]]  # a fresh payment up to the flow, without faults
    act: Callable[[dict[str, Any]], Answer]  # the invocation under the fault
    converge: Callable[[Harness, dict[str, Any], Answer | None, Case], str | None]  # the clients' retries


class Harness:
    def __init__(self, env: Env, injector: Injector) -> None:
        self.env = env
        self.injector = injector
        self.serial = 0
        self.lost_answers: set[str] = set()  # saved-card charges no live invocation read the answer of
        # Faults that, at the saved-card charge, leave Hyp's answer unread (the charge's outcome unknown)
        self.answer_losing: frozenset[str] = frozenset({"drop_after"})
        self.reported: set[str] = set()
        self.baseline = {user: row for user, *row in self.balances()}

    # -- plumbing ------------------------------------------------------------------------------------

    def rows(self, sql: str, **params: Any) -> Any:
        return self.injector.admin_run(sql, **params)

    def status(self, payment_id: str) -> str | None:
        found = self.rows("SELECT status FROM payments WHERE id = :p::uuid", p=payment_id)
        return found[0][0] if found else None

    def purchase_grant_problems(self) -> list[str]:
        """Each completed payment holds one purchase grant of its credits; any other payment none."""
        found = []
        for payment, state, credits, grants, total in self.rows("""
            SELECT p.id::text, p.status, COALESCE(p.credits, k.credits), count(c.id), COALESCE(sum(c.amount), 0)
              FROM payments p LEFT JOIN credit_packs k ON k.id = p.credit_pack_id
              LEFT JOIN credit_transactions c ON c.payment_id = p.id AND c.type = 'purchase'
             GROUP BY p.id, p.status, p.credits, k.credits"""):
            if (state == "completed" and (grants != 1 or total != credits)) or (state != "completed" and grants):
                found.append(f"payment {payment} is {state} with {grants} purchase grants of {total} credits")
        return found

    @staticmethod
    def cold_start() -> None:
        """The killed invocation's execution environment is gone: the next one starts cold."""
        for function in (CREATE, CALLBACK):
            reset_function_state(function)
        db_module.reset_default_database()

    def expire_in_progress(self) -> None:
        """Time passes: a dead holder's in-progress deadline is over (nothing else runs meanwhile)."""
        self.rows("UPDATE idempotency_keys SET in_progress_expiry_timestamp = 1 WHERE status = 'pending'")

    def cleanup(self) -> None:
        """The hourly cleanup, with every pending payment old enough to be looked at."""
        db = database(self.env.url)
        try:
            run_cleanup(db, policy=CleanupPolicy(pending_payment_max_age_seconds=0))
        finally:
            db.close()

    # -- what the clients do -------------------------------------------------------------------------

    def buy(self, key: str, **extra: Any) -> dict[str, Any]:
        answer = post({"credit_pack_id": STARTER, **extra}, key=key)
        assert answer.status == 201, answer.body
        return answer.json

    def post_until_answered(self, ctx: dict[str, Any], first: Answer | None, case: Case) -> Answer | None:
        """The web app: the same request and key again while there is no answer, 503, or 409 "in progress" (with
        Retry-After; a 409 without it is final, as docs/integration.md says)."""
        last = first
        for _ in range(ATTEMPTS):
            if last is not None and last.status != 503 and not (last.status == 409 and "retry-after" in last.headers):
                return last
            if last is not None and last.status == 409:
                self.expire_in_progress()
            last = post(ctx["body"], key=ctx["key"], user=ctx.get("user", DEMO_USER_ID))
            case.answers.append(("POST again", last))
        return last

    def reload_until_final(self, raw: str, payment_id: str, first: Answer | None, case: Case) -> str | None:
        """The browser: reload the redirect until a final page (pending is final only for a payment in review)."""
        last = first
        for _ in range(ATTEMPTS):
            if page(last) in (SUCCESS_PAGE, FAILURE_PAGE):
                return None
            if page(last) == PENDING_PAGE and self.status(payment_id) == "needs_review":
                return None
            if last is not None:
                self.expire_in_progress()
            last = browser(raw)
            case.answers.append(("reload", last))
        return f"the redirect never reached a final page: {describe(last)}"

    def notify_until_acknowledged(self, raw: str, first: Answer | None, case: Case) -> str | None:
        """Hyp: the notification again until it is answered 200."""
        last = first
        for _ in range(ATTEMPTS):
            if last is not None and last.status == 200:
                return None
            if last is not None:
                self.expire_in_progress()
            last = notify(raw)
            case.answers.append(("notify again", last))
        return f"the notification was never acknowledged: {describe(last)}"

    def save_a_card(self) -> None:
        """The demo user pays once on the page, keeping the card: the saved-card flow charges it."""
        payment = self.buy("fi-first-payment", save_card=True)
        transaction = self.env.sim.pay(payment["payment_url"], APPROVING_CARD, cvv="125")
        assert page(browser(transaction.redirect_query)) == SUCCESS_PAGE
        assert self.rows("SELECT count(*) FROM saved_cards WHERE user_id = :u::uuid", u=DEMO_USER_ID) == [[1]]

    def own_user(self, key: str) -> str:
        """A user of the case's own with the demo user's saved card: a charge an earlier case left unsettled (in
        review, as a lost answer must be) would refuse every later case's charge by the same user."""
        return user_with_the_saved_card(self.rows, key)

    # -- one case --------------------------------------------------------------------------------------

    def run(self, flow: Flow, at: int | None = None, fault: str | None = None, expected: Point | None = None) -> Case:
        self.serial += 1
        case = Case(flow.name, at, fault, expected)
        ctx = flow.prepare(self, f"fi-{flow.name}-{self.serial}")
        before = set(self.env.sim.transactions)
        with self.injector.invocation(at, fault):
            try:
                first: Answer | None = flow.act(ctx)
            except Killed:
                first = None
        case.trace, fired, killed = list(self.injector.trace), self.injector.fired, self.injector.dead
        case.answers.append(("first", first))
        if killed:
            self.cold_start()
        if at is not None and fired != expected:
            case.problems.append(f"enumeration: the fault hit {fired}, the clean run had {expected} there")
        if first is None and not killed:
            case.problems.append("no answer although the invocation was not killed")
        problem = flow.converge(self, ctx, first, case)
        if problem:
            case.problems.append(problem)
        self.cleanup()

        # Which saved-card charges of this case no live invocation read the answer of
        soft = next((i for i, p in enumerate(case.trace) if p == Point("hyp", "soft")), None)
        if (
            soft is not None
            and at is not None
            and ((fault in self.answer_losing and at == soft) or (fault == "killed" and at >= soft))
        ):
            self.lost_answers |= {
                t.id for i, t in self.env.sim.transactions.items() if i not in before and is_token_charge(t)
            }
        for label, answer in case.answers:
            if (
                answer is not None
                and answer.status >= 500
                and not (answer.status == 503 and "retry-after" in answer.headers)
            ):
                case.problems.append(f"{label} answered {describe(answer)}")
        if "key" in ctx:
            scoped = f"api:{ctx.get('user', DEMO_USER_ID)}:{ctx['key']}"
            [[count]] = self.rows("SELECT count(*) FROM payments WHERE idempotency_key = :k", k=scoped)
            if count != 1:
                case.problems.append(f"{count} payments for one Idempotency-Key")
        for violation in self.invariants():
            if violation not in self.reported:  # attributed to the first case it appears after
                self.reported.add(violation)
                case.problems.append(violation)
        return case

    # -- the invariants ----------------------------------------------------------------------------------

    def balances(self) -> list[list[Any]]:
        return self.rows("""
            SELECT u.id::text, u.credits,
                   (SELECT COALESCE(sum(c.amount), 0) FROM credit_transactions c
                     WHERE c.user_id = u.id AND c.type = 'purchase')::bigint,
                   (SELECT COALESCE(sum(COALESCE(p.credits, k.credits)), 0) FROM payments p
                      LEFT JOIN credit_packs k ON k.id = p.credit_pack_id
                     WHERE p.user_id = u.id AND p.status = 'completed')::bigint
              FROM profiles u ORDER BY 1""")

    def invariants(self) -> list[str]:
        found: list[str] = []
        transactions = list(self.env.sim.transactions.values())
        approved = [t for t in transactions if t.ccode == 0]
        status = dict(self.rows("SELECT id::text, status FROM payments"))
        reasons = dict(self.rows("SELECT id::text, review_reason FROM payments WHERE review_reason IS NOT NULL"))
        journal = {
            hyp_id: (payment, decision, verified)
            for hyp_id, payment, decision, verified in self.rows(
                "SELECT hypay_id, payment_id::text, decision, verified FROM hypay_transactions"
            )
        }
        # 1. at most once per key: each key has one payment, whose id is the transaction's Order
        for order, n in Counter(t.order for t in approved).items():
            if n > 1:
                found.append(f"payment {order}: the card was charged {n} times")
        for order, n in Counter(t.order for t in transactions if is_token_charge(t)).items():
            if n > 1:
                found.append(f"payment {order}: Hyp was asked {n} times to charge the saved card")
        for t in approved:
            kind = "saved-card charge" if is_token_charge(t) else "payment page"
            # 2. in the journal
            entry = journal.get(t.id)
            journaled = entry is not None and entry[0] == t.order and entry[2] and entry[1] in ("granted", "review")
            exempt = is_token_charge(t) and t.id in self.lost_answers and status.get(t.order) == "needs_review"
            # (or its payment in review naming it: Hyp answered, and the answer could not be stored)
            named = status.get(t.order) == "needs_review" and f"Hyp transaction {t.id}" in reasons.get(t.order, "")
            if not (journaled or exempt or named):
                found.append(
                    f"approved Hyp transaction {t.id} ({kind}, payment {t.order}, now {status.get(t.order)})"
                    f" is not in the journal (row: {entry})"
                )
            # 4. paid: completed or in review
            if status.get(t.order) not in ("completed", "needs_review"):
                found.append(f"payment {t.order} was paid ({kind}, Hyp transaction {t.id}), now {status.get(t.order)}")
        # 3. balance = grants = completed payments, per user, and one grant per completed payment
        for user, credits, granted, completed in self.balances():
            base_credits, base_granted, base_completed = self.baseline.get(user, [0, 0, 0])
            deltas = (credits - base_credits, granted - base_granted, completed - base_completed)
            if len(set(deltas)) != 1:
                found.append(
                    f"user {user}: balance changed by {deltas[0]}, grants sum to {deltas[1]},"
                    f" completed payments hold {deltas[2]} credits"
                )
        found += self.purchase_grant_problems()
        # 6. a card the buyer asked to keep is kept once the payment completed (or the card of a payment
        #    completed later is): judged by which payment the saved card came from, not by when it was written
        for (payment,) in self.rows("""
            SELECT p.id::text FROM payments p
             WHERE p.save_card AND p.status = 'completed'
               AND NOT EXISTS (SELECT 1 FROM saved_cards c JOIN payments q ON q.id = c.payment_id
                                WHERE c.user_id = p.user_id AND (q.id = p.id OR q.completed_at > p.completed_at))"""):
            found.append(f"payment {payment} completed with 'keep my card', but no card from it is saved")
        return found


# -- the flows ---------------------------------------------------------------------------------------------


def _request(body: dict[str, Any]) -> Callable[[Harness, str], dict[str, Any]]:
    return lambda h, key: {"key": key, "body": body}


def _with_a_user_of_its_own(body: dict[str, Any]) -> Callable[[Harness, str], dict[str, Any]]:
    """A request by a user of the case's own (`Harness.own_user`)."""
    return lambda h, key: {"key": key, "body": body, "user": h.own_user(key)}


def _paid_on_the_page(h: Harness, key: str) -> dict[str, Any]:
    payment = h.buy(key, save_card=True)  # kept: the callback also asks Hyp for the token and saves it
    transaction = h.env.sim.pay(payment["payment_url"], APPROVING_CARD, cvv="125")
    return {"raw": transaction.redirect_query, "payment_id": payment["payment_id"]}


def _purchase_converges(h: Harness, ctx: dict[str, Any], first: Answer | None, case: Case) -> str | None:
    final = h.post_until_answered(ctx, first, case)
    if final is None or final.status != 201 or not final.json.get("payment_url"):
        return f"POST /payments did not end in 201 with a payment page: {describe(final)}"
    # The customer pays on the page and comes back
    transaction = h.env.sim.pay(final.json["payment_url"], APPROVING_CARD, cvv="125")
    if transaction.order != final.json["payment_id"]:
        return f"the page paid {transaction.order}, the answer named {final.json['payment_id']}"
    return h.reload_until_final(transaction.redirect_query, final.json["payment_id"], None, case)


def _saved_card_converges(h: Harness, ctx: dict[str, Any], first: Answer | None, case: Case) -> str | None:
    final = h.post_until_answered(ctx, first, case)
    if final is None or final.status not in (201, 202, 402):
        return f"the saved-card charge did not end in 201, 202 or 402: {describe(final)}"
    return None


FLOWS = (
    Flow(
        "purchase",
        _request({"credit_pack_id": STARTER}),
        lambda ctx: post(ctx["body"], key=ctx["key"]),
        _purchase_converges,
    ),
    Flow(
        "redirect",
        _paid_on_the_page,
        lambda ctx: browser(ctx["raw"]),
        lambda h, ctx, first, case: h.reload_until_final(ctx["raw"], ctx["payment_id"], first, case),
    ),
    Flow(
        "notify",
        _paid_on_the_page,
        lambda ctx: notify(ctx["raw"]),
        lambda h, ctx, first, case: h.notify_until_acknowledged(ctx["raw"], first, case),
    ),
    Flow(
        "saved_card",
        _with_a_user_of_its_own({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}),
        lambda ctx: post(ctx["body"], key=ctx["key"], user=ctx["user"]),
        _saved_card_converges,
    ),
)


def every_case(
    harness: Harness,
    flows: Sequence[Flow],
    traces: dict[str, list[Point]] | None = None,
    *,
    faults: Sequence[str] = FAULTS,
    points: Callable[[Point], bool] = lambda point: True,
    run: Callable[[Flow, int, str, Point], Case] | None = None,
) -> tuple[list[Case], dict[str, list[Point]]]:
    """Each flow run cleanly (recording its points in `traces`, as soon as recorded), then once per point (those
    `points` takes) and fault, by `run` (the harness's own by default): the cases, and each flow's points."""
    run = run or (lambda flow, index, fault, point: harness.run(flow, index, fault, point))
    cases: list[Case] = []
    traces = {} if traces is None else traces
    for flow in flows:
        clean = harness.run(flow)
        cases.append(clean)
        traces[flow.name] = clean.trace
        for index, point in enumerate(clean.trace):
            if points(point):
                for fault in faults:
                    cases.append(run(flow, index, fault, point))
    return cases, traces


def report(
    title: str,
    cases: list[Case],
    traces: dict[str, list[Point]],
    injector: Injector,
    started: float,
    notes: Sequence[str] = (),
) -> tuple[str, bool]:
    """The summary printed (and given on failure), and whether every case held."""
    points = sum(len(t) for t in traces.values())
    lines = [
        f"{title}: {len(traces)} flows, {points} points x {len(FAULTS)} faults = {len(cases) - len(traces)} cases"
        f" (+{len(traces)} clean runs) in {time.monotonic() - started:.0f} s",
        *(f"  {name}: {len(trace)} points: " + "; ".join(str(p) for p in trace) for name, trace in traces.items()),
    ]
    failed = [c for c in cases if c.problems]
    lines.append(f"  cases with a broken invariant: {len(failed)}")
    for case in cases if os.environ.get("FAULT_INJECTION_VERBOSE") else failed:
        lines.append(f"  - {case}:" if case.problems else f"  - {case}: ok")
        lines += [f"      {problem}" for problem in case.problems]
        lines.append("      answers: " + ", ".join(f"{label} {describe(a)}" for label, a in case.answers))
    lines += notes
    lines += [f"  injection problem: {p}" for p in injector.problems]
    held = points >= 4 * len(traces) and not failed and not injector.problems  # each flow has steps to fault
    return "\n".join(lines), held


def test_crash_at_every_step_money_stays_right(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CREATE_PAYMENT_RATE_LIMIT", "1000000")  # one user makes every payment here
    api_settings.cache_clear()
    Harness.cold_start()
    admin = connect(env.url)
    injector = Injector(admin)
    injector.install(monkeypatch)
    started = time.monotonic()
    try:
        harness = Harness(env, injector)
        harness.save_a_card()
        cases, traces = every_case(harness, FLOWS)
    finally:
        admin.close()
    summary, held = report("fault injection", cases, traces, injector, started)
    with capsys.disabled():
        print("\n" + summary)
    assert held, summary
