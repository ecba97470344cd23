"""Proof: crash at every step of every admin money flow, then retry as an admin client does; money stays right.

The same method as test_fault_injection.py (its `Harness`, `Case` and `Flow`, and tests/support/faults.py's
`Injector`), for the admin function's flows, through the function's handler as API Gateway calls it:

- refunds (`POST /admin/payments/{id}/refund`, payments.services.refund): a full refund the same day (Hyp's
  `CancelTrans`), a full refund of an older payment (`zikoyAPI`), a full refund the same day of a transaction
  Hyp already transmitted (`CancelTrans` refused with 920, the same attempt goes on as a `zikoyAPI` refund:
  two calls to Hyp in one attempt), a partial refund (`zikoyAPI`, 20.00 of 49.90: 40 credits), and the rest of
  a payment refunded in part before (29.90 after 20.00: the other 60 credits), and the whole of a saved-card charge
  whose answer gave its amount unreadably (journaled with none, completed by an operator), the refund naming what
  Hyp's transactions show it paid (`original_amount`: the journal learns it in the same flow);
- resolving by hand (`POST /admin/payments/{id}/resolve`, payments.services.review): `complete` and `fail` of a
  payment in needs_review after an amount mismatch (Hyp said 1.00 was paid for 49.90);
- closing by hand (`POST /admin/transactions/{hypay_id}/close`, payments.services.close_transaction) that
  mismatch's transaction once its payment was failed: refunded in Hyp's portal, audited once.

Each flow is run once cleanly with the Injector recording its points (every database statement the function
sends, every call to Hyp); then, for every point and every fault (`drop_before`, `drop_after`, `killed`), a
fresh payment goes through the same flow with that one fault, and the admin client retries as
docs/operations.md and docs/integration.md say: the same request with the same Idempotency-Key while there is
no answer, a 503, or a 409 with Retry-After ("still being processed": after it, the dead holder's in-progress
deadline is let pass); every other answer is final (201, 202 "being confirmed", 502 "Hyp refused", 200, a 409
that says why, 422).

Checked after every case, over the whole database and everything the simulator was asked and did:

1. Hyp was asked to cancel a transaction at most once and to refund it at most once per Idempotency-Key
   (each payment here gets one key), a refund after a cancellation only when Hyp refused that cancellation,
   and every ask found the key's `refunds` row already committed `attempted` with that method (looked up
   from another session while the simulator held the request).
2. Hyp never gave back more than the transaction paid; every money movement Hyp made (a refund or a
   cancellation) is a `refunds` row of that transaction, `succeeded` (same method and amount, Hyp's refund
   Id) or `unknown`/`attempted` (its answer was lost: a human looks), never missing, never `refused`; and
   every `succeeded` row is a movement Hyp made.
3. Credits: each succeeded refund took back what the docs promise (in proportion, rounded half up, never
   below a zero balance: the balance is ample here, so all of it) as one `refund` ledger row; no other refund
   row took any; each user's balance moved exactly as their ledger; each completed payment has one purchase
   row of its credits and any other payment none.
4. The audit trail: one `admin_audit_log` row per refund outcome stored (succeeded, refused, unknown), none for
   an attempt without one; one `resolve` row per payment resolved, written with the change (its after-state
   is the payment's status) under the resolving request's key.
5. The journal: a succeeded zikoyAPI refund is Hyp's refund transaction (`source = 'refund'`, `decision =
   'refunded'`); a succeeded cancellation notes "cancelled" on the original's row.
6. No 5xx answer except 503 with Retry-After; the retries converge (bounded) to the flow's final answer:
   a refund to 201 with what was asked (or 202 when the fault lost Hyp's answer, or killed the invocation
   between the committed attempt and its committed outcome: then the row is `unknown` or `attempted`);
   a resolve to 200 with its answer (also when its commit's answer was lost: the re-run finds its own audit
   row), the payment completed (credits once) or failed, with its audit row under the request's key.

It prints (with -s, and in the failure message) how many points x faults it covered, each flow's points, every
case that broke an invariant, and notes (answers that are documented but worth knowing);
FAULT_INJECTION_VERBOSE=1 lists every case with its answers; FAULT_INJECTION_FLOWS=name,name runs only those.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import pg8000.native
import pytest

from ops.hypay_simulator import APPROVING_CARD
from payments.adapters import db as db_module
from payments.domain.refund import credits_to_take
from payments.settings import api_settings
from tests.integration.test_callback_attacks import unpaid_claim, use_mode
from tests.integration.test_fault_injection import ATTEMPTS, Case, Flow, Harness, describe, every_case, page, report
from tests.integration.test_hypay_callback import browser, forge, notify
from tests.integration.test_review import ADMIN, ALICE, admin  # noqa: F401 - the `admin` fixture (admin tokens)
from tests.support.api import Answer, invoke, reset_function_state
from tests.support.faults import Injector, Point
from tests.support.payments import CALLBACK, CREATE, CVV, STARTER, SUCCESS_PAGE, Env, post
from tests.support.pg import connect

TODAY = dt.timedelta(0)  # the refund is asked the day of the payment: a whole one is a cancellation
TOMORROW = dt.timedelta(days=1)  # no longer cancellable: zikoyAPI
PAID = "49.90"  # the Starter pack: 49.90 ILS, 100 credits
CREDITS = 100
REASON = "customer asked"


def _minor(amount: str) -> int:
    return int(Decimal(amount) * 100)


def admin_post(payment_id: str, action: str, body: dict[str, Any], key: str) -> Answer:
    headers = {"Authorization": f"Bearer {ALICE}", "Idempotency-Key": key}
    return invoke(ADMIN, "POST", f"/admin/payments/{payment_id}/{action}", body=body, headers=headers)


def retryable(answer: Answer | None) -> bool:
    """What the admin client sends again with the same key: no answer, 503, 409 "in progress" (Retry-After)."""
    return answer is None or answer.status == 503 or (answer.status == 409 and "retry-after" in answer.headers)


class Asks:
    """What the simulator was asked to reverse (each request Hyp received), and whether the key's `refunds` row
    was committed `attempted` with that method when Hyp received it (read from a session of its own)."""

    def __init__(self, env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[dict[str, Any]] = []
        self._probe = connect(env.url)  # used only in the simulator's thread, while the function waits for Hyp
        # pg8000's own `run`, taken before the Injector interposes on it: the probe is never a point of the flow
        run = pg8000.native.Connection.run
        real = env.sim._dispatch_reversal

        def dispatch(action: str, params: dict[str, str]) -> str:
            trans = params.get("TransId", "")
            method = {"CancelTrans": "cancel", "zikoyAPI": "refund"}.get(action)
            durable = run(
                self._probe,
                "SELECT count(*) FROM refunds WHERE original_hypay_id = :t AND status = 'attempted' AND method = :m",
                t=trans,
                m=method,
            )[0][0]
            answer = real(action, params)
            ccode = parse_qs(answer).get("CCode", ["?"])[0]
            self.seen.append(
                {"action": action, "trans": trans, "amount": params.get("Amount"), "ccode": ccode, "durable": durable}
            )
            return answer

        monkeypatch.setattr(env.sim, "_dispatch_reversal", dispatch)

    def close(self) -> None:
        self._probe.close()


class AdminHarness(Harness):
    def __init__(self, env: Env, injector: Injector, asks: Asks, monkeypatch: pytest.MonkeyPatch) -> None:
        self.asks = asks
        self.monkeypatch = monkeypatch
        self.later = TOMORROW  # how long after the payment the refund is asked (the refund service's clock)
        self.clean: dict[str, list[Point]] = {}  # each flow's clean trace
        self.notes: list[tuple[str, str, str]] = []  # (flow, what, case): documented answers worth knowing
        self.mismatch_ids = iter(range(55_600_001, 56_000_000))
        self.card_saved = False  # the demo user's card, kept by a first payment on the page (a flow charges it)
        super().__init__(env, injector)

    @staticmethod
    def cold_start() -> None:
        for function in (CREATE, CALLBACK, ADMIN):
            reset_function_state(function)
        db_module.reset_default_database()

    def balances(self) -> list[list[Any]]:
        """Per user: the balance and the sum of the whole ledger (purchases and refunds)."""
        return self.rows("""
            SELECT u.id::text, u.credits,
                   (SELECT COALESCE(sum(c.amount), 0) FROM credit_transactions c WHERE c.user_id = u.id)::bigint
              FROM profiles u ORDER BY 1""")

    # -- what the admin client does ------------------------------------------------------------------

    def until_final(self, send: Callable[[], Answer], first: Answer | None, case: Case) -> Answer | None:
        """The same request and key again while there is no answer, 503, or 409 in progress."""
        last = first
        for _ in range(ATTEMPTS):
            if not retryable(last):
                return last
            if last is not None and last.status == 409:
                self.expire_in_progress()
            last = send()
            case.answers.append(("again", last))
        return last

    # -- arranging -------------------------------------------------------------------------------------

    def paid(self, key: str) -> dict[str, Any]:
        """The demo user bought the Starter pack on Hyp's page; the redirect completed it."""
        payment = self.buy(key)
        transaction = self.env.sim.pay(payment["payment_url"], APPROVING_CARD, cvv="125")
        assert page(browser(transaction.redirect_query)) == SUCCESS_PAGE
        return {"payment_id": payment["payment_id"], "txn": transaction.id}

    def charged_unreadably(self, key: str) -> dict[str, Any]:
        """The demo user bought the Starter pack with the saved card; Hyp charged 49.90 and its answer gave the
        amount unreadably (`49,90`): journaled with no amount, the payment in review; an operator completed it naming
        the Id."""
        if not self.card_saved:
            payment = self.buy("fi-admin-first-payment", save_card=True)
            transaction = self.env.sim.pay(payment["payment_url"], APPROVING_CARD, cvv="125")
            assert page(browser(transaction.redirect_query)) == SUCCESS_PAGE
            self.card_saved = True
        real = self.env.sim._soft
        charged: list[str] = []

        def soft(params: dict[str, str]) -> str:
            answer = real(params)
            kept = [part for part in answer.split("&") if not part.startswith("Amount=")]
            charged.append(next(part[3:] for part in kept if part.startswith("Id=")))
            return "&".join([*kept, "Amount=49%2C90"])

        self.monkeypatch.setattr(self.env.sim, "_soft", soft)
        try:
            answer = post({"credit_pack_id": STARTER, "saved_card": True, "cvv": CVV}, key=key)
        finally:
            self.monkeypatch.setattr(self.env.sim, "_soft", real)
        assert answer.status == 202 and len(charged) == 1, answer.body
        payment_id, txn = answer.json["payment_id"], charged[0]
        assert self.rows("SELECT amount FROM hypay_transactions WHERE hypay_id = :h", h=txn) == [[None]]
        body = {"action": "complete", "reason": "Hyp shows the charge", "hypay_id": txn}
        assert admin_post(payment_id, "resolve", body, f"{key}-complete").status == 200
        return {"payment_id": payment_id, "txn": txn}

    def mismatch(self, key: str) -> dict[str, Any]:
        """A payment Hyp said (a callback signed with the terminal's KEY, HMAC-only) was paid 1.00 for 49.90."""
        payment = self.buy(key)
        hypay_id = str(next(self.mismatch_ids))
        claim = [(k, hypay_id if k == "Id" else v) for k, v in unpaid_claim(payment["payment_id"], amount="1.00")]
        use_mode(self.monkeypatch, "hmac")
        try:
            assert notify(forge(claim)).status == 200
        finally:
            use_mode(self.monkeypatch, "both")
        assert self.status(payment["payment_id"]) == "needs_review"
        return {"payment_id": payment["payment_id"], "txn": hypay_id}

    # -- the invariants ----------------------------------------------------------------------------------

    def invariants(self) -> list[str]:
        found: list[str] = []
        sim = self.env.sim
        rows_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rid, pid, txn, method, amount, status, hyp_id, ccode, message, taken, key in self.rows("""
            SELECT id::text, payment_id::text, original_hypay_id, method, amount::text, status, hypay_refund_id,
                   ccode, message, credits_taken, idempotency_key
              FROM refunds ORDER BY created_at, id"""):
            rows_of[txn].append(
                {
                    "id": rid,
                    "payment": pid,
                    "method": method,
                    "amount": _minor(amount),
                    "status": status,
                    "hyp_id": hyp_id,
                    "ccode": ccode,
                    "message": message or "",
                    "taken": taken,
                    "key": key,
                }
            )
        # 1. asked at most once per key, a refund after a cancel only if Hyp refused it, always after the attempt
        asked: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for ask in self.asks.seen:
            asked[ask["trans"]].append(ask)
        for txn, asks in asked.items():
            keys = len(rows_of.get(txn, []))
            for action in ("CancelTrans", "zikoyAPI"):
                n = sum(a["action"] == action for a in asks)
                if n > keys:
                    found.append(f"Hyp transaction {txn}: asked {n} times ({action}) for {keys} Idempotency-Key(s)")
            cancels = [a for a in asks if a["action"] == "CancelTrans"]
            if cancels and any(a["action"] == "zikoyAPI" for a in asks) and cancels[0]["ccode"] not in ("920", "901"):
                found.append(
                    f"Hyp transaction {txn}: refunded after a cancellation Hyp answered CCode {cancels[0]['ccode']}"
                )
            for a in asks:
                if not a["durable"]:
                    found.append(f"Hyp transaction {txn}: {a['action']} asked with no committed attempt of that method")
        # 2. never more than paid; every movement a row, every succeeded row a movement
        moves: dict[str, list[Any]] = defaultdict(list)
        for reversal in sim.reversals:
            moves[reversal.original_id].append(reversal)
        for txn, given_back in sim.refunded.items():
            original = sim.transactions.get(txn)
            if original is not None and given_back > _minor(original.amount):
                found.append(f"Hyp transaction {txn}: {given_back} agorot given back of {original.amount}")
        for txn in set(moves) | set(rows_of):
            movements, rows = moves.get(txn, []), rows_of.get(txn, [])
            may_have_moved = [r for r in rows if r["status"] in ("succeeded", "unknown", "attempted")]
            succeeded = [r for r in rows if r["status"] == "succeeded"]
            if len(movements) > len(may_have_moved):
                found.append(
                    f"Hyp transaction {txn}: Hyp moved money back {len(movements)} time(s)"
                    f" ({', '.join(f'{m.kind} {m.amount}' for m in movements)}), refunds rows that may have:"
                    f" {[(r['status'], r['method']) for r in rows]}"
                )
            if len(succeeded) > len(movements):
                found.append(
                    f"Hyp transaction {txn}: {len(succeeded)} succeeded refund rows, {len(movements)} movements"
                )
            for r in succeeded:
                match = [
                    m
                    for m in movements
                    if m.kind == r["method"]
                    and (m.kind == "cancel" or (m.id == r["hyp_id"] and _minor(m.amount) == r["amount"]))
                ]
                if not match:
                    found.append(
                        f"refund {r['id']} is succeeded ({r['method']}, {r['hyp_id']}) but Hyp made no such movement"
                    )
        # 3. credits: each succeeded refund took its share once; nothing else took any
        granted = {
            pid: int(total)
            for pid, total in self.rows("""
                SELECT payment_id::text, sum(amount) FROM credit_transactions
                 WHERE type = 'purchase' AND payment_id IS NOT NULL GROUP BY 1""")
        }
        ledger = {
            pid: (int(n), int(total))
            for pid, n, total in self.rows("""
                SELECT payment_id::text, count(*), sum(amount) FROM credit_transactions
                 WHERE type = 'refund' GROUP BY 1""")
        }
        paying = dict(self.rows("SELECT id::text, hypay_transaction_id FROM payments"))
        by_payment: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        for txn, rows in rows_of.items():
            for r in rows:
                by_payment[r["payment"]].append((txn, r))
        for pid in set(by_payment) | set(ledger):
            entries = by_payment.get(pid, [])
            took = [r for _, r in entries if r["status"] == "succeeded" and r["taken"] > 0]
            took_expected = (len(took), -sum(r["taken"] for r in took))
            if ledger.get(pid, (0, 0)) != took_expected:
                found.append(
                    f"payment {pid}: refund ledger rows {ledger.get(pid, (0, 0))}, succeeded refunds: {took_expected}"
                )
            before: dict[str, int] = defaultdict(int)
            for txn, r in entries:
                if r["status"] != "succeeded":
                    if r["taken"]:
                        found.append(f"refund {r['id']} is {r['status']} and took {r['taken']} credits")
                    continue
                original = sim.transactions.get(txn)
                paid_minor = _minor(original.amount) if original is not None else r["amount"]
                grants = granted.get(pid, 0) if paying.get(pid) == txn else 0
                due = credits_to_take(grants, paid_minor, before[txn], r["amount"])
                before[txn] += r["amount"]
                if r["taken"] != due:
                    found.append(f"refund {r['id']} took {r['taken']} credits, the docs promise {due} ({r['message']})")
        for user, credits, total in self.balances():
            base_credits, base_total = self.baseline.get(user, [0, 0])
            if credits - base_credits != total - base_total:
                found.append(f"user {user}: balance moved {credits - base_credits}, the ledger {total - base_total}")
        found += self.purchase_grant_problems()
        # 4. the audit trail
        refund_audits = Counter(
            rid
            for (rid,) in self.rows(
                "SELECT request->>'refund_id' FROM admin_audit_log WHERE action = 'refund' AND NOT request ? 'outcome'"
            )
        )
        # an operator's finding settling an unknown refund: one audit row, written with the change
        for rid, n in self.rows("""
            SELECT request->>'refund_id', count(*) FROM admin_audit_log
             WHERE action = 'refund' AND request ? 'outcome' GROUP BY 1"""):
            if n != 1:
                found.append(f"refund {rid}: {n} audit rows of an operator's finding")
        for rows in rows_of.values():
            for r in rows:
                released = r["status"] == "refused" and r["ccode"] is None and r["message"].startswith("not sent: ")
                audits_expected = 0 if r["status"] == "attempted" or released else 1
                if refund_audits.get(r["id"], 0) != audits_expected:
                    found.append(f"refund {r['id']} ({r['status']}) has {refund_audits.get(r['id'], 0)} audit rows")
        for pid, n, states in self.rows("""
            SELECT a.payment_id::text, count(*), array_agg(DISTINCT (a.after_state->>'status') || '/' || p.status)
              FROM admin_audit_log a JOIN payments p ON p.id = a.payment_id
             WHERE a.action = 'resolve' GROUP BY 1"""):
            if n != 1 or any(state.split("/")[0] != state.split("/")[1] for state in states):
                found.append(f"payment {pid}: {n} resolve audit rows, after/now {states}")
        # 5. the journal
        journal = {
            hyp_id: (pid, source, decision, detail or "")
            for hyp_id, pid, source, decision, detail in self.rows(
                "SELECT hypay_id, payment_id::text, source, decision, detail FROM hypay_transactions"
            )
        }
        for txn, rows in rows_of.items():
            for r in rows:
                if r["status"] != "succeeded":
                    continue
                if r["method"] == "refund":
                    entry = journal.get(r["hyp_id"] or "")
                    if entry is None or entry[:3] != (r["payment"], "refund", "refunded"):
                        found.append(f"refund {r['id']}: Hyp's refund {r['hyp_id']} journaled as {entry}")
                elif f"cancelled (CancelTrans) by refund {r['id']}" not in journal.get(txn, ("", "", "", ""))[3]:
                    found.append(f"refund {r['id']}: the cancellation is not noted on {txn}'s journal row")
        return found


