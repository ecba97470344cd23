"""A paid redirect whose signed fields hold an apostrophe, as the customer's browser delivers it.

Hyp encodes values as encodeURIComponent does, which leaves `'` as it is (its documented `errMsg=%20(0)` shows the
same set unencoded): Hyp signs `Fild1=...'...`. A browser following Hyp's redirect sends `'` in the query as `%27`
(the URL standard's special-query set), so what arrives is not what Hyp signed. Such a redirect (a customer named
with a geresh typed as an apostrophe, ג'ורג', or O'Brien) was judged forged in every mode: the failure page, nothing
kept, the payment expired two hours later unless Hyp's notify came.
"""

from __future__ import annotations

import pytest

from ops.seed import DEMO_USER_ID
from tests.integration.test_callback_attacks import use_mode
from tests.integration.test_hypay_callback import browser, buy, location, pay
from tests.support.payments import SUCCESS_PAGE, Env


@pytest.mark.parametrize("mode", ["both", "hmac", "verify"])
def test_a_paid_redirect_the_browser_re_encoded_completes_the_payment(
    env: Env, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    use_mode(monkeypatch, mode)
    # Given a customer whose name has apostrophes, and a payment Hyp approved (it signed the name with them raw)
    env.rows("UPDATE profiles SET full_name = :n WHERE id = :u::uuid", n="ג'ורג' או'בריאן", u=DEMO_USER_ID)
    before = env.credits()
    payment = buy(env)
    paid = pay(env, payment)
    assert paid.ccode == 0 and "'" in paid.redirect_query
    # When the customer's browser follows Hyp's redirect, `'` sent as `%27`
    page, _ = location(browser(paid.redirect_query.replace("'", "%27")))
    # Then the payment completes, once
    assert page == SUCCESS_PAGE and env.status(payment["payment_id"]) == "completed"
    assert env.credits() == before + 100


def test_a_paid_redirect_with_an_apostrophe_in_an_unsigned_field_completes(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from urllib.parse import quote

    from ops.hypay_simulator import HypaySimulator

    # Given Hyp echoing an address with an apostrophe in an unsigned field (encodeURIComponent leaves it as it is),
    # the signed fields without one: the Sign matches the text as the browser delivers it
    real = HypaySimulator._redirect_fields

    def with_city(self: HypaySimulator, *args: object) -> list[tuple[str, str]]:
        fields = real(self, *args)  # type: ignore[arg-type]
        return [(k, quote("Ma'ale Adumim", safe="-_.!~*'()") if k == "city" else v) for k, v in fields]

    monkeypatch.setattr(HypaySimulator, "_redirect_fields", with_city)
    before = env.credits()
    payment = buy(env)
    paid = pay(env, payment)
    assert "city=Ma'ale" in paid.redirect_query
    # When the browser delivers it, ' as %27
    page, _ = location(browser(paid.redirect_query.replace("'", "%27")))
    # Then VERIFY is also asked about the text as Hyp sent it, and the payment completes
    assert page == SUCCESS_PAGE and env.status(payment["payment_id"]) == "completed"
    assert env.credits() == before + 100
