"""Proof, found automatically: a Hypothesis state machine drives the real functions (through their handlers), the
database (embedded Postgres, the functions logged in as payments_backend) and the Hyp simulator through random
sequences of what happens to money, and checks the money's invariants after every step.

Steps: buy a pack (a page, with or without keeping the card) and pay its page (approved or declined, the same page
again: a second charge); deliver a transaction's redirect or notification (POST or GET), once or twice; a callback
signed with our KEY for another amount or code (HMAC only); a saved-card charge (Hyp answering, hanging, or its
answer lost); the web app's own ledger rows (a usage, a reversal, a grant of its own); the admin's resolve (complete
or fail, naming a transaction or not), refund (whole or part, naming one or not; Hyp's answer lost or late), a refund's
outcome as Hyp's portal shows it, a close of a transaction refunded in Hyp's portal; the cleanup (now, or as if the
payments were old). Besides the admin's actions on random payments and transactions (most rightly refused), two
steps take what the queue lists and act as docs/operations.md says: resolve a payment in review (as Hyp's portal
shows its Order: complete naming the charge, else fail; or a random action), close a transaction held for review or
unmatched after refunding the rest of it in the portal.

Invariants: no 5xx but a 503 with Retry-After (or the documented 502 "Hyp refused the refund"); each balance moves
exactly as its ledger; a completed payment has one purchase row (or its credits standing in full), no payment more
purchases than its credits; refunds never exceed what a transaction paid, and Hyp never gave back more; every
transaction Hyp approved and told us of has a row; no credits grow for a transaction refunded in full or closed, and a
closed one never pays a completed payment; the review queue lists every payment in review, every refund of unknown
outcome and every charged transaction whose money is not settled, and nothing settled or never charged.

STATEFUL_EXAMPLES / STATEFUL_STEPS / STATEFUL_SEED make a run longer or another one; STATEFUL_DUMP=1 prints each
example's resolves and closes. The suite's run is short (about half a minute, the same sequences every time): it
reaches grants, deliveries, forged callbacks, saved-card charges, refunds, refund outcomes and the cleanup often,
successful resolves and closes of what the queue lists a few times (it prints the count of each step's answers); a
longer run (STATEFUL_EXAMPLES=200) reaches them more."""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ops.hypay_simulator import (
    APPROVING_CARD,
    DECLINING_CARD,
    HypaySimulator,
    public_test_terminal,
)
from ops.seed import DEMO_USER_ID, seed
from payments import settings as settings_module
from payments.adapters import db as db_module
from payments.services.cleanup import CleanupPolicy, run_cleanup
from tests.integration.test_callback_attacks import unpaid_claim
from tests.integration.test_hypay_callback import forge
from tests.support.api import Answer, invoke, reset_function_state
from tests.support.payments import (
    CALLBACK,
    CREATE,
    CVV,
    PRO,
    STARTER,
    functions_environment,
)
from tests.support.pg import connect, database, with_database

ADMIN = "AdminFunction"
CLEANUP = "CleanupFunction"
ALICE = "test-admin-token-0123456789"
FUNCTIONS = (CREATE, CALLBACK, ADMIN, CLEANUP)
LOG: list[str] = []
TOTAL: Counter[str] = Counter()


def _minor(v: Any) -> int:
    return int(Decimal(str(v)) * 100)


class Problem(AssertionError):
    pass


def _tally(line: str) -> str:
    """A step's kind and answer, for the counts printed after a run: an admin call by its action."""
    what, _, answer = line.partition(" -> ")
    words = what.split(" ")
    kind = words[1].rstrip("/").rsplit("/", 1)[-1] if words[0] in ("POST", "GET") and len(words) > 1 else words[0]
    kind = kind.split("?")[0]
    if words[0] == "POST" and len(words) > 1 and "/review" not in words[1]:
        kind = "admin " + kind + (" (listed)" if "test, listed" in what or "test, runbook" in what else "")
    return f"{kind} {answer[:3]}".strip()