# -- the flows ---------------------------------------------------------------------------------------------


def _index(trace: list[Point], found: Callable[[Point], bool], start: int = 0) -> int | None:
    return next((i for i in range(start, len(trace)) if found(trace[i])), None)


def _admin(h: Harness) -> AdminHarness:
    assert isinstance(h, AdminHarness)
    return h


def may_be_unknown(h: AdminHarness, case: Case) -> bool:
    """Whether the case's fault may leave the refund's outcome unknown (202) by design: Hyp's answer was lost
    (a Hyp call failed after the request may have left), or the invocation was killed after the attempt was
    committed and before the outcome was."""
    if case.at is None:
        return False
    trace = h.clean[case.flow]
    if trace[case.at].kind == "hyp":
        return True
    inserted = _index(trace, lambda p: p.kind == "db" and p.label.startswith("insert refunds"))
    attempt = _index(trace, lambda p: p == Point("db", "COMMIT"), (inserted or 0) + 1)
    stored = max(i for i, p in enumerate(trace) if p == Point("db", "COMMIT"))
    return case.fault == "killed" and attempt is not None and attempt <= case.at < stored


def refund_flow(
    name: str,
    later: dt.timedelta,
    *,
    amount: str | None = None,
    transmitted: bool = False,
    earlier: str | None = None,
    named: bool = False,
) -> Flow:
    """A refund of a fresh paid payment (49.90, 100 credits): `amount` (None: all that remains), asked `later`
    after the payment; `transmitted`: Hyp can no longer cancel it (920); `earlier`: a partial refund of that much
    succeeded before (with its own key, no fault), so this one is the rest and its credits are the rest; `named`: the
    payment is a saved-card charge whose amount Hyp's answer gave unreadably, and the refund names it (49.90)."""
    before = _minor(earlier) if earlier else 0
    want = amount or f"{(_minor(PAID) - before) / 100:.2f}"
    cancellable = later == TODAY and amount is None and not transmitted and not earlier and not named
    method = "cancel" if cancellable else "refund"
    # Credits in proportion, cumulative, rounded half up: 20.00 of 49.90 takes 40, the rest 60, the whole 100
    credits = credits_to_take(CREDITS, _minor(PAID), before, _minor(want))

    def prepare(harness: Harness, key: str) -> dict[str, Any]:
        h = _admin(harness)
        h.later = later
        ctx = h.charged_unreadably(key) if named else h.paid(key)
        if transmitted:
            h.env.sim.transmit(ctx["txn"])  # the day's transmission went: CancelTrans answers 920
        if earlier:
            done = admin_post(ctx["payment_id"], "refund", {"reason": REASON, "amount": earlier}, f"{key}-earlier")
            assert done.status == 201, done.body
        body = {
            "reason": REASON,
            **({"amount": amount} if amount else {}),
            **({"original_amount": PAID} if named else {}),
        }
        return {**ctx, "admin_key": f"{key}-refund", "body": body, "given_back": h.env.sim.refunded.get(ctx["txn"], 0)}

    def send(ctx: dict[str, Any]) -> Answer:
        return admin_post(ctx["payment_id"], "refund", ctx["body"], ctx["admin_key"])

    def converge(harness: Harness, ctx: dict[str, Any], first: Answer | None, case: Case) -> str | None:
        h = _admin(harness)
        final = h.until_final(lambda: send(ctx), first, case)
        rows = h.rows(
            "SELECT status, method FROM refunds WHERE idempotency_key = :k",
            k=f"refund:{ctx['payment_id']}:{ctx['admin_key']}",
        )
        row = rows[0] if len(rows) == 1 else None
        asked = ", ".join(f"{a['action']} -> CCode {a['ccode']}" for a in h.asks.seen if a["trans"] == ctx["txn"])
        problems = []
        if final is not None and final.status == 201:
            body = final.json
            expected = (want, method, "succeeded", credits)
            got = (body.get("amount"), body.get("method"), body.get("status"), body.get("credits_taken"))
            if got != expected:
                problems.append(f"refunded {got}, expected {expected}")
            if row is None or row[0] != "succeeded":
                problems.append(f"answered 201, the key's refunds row is {row}")
            if named:
                learned = h.rows(
                    "SELECT amount::text, amount_named_by FROM hypay_transactions WHERE hypay_id = :h", h=ctx["txn"]
                )
                if learned != [[PAID, "alice"]]:
                    problems.append(f"the journal did not learn the named original: {learned}")
        elif final is not None and final.status == 202 and may_be_unknown(h, case):
            if row is None or row[0] not in ("unknown", "attempted"):
                problems.append(f"answered 202, the key's refunds row is {row} (a human must find it unknown)")
            else:
                moved = "moved money" if h.env.sim.refunded.get(ctx["txn"], 0) > ctx["given_back"] else "moved nothing"
                h.notes.append((case.flow, f"202 with the row {row[0]}; Hyp {moved}", str(case)))
        else:
            problems.append(
                f"the refund did not end in 201 (or in a 202 this fault may cause): {describe(final)};"
                f" the key's refunds row: {row}; Hyp was asked: {asked or 'nothing'}"
            )
        return "; ".join(problems) or None

    return Flow(name, prepare, send, converge)


