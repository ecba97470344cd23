"""An operator's reason is kept for good (the append-only audit trail, the refund's row, the journal's detail): one
holding a number as long as a card number is refused (400, never repeating it), and nothing is written or sent to Hyp
(an outside review found a pasted card number stored in clear in all three)."""

from __future__ import annotations

import unicodedata
import uuid

import pytest

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_close_transaction import close
from tests.integration.test_hypay_callback import buy, notify, pay
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import resolve
from tests.support.payments import Env

PAN = "5326105300985614"
WRITTEN = [
    PAN,
    "5326 1053 0098 5614",
    "5326-1053-0098-5614",
    "4580000000000000000",
    "card:5326105300985614.",
    # as an outside review wrote them (copied from a portal or a message): no-break or double spaces, dots, spaced
    # hyphens, en dashes, full-width digits
    "5326\u00a01053\u00a00098\u00a05614",
    "5326  1053  0098  5614",
    "5326.1053.0098.5614",
    "5326 - 1053 - 0098 - 5614",
    "5326\u20131053\u20130098\u20135614",
    "3782 822463 10005",  # American Express's groups
    "\uff15\uff13\uff12\uff16\uff11\uff10\uff15\uff13\uff10\uff10\uff19\uff18\uff15\uff16\uff11\uff14",
]


def _nothing_holds_it(env: Env) -> None:
    for table in ("admin_audit_log", "idempotency_keys", "refunds", "hypay_transactions", "payments"):
        text = "\n".join(r[0] for r in env.rows(f"SELECT row_to_json(t)::text FROM {table} t"))
        digits = "".join(ch for ch in unicodedata.normalize("NFKC", text) if ch.isascii() and ch.isdigit())
        assert PAN not in digits and "4580000000000000000" not in digits, table


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("written", WRITTEN)
def test_a_card_number_in_a_reason_is_refused_and_never_stored(env: Env, written: str) -> None:
    payment = buy(env, key=str(uuid.uuid4()))
    pid = payment["payment_id"]
    paid = pay(env, payment)
    assert notify(paid.redirect_query).status == 200
    reversals = len(env.sim.reversals)
    reason = f"customer asked, card {written}"
    answers = [
        refund(pid, {"reason": reason}, str(uuid.uuid4())),
        resolve(pid, {"action": "fail", "reason": reason}, str(uuid.uuid4())),
        close(paid.id, {"outcome": "refunded_in_hyp", "reason": reason}),
    ]
    for answer in answers:
        assert answer.status == 400 and "card number" in answer.json["detail"], answer.body
        assert written not in answer.body and PAN not in answer.body.replace(" ", "").replace("-", "")
        assert written not in answer.json["detail"]
    assert len(env.sim.reversals) == reversals
    assert env.rows("SELECT count(*) FROM refunds") == [[0]]
    assert env.rows("SELECT count(*) FROM admin_audit_log") == [[0]]
    _nothing_holds_it(env)


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize(
    "reason",
    [
        "charged in Hyp (Id 12345678), ticket #42",
        "phone 052-123-4567, 2026-11-27",
        "payment 6ad5da40-b476-5340-9805-ab624d10cb6e paid twice",
        "Hyp Id 123456789012 refunded",  # 12 digits
        # payments' ids, whose digit groups run 13 digits and more across their hyphens
        "paid twice: the same order as payment 7dad6732-9655-4321-9cc7-29e70e0a0a23",
        "payment 12345678-1234-1234-1234-123456789012 paid twice",
        # two Hyp Ids side by side, an Id and an amount: no card's groups (a review of the first rule)
        "charged twice: 13532200 13532201",
        "Hyp 13532200 / 13532201",
        "Hyp 13532201 149.90 ILS",
    ],
)
def test_ordinary_reasons_with_numbers_are_taken(env: Env, reason: str) -> None:
    payment = buy(env, key=str(uuid.uuid4()))
    pid = payment["payment_id"]
    assert notify(pay(env, payment).redirect_query).status == 200
    answer = refund(pid, {"reason": reason, "amount": "1.00"}, str(uuid.uuid4()))
    assert answer.status == 201, answer.body
