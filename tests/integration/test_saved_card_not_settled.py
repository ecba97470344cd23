"""An approved saved-card charge whose settlement the database refuses for good (a constraint, a trigger, the balance
out of range) used to leave Hyp's transaction in a log line only: the payment stayed pending, out of the review queue,
until the cleanup sent it to review hours later without its Id. The callback path keeps such a transaction
(`CallbackNotSettled`); the saved-card path now sends the payment to review naming it, in a statement of its own,
with the transaction's journal row (a payment's reason naming an Id was no record of the transaction: the queue showed
no transaction, and completing the payment needed the Id typed in)."""

from __future__ import annotations

import pytest

from ops.seed import DEMO_USER_ID
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import every_item, resolve
from tests.support.payments import CVV, PRO, Env, post


def test_an_approved_charge_the_database_refuses_to_settle_goes_to_review_naming_hyps_id(
    admin: Env,  # noqa: F811 - the fixture
    saved_card: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from payments.adapters.payments_store import PaymentsStore

    env = admin
    # Given a grant the database refuses for good: the balance, grown once the sale was checked (the web app granting
    # credits of its own meanwhile), would leave the integer range
    real = PaymentsStore.pack_and_profile

    def read_then_balance_grown(self: PaymentsStore, *args: object, **kwargs: object) -> object:
        found = real(self, *args, **kwargs)  # type: ignore[arg-type]
        env.rows("UPDATE profiles SET credits = 2147483600 WHERE id = :u::uuid", u=DEMO_USER_ID)
        return found

    monkeypatch.setattr(PaymentsStore, "pack_and_profile", read_then_balance_grown)
    # When the saved card is charged and Hyp approves
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="refused-grant")
    [hyp_id] = [t.id for t in env.sim.transactions.values() if t.ccode == 0 and not t.redirect_query]
    # Then the answer is "being confirmed", never a charge again ...
    assert answer.status == 202 and answer.json["status"] == "needs_review", answer.body
    assert env.sim.calls.count("soft") == 1
    payment_id = answer.json["payment_id"]
    # ... and the payment is in the review queue now, its reason naming Hyp's transaction
    [[status, reason]] = env.rows("SELECT status, review_reason FROM payments WHERE id = :p::uuid", p=payment_id)
    assert status == "needs_review" and f"Hyp transaction {hyp_id}" in reason, (status, reason)
    assert payment_id in [(item.get("payment") or {}).get("id") for item in every_item()]
    # ... and the same request again asks Hyp nothing (the key stays locked while the outcome is being confirmed)
    again = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="refused-grant")
    assert again.status in (202, 409) and env.sim.calls.count("soft") == 1, again.body
    # ... and Hyp's transaction has its journal row (what it paid, decided `review`), which the queue shows
    assert env.rows(
        "SELECT payment_id::text, source, verified, decision, ccode, amount::text FROM hypay_transactions"
        " WHERE hypay_id = :i",
        i=hyp_id,
    ) == [[payment_id, "token_charge", True, "review", 0, "199.00"]]
    [item] = [i for i in every_item() if (i.get("payment") or {}).get("id") == payment_id]
    assert [t["hypay_id"] for t in item["hypay_transactions"]] == [hyp_id], item
    # And once the balance has room, an operator completes it with that transaction without typing its Id
    env.rows("UPDATE profiles SET credits = 0 WHERE id = :u::uuid", u=DEMO_USER_ID)
    done = resolve(payment_id, {"action": "complete", "reason": "the balance had no room"}, key="refused-complete")
    assert done.status == 200 and done.json["hypay_id"] == hyp_id, done.body
    assert env.status(payment_id) == "completed" and env.credits() == 500