def resolve_flow(name: str, action: str) -> Flow:
    status = {"complete": "completed", "fail": "failed"}[action]

    def prepare(harness: Harness, key: str) -> dict[str, Any]:
        return {
            **_admin(harness).mismatch(key),
            "admin_key": f"{key}-resolve",
            "body": {"action": action, "reason": REASON},
        }

    def send(ctx: dict[str, Any]) -> Answer:
        return admin_post(ctx["payment_id"], "resolve", ctx["body"], ctx["admin_key"])

    def converge(harness: Harness, ctx: dict[str, Any], first: Answer | None, case: Case) -> str | None:
        h = _admin(harness)
        final = h.until_final(lambda: send(ctx), first, case)
        pid = ctx["payment_id"]
        audits = h.rows(
            "SELECT admin, idempotency_key FROM admin_audit_log WHERE action = 'resolve' AND payment_id = :p::uuid",
            p=pid,
        )
        [[grants]] = h.rows(
            "SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid AND type = 'purchase'", p=pid
        )
        problems = []
        if (
            h.status(pid) != status
            or audits != [["alice", ctx["admin_key"]]]
            or grants != (1 if action == "complete" else 0)
        ):
            problems.append(f"payment {h.status(pid)}, resolve audit rows {audits}, {grants} grants")
        if final is not None and final.status == 200:
            body = final.json
            if (body.get("status"), body.get("credits_granted")) != (status, CREDITS if action == "complete" else 0):
                problems.append(f"answered {describe(final)}")
        else:
            problems.append(f"the resolve did not end in 200: {describe(final)}")
        return "; ".join(problems) or None

    return Flow(name, prepare, send, converge)


