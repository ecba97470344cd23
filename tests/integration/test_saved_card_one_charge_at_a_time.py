"""A user's saved card is charged by one payment at a time (an outside review: a purchase whose charge Hyp made but
whose answer was lost, the invocation killed, was bought again with a new Idempotency-Key, the web app's "try again",
and the card was charged a second time; two purchases sent at once with different keys were both charged while
neither knew of the other).

While another payment of the user has a saved-card charge with no stored outcome (Hyp being asked, or its answer
lost and the payment in review), a saved-card charge is refused with 409, nothing asked of Hyp. The refusal is the
key's stored answer (every copy of the request gets it; no Retry-After: it may take a human to settle the other), and
nothing else is written or counted against the rate limit. Once that outcome is stored (Hyp answered, or an operator
resolved the payment), the request with a new key charges. The marks of one user's charges are serialized whatever the
database's default isolation."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pg8000.native
import pytest

from tests.integration.test_create_payment import _expire_in_progress_records, killed_after_the_charge
from tests.integration.test_money_races import envs as envs  # noqa: F401 - the fixture
from tests.integration.test_money_races import scheduled_cleanup
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import resolve
from tests.integration.test_serializable import Environments
from tests.support.api import Answer
from tests.support.payments import CVV, PRO, STARTER, Env, post, slow_down

SAVED = {"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}


def _refused_unsettled(answer: Answer) -> bool:
    return (
        answer.status == 409
        and "retry-after" not in answer.headers
        and "another saved-card charge" in answer.json["detail"]
        and "nothing was charged" in answer.json["detail"]
    )


@pytest.mark.parametrize(("operator", "to_review"), [("complete", "retry"), ("fail", "retry"), ("complete", "cleanup")])
def test_a_purchase_bought_again_with_a_new_key_after_a_lost_charge_is_not_charged_twice(
    admin: Env,  # noqa: F811 - the fixture
    saved_card: str,
    operator: str,
    to_review: str,
) -> None:
    env = admin
    before = env.credits()
    # Given a saved-card charge Hyp made whose invocation died before its answer was read
    charged = env.sim.calls.count("soft")
    killed_after_the_charge(SAVED, "first")
    [[first]] = env.rows("SELECT id::text FROM payments WHERE idempotency_key LIKE '%:first'")
    [lost] = [t for t in env.sim.transactions.values() if t.order == first]
    assert env.sim.calls.count("soft") == charged + 1
    # When the user buys again with a new key while the first is pending
    records = env.rows("SELECT count(*) FROM idempotency_keys")
    rate = env.rows("SELECT coalesce(sum(count), 0)::int FROM rate_limits")
    assert _refused_unsettled(answer := post(SAVED, key="again")), answer.body
    # Then nothing was charged, nor written but the refusal as the key's answer, nor counted
    assert env.sim.calls.count("soft") == charged + 1
    assert env.rows("SELECT count(*) FROM idempotency_keys") == [[records[0][0] + 1]]
    assert env.rows("SELECT count(*) FROM payments WHERE idempotency_key LIKE '%:again'") == [[0]]
    assert env.rows("SELECT coalesce(sum(count), 0)::int FROM rate_limits") == rate
    # And so once the first is in review (its key retried, or the hourly cleanup finding its stale attempt)
    if to_review == "retry":
        _expire_in_progress_records(env)
        assert post(SAVED, key="first").json["status"] == "needs_review"
    else:
        env.rows(
            "UPDATE payments SET created_at = created_at - interval '3 hours',"
            " charge_attempted_at = charge_attempted_at - interval '3 hours'"
        )
        scheduled_cleanup()
    assert env.status(first) == "needs_review"
    assert _refused_unsettled(answer := post(SAVED, key="again-2")), answer.body
    assert env.sim.calls.count("soft") == charged + 1
    # And a purchase on the payment page is not held up by it
    assert post({"credit_pack_id": STARTER}, key="page").status == 201
    # When an operator settles the first from Hyp's transactions: a refused key keeps its answer, a new key buys,
    # charging once more
    body = {"action": "complete", "hypay_id": lost.id} if operator == "complete" else {"action": "fail"}
    settled = resolve(first, {**body, "reason": "checked in Hyp's transactions"}, key="r-1")
    assert settled.status == 200, settled.body
    replayed = post(SAVED, key="again")
    assert _refused_unsettled(replayed) and replayed.headers.get("idempotent-replayed") == "true", replayed.headers
    bought = post(SAVED, key="again-3")
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
    # And every copy of the refused request gets the same answer, and once the first is answered a new key charges
    [refused_key] = [k for k, a in zip(("at-once-1", "at-once-2"), answers, strict=True) if a.status == 409]
    assert _refused_unsettled(post(SAVED, key=refused_key))
    assert post(SAVED, key=f"{refused_key}-again").status == 201
    assert env.sim.calls.count("soft") == charged + 2


@pytest.mark.parametrize("level", ["read committed", "repeatable read", "serializable"])
def test_a_charge_marked_while_another_held_the_users_lock_sees_it_whatever_the_isolation(
    database_url: str, env: Env, saved_card: str, envs: Environments, level: str
) -> None:
    """Under REPEATABLE READ a transaction's snapshot is its first statement's: taken before the lock was granted, it
    would not see the mark its holder committed, and both charges would go to Hyp."""
    name = urlsplit(database_url).path.lstrip("/")
    env.rows(f"ALTER DATABASE {pg8000.native.identifier(name)} SET default_transaction_isolation = '{level}'")
    # The first charge's mark takes a second (a slow disk, a busy server): it holds the user's lock meanwhile
    slow_down(
        env.rows,
        "slow_mark",
        "BEFORE UPDATE ON payments FOR EACH ROW"
        " WHEN (OLD.charge_attempt_id IS NULL AND NEW.charge_attempt_id IS NOT NULL)",
    )
    charged = env.sim.calls.count("soft")
    first = envs.submit(post, SAVED, "lock-1")
    time.sleep(0.5)
    second = envs.submit(post, SAVED, "lock-2")
    answers = [first.result(120), second.result(120)]
    assert env.sim.calls.count("soft") == charged + 1, (level, [(a.status, a.body) for a in answers])
    assert sorted(a.status for a in answers) == [201, 409], [(a.status, a.body) for a in answers]
