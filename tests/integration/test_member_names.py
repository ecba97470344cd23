"""A 400 naming a member the request does not take must not repeat a card number in it. A card
number that is the member's name, stands apart inside it, or is glued to a word (`card_4580...`, `pan4580...`,
`4580...x`) or written with dots: only plain names without digit runs are repeated (payments/names.py)."""

from __future__ import annotations

import pytest

from tests.integration.test_review import ADMIN, ALICE, admin  # noqa: F401 - the fixture
from tests.support.api import invoke
from tests.support.payments import STARTER, Env, post

CARD = "4580123412341234"
NAMES = [f"card_{CARD}", f"pan{CARD}", f"{CARD}x", "4580.1234.1234.1234"]


@pytest.mark.parametrize("name", NAMES)
def test_post_payments_never_repeats_a_card_number_sent_as_part_of_a_member_name(env: Env, name: str) -> None:
    answer = post({"credit_pack_id": STARTER, name: 1}, key=f"k-{len(name)}-{name[:3]}")
    assert answer.status == 400 and answer.headers["content-type"] == "application/problem+json"
    digits = CARD if "." not in name else "4580.1234.1234.1234"
    assert digits not in answer.body, answer.json["detail"]
    assert env.rows("SELECT count(*) FROM payments WHERE idempotency_key LIKE 'api:%:k-%'") == [[0]]


@pytest.mark.usefixtures("admin")
def test_admin_refund_never_repeats_a_card_number_sent_as_part_of_a_member_name(env: Env) -> None:
    answer = invoke(
        ADMIN,
        "POST",
        "/admin/payments/aaaaaaaa-0000-4000-8000-0000000000ff/refund",
        body={"reason": "x", f"card_{CARD}": 1},
        headers={"Authorization": f"Bearer {ALICE}", "Idempotency-Key": "r-1"},
    )
    assert answer.status == 400
    assert CARD not in answer.body, answer.json["detail"]


def test_a_refused_callback_never_repeats_a_card_number_in_a_parameter_name(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.support.payments import CALLBACK

    # A name is refused when repeated; the refusal names it, in the 400 and in the log line ("hypay callback refused")
    name = f"x{CARD}"
    answer = invoke(CALLBACK, "GET", f"/hypay/notify?Id=1&CCode=0&Amount=1&{name}=1&{name}=2")
    assert answer.status == 400
    assert CARD not in answer.body, answer.json["detail"]
    logged = caplog.text + " ".join(str(getattr(r, "reason", "")) for r in caplog.records)
    assert CARD not in logged
