"""A user's saved card is charged by one payment at a time (an outside review: a purchase whose charge Hyp made but
whose answer was lost, the invocation killed, was bought again with a new Idempotency-Key, the web app's "try again",
and the card was charged a second time; two purchases sent at once with different keys were both charged while
neither knew of the other).

While another payment of the user has a saved-card charge with no stored outcome (Hyp being asked, or its answer
lost and the payment in review), a saved-card charge is refused with 409 and Retry-After, nothing asked of Hyp and
nothing stored for the key. Once that outcome is stored (Hyp answered, or an operator resolved the payment), the
same request charges."""

from __future__ import annotations

import pytest

from tests.integration.test_create_payment import _expire_in_progress_records, killed_after_the_charge
from tests.integration.test_money_races import envs as envs  # noqa: F401 - the fixture
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import resolve
from tests.integration.test_serializable import Environments
from tests.support.api import Answer
from tests.support.payments import CVV, PRO, STARTER, Env, post

SAVED = {"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}


def _refused_unsettled(answer: Answer) -> bool:
    return (
        answer.status == 409
        and answer.headers.get("retry-after") == "30"
        and "another saved-card charge" in answer.json["detail"]
        and "nothing was charged" in answer.json["detail"]
    )


@pytest.mark.parametrize("operator", ["complete", "fail"])
def test_a_purchase_bought_again_with_a_new_key_after_a_lost_charge_is_not_charged_twice(
    admin: Env,  # noqa: F811 - the fixture
    saved_card: str,
    operator: str,
) -> None:
    env = admin
    before = env.credits()
    # Given a saved-card charge Hyp made whose invocation died before its answer was read
    charged = env.sim.calls.count("soft")
    killed_after_the_charge(SAVED, f"first-{operator}")
    [[first]] = env.rows("SELECT id::text FROM payments WHERE idempotency_key LIKE :k", k=f"%:first-{operator}")
    [lost] = [t for t in env.sim.transactions.values() if t.order == first]
    assert env.sim.calls.count("soft") == charged + 1
    # When the user buys again with a new key: while the first is pending, then once the retry sent it to review
    records = env.rows("SELECT count(*) FROM idempotency_keys")
    assert _refused_unsettled(answer := post(SAVED, key=f"again-{operator}")), answer.body
    _expire_in_progress_records(env)
    assert post(SAVED, key=f"first-{operator}").json["status"] == "needs_review"
    assert _refused_unsettled(answer := post(SAVED, key=f"again-{operator}")), answer.body
    # Then the card was charged once, and the refused key holds nothing (no record, no charge attempt)
    assert env.sim.calls.count("soft") == charged + 1
    assert env.rows("SELECT count(*) FROM idempotency_keys") == records
    assert env.rows(
        "SELECT count(*) FROM payments WHERE idempotency_key LIKE :k AND charge_attempt_id IS NOT NULL",
        k=f"%again-{operator}",
    ) == [[0]]
    # And a purchase on the payment page is not held up by it
    assert post({"credit_pack_id": STARTER}, key=f"page-{operator}").status == 201
    # When an operator settles the first from Hyp's transactions, the same new key buys, charging once more
    body = {"action": "complete", "hypay_id": lost.id} if operator == "complete" else {"action": "fail"}
    settled = resolve(first, {**body, "reason": "checked in Hyp's transactions"}, key=f"r-{operator}")
    assert settled.status == 200, settled.body
    bought = post(SAVED, key=f"again-{operator}")
    assert bought.status == 201 and bought.json["status"] == "completed", bought.body
    assert env.sim.calls.count("soft") == charged + 2
    assert env.credits() == before + 500 * (2 if operator == "complete" else 1)


def test_two_purchases_sent_at_once_with_different_keys_charge_one_at_a_time(
    env: Env, saved_card: str, envs: Environments
) -> None:
    # Given Hyp is slow to answer a charge
    charged = env.sim.calls.count("soft")
    env.sim.faults.add("soft", "latency", times=1, seconds=1.5)
    # When two purchases are sent at once with different keys
    answers = [f.result(120) for f in [envs.submit(post, SAVED, key) for key in ("at-once-1", "at-once-2")]]
    # Then one is charged and the other refused while the first is being asked, nothing charged for it
    assert sorted(a.status for a in answers) == [201, 409], [(a.status, a.body) for a in answers]
    assert _refused_unsettled(next(a for a in answers if a.status == 409))
    assert env.sim.calls.count("soft") == charged + 1
    # And once it is answered, the refused one charges when sent again
    [refused_key] = [k for k, a in zip(("at-once-1", "at-once-2"), answers, strict=True) if a.status == 409]
    assert post(SAVED, key=refused_key).status == 201
    assert env.sim.calls.count("soft") == charged + 2
