"""POST /admin/payments/{id}/refund through the admin function: a second charge leaves the queue once refunded."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.test_hypay_callback import buy, notify, pay
from tests.integration.test_review import ADMIN, ALICE, admin, every_item  # noqa: F401 - the `admin` fixture
from tests.support.api import Answer, invoke
from tests.support.payments import Env


def refund(payment_id: str, body: object, key: str, token: str | None = ALICE) -> Answer:
    headers = {"Idempotency-Key": key}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return invoke(ADMIN, "POST", f"/admin/payments/{payment_id}/refund", body=body, headers=headers)


@pytest.mark.usefixtures("admin")
def test_a_second_charge_is_refunded_once_over_http_and_leaves_the_queue(env: Env) -> None:
    # Given a payment paid twice (two tabs): the second charge waits in the review queue
    before = env.credits()
    payment = buy(env)
    first = pay(env, payment)
    assert notify(first.redirect_query).status == 200
    second = pay(env, payment)
    assert notify(second.redirect_query).status == 200
    waiting = [i for i in every_item() if i["reason"] == "second_charge"]
    assert [i["hypay_ids"] for i in waiting] == [[second.id]]
    # When the operator refunds that second transaction (twice, the same key)
    key = str(uuid.uuid4())
    body = {"hypay_id": second.id, "reason": "paid twice in two tabs"}
    answer = refund(payment["payment_id"], body, key)
    again = refund(payment["payment_id"], body, key)
    # Then Hyp was asked once, the answer is replayed, the credits of the first charge stay
    assert answer.status == 201, answer.body
    assert again.status == 201 and again.headers.get("idempotent-replayed") == "true"
    asked = [c for c in env.sim.calls if c in ("zikoyAPI", "CancelTrans")]
    assert len(asked) == 1, asked
    assert env.credits() == before + 100
    # And the queue no longer lists it; the journal and the audit trail say what happened
    assert [i for i in every_item() if i["reason"] == "second_charge"] == []
    assert env.rows("SELECT count(*) FROM admin_audit_log WHERE action = 'refund' AND admin = 'alice'") == [[1]]
    assert env.rows("SELECT status FROM refunds") == [["succeeded"]]


@pytest.mark.usefixtures("admin")
def test_refund_needs_the_admin_token_a_key_and_a_reason(env: Env) -> None:
    payment = buy(env)
    assert refund(payment["payment_id"], {"reason": "x"}, "k-1", token=None).status == 401
    no_reason = refund(payment["payment_id"], {}, "k-2")
    assert no_reason.status == 400 and "reason" in no_reason.json["detail"]
    no_key = invoke(
        ADMIN,
        "POST",
        f"/admin/payments/{payment['payment_id']}/refund",
        body={"reason": "x"},
        headers={"Authorization": f"Bearer {ALICE}"},
    )
    assert no_key.status == 400 and "Idempotency-Key" in no_key.json["detail"]
    assert env.rows("SELECT count(*) FROM refunds") == [[0]]
