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
from tests.support.faults import Killed, answer_lost
from tests.support.payments import Env

EVENTS = Path(__file__).resolve().parents[2] / "events"


def _refund(payment_id: str, key: str) -> Answer:
    headers = {"Idempotency-Key": key, "Authorization": f"Bearer {ALICE}"}
    return invoke(ADMIN, "POST", f"/admin/payments/{payment_id}/refund", body={"reason": "asked"}, headers=headers)


def _scheduled_cleanup() -> Any:
    event = json.loads((EVENTS / "cleanup_schedule.json").read_text())
    return load_handler(load().functions[CLEANUP])(event, LocalLambdaContext(function_name=CLEANUP))


def _killed_after(monkeypatch: pytest.MonkeyPatch, method: str, payment_id: str, key: str) -> None:
    """An operator's refund of the payment, its invocation killed (Lambda's timeout) right after Hyp's `method`
    (cancel or refund) answered: Hyp moved the money, nothing of its answer was stored."""
    real = getattr(HypayClient, method)

    def then_die(self: HypayClient, *args: Any, **kwargs: Any) -> Any:
        real(self, *args, **kwargs)
        raise Killed("the Lambda runtime ended the invocation")

    monkeypatch.setattr(HypayClient, method, then_die)
    with pytest.raises(Killed):
        _refund(payment_id, key)
    monkeypatch.setattr(HypayClient, method, real)


def _cleanup_losing_the_refund_commit(env: Env, monkeypatch: pytest.MonkeyPatch, refund_statement: str) -> Any:
    """The scheduled cleanup, the answer to the COMMIT of its refund step's first transaction (the one sending a
    statement holding `refund_statement`) lost after the server committed it."""
    seen: list[str] = []

    def lost(sql: str) -> bool:
        if refund_statement in sql and "public.refunds" in sql:
            seen.append(sql)
            return False
        return bool(seen) and sql.strip() == "COMMIT"

    with answer_lost(env.url, monkeypatch, lost) as fired:
        out = _scheduled_cleanup()
    assert fired
    return out


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
    _killed_after(monkeypatch, "cancel", died, str(uuid.uuid4()))
    # ... and another just as killed, a minute ago (its invocation's end is not that far behind)
    _killed_after(monkeypatch, "cancel", fresh, str(uuid.uuid4()))
    assert env.sim.calls.count("CancelTrans") == 2
    env.rows("UPDATE refunds SET updated_at = now() - interval '11 minutes' WHERE payment_id = :p::uuid", p=died)
    env.rows("UPDATE refunds SET updated_at = now() - interval '1 minute' WHERE payment_id = :p::uuid", p=fresh)
    capsys.readouterr()
    # When the hourly cleanup runs
    _scheduled_cleanup()
    # Then the old one's outcome is unknown, counted for its alarm, and in the queue; the recent one is left as it is
    assert metric_totals(capsys.readouterr().out).get("Cleanup_refunds_outcome_unknown") == 1
    [[status, message]] = env.rows("SELECT status, message FROM refunds WHERE payment_id = :p::uuid", p=died)
    assert status == "unknown" and message.startswith(f"{STALE_REFUND_MESSAGE} (run "), message
    assert env.rows("SELECT status FROM refunds WHERE payment_id = :p::uuid", p=fresh) == [["attempted"]]
    assert "refund_outcome_unknown" in [i["reason"] for i in every_item()]
    # And the next run counts nothing again
    _scheduled_cleanup()
    assert metric_totals(capsys.readouterr().out).get("Cleanup_refunds_outcome_unknown") == 0