def make_machine(pg_server: Any, template: str, login: str, mp: pytest.MonkeyPatch) -> type:
    class Money(RuleBasedStateMachine):
        payments = Bundle("payments")
        txns = Bundle("txns")

        def __init__(self) -> None:
            super().__init__()
            LOG.clear()
            self.dbname = pg_server.create(template=template)
            self.url = with_database(pg_server.url, self.dbname)
            d = database(self.url)
            seed(d)
            d.close()
            self.conn = connect(self.url)
            self.sim = HypaySimulator([public_test_terminal()]).start()
            self.sim.faults.hang_seconds = 1.0
            environment = functions_environment(self.url, login, self.sim.url)
            self.fn_url = environment["DATABASE_URL"]  # the functions' login
            for k, v in {
                **environment,
                "ADMIN_API_TOKEN": json.dumps({"tokens": {"alice": ALICE}}),
                "ADMIN_CHARGE_SETTLE_SECONDS": "0",
                "HYPAY_VERIFY_MODE": "both",
            }.items():
                mp.setenv(k, v)
            self._reset()
            self.n = 0
            self.forged: set[str] = set()
            self.delivered: set[str] = set()  # sim transactions whose callback reached us at least once
            self.soft_answered: set[str] = set()  # saved-card charges whose answer we read
            self.dead: dict[str, int] = {}  # txn fully refunded / closed -> purchase credits of its payment then
            self.card_saved = False
            self.forge_ids = iter(range(77_000_001, 78_000_000))

        def _reset(self) -> None:
            for v in vars(settings_module).values():
                if callable(getattr(v, "cache_clear", None)):
                    v.cache_clear()
            db_module.reset_default_database()
            for f in FUNCTIONS:
                reset_function_state(f)

        def teardown(self) -> None:
            TOTAL.update(_tally(line) for line in LOG)
            if os.environ.get("STATEFUL_DUMP"):
                print("\n".join(line for line in LOG if "resolve" in line or "close" in line))
            TOTAL["examples"] += 1
            self.sim.stop()
            self.conn.close()
            db_module.reset_default_database()
            pg_server.drop(self.dbname)

        # -- helpers -------------------------------------------------------------------------------
        def key(self) -> str:
            self.n += 1
            return f"k-{self.n}-{uuid.uuid4().hex[:6]}"

        def rows(self, sql: str, **p: Any) -> list[list[Any]]:
            return self.conn.run(sql, **p)

        def check(self, what: str, a: Answer) -> Answer:
            LOG.append(f"{what} -> {a.status} {str(a.body)[:300]}")
            documented_refusal = (
                a.status == 502 and "/refund" in what and (a.json or {}).get("refund_status") == "refused"
            )
            if a.status >= 500 and not (a.status == 503 and "retry-after" in a.headers) and not documented_refusal:
                raise Problem(f"{what}: {a.status} {a.body}")
            return a

        def admin(self, path: str, body: dict[str, Any]) -> Answer:
            h = {"Authorization": f"Bearer {ALICE}", "Idempotency-Key": self.key()}
            return self.check(f"POST {path} {body}", invoke(ADMIN, "POST", path, body=body, headers=h))

        def mode(self, m: str) -> None:
            mp.setenv("HYPAY_VERIFY_MODE", m)
            settings_module.callback_settings.cache_clear()
            reset_function_state(CALLBACK)

        # -- rules ---------------------------------------------------------------------------------
        @rule(target=payments, pack=st.sampled_from([STARTER, PRO]), save=st.booleans())
        def buy(self, pack: str, save: bool) -> Any:
            return self._buy(pack, save)

        def _buy(self, pack: str, save: bool) -> Any:
            self.rows("DELETE FROM rate_limits")  # the test buys faster than a person may
            h = {"Idempotency-Key": self.key()}
            a = self.check(
                f"buy {pack} save={save}",
                invoke(
                    CREATE,
                    "POST",
                    "/payments",
                    user=DEMO_USER_ID,
                    body={"credit_pack_id": pack, "save_card": save},
                    headers=h,
                ),
            )
            assert a.status == 201, a.body
            return {"id": a.json["payment_id"], "url": a.json["payment_url"]}

        @rule(target=txns, p=payments, approve=st.sampled_from([True, True, True, False]))
        def pay(self, p: dict[str, Any], approve: bool) -> Any:
            return self._pay(p, approve)

        def _pay(self, p: dict[str, Any], approve: bool) -> Any:
            t = self.sim.pay(p["url"], APPROVING_CARD if approve else DECLINING_CARD, cvv="125" if approve else "123")
            LOG.append(f"pay {p['id']} approve={approve} -> {t.id}")
            return {"id": t.id, "raw": t.redirect_query, "payment": p["id"], "amount": t.amount}

        @rule(
            target=txns,
            pack=st.sampled_from([STARTER, PRO]),
            save=st.booleans(),
            how=st.sampled_from(["return", "notify"]),
        )
        def paid(self, pack: str, save: bool, how: str) -> Any:
            p = self._buy(pack, save)
            t = self._pay(p, True)
            self._deliver(t, how, 1)
            return t

        @rule(t=txns, how=st.sampled_from(["return", "notify", "notify-get"]), times=st.integers(1, 2))
        def deliver(self, t: dict[str, Any], how: str, times: int) -> None:
            self._deliver(t, how, times)

        def _deliver(self, t: dict[str, Any], how: str, times: int) -> None:
            for _ in range(times):
                if how == "return":
                    a = invoke(CALLBACK, "GET", f"/hypay/return?{t['raw']}", headers={"accept": "text/html"})
                elif how == "notify":
                    a = invoke(
                        CALLBACK,
                        "POST",
                        "/hypay/notify",
                        body=t["raw"],
                        source_ip="198.51.100.20",
                        headers={"content-type": "application/x-www-form-urlencoded"},
                    )
                else:
                    a = invoke(CALLBACK, "GET", f"/hypay/notify?{t['raw']}", source_ip="198.51.100.20")
                self.check(f"deliver {how} {t['id']}", a)
                if a.status < 500:
                    self.delivered.add(t["id"])

        @rule(
            target=txns,
            p=payments,
            amount=st.sampled_from(["49.90", "199.00", "1.00", "250.00"]),
            ccode=st.sampled_from(["0", "0", "4"]),
        )
        def forged(self, p: dict[str, Any], amount: str, ccode: str) -> Any:
            hid = str(next(self.forge_ids))
            claim = [(k, hid if k == "Id" else v) for k, v in unpaid_claim(p["id"], ccode=ccode, amount=amount)]
            raw = forge(claim)
            self.mode("hmac")
            try:
                a = invoke(
                    CALLBACK,
                    "POST",
                    "/hypay/notify",
                    body=raw,
                    source_ip="198.51.100.20",
                    headers={"content-type": "application/x-www-form-urlencoded"},
                )
                self.check(f"forged hmac-only {hid} {amount} ccode {ccode} for {p['id']}", a)
            finally:
                self.mode("both")
            if ccode == "0":
                self.forged.add(hid)
            return {"id": hid, "raw": raw, "payment": p["id"], "amount": amount, "forged": True}

        @rule(t=txns, pack=st.sampled_from([STARTER, PRO]), fault=st.sampled_from([None, None, "hang", "lost"]))
        def saved_card_charge(self, t: Any, pack: str, fault: str | None) -> None:
            if not self.rows("SELECT 1 FROM saved_cards LIMIT 1"):
                return
            if fault:
                self.sim.faults.add("soft", fault)
            before = set(self.sim.transactions)
            self.rows("DELETE FROM rate_limits")
            h = {"Idempotency-Key": self.key()}
            a = self.check(
                f"saved-card charge {pack} fault={fault}",
                invoke(
                    CREATE,
                    "POST",
                    "/payments",
                    user=DEMO_USER_ID,
                    body={"credit_pack_id": pack, "saved_card": True, "cvv": CVV},
                    headers=h,
                ),
            )
            self.sim.faults.clear()
            new = set(self.sim.transactions) - before
            if fault is None and a.status < 500:
                self.soft_answered |= new
            LOG.append(f"   sim made {sorted(new)}")

        @rule(p=payments, kind=st.sampled_from(["usage", "refund", "purchase"]), n=st.sampled_from([1, 50, 100, 500]))
        def web_app_row(self, p: dict[str, Any], kind: str, n: int) -> None:
            """The web app's own writes: a usage, a reversal of a payment's credits, a grant of its own; each with
            the balance change, in one transaction (as the tables' owner)."""
            amount = n if kind == "purchase" else -n
            pid = None if kind == "usage" else p["id"]
            try:
                self.conn.run("BEGIN")
                self.conn.run(
                    "INSERT INTO credit_transactions (user_id, amount, type, description, payment_id)"
                    " VALUES (:u::uuid, :a, :t, 'web app', CAST(:p AS uuid))",
                    u=DEMO_USER_ID,
                    a=amount,
                    t=kind,
                    p=pid,
                )
                self.conn.run(
                    "UPDATE profiles SET credits = credits + :a WHERE id = :u::uuid", a=amount, u=DEMO_USER_ID
                )
                self.conn.run("COMMIT")
                LOG.append(f"web app {kind} {amount} payment={pid}")
            except Exception as exc:  # noqa: BLE001 - a unique index refusing it: the web app's own transaction
                self.conn.run("ROLLBACK")
                LOG.append(f"web app {kind} {amount} payment={pid} refused: {str(exc)[:120]}")

        def _journal_ids(self, pid: str) -> list[str]:
            return [
                r[0] for r in self.rows("SELECT hypay_id FROM hypay_transactions WHERE payment_id = :p::uuid", p=pid)
            ]

        @rule(p=payments, action=st.sampled_from(["complete", "fail"]), name=st.booleans(), data=st.data())
        def resolve(self, p: dict[str, Any], action: str, name: bool, data: Any) -> None:
            body: dict[str, Any] = {"action": action, "reason": "stateful test"}
            ids = self._journal_ids(p["id"])
            if name and ids:
                body["hypay_id"] = data.draw(st.sampled_from(ids))
            self.admin(f"/admin/payments/{p['id']}/resolve", body)

        @rule(
            t=txns,
            part=st.sampled_from([None, None, "10.00", "20.00"]),
            name=st.booleans(),
            fault=st.sampled_from([None, None, None, "lost", "hang"]),
            data=st.data(),
        )
        def refund_txn(self, t: Any, part: Any, name: bool, fault: Any, data: Any) -> None:
            self.refund({"id": t["payment"]}, part, name, fault, data)

        @rule(t=txns, action=st.sampled_from(["complete", "fail"]), name=st.booleans(), data=st.data())
        def resolve_txn(self, t: Any, action: str, name: bool, data: Any) -> None:
            self.resolve({"id": t["payment"]}, action, name, data)

        @rule(
            p=payments,
            part=st.sampled_from([None, None, "10.00", "20.00", "49.90"]),
            name=st.booleans(),
            fault=st.sampled_from([None, None, None, "lost", "hang"]),
            data=st.data(),
        )
        def refund(self, p: dict[str, Any], part: str | None, name: bool, fault: str | None, data: Any) -> None:
            body: dict[str, Any] = {"reason": "stateful test"}
            if part:
                body["amount"] = part
            ids = self._journal_ids(p["id"])
            if name and ids:
                body["hypay_id"] = data.draw(st.sampled_from(ids))
            if fault:
                self.sim.faults.add("zikoyAPI", fault)
                self.sim.faults.add("CancelTrans", fault)
            try:
                self.admin(f"/admin/payments/{p['id']}/refund", body)
            finally:
                self.sim.faults.clear()

        # The two rules above reach a payment in review only when the drawn one happens to be in it; these take one
        # the queue lists and act as its runbook says (docs/operations.md), so that resolving and closing succeed
        # often enough to be tested, not only to be refused.
        def _in_review(self) -> list[list[Any]]:
            return self.rows("SELECT id::text FROM payments WHERE status = 'needs_review' ORDER BY id")

        def _closable(self) -> list[list[Any]]:
            return self.rows(
                "SELECT hypay_id, payment_id::text FROM hypay_transactions"
                " WHERE source <> 'refund' AND closed_at IS NULL AND decision IN ('review', 'unmatched')"
                " ORDER BY hypay_id"
            )

        @precondition(lambda self: bool(self._in_review()))
        @rule(runbook=st.booleans(), action=st.sampled_from(["complete", "fail"]), data=st.data())
        def resolve_listed(self, runbook: bool, action: str, data: Any) -> None:
            [pid] = data.draw(st.sampled_from(self._in_review()))
            body: dict[str, Any] = {"action": action, "reason": "stateful test, listed"}
            if runbook:
                # Hyp's transactions of this Order, as its portal shows them: charged -> complete naming it; else fail
                charged = sorted(t.id for t in self.sim.transactions.values() if t.order == pid and t.ccode == 0)
                body = {"action": "complete", "hypay_id": charged[0]} if charged else {"action": "fail"}
                body["reason"] = "stateful test, runbook"
            elif data.draw(st.booleans()) and (ids := self._journal_ids(pid)):
                body["hypay_id"] = data.draw(st.sampled_from(ids))
            self.admin(f"/admin/payments/{pid}/resolve", body)

        @precondition(lambda self: bool(self._closable()))
        @rule(data=st.data())
        def close_listed(self, data: Any) -> None:
            hid, pid = data.draw(st.sampled_from(self._closable()))
            self.close({"id": hid, "payment": pid, "forged": hid in self.forged}, in_portal=True)

        @rule(t=txns, data=st.data())
        def refund_outcome(self, t: Any, data: Any) -> None:
            rows = self.rows(
                "SELECT id::text, original_hypay_id, method, amount::text FROM refunds"
                " WHERE status IN ('unknown', 'attempted')"
            )
            if not rows:
                return
            rid, orig, method, amount = data.draw(st.sampled_from(rows))
            self.rows(
                "UPDATE refunds SET created_at = created_at - interval '10 minutes',"
                " updated_at = updated_at - interval '10 minutes' WHERE id = :r::uuid",
                r=rid,
            )
            # the truth, as Hyp's portal shows it
            moved = [
                r
                for r in self.sim.reversals
                if r.original_id == orig
                and r.kind == method
                and (method == "cancel" or _minor(r.amount) == _minor(amount))
            ]
            known = {r[0] for r in self.rows("SELECT hypay_refund_id FROM refunds WHERE hypay_refund_id IS NOT NULL")}
            moved = [r for r in moved if (r.id or "") not in known]
            if moved:
                body = {"outcome": "refunded", "reason": "portal shows it"}
                if moved[0].id:
                    body["hypay_refund_id"] = moved[0].id
            else:
                body = {"outcome": "not_refunded", "reason": "portal shows nothing"}
            self.admin(f"/admin/refunds/{rid}/outcome", body)

        @rule(t=txns, in_portal=st.booleans())
        def close(self, t: dict[str, Any], in_portal: bool) -> None:
            if in_portal and not t.get("forged"):
                # an operator refunds the rest in Hyp's portal first (the truth the close reports)
                orig = self.sim.transactions.get(t["id"])
                if orig is None or orig.ccode != 0:
                    return
                rest = _minor(orig.amount) - self.sim.refunded.get(orig.id, 0)
                if rest <= 0:
                    return
                ans = self.sim.refund_in_portal(orig.id, f"{rest / 100:.2f}")
                LOG.append(f"portal refund {orig.id} {rest} -> {ans}")
            elif not t.get("forged"):
                orig = self.sim.transactions.get(t["id"])
                if orig is None or self.sim.refunded.get(orig.id, 0) < _minor(orig.amount):
                    return  # the operator closes only what the portal shows refunded
            a = self.admin(f"/admin/transactions/{t['id']}/close", {"outcome": "refunded_in_hyp", "reason": "portal"})
            if a.status < 300:
                pid = t["payment"]
                self.dead.setdefault(t["id"], self._purchases(pid))

        @rule(t=txns, expire=st.booleans())
        def cleanup(self, t: Any, expire: bool) -> None:
            d = database(self.fn_url)
            try:
                policy = CleanupPolicy(pending_payment_max_age_seconds=0 if expire else 7200)
                rep = run_cleanup(d, policy=policy, sleep=lambda s: None)
                LOG.append(f"cleanup expire={expire} -> {rep}")
            finally:
                d.close()

        # -- invariants ----------------------------------------------------------------------------
        def _purchases(self, pid: str) -> int:
            return int(
                self.rows(
                    "SELECT COALESCE(sum(amount), 0) FROM credit_transactions WHERE payment_id = :p::uuid"
                    " AND type = 'purchase'",
                    p=pid,
                )[0][0]
            )

        @invariant()
        def balances(self) -> None:
            for u, bal, led in self.rows(
                "SELECT p.id::text, p.credits, (SELECT COALESCE(sum(amount),0) FROM"
                " credit_transactions c WHERE c.user_id = p.id) FROM profiles p"
            ):
                if not hasattr(self, "offset"):
                    self.offset: dict[str, int] = {}
                off = self.offset.setdefault(u, int(bal) - int(led))
                if int(bal) - int(led) != off:
                    raise Problem(f"user {u}: balance {bal}, ledger {led}, offset was {off}")

        @invariant()
        def grants(self) -> None:
            for pid, status, credits, n, total, net in self.rows("""
                SELECT p.id::text, p.status, p.credits,
                       (SELECT count(*) FROM credit_transactions c WHERE c.payment_id = p.id AND c.type='purchase'),
                       (SELECT COALESCE(sum(amount),0) FROM credit_transactions c WHERE c.payment_id = p.id
                          AND c.type='purchase'),
                       (SELECT COALESCE(sum(amount),0) FROM credit_transactions c WHERE c.payment_id = p.id)
                  FROM payments p"""):
                if status == "completed" and n != 1 and int(net) < credits:
                    raise Problem(f"payment {pid} completed with {n} purchase rows, net {net} of {credits}")
                if int(total) > credits and n > 1:
                    raise Problem(f"payment {pid}: purchases {total} > credits {credits}")

        @invariant()
        def refunds_bounded(self) -> None:
            for txn, total, amount in self.rows("""
                SELECT r.original_hypay_id, sum(r.amount), max(t.amount) FROM refunds r
                  LEFT JOIN hypay_transactions t ON t.hypay_id = r.original_hypay_id
                 WHERE r.status = 'succeeded' GROUP BY 1"""):
                sim = self.sim.transactions.get(txn)
                paid = amount if amount is not None else (sim.amount if sim else None)
                if paid is not None and _minor(total) > _minor(paid):
                    raise Problem(f"txn {txn}: refunds succeeded {total} > amount {paid}")
            for txn, given in self.sim.refunded.items():
                o = self.sim.transactions[txn]
                if given > _minor(o.amount):
                    raise Problem(f"sim gave back {given} of {o.amount} for {txn}")

        @invariant()
        def every_paid_txn_has_a_row(self) -> None:
            journal = {r[0] for r in self.rows("SELECT hypay_id FROM hypay_transactions")}
            paying = {
                r[0]
                for r in self.rows("SELECT hypay_transaction_id FROM payments WHERE hypay_transaction_id IS NOT NULL")
            }
            for tid in self.delivered | self.soft_answered:
                t = self.sim.transactions.get(tid)
                if t is not None and t.ccode == 0 and tid not in journal and tid not in paying:
                    raise Problem(f"sim approved {tid}, delivered/answered, and no row holds it")

        @invariant()
        def no_credits_for_dead_money(self) -> None:
            # a txn refunded in full (through us) or closed refunded_in_hyp: its payment's purchases never grow
            for txn, pid in self.rows("""
                SELECT r.original_hypay_id, min(r.payment_id::text) FROM refunds r
                  JOIN hypay_transactions t ON t.hypay_id = r.original_hypay_id
                 WHERE r.status = 'succeeded' GROUP BY 1 HAVING sum(r.amount) >= max(t.amount)"""):
                self.dead.setdefault(txn, self._purchases(pid))
            for txn, then in self.dead.items():
                [[pid]] = self.rows("SELECT payment_id::text FROM hypay_transactions WHERE hypay_id = :h", h=txn) or [
                    [None]
                ]
                if pid is None:
                    continue
                [[dec]] = self.rows("SELECT decision FROM hypay_transactions WHERE hypay_id = :h", h=txn)
                paid_by = self.rows(
                    "SELECT 1 FROM payments WHERE id = :p::uuid AND hypay_transaction_id = :h AND status = 'completed'",
                    p=pid,
                    h=txn,
                )
                now = self._purchases(pid)
                if now > then and (dec == "granted" or paid_by):
                    raise Problem(f"txn {txn} dead (refunded in full / closed) when purchases were {then}; now {now}")
            for txn, pid in self.rows("""SELECT t.hypay_id, t.payment_id::text FROM hypay_transactions t
                  JOIN payments p ON p.id = t.payment_id WHERE t.closed_at IS NOT NULL
                   AND p.hypay_transaction_id = t.hypay_id AND p.status = 'completed'"""):
                raise Problem(f"closed txn {txn} pays completed payment {pid}")

        @invariant()
        def queue(self) -> None:
            items: list[dict[str, Any]] = []
            after = None
            while True:
                q = "limit=100" + (f"&after={after}" if after else "")
                a = self.check(
                    "GET /admin/review",
                    invoke(ADMIN, "GET", f"/admin/review?{q}", headers={"Authorization": f"Bearer {ALICE}"}),
                )
                assert a.status == 200, a.body
                items += a.json["items"]
                after = a.json.get("next")
                if not after:
                    break
            listed = {i["id"] for i in items}
            # must list: payments in needs_review; refunds of unknown outcome
            for (pid,) in self.rows("SELECT id::text FROM payments WHERE status = 'needs_review'"):
                if f"p:{pid}" not in listed:
                    raise Problem(f"payment {pid} needs_review, not in the queue")
            for (rid,) in self.rows("SELECT id::text FROM refunds WHERE status = 'unknown'"):
                if f"r:{rid}" not in listed:
                    raise Problem(f"refund {rid} unknown, not in the queue")
            # money of Hyp's (approved in the sim, or forged-and-believed) that no payment was completed with, not
            # taken back in full (sim truth), not closed: must be listed as a transaction or through its payment
            for hid, pid, decision, closed, pstatus, paid_by, amount in self.rows("""
                SELECT t.hypay_id, t.payment_id::text, t.decision, t.closed_at IS NOT NULL, p.status,
                       p.hypay_transaction_id, t.amount::text
                  FROM hypay_transactions t LEFT JOIN payments p ON p.id = t.payment_id
                 WHERE t.source <> 'refund'"""):
                sim = self.sim.transactions.get(hid)
                approved = (sim is not None and sim.ccode == 0) or hid in self.forged
                if not approved:
                    if f"j:{hid}" in listed and decision not in ("unverified",):
                        raise Problem(f"txn {hid} listed but Hyp never charged it ({decision})")
                    continue
                back = (
                    self.sim.refunded.get(hid, 0)
                    if sim
                    else sum(
                        _minor(r[0])
                        for r in self.rows(
                            "SELECT amount FROM refunds WHERE original_hypay_id = :h AND status = 'succeeded'", h=hid
                        )
                    )
                )
                full = _minor(sim.amount if sim else (amount or "0"))
                pays = pstatus == "completed" and paid_by == hid
                settled = closed or back >= full or pays
                shown = (
                    f"j:{hid}" in listed
                    or (pid and f"p:{pid}" in listed)
                    or any(i["id"].startswith("r:") and hid in i["hypay_ids"] for i in items)
                )
                if not settled and not shown:
                    raise Problem(
                        f"txn {hid} ({decision}, payment {pid} {pstatus}, back {back}/{full}) not in the queue"
                    )
                if (
                    settled
                    and f"j:{hid}" in listed
                    and not any(i["id"].startswith("r:") and hid in i["hypay_ids"] for i in items)
                ):
                    why = "closed" if closed else ("refunded in full" if back >= full else "pays its payment")
                    raise Problem(f"txn {hid} listed ({decision}) though settled: {why}")
            for i in items:
                if i["id"].startswith("p:"):
                    [[st_]] = self.rows("SELECT status FROM payments WHERE id = :p::uuid", p=i["id"][2:])
                    if st_ != "needs_review":
                        raise Problem(f"payment item {i['id']} listed in status {st_}")

    return Money


@pytest.mark.parametrize("seed_", [int(os.environ.get("STATEFUL_SEED", "1"))])
def test_money_state_machine(pg_server, migrated_template, backend_login, monkeypatch, seed_) -> None:  # noqa: ANN001
    Money = make_machine(pg_server, migrated_template, backend_login, monkeypatch)
    s = settings(
        max_examples=int(os.environ.get("STATEFUL_EXAMPLES", "20")),
        stateful_step_count=int(os.environ.get("STATEFUL_STEPS", "20")),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize="STATEFUL_SEED" not in os.environ,  # the suite's run is the same every time
        database=None,
    )
    try:
        run_state_machine_as_test(Money, settings=s)
        print(sorted(TOTAL.items()))
    except BaseException:
        print("\n".join(LOG))
        raise
