"""The 400 names the headers a request lacks (payments/names.py lets hyphenated names through)."""

from __future__ import annotations

from tests.support.payments import STARTER, Env, post


def test_a_missing_idempotency_key_header_is_named_in_the_400(env: Env) -> None:
    answer = post({"credit_pack_id": STARTER}, key=None)
    assert answer.status == 400, answer.body
    detail = answer.json["detail"]
    assert "idempotency-key" in detail.lower(), detail