def settle_flow(name: str) -> Flow:
    """A partial refund (20.00 of 49.90, zikoyAPI) whose answer was lost (Hyp refunded: the simulator's `lost`), then
    the operator's finding as Hyp's portal shows it, `POST /admin/refunds/{id}/outcome` refunded with Hyp's refund Id:
    stored as Hyp's answer would have been (40 credits taken back once, Hyp's refund journaled), nothing sent to Hyp."""

    def prepare(harness: Harness, key: str) -> dict[str, Any]:
        h = _admin(harness)
        h.later = TOMORROW
        ctx = h.paid(key)
        h.env.sim.faults.add("zikoyAPI", "lost")
        lost = admin_post(ctx["payment_id"], "refund", {"amount": "20.00", "reason": REASON}, f"{key}-refund")
        assert lost.status == 202, lost.body
        [[refund_id]] = h.rows("SELECT id::text FROM refunds WHERE payment_id = :p::uuid", p=ctx["payment_id"])
        [reversal] = [m for m in h.env.sim.reversals if m.original_id == ctx["txn"]]
        body = {"outcome": "refunded", "hypay_refund_id": reversal.id, "reason": "Hyp's portal shows the refund"}
        return {**ctx, "refund_id": refund_id, "admin_key": f"{key}-settle", "body": body, "hyp_refund": reversal.id}

    def send(ctx: dict[str, Any]) -> Answer:
        headers = {"Authorization": f"Bearer {ALICE}", "Idempotency-Key": ctx["admin_key"]}
        return invoke(ADMIN, "POST", f"/admin/refunds/{ctx['refund_id']}/outcome", body=ctx["body"], headers=headers)

    def converge(harness: Harness, ctx: dict[str, Any], first: Answer | None, case: Case) -> str | None:
        h = _admin(harness)
        final = h.until_final(lambda: send(ctx), first, case)
        problems = []
        if final is None or final.status != 200 or final.json.get("status") != "succeeded":
            problems.append(f"the finding did not end in 200 succeeded: {describe(final)}")
        elif final.json.get("credits_taken") != 40:
            problems.append(f"credits taken {final.json.get('credits_taken')}, expected 40")
        journal = h.rows("SELECT decision, source FROM hypay_transactions WHERE hypay_id = :h", h=ctx["hyp_refund"])
        if journal != [["refunded", "refund"]]:
            problems.append(f"Hyp's refund {ctx['hyp_refund']} journaled as {journal}")
        return "; ".join(problems) or None

    return Flow(name, prepare, send, converge)