def test_a_cancellation_hyp_refused_whose_refund_invocation_died_is_marked_unknown(
    admin: Env,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = admin
    # Given a same-day full refund whose CancelTrans Hyp refuses (the day's transmission went out: 920), so the same
    # attempt goes on as a zikoyAPI refund; Hyp refunds it and the invocation is killed before the answer is stored
    monkeypatch.setattr(env.sim, "cancel_until_hour", 24)
    died = _paid(env, "died-after-switch")
    env.sim.transmit()
    _killed_after(monkeypatch, "refund", died, str(uuid.uuid4()))
    assert env.sim.calls.count("CancelTrans") == 1 and env.sim.calls.count("zikoyAPI") == 1
    assert env.sim.refund_count() == 1  # the money went back to the card
    [[status, method, message]] = env.rows(
        "SELECT status, method, message FROM refunds WHERE payment_id = :p::uuid", p=died
    )
    assert (status, method) == ("attempted", "refund"), message
    env.rows("UPDATE refunds SET updated_at = now() - interval '11 minutes' WHERE payment_id = :p::uuid", p=died)
    capsys.readouterr()
    # When the hourly cleanup runs
    _scheduled_cleanup()
    # Then, as for any refund whose invocation ended after Hyp was asked, its outcome is unknown and alarmed
    out = capsys.readouterr().out
    assert env.rows("SELECT status FROM refunds WHERE payment_id = :p::uuid", p=died) == [["unknown"]], message
    assert metric_totals(out).get("Cleanup_refunds_outcome_unknown") == 1


def test_a_retry_of_a_stale_refund_while_the_cleanup_marks_it_is_answered_unknown_not_a_500(
    admin: Env,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from payments.adapters.refunds_store import RefundsStore

    env = admin
    # Given a refund whose invocation was killed after Hyp cancelled the charge, 11 minutes ago
    died = _paid(env, "died-then-retried")
    key = str(uuid.uuid4())
    _killed_after(monkeypatch, "cancel", died, key)
    env.rows("UPDATE refunds SET updated_at = now() - interval '11 minutes' WHERE payment_id = :p::uuid", p=died)
    env.rows("UPDATE idempotency_keys SET in_progress_expiry_timestamp = 1 WHERE status = 'pending'")
    # When the operator retries with the same key just as the hourly cleanup runs: the cleanup marks the row once the
    # retry has locked the payment and read the row (the cleanup locks no payment)
    real_read = RefundsStore._read
    reads = []

    def read_then_cleanup(tx: Any, refund_id: Any) -> Any:
        row = real_read(tx, refund_id)
        reads.append(row)
        if len(reads) == 2:
            _scheduled_cleanup()
        return row

    monkeypatch.setattr(RefundsStore, "_read", staticmethod(read_then_cleanup))
    again = _refund(died, key)
    # Then the retry is told the outcome is unknown (202), as it would be a moment earlier or later
    assert again.status == 202, (again.status, again.body)
    assert env.sim.calls.count("CancelTrans") == 1


def test_a_stale_refund_marked_whose_commit_answer_was_lost_is_still_counted(
    admin: Env,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A batch that committed and whose COMMIT's answer was lost is run again (Database.atomic), finds the refunds
    already unknown and counted 0: the refund's alarm never fired (the next run finds nothing either). The step's
    recount now counts it, as the flag step's does (test_cleanup_counts_lost)."""
    env = admin
    died = _paid(env, "died")
    _killed_after(monkeypatch, "cancel", died, str(uuid.uuid4()))
    env.rows("UPDATE refunds SET updated_at = now() - interval '11 minutes' WHERE payment_id = :p::uuid", p=died)
    capsys.readouterr()
    out = _cleanup_losing_the_refund_commit(env, monkeypatch, "SET status = 'unknown'")
    assert env.rows("SELECT status FROM refunds WHERE payment_id = :p::uuid", p=died) == [["unknown"]]
    counted = metric_totals(capsys.readouterr().out).get("Cleanup_refunds_outcome_unknown")
    # As for the flag step (test_cleanup_counts_lost): the alarm's metric counts it; counts_exact only reaches a log
    # line, no alarm reads it
    assert counted == 1, (counted, out)


def test_a_lost_commit_of_an_empty_refund_batch_never_counts_the_previous_runs_refund_again(
    admin: Env,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A recount by the words the step writes and a time window counted a refund an earlier run had marked (and
    counted) seconds before: its alarm fired twice. The recount counts only this run's."""
    env = admin
    died = _paid(env, "died")
    _killed_after(monkeypatch, "cancel", died, str(uuid.uuid4()))
    env.rows("UPDATE refunds SET updated_at = now() - interval '11 minutes' WHERE payment_id = :p::uuid", p=died)
    capsys.readouterr()
    # The hourly run marks the refund unknown and counts it once (its alarm)
    _scheduled_cleanup()
    assert env.rows("SELECT status FROM refunds WHERE payment_id = :p::uuid", p=died) == [["unknown"]]
    assert metric_totals(capsys.readouterr().out).get("Cleanup_refunds_outcome_unknown") == 1
    # A run a few seconds later (the admin route's POST /admin/cleanup-idempotency, or the next after a short one):
    # nothing is stale any more; its refund batch locks nothing, and the answer to that empty transaction's COMMIT is
    # lost (the same fault the commit's own test injects)
    out = _cleanup_losing_the_refund_commit(env, monkeypatch, "FROM public.refunds r JOIN public.payments p")
    # Then this run, which marked nothing, counts nothing: the first run's refund is not counted again
    counted = metric_totals(capsys.readouterr().out).get("Cleanup_refunds_outcome_unknown", 0)
    assert counted == 0, (counted, out)
