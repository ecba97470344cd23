"""A retry answered by its key's earlier payment (`_left_by_key`) only when this request made it: another request
with the key is the key reused (422), as on the way that creates payments."""

from __future__ import annotations

from tests.integration.test_create_payment import _expire_in_progress_records
from tests.support.payments import CVV, LEGACY, PRO, STARTER, Env, post


def _page_then_record_gone(env: Env, key: str) -> dict:
    first = post({"credit_pack_id": PRO}, key=key)
    assert first.status == 201, first.body
    _expire_in_progress_records(env)
    env.rows("DELETE FROM idempotency_keys")  # the stored answer expired (24 h): the work runs again
    return first.json


def test_baseline_same_key_other_active_pack_is_refused(env: Env) -> None:
    _page_then_record_gone(env, "reused-a")
    again = post({"credit_pack_id": STARTER}, key="reused-a")
    assert again.status == 422, (again.status, again.body)


def test_same_key_other_request_refused_by_the_catalogue_is_not_answered_with_the_earlier_payment(env: Env) -> None:
    first = _page_then_record_gone(env, "reused-b")
    # Another request (a retired pack) with the key of a PRO page payment
    again = post({"credit_pack_id": LEGACY}, key="reused-b")
    # Then it is refused as the key reused, never answered with the PRO payment's 201 and page
    assert again.status == 422, (again.status, again.body, first)


def test_a_saved_card_request_reusing_a_page_payments_key_gets_no_payment_page(env: Env) -> None:
    first = _page_then_record_gone(env, "reused-c")
    # The user has no saved card: the saved-card request with the same key is another request
    again = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="reused-c")
    assert again.status == 422, (again.status, again.body, first)


def test_a_saved_card_request_reusing_a_sold_page_payments_key_is_the_key_reused(env: Env, saved_card: str) -> None:
    # The pack still sold and a saved card on file: the saved-card request with a page payment's key is another request
    first = _page_then_record_gone(env, "reused-d")
    again = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="reused-d")
    assert again.status == 422, (again.status, again.body, first)
    assert env.sim.calls.count("soft") == 0