def close_flow(name: str) -> Flow:
    """A payment failed by an operator after an amount mismatch, whose transaction (held for review) the operator
    refunded in Hyp's portal: `POST /admin/transactions/{id}/close` marks it so, audited once, out of the queue.
    Nothing is sent to Hyp and no credits move."""

    def prepare(harness: Harness, key: str) -> dict[str, Any]:
        h = _admin(harness)
        ctx = h.mismatch(key)
        failed = admin_post(ctx["payment_id"], "resolve", {"action": "fail", "reason": REASON}, f"{key}-fail")
        assert failed.status == 200, failed.body
        body = {"outcome": "refunded_in_hyp", "reason": "refunded in Hyp's portal"}
        return {**ctx, "admin_key": f"{key}-close", "body": body}

    def send(ctx: dict[str, Any]) -> Answer:
        headers = {"Authorization": f"Bearer {ALICE}", "Idempotency-Key": ctx["admin_key"]}
        return invoke(ADMIN, "POST", f"/admin/transactions/{ctx['txn']}/close", body=ctx["body"], headers=headers)

    def converge(harness: Harness, ctx: dict[str, Any], first: Answer | None, case: Case) -> str | None:
        h = _admin(harness)
        final = h.until_final(lambda: send(ctx), first, case)
        problems = []
        if final is None or final.status != 200 or final.json.get("closed_as") != "refunded_in_hyp":
            problems.append(f"the close did not end in 200 closed: {describe(final)}")
        closed = h.rows("SELECT closed_as, closed_by FROM hypay_transactions WHERE hypay_id = :h", h=ctx["txn"])
        audits = h.rows("SELECT admin, idempotency_key FROM admin_audit_log WHERE action = 'close'")
        audited = [a for a in audits if a[1] == ctx["admin_key"]]
        if closed != [["refunded_in_hyp", "alice"]] or audited != [["alice", ctx["admin_key"]]]:
            problems.append(f"journal {closed}, close audit rows {audited}")
        [[grants]] = h.rows("SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid", p=ctx["payment_id"])
        if grants or h.status(ctx["payment_id"]) != "failed":
            problems.append(f"payment {h.status(ctx['payment_id'])}, {grants} ledger rows")
        return "; ".join(problems) or None

    return Flow(name, prepare, send, converge)


