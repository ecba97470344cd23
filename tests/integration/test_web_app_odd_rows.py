"""Rows the web app may write that no request of ours would: a payment's amount stored as 'NaN' (numeric holds it), a
timestamp stored as an infinity. They are our data, never the caller's bad input: a paid callback for such a payment
is kept and answered "not yet" (never a 400 telling Hyp to stop, never the failure page for a customer who paid, the
payment never expired under it), and the review queue and resolve answer as for any other row (an outside fuzz found
a 400 and a lost transaction, a 500 and a queue answering 503 for as long as the row existed)."""

from __future__ import annotations

import threading
import uuid

import pytest

from ops.lambda_context import LocalLambdaContext
from ops.seed import DEMO_USER_ID
from ops.template import load_handler
from tests.integration.test_hypay_callback import browser, buy, notify, pay
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import queue, resolve
from tests.support.api import TEMPLATE
from tests.support.payments import FAILURE_PAGE, PENDING_PAGE, STARTER, Env


def test_a_paid_callback_for_a_payment_whose_amount_is_not_a_number_is_kept(env: Env) -> None:
    payment = buy(env, key=str(uuid.uuid4()))
    pid = payment["payment_id"]
    env.rows("UPDATE payments SET amount = 'NaN' WHERE id = :p::uuid", p=pid)  # the web app's write
    paid = pay(env, payment)  # Hyp charged 49.90, verified
    back = browser(paid.redirect_query)
    told = notify(paid.redirect_query)
    # "Not yet" for Hyp, the pending page for the customer: ours to fix
    assert told.status == 503, told.body
    assert back.headers["location"].startswith(PENDING_PAGE) and not back.headers["location"].startswith(FAILURE_PAGE)
    # Hyp's transaction on record, in the queue (kept, alarmed), and the payment never expired under it
    assert env.rows("SELECT count(*) FROM hypay_unverified_callbacks WHERE hypay_id = :h", h=paid.id) == [[1]]
    assert env.rows("SELECT decision FROM hypay_transactions WHERE hypay_id = :h", h=paid.id) == [["unverified"]]
    env.rows("UPDATE payments SET created_at = now() - interval '3 hours' WHERE id = :p::uuid", p=pid)
    load_handler(TEMPLATE.functions["CleanupFunction"])(
        {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}},
        LocalLambdaContext(function_name="CleanupFunction", timeout_seconds=60),
    )
    assert env.status(pid) == "pending"


def _held_by_the_web_app(env: Env, change: str) -> str:
    """A payment the web app sent to a human, one of its timestamps written as an infinity."""
    pid = str(uuid.uuid4())
    env.rows(
        "INSERT INTO payments (id, user_id, credit_pack_id, amount, status, credits, review_reason, created_at)"
        " VALUES (:p::uuid, :u::uuid, :k::uuid, 49.90, 'needs_review', 100, 'web app flagged',"
        " now() - interval '1 day')",
        p=pid,
        u=DEMO_USER_ID,
        k=STARTER,
    )
    env.rows(f"UPDATE payments SET {change} WHERE id = :p::uuid", p=pid)  # noqa: S608 - the test's own text
    return pid


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("change", ["completed_at = 'infinity'", "charge_attempted_at = '-infinity'"])
def test_resolving_a_payment_with_an_infinite_timestamp(env: Env, change: str) -> None:
    pid = _held_by_the_web_app(env, change)
    answer = resolve(pid, {"action": "fail", "reason": "checked in Hyp's portal"}, key=str(uuid.uuid4()))
    assert answer.status < 500, answer.body


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("since", ["-infinity", "infinity"])
def test_the_review_queue_lists_a_payment_created_at_an_infinity(env: Env, since: str) -> None:
    pid = _held_by_the_web_app(env, f"created_at = '{since}'")
    answer = queue()
    assert answer.status == 200, answer.body
    assert f"p:{pid}" in [i["id"] for i in answer.json["items"]]


def _held_since(env: Env, created_at: str) -> str:
    pid = str(uuid.uuid4())
    env.rows(
        "INSERT INTO payments (id, user_id, credit_pack_id, amount, status, credits, review_reason, created_at)"
        f" VALUES (:p::uuid, :u::uuid, :k::uuid, 49.90, 'needs_review', 100, 'web app flagged', {created_at})",  # noqa: S608
        p=pid,
        u=DEMO_USER_ID,
        k=STARTER,
    )
    return pid


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("created_at", ["'infinity'", "now() + interval '1 hour'"], ids=["infinity", "future"])
def test_paging_lists_every_item_held_since_a_future_time_once(env: Env, created_at: str) -> None:
    """An item's `since` is the same from one page to the next (a bound of now() moved with every statement: the
    cursor found the same item again, the next was never listed, an outside review)."""
    held = {f"p:{_held_since(env, created_at)}" for _ in range(2)}
    seen: list[str] = []
    query = "limit=1"
    for _ in range(6):
        answer = queue(query)
        assert answer.status == 200, answer.body
        seen += [i["id"] for i in answer.json["items"]]
        if answer.json["next"] is None:
            break
        query = f"limit=1&after={answer.json['next']}"
    assert sorted(seen) == sorted(held), seen


@pytest.mark.usefixtures("admin")
def test_a_filtered_page_ends_whatever_the_items_times(env: Env) -> None:
    for _ in range(101):  # more than one internal batch of items
        _held_since(env, "'infinity'")
    answers: list = []
    worker = threading.Thread(target=lambda: answers.append(queue("reason=second_charge&limit=1")), daemon=True)
    worker.start()
    worker.join(25)  # the function's own timeout is 20 s
    assert not worker.is_alive(), "the filtered queue was still being read after 25 s"
    assert answers[0].status == 200 and answers[0].json["items"] == [], answers[0].body
