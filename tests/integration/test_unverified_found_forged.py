"""A callback kept because it could not be verified, later found forged: it no longer holds its payment or the queue.

Kept unverified, a callback keeps its payment pending (the cleanup never expires it) and its Hyp Id in the review
queue, so that money Hyp may hold is never lost from view. Without a way to find it forged, a forgery that arrived
while verification was down held both forever: resolving refuses a pending payment ("the cleanup expires it"),
and the cleanup skips it. Sent again (Hyp's redelivery, or an operator posting it to /hypay/notify) and found
forged, the kept text is marked; once every text kept for an Id is, the Id leaves the queue and the payment expires
as any payment Hyp never paid. Only the text found forged is marked: a forger's copy of a genuine Id marks nothing
of the genuine callback.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from payments.services.cleanup import CleanupPolicy, run_cleanup
from tests.integration.test_callback_attacks import unpaid_claim
from tests.integration.test_hypay_callback import buy, forge, notify, pay
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import every_item
from tests.support.payments import Env
from tests.support.pg import database


@pytest.fixture
def verify_down(admin: Env) -> Iterator[Env]:  # noqa: F811 - the fixture above
    """Hyp's VERIFY hangs for the next call and its one retry: a callback is then kept unverified (503)."""

    def hang() -> None:
        admin.sim.faults.add("VERIFY", "hang", times=2, seconds=1.5)

    admin.hang_verify = hang  # type: ignore[attr-defined]
    yield admin


def _expire_stale(env: Env) -> None:
    """The hourly cleanup, hours after the payments were made."""
    env.rows("UPDATE payments SET created_at = now() - interval '3 hours' WHERE status = 'pending'")
    db = database(env.url)
    try:
        run_cleanup(db, policy=CleanupPolicy(pending_payment_max_age_seconds=60))
    finally:
        db.close()


def test_a_kept_forgery_found_forged_leaves_the_queue_and_its_payment_expires(verify_down: Env) -> None:
    env = verify_down
    # Given a pending payment, and a forged approval for it (its Sign right: only Hyp's VERIFY can tell) that
    # arrived while VERIFY could not be asked: kept
    page = buy(env, key="forged-kept")
    forged = forge(unpaid_claim(page["payment_id"]))
    env.hang_verify()  # type: ignore[attr-defined]
    assert notify(forged).status == 503
    assert [i["reason"] for i in every_item()] == ["unverified"]
    # And the cleanup keeps the payment pending for it
    _expire_stale(env)
    assert env.status(page["payment_id"]) == "pending"
    # When the kept text is sent again with VERIFY working: found forged
    assert notify(forged).status == 403
    # Then it is marked, the Id leaves the queue, and nothing was granted
    assert env.rows("SELECT found_forged_at IS NOT NULL FROM hypay_unverified_callbacks") == [[True]]
    assert every_item() == []
    assert env.rows("SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid", p=page["payment_id"]) == [
        [0]
    ]
    # And the cleanup expires the payment as any payment Hyp never paid
    _expire_stale(env)
    assert env.status(page["payment_id"]) == "expired"


def test_a_forgers_copy_of_a_genuine_id_marks_nothing_of_the_genuine_callback(verify_down: Env) -> None:
    env = verify_down
    # Given a genuine payment whose callback was kept unverified (VERIFY down)
    page = buy(env, key="genuine-kept")
    paid = pay(env, page)
    env.hang_verify()  # type: ignore[attr-defined]
    assert notify(paid.redirect_query).status == 503
    # When a forgery naming the same Hyp Id (another amount) arrives and is found forged: first kept, then sent again
    fields = [(k, v) for k, v in unpaid_claim(page["payment_id"], amount="1.00") if k != "Id"]
    forged = forge([("Id", paid.id), *fields])
    env.hang_verify()  # type: ignore[attr-defined]
    assert notify(forged).status == 503
    assert notify(forged).status == 403
    # Then only the forger's text is marked: the genuine one still holds the Id in the queue and the payment pending
    assert env.rows("SELECT count(*) FROM hypay_unverified_callbacks WHERE found_forged_at IS NULL") == [[1]]
    assert [(i["reason"], i["hypay_ids"]) for i in every_item()] == [("unverified", [paid.id])]
    _expire_stale(env)
    assert env.status(page["payment_id"]) == "pending"
    # And its next delivery completes the payment, once
    assert notify(paid.redirect_query).status == 200
    assert env.status(page["payment_id"]) == "completed" and every_item() == []


def test_a_forgery_never_kept_writes_nothing(verify_down: Env) -> None:
    env = verify_down
    page = buy(env, key="forged-fresh")
    assert notify(forge(unpaid_claim(page["payment_id"]))).status == 403
    assert env.rows("SELECT count(*) FROM hypay_unverified_callbacks") == [[0]]
    assert env.rows("SELECT count(*) FROM hypay_transactions") == [[0]]
