"""Junk sent to /hypay/notify while Hyp could not be asked (a made-up Sign, an Order that is no payment of ours) was
kept, and stayed in the review queue for good once found forged: resolve has no payment to fail (404), close refuses
an unverified transaction (409), and the queue's age alarm (ReviewQueueOldestSeconds) stayed in ALARM a day later,
masking every real item's age. Found forged and naming no payment of ours, it now leaves the queue; its journal row
and kept copy stay."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.test_callback_attacks import unpaid_claim
from tests.integration.test_hypay_callback import forge, notify
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture verify_down needs
from tests.integration.test_review import every_item
from tests.integration.test_unverified_found_forged import WRONG_KEY, verify_down  # noqa: F401 - the fixture
from tests.support.payments import Env


@pytest.mark.parametrize("order", [str(uuid.uuid4()), "12345678910"], ids=["uuid-of-no-payment", "not-a-uuid"])
def test_junk_kept_while_hyp_could_not_be_asked_leaves_the_queue_once_found_forged(
    verify_down: Env,  # noqa: F811 - the fixture
    order: str,
) -> None:
    env = verify_down
    # Given a bot's junk approval kept while Hyp's SIGN hung: in the queue, waiting for verification
    junk = forge(unpaid_claim(order), key=WRONG_KEY)
    env.hang_sign()  # type: ignore[attr-defined]
    assert notify(junk).status == 503
    [item] = every_item()
    assert item["reason"] == "unverified"
    # When, Hyp back, it is posted again (as the CallbackNotVerifiable runbook says) and found forged
    assert notify(junk).status == 403
    # Then it leaves the queue, and its record stays
    assert every_item() == []
    assert env.rows("SELECT decision, verified FROM hypay_transactions WHERE hypay_id = '77700001'") == [
        ["unverified", False]
    ]
    assert env.rows("SELECT count(*) FROM hypay_unverified_callbacks WHERE found_forged_at IS NOT NULL") == [[1]]


def test_a_kept_callback_of_no_payment_stays_in_the_queue_until_found_forged(
    verify_down: Env,  # noqa: F811 - the fixture
) -> None:
    env = verify_down
    # Given two kept callbacks for one Id naming no payment of ours, only one found forged since
    junk = forge(unpaid_claim(str(uuid.uuid4())), key=WRONG_KEY)
    other = forge(unpaid_claim(str(uuid.uuid4()), amount="12.00"), key=WRONG_KEY)
    env.hang_sign()  # type: ignore[attr-defined]
    assert notify(junk).status == 503
    env.hang_sign()  # type: ignore[attr-defined]
    assert notify(other).status == 503
    assert notify(junk).status == 403
    # Then the Id is still in the queue: one of its callbacks is not known to be forged
    assert [i["reason"] for i in every_item()] == ["unverified"]
