"""A refund whose invocation ended after Hyp was asked and before its answer was stored (Lambda's timeout, out of
memory) stayed `attempted` with no alarm: RefundOutcomeUnknown counts only a lost or unstored answer, and only a retry
with the same key marked it. The money may have gone back to the card with the credits still granted, and the only
alarm was the review queue's, a day later. The hourly cleanup now marks such a refund's outcome unknown, 10 minutes
on, and counts it (`Cleanup_refunds_outcome_unknown`, the refund-never-settled alarm)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from ops.lambda_context import LocalLambdaContext
from ops.template import load, load_handler
from payments.adapters.cleanup_store import STALE_REFUND_MESSAGE
from payments.adapters.hypay import HypayClient
from tests.integration.test_hypay_callback import buy, metric_totals, notify, pay
from tests.integration.test_review import ADMIN, ALICE, CLEANUP, every_item
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.support.api import Answer, invoke
from tests.support.faults import Killed
from tests.support.payments import Env

EVENTS = Path(__file__).resolve().parents[2] / "events"


def _refund(payment_id: str, key: str) -> Answer:
    headers = {"Idempotency-Key": key, "Authorization": f"Bearer {ALICE}"}
    return invoke(ADMIN, "POST", f"/admin/payments/{payment_id}/refund", body={"reason": "asked"}, headers=headers)


def _scheduled_cleanup() -> Any:
    event = json.loads((EVENTS / "cleanup_schedule.json").read_text())
    return load_handler(load().functions[CLEANUP])(event, LocalLambdaContext(function_name=CLEANUP))


def _paid(env: Env, key: str) -> str:
    payment = buy(env, key=key)
    assert notify(pay(env, payment).redirect_query).status == 200
    return payment["payment_id"]


def test_a_refund_whose_invocation_died_while_hyp_was_asked_is_marked_unknown_and_alarmed(
    admin: Env,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = admin
    # Given a refund whose invocation was killed right after Hyp cancelled the charge
    died, fresh = _paid(env, "died"), _paid(env, "fresh")
    real_cancel = HypayClient.cancel

    def cancel_then_die(self: HypayClient, *args: Any, **kwargs: Any) -> Any:
        real_cancel(self, *args, **kwargs)
        raise Killed("the Lambda runtime ended the invocation")

    monkeypatch.setattr(HypayClient, "cancel", cancel_then_die)
    with pytest.raises(Killed):
        _refund(died, str(uuid.uuid4()))
    # ... and another just as killed, a minute ago (its invocation's end is not that far behind)
    with pytest.raises(Killed):
        _refund(fresh, str(uuid.uuid4()))
    monkeypatch.setattr(HypayClient, "cancel", real_cancel)
    assert env.sim.calls.count("CancelTrans") == 2
    env.rows("UPDATE refunds SET updated_at = now() - interval '11 minutes' WHERE payment_id = :p::uuid", p=died)
    env.rows("UPDATE refunds SET updated_at = now() - interval '1 minute' WHERE payment_id = :p::uuid", p=fresh)
    capsys.readouterr()
    # When the hourly cleanup runs
    _scheduled_cleanup()
    # Then the old one's outcome is unknown, counted for its alarm, and in the queue; the recent one is left as it is
    assert metric_totals(capsys.readouterr().out).get("Cleanup_refunds_outcome_unknown") == 1
    assert env.rows("SELECT status, message FROM refunds WHERE payment_id = :p::uuid", p=died) == [
        ["unknown", STALE_REFUND_MESSAGE]
    ]
    assert env.rows("SELECT status FROM refunds WHERE payment_id = :p::uuid", p=fresh) == [["attempted"]]
    assert "refund_outcome_unknown" in [i["reason"] for i in every_item()]
    # And the next run counts nothing again
    _scheduled_cleanup()
    assert metric_totals(capsys.readouterr().out).get("Cleanup_refunds_outcome_unknown") == 0
