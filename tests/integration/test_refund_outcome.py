"""`POST /admin/refunds/{refund_id}/outcome`: an operator settles a refund whose answer was lost from what Hyp's portal
shows (an outside review of the operator's side: the runbook's hand-written SQL marked the row succeeded without
taking the credits back or journaling Hyp's refund, and the refund's own transaction stayed in the review queue)."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_callback_attacks import unpaid_claim, use_mode
from tests.integration.test_hypay_callback import buy, forge, notify, pay
from tests.integration.test_review import ADMIN, ALICE, every_item
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.support.api import Answer, invoke
from tests.support.payments import Env


def settle(refund_id: str, body: object, key: str | None = None, token: str | None = ALICE) -> Answer:
    headers = {"Idempotency-Key": key or str(uuid.uuid4())}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return invoke(ADMIN, "POST", f"/admin/refunds/{refund_id}/outcome", body=body, headers=headers)


def _lost_refund(env: Env, monkeypatch: pytest.MonkeyPatch, amount: str = "20.00") -> tuple[str, str, str]:
    """A completed payment (49.90, 100 credits) refunded `amount` by zikoyAPI, Hyp's answer lost: (payment, refund
    id, Hyp's refund transaction Id as Hyp's portal shows it)."""
    use_mode(monkeypatch, "hmac")
    payment = buy(env, key=str(uuid.uuid4()))
    pid = payment["payment_id"]
    assert notify(pay(env, payment).redirect_query).status == 200
    env.sim.faults.add("zikoyAPI", "lost")
    reversals = len(env.sim.reversals)
    answer = refund(pid, {"amount": amount, "reason": "partial"}, key=str(uuid.uuid4()))
    assert answer.status == 202 and answer.json["status"] == "unknown", answer.json
    [[refund_id]] = env.rows("SELECT id::text FROM refunds WHERE payment_id = :p::uuid", p=pid)
    [reversal] = env.sim.reversals[reversals:]
    return pid, refund_id, reversal.id


@pytest.mark.usefixtures("admin")
def test_a_lost_refund_found_at_hyp_is_stored_as_its_answer_would_have_been(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid, refund_id, hyp_refund = _lost_refund(env, monkeypatch)
    # And Hyp reported the refund's own transaction for the payment's Order before anyone looked (held for review)
    claim = [(k, hyp_refund if k == "Id" else v) for k, v in unpaid_claim(pid, amount="20.00")]
    assert notify(forge(claim)).status == 200
    credits = env.credits()
    calls = len(env.sim.calls)
    # When the operator settles it as Hyp's portal shows: refunded, by Hyp transaction R
    body = {"outcome": "refunded", "hypay_refund_id": hyp_refund, "reason": "Hyp portal: refunded 20.00"}
    answer = settle(refund_id, body)
    # Then it is stored as Hyp's answer would have been: succeeded, the credits taken back (40 of 100), R journaled
    # as the refund's, nothing of it left in the review queue, nothing sent to Hyp, and an audit row
    assert answer.status == 200 and answer.json["status"] == "succeeded", answer.json
    assert answer.json["credits_taken"] == 40 and env.credits() == credits - 40
    assert env.rows("SELECT decision, source FROM hypay_transactions WHERE hypay_id = :h", h=hyp_refund) == [
        ["refunded", "refund"]
    ]
    assert [i["id"] for i in every_item() if (i.get("payment") or {}).get("id") == pid] == []
    assert len(env.sim.calls) == calls
    assert env.rows(
        "SELECT admin, request->>'outcome' FROM admin_audit_log WHERE request->>'refund_id' = :r AND"
        " request ? 'outcome'",
        r=refund_id,
    ) == [["alice", "refunded"]]
    # And the same finding again answers the same; another finding is refused (409), changing nothing
    assert settle(refund_id, body).json == answer.json
    other = settle(refund_id, {"outcome": "not_refunded", "reason": "changed my mind"})
    assert other.status == 409 and env.credits() == credits - 40, other.json


@pytest.mark.usefixtures("admin")
def test_a_lost_refund_not_found_at_hyp_frees_its_amount_for_a_new_refund(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid, refund_id, _ = _lost_refund(env, monkeypatch, amount="30.00")
    # While it is unknown, its amount is reserved: 20.00 more is more than remains
    blocked = refund(pid, {"amount": "20.00", "reason": "more"}, key=str(uuid.uuid4()))
    assert blocked.status == 422, blocked.json
    # When the operator finds at Hyp that it did not happen
    answer = settle(refund_id, {"outcome": "not_refunded", "reason": "Hyp portal: no refund"})
    assert answer.status == 200 and answer.json["status"] == "refused" and answer.json["credits_taken"] == 0
    [[status, message]] = env.rows("SELECT status, message FROM refunds WHERE id = :r::uuid", r=refund_id)
    assert status == "refused" and message.startswith("not refunded at Hyp, found by alice"), message
    # Then its amount is free again: a new key's refund is Hyp's to take or cap (the simulator did refund the 30.00
    # here, so it refuses more than what is left there), no longer refused by us as more than remains
    again = refund(pid, {"amount": "20.00", "reason": "more"}, key=str(uuid.uuid4()))
    assert again.status != 422, again.json


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize(
    ("body", "status", "said"),
    [
        ({"outcome": "refunded", "reason": "x"}, 409, "hypay_refund_id: required"),
        ({"outcome": "refunded", "hypay_refund_id": "0", "reason": "x"}, 400, "hypay_refund_id"),
        ({"outcome": "maybe", "reason": "x"}, 400, "outcome"),
        ({"outcome": "not_refunded", "hypay_refund_id": "12345678", "reason": "x"}, 400, "only with the outcome"),
    ],
)
def test_a_finding_that_cannot_be_right_is_refused_and_changes_nothing(
    env: Env, monkeypatch: pytest.MonkeyPatch, body: dict, status: int, said: str
) -> None:
    pid, refund_id, _ = _lost_refund(env, monkeypatch)
    answer = settle(refund_id, body)
    assert answer.status == status and said in answer.body, answer.body
    assert env.rows("SELECT status FROM refunds WHERE id = :r::uuid", r=refund_id) == [["unknown"]]


@pytest.mark.usefixtures("admin")
def test_an_unknown_refund_or_a_missing_token_is_not_settled(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _, refund_id, _ = _lost_refund(env, monkeypatch)
    assert settle(str(uuid.uuid4()), {"outcome": "not_refunded", "reason": "x"}).status == 404
    assert settle("not-a-uuid", {"outcome": "not_refunded", "reason": "x"}).status == 404
    assert settle(refund_id, {"outcome": "not_refunded", "reason": "x"}, token=None).status == 401
    assert env.rows("SELECT status FROM refunds WHERE id = :r::uuid", r=refund_id) == [["unknown"]]
