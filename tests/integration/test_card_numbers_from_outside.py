"""A card number in Hyp's free text (errMsg) or pasted by an operator where a Hyp Id goes never reaches an answer,
an idempotency record or a row, however it is written: an outside review found Hyp's errMsg masked only when its digits
were separated by spaces or hyphens (dots, no-break spaces, slashes and underscores got through to the 402 / 502, the
idempotency record and the payment's or refund's row), and a 409 repeating the Id an operator named."""

from __future__ import annotations

import unicodedata
import uuid
from urllib.parse import quote

import pytest

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_hypay_callback import buy, notify, pay
from tests.integration.test_refund_lost_charge import _lost_charge
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.support.payments import CVV, PRO, Env, post

PAN = "5326105300985614"
WRITTEN = ["5326.1053.0098.5614", "5326\u00a01053\u00a00098\u00a05614", "5326/1053/0098/5614", "5326_1053_0098_5614"]


def _digits(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKC", text) if ch.isascii() and ch.isdigit())


def _holding(env: Env, *texts: str) -> list[str]:
    """Where the card number is (its digits, whatever separates them): named, never repeated."""
    where = [f"the answer #{i}" for i, text in enumerate(texts) if PAN in _digits(text)]
    for table in ("idempotency_keys", "payments", "refunds"):
        rows = "\n".join(r[0] for r in env.rows(f"SELECT row_to_json(t)::text FROM {table} t"))
        if PAN in _digits(rows):
            where.append(table)
    return where


@pytest.mark.parametrize("written", WRITTEN, ids=["dots", "nbsp", "slashes", "underscores"])
def test_a_decline_naming_the_card_never_answers_or_stores_its_number(
    env: Env, saved_card: str, monkeypatch: pytest.MonkeyPatch, written: str
) -> None:
    # Given Hyp declining a saved-card charge with an errMsg that names the card, as a message may write it
    monkeypatch.setattr(env.sim, "_soft", lambda params: "Id=&CCode=4&errMsg=" + quote(f"card {written} declined"))
    # When the saved card is charged
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="card-in-errmsg")
    assert answer.status == 402
    # Then neither the 402, nor the idempotency record, nor the payment's row holds the card number
    where = _holding(env, answer.body)
    assert not where, f"the card number is in: {', '.join(where)}"


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("pasted", [PAN, PAN + "1226", "0000" + PAN], ids=["alone", "with its expiry", "zero-padded"])
def test_a_card_number_pasted_as_the_hyp_id_is_not_repeated_in_the_answer(env: Env, pasted: str) -> None:
    payment = buy(env, key=str(uuid.uuid4()))
    assert notify(pay(env, payment).redirect_query).status == 200
    # When an operator pastes the card number (Luhn-valid, 16 digits) where the Hyp Id goes (20 digits are an Id too)
    answer = refund(payment["payment_id"], {"reason": "customer asked", "hypay_id": pasted}, str(uuid.uuid4()))
    # Then it is refused without repeating it (as a card number in the reason is)
    assert answer.status in (400, 409, 404)
    repeated = PAN in _digits(answer.body)
    assert not repeated, "the answer repeats the card number"


@pytest.mark.usefixtures("admin")
def test_a_refused_refund_naming_the_card_never_answers_or_stores_its_number(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    payment = buy(env, key=str(uuid.uuid4()))
    assert notify(pay(env, payment).redirect_query).status == 200
    # Given Hyp refusing the reversal with a code of its own (no words of ours for it) and an errMsg naming the card
    monkeypatch.setattr(
        env.sim, "_dispatch_reversal", lambda action, params: "CCode=3&errMsg=" + quote("card 5326.1053.0098.5614")
    )
    # When the operator refunds the payment
    answer = refund(payment["payment_id"], {"reason": "customer asked"}, str(uuid.uuid4()))
    assert answer.status == 502, answer.status
    # Then neither the 502, nor the idempotency record, nor the refund's row holds the card number
    where = _holding(env, answer.body)
    assert not where, f"the card number is in: {', '.join(where)}"


def test_a_card_number_pasted_for_a_lost_charge_is_in_no_member_of_the_answer(admin: Env, saved_card: str) -> None:
    """The refund of a saved-card charge whose answer was lost names the Id the operator gave in a member of its 422,
    besides its detail (a review of the first form: the detail masked, the member whole)."""
    pid, _ = _lost_charge(admin, key="lost-card-pasted")
    answer = refund(pid, {"hypay_id": PAN, "reason": "money back"}, key=str(uuid.uuid4()))
    assert answer.status == 422, answer.body
    assert PAN not in _digits(answer.body), "the answer repeats the card number"