FLOWS = (
    refund_flow("refund_cancel_today", TODAY),
    refund_flow("refund_zikoy_older", TOMORROW),
    refund_flow("refund_cancel_refused_then_zikoy", TODAY, transmitted=True),
    refund_flow("refund_partial", TOMORROW, amount="20.00"),
    refund_flow("refund_rest_after_partial", TOMORROW, earlier="20.00"),
    refund_flow("refund_named_original", TODAY, named=True),
    settle_flow("refund_outcome_settled"),
    resolve_flow("resolve_complete", "complete"),
    resolve_flow("resolve_fail", "fail"),
    close_flow("close_refunded_in_hyp"),
)


@pytest.mark.usefixtures("admin")
def test_crash_at_every_step_of_the_admin_flows_money_stays_right(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from payments.services import refund as refund_module  # here: it reads the metrics namespace on import

    monkeypatch.setenv("CREATE_PAYMENT_RATE_LIMIT", "1000000")  # one user makes every payment here
    api_settings.cache_clear()
    # Hyp's and the service's same-day cut-off (22:00 Israel time) lifted, as test_refunds.py does, so that which
    # method a flow takes does not depend on the hour; the service's clock is the harness's (`later`).
    monkeypatch.setattr(env.sim, "cancel_until_hour", 24)
    real_deps = refund_module.RefundsDeps
    harness: AdminHarness | None = None

    def clock() -> dt.datetime:  # read at each refund: the function's service outlives a case
        return dt.datetime.now(dt.UTC) + (harness.later if harness is not None else TOMORROW)

    def deps(store: Any, gateway: Any) -> Any:
        return real_deps(store, gateway, clock=clock, cancel_until_hour=24)

    monkeypatch.setattr(refund_module, "RefundsDeps", deps)
    AdminHarness.cold_start()
    wanted = {n for n in os.environ.get("FAULT_INJECTION_FLOWS", "").split(",") if n}
    flows = [f for f in FLOWS if not wanted or f.name in wanted]
    asks = Asks(env, monkeypatch)  # before the Injector: its probe uses pg8000's own `run`
    admin_conn = connect(env.url)
    injector = Injector(admin_conn)
    injector.install(monkeypatch)
    started = time.monotonic()
    try:
        harness = AdminHarness(env, injector, asks, monkeypatch)
        cases, traces = every_case(harness, flows, harness.clean)  # its cases read their flow's clean trace
    finally:
        asks.close()
        admin_conn.close()
    notes = [f"  notes (documented answers, not failures): {len(harness.notes)} cases"]
    for (flow_name, what), n in Counter((f, w) for f, w, _ in harness.notes).items():
        examples = [c.split(", ", 1)[1] for f, w, c in harness.notes if (f, w) == (flow_name, what)]
        notes.append(f"    {flow_name}: {n} x {what}: " + "; ".join(examples))
    summary, held = report("admin fault injection", cases, traces, injector, started, notes)
    with capsys.disabled():
        print("\n" + summary)
    assert held, summary
