"""A retry with the same Idempotency-Key is answered by its own payment, not judged against today's catalogue,
card or rate."""

from __future__ import annotations

from tests.integration.test_create_payment import _expire_in_progress_records, killed_after_the_charge
from tests.support.payments import CVV, PRO, Env, post


def test_a_saved_card_charge_whose_outcome_was_lost_is_confirmed_on_retry_even_once_its_pack_is_retired(
    env: Env, saved_card: str
) -> None:
    # Given the invocation dies right after Hyp charged the saved card (its answer never read)
    body = {"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}
    killed_after_the_charge(body, "charged")
    [(payment_id,)] = env.rows("SELECT id::text FROM payments WHERE charge_attempt_id IS NOT NULL")
    # And meanwhile the pack was retired (a price change is a new pack; the old one stops being sold)
    env.rows("UPDATE credit_packs SET is_active = false WHERE id = :p::uuid", p=PRO)
    _expire_in_progress_records(env)
    # When the client retries with the same key
    retried = post(body, key="charged")
    # Then it learns its charge is being confirmed and the payment goes to review (as with an active pack) ...
    # ... not "409: this pack is no longer sold" about a purchase Hyp may already have charged, the payment left
    # pending and out of the review queue.
    assert retried.status == 202, (retried.status, retried.body)
    assert env.status(payment_id) == "needs_review"
    assert env.sim.calls.count("soft") == 1


def test_a_retry_of_a_page_payment_gets_its_page_even_once_its_pack_is_retired(env: Env) -> None:
    # Given a payment page made for a key, and then the pack retired
    first = post({"credit_pack_id": PRO}, key="page")
    assert first.status == 201
    env.rows("UPDATE credit_packs SET is_active = false WHERE id = :p::uuid", p=PRO)
    _expire_in_progress_records(env)
    env.rows("DELETE FROM idempotency_keys")  # the stored answer gone too (expired): the work runs again
    # When the client retries with the same key, it gets the same payment and page (the payment's own price)
    again = post({"credit_pack_id": PRO}, key="page")
    assert again.status == 201, again.body
    assert again.json == first.json
    # And a new key is refused: the pack is no longer sold
    assert post({"credit_pack_id": PRO}, key="new").status == 409
    assert env.sim.calls.count("soft") == 0
