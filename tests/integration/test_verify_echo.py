"""What of a callback reaches Hyp's VERIFY request, byte for byte.

VERIFY echoes the callback's documented fields. The ones `Sign` does not cover (errMsg, street, Hesh, ...) are the
holder's to edit, and in `verify` mode every field is anyone's. Whatever they hold, the request to Hyp carries only
form-encoded values after our own `action=APISign&What=VERIFY&Masof&KEY&PassP`: no separator (`;`, a raw `=`),
space, quote or control character that a parser could read as a parameter of its own.
"""

from __future__ import annotations

from typing import Any

import pytest

from payments.adapters.hypay import HypayClient
from payments.domain import hypay as protocol
from tests.integration.test_callback_attacks import use_mode
from tests.integration.test_hypay_callback import buy, notify, pay
from tests.support.payments import Env

EDITS = {
    "semicolon": "x;action=zikoyAPI;TransId=12345678;Amount=49.90",
    "equals": "x=action=soft",
    "crlf": "x\r\naction=soft\r\n",
    "space-and-quote": 'x action="soft"',
    "lone-percent": "100%&",
}


@pytest.mark.parametrize("edit", sorted(EDITS))
@pytest.mark.parametrize("mode", ["verify", "both"])
def test_no_field_carries_a_separator_or_control_character_to_hyp(
    env: Env, monkeypatch: pytest.MonkeyPatch, edit: str, mode: str
) -> None:
    use_mode(monkeypatch, mode)
    sent: list[bytes] = []
    original = HypayClient._send

    def recording(self: HypayClient, request: Any, timeout: float) -> Any:
        if request.data and b"What=VERIFY" in request.data:
            sent.append(request.data)
        return original(self, request, timeout)

    monkeypatch.setattr(HypayClient, "_send", recording)
    # Given a genuine redirect of a paid payment, its unsigned errMsg edited by its holder
    transaction = pay(env, buy(env))
    pairs = [p.split("=", 1) for p in transaction.redirect_query.split("&")]
    edited = "&".join(f"{k}={EDITS[edit] if k == 'errMsg' else v}" for k, v in pairs)
    # When it arrives as Hyp's notification (a form body)
    answer = notify(edited)
    # Then nothing but form-encoded values went to Hyp after our own head, the edited value among them
    assert answer.status < 500 and sent, (answer.status, answer.body)
    fields = sent[-1].decode("ascii").split("&PassP=", 1)[1].split("&", 1)[1]
    for name, value in (p.split("=", 1) for p in fields.split("&")):
        assert name in protocol.REDIRECT_FIELDS and protocol._FORM_VALUE.fullmatch(value), (name, value)
    assert any(p.startswith("errMsg=x") or p.startswith("errMsg=100") for p in fields.split("&"))


def test_a_value_as_hyp_sends_it_is_echoed_unchanged() -> None:
    raw = "Id=1&CCode=0&errMsg=%20(0)&Fild1=Israel%20Isareli&street=levanon+3&Hesh=31"
    assert protocol.verify_fields(raw) == [
        ("Id", "1"),
        ("CCode", "0"),
        ("errMsg", "%20(0)"),
        ("Fild1", "Israel%20Isareli"),
        ("street", "levanon+3"),
        ("Hesh", "31"),
    ]
    assert protocol.verify_fields("errMsg=a;b%2&Hesh=5%") == [("errMsg", "a%3Bb%252"), ("Hesh", "5%25")]


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_callback_far_larger_than_hyps_is_refused_before_anything_is_asked(
    env: Env, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    from payments.hypay_middleware import MAX_CALLBACK_CHARACTERS

    use_mode(monkeypatch, "verify")
    # Given a genuine notification padded with an unsigned field past the limit
    transaction = pay(env, buy(env))
    padded = f"{transaction.redirect_query}&street={'a' * MAX_CALLBACK_CHARACTERS}"
    calls = len(env.sim.calls)
    # Then it is refused as no callback (400), Hyp is not asked, and nothing is written
    answer = notify(padded, method=method)
    assert answer.status == 400 and "larger than a callback" in answer.json["detail"], answer.body
    assert len(env.sim.calls) == calls and env.rows("SELECT count(*) FROM hypay_transactions") == [[0]]
    # And the same notification as Hyp sent it is processed
    assert notify(transaction.redirect_query).status == 200


def test_a_profile_name_of_any_length_never_makes_its_callback_too_large(env: Env) -> None:
    from ops.seed import DEMO_USER_ID

    # Given a buyer whose profile holds a name of 3,000 Hebrew letters (Hyp echoes the name in its signed Fild1)
    env.rows("UPDATE profiles SET full_name = :n WHERE id = :u::uuid", n="א" * 1500 + " " + "ב" * 1500, u=DEMO_USER_ID)
    payment = buy(env)
    paid = pay(env, payment)
    # Then its callback stays far below the limit and completes the payment
    assert len(paid.redirect_query) < 2000
    assert notify(paid.redirect_query).status == 200
    assert env.status(payment["payment_id"]) == "completed"
