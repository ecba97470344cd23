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


def _paid_while_in_review(env: Env) -> tuple[str, str]:
    """A genuine Hyp payment arriving while its payment is under review: nothing granted, journal `review`."""
    payment = buy(env, key="in-review")
    pid = payment["payment_id"]
    env.rows("UPDATE payments SET status = 'needs_review', review_reason = 'manual' WHERE id = :p::uuid", p=pid)
    transaction = pay(env, payment)
    assert notify(transaction.redirect_query).status == 200
    return pid, transaction.id


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("amount", [None, "24.95"])
def test_a_refunded_payment_cannot_then_be_completed_for_free_credits(env: Env, amount: str | None) -> None:
    from tests.integration.test_review import resolve

    # Given a payment under review whose money was refunded (all, or half)
    before = env.credits()
    pid, hypay_id = _paid_while_in_review(env)
    body = {"hypay_id": hypay_id, "reason": "customer asked", **({"amount": amount} if amount else {})}
    assert refund(pid, body, str(uuid.uuid4())).status == 201
    # When an operator tries to complete it
    done = resolve(pid, {"action": "complete", "reason": "looks paid"}, key=str(uuid.uuid4()))
    # Then a 409 that says why, and no credits
    assert done.status == 409 and "refunded" in done.json["detail"], done.body
    assert env.credits() == before


@pytest.mark.usefixtures("admin")
def test_control_characters_in_a_reason_and_a_forged_cursor_are_400s(env: Env) -> None:
    import base64
    import json

    from tests.integration.test_review import queue, resolve

    pid, hypay_id = _paid_while_in_review(env)
    assert refund(pid, {"reason": "a\u0000b"}, str(uuid.uuid4())).status == 400
    for action in ("fail", "complete"):
        assert resolve(pid, {"action": action, "reason": "a\u0000b"}, key=str(uuid.uuid4())).status == 400
    for since in ("2024-13-45T99:99:99.000000Z", "0000-01-01T00:00:00.000000Z"):
        cursor = base64.urlsafe_b64encode(json.dumps([since, f"p:{pid}"]).encode()).decode().rstrip("=")
        assert queue(f"after={cursor}").status == 400
    assert env.rows("SELECT count(*) FROM refunds") == [[0]] and env.status(pid) == "needs_review"
