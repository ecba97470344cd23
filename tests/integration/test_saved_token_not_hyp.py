"""saved_cards is the web app's table too (its server key may write it); the backend saves only what getToken answers.
A stored token was sent to Hyp as the card (`CC`) whatever it held: junk, a padded token, a card number; Hyp answered
997 and the buyer was told their card was declined, final for the key (an outside review). Only a Hyp token (19 ASCII
digits) is ever sent: anything else is refused (409, pay on the page) before anything is written."""

from __future__ import annotations

import pytest

from payments.adapters.hypay import HypayClient, Token
from payments.domain.money import Money
from payments.errors import GatewayNotAsked
from tests.support.payments import CVV, PRO, Env, post

NOT_HYP_TOKENS = ["abc", " {t}", "{t} ", "4580000000000000", "\u0661" * 19]  # junk, padded, a card number, not ASCII


@pytest.mark.parametrize("stored", NOT_HYP_TOKENS)
def test_a_stored_token_that_is_no_hyp_token_never_reaches_hyp(env: Env, saved_card: str, stored: str) -> None:
    [[token]] = env.rows("SELECT token FROM saved_cards")
    env.rows("UPDATE saved_cards SET token = :t", t=stored.format(t=token))
    soft_before = env.sim.calls.count("soft")
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="junk-token")
    sent = env.sim.calls.count("soft") - soft_before
    statuses = [r[0] for r in env.rows("SELECT status FROM payments WHERE idempotency_key LIKE '%:junk-token'")]
    # Never sent to Hyp, and never a "declined" the buyer is told their card got (nor a failed payment)
    assert (sent, answer.status, statuses) == (0, 409, []), (sent, answer.status, answer.body, statuses)
    assert "pay on the payment page" in answer.json["detail"]


@pytest.mark.parametrize("stored", [t.format(t="1" * 19) for t in NOT_HYP_TOKENS])
def test_the_client_never_sends_what_is_no_hyp_token(env: Env, stored: str) -> None:
    soft_before = env.sim.calls.count("soft")
    with pytest.raises(GatewayNotAsked):
        HypayClient.from_settings().charge_token(
            Token(stored, expiry_month=12, expiry_year=2030), amount=Money.of("49.90"), order="o", description="d"
        )
    assert env.sim.calls.count("soft") == soft_before
