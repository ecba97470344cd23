"""Races on money: callbacks, refunds, the cleanup and saved-card charges at once, each in its own execution
environment (a worker process with its own module state and connection), against the real database and simulator."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ops.lambda_context import LocalLambdaContext
from ops.template import load, load_handler
from tests.integration.test_hypay_callback import browser, buy, notify, pay
from tests.integration.test_serializable import Environments
from tests.support.api import Answer, invoke
from tests.support.payments import CVV, PRO, STARTER, Env, post

ADMIN = "AdminFunction"
CLEANUP = "CleanupFunction"
ALICE = "test-admin-token-0123456789"
ADMIN_ENV = {"ADMIN_API_TOKEN": json.dumps({"tokens": {"alice": ALICE}}), "ADMIN_CHARGE_SETTLE_SECONDS": "0"}


def admin_refund(payment_id: str, key: str, body: dict[str, Any]) -> Answer:
    return invoke(
        ADMIN,
        "POST",
        f"/admin/payments/{payment_id}/refund",
        body=body,
        headers={"Idempotency-Key": key, "Authorization": f"Bearer {ALICE}"},
    )


def scheduled_cleanup() -> Answer:
    event = json.loads(Path("events/cleanup_schedule.json").read_text())
    handler = load_handler(load().functions[CLEANUP])
    result = handler(event, LocalLambdaContext(function_name=CLEANUP, timeout_seconds=60))
    return Answer(200, {}, json.dumps(result, default=str))


@pytest.fixture
def envs(env: Env, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setenv("CREATE_PAYMENT_RATE_LIMIT", "1000")
    pool = Environments(6, HYPAY_TIMEOUT="10", HYPAY_BUDGET="20", **ADMIN_ENV)
    yield pool
    pool.close()


def _money(env: Env) -> Counter[str]:
    return Counter(c for c in env.sim.calls if c in ("soft", "zikoyAPI", "CancelTrans"))


@pytest.mark.parametrize("round_", range(3))
def test_stale_paid_callback_with_refunds_and_cleanup_at_once(env: Env, envs: Environments, round_: int) -> None:
    # Given a payment paid at Hyp, its callbacks not yet arrived, old enough for the cleanup to expire it
    before = env.credits()
    payment = buy(env, key=f"race-{round_}")
    pid = payment["payment_id"]
    paid = pay(env, payment)
    env.rows("UPDATE payments SET created_at = now() - interval '3 hours' WHERE id = :p::uuid", p=pid)
    # When redirects, notifications, two refunds (different keys, all that remains) and two cleanups run together
    jobs: list[tuple[str, Any, tuple[Any, ...]]] = []
    for _ in range(3):
        jobs.append(("browser", browser, (paid.redirect_query,)))
        jobs.append(("notify", notify, (paid.redirect_query,)))
    jobs.append(("refund", admin_refund, (pid, "refund-a", {"reason": "customer asked"})))
    jobs.append(("cleanup", scheduled_cleanup, ()))
    jobs.append(("refund", admin_refund, (pid, "refund-b", {"reason": "customer asked again"})))
    jobs.append(("cleanup", scheduled_cleanup, ()))
    random.Random(round_).shuffle(jobs)
    answers = [(kind, f.result(120)) for kind, f in [(k, envs.submit(fn, *a)) for k, fn, a in jobs]]
    # And late deliveries after the dust settles
    assert notify(paid.redirect_query).status == 200
    browser(paid.redirect_query)
    # Then nothing answered a 5xx but the callbacks' "not yet"
    bad = [(k, a.status, a.body) for k, a in answers if a.status >= 500 and not (k == "notify" and a.status == 503)]
    assert bad == [], bad
    # And the credits were granted once, and taken back once for each refund that moved money
    granted = env.rows(
        "SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid AND type = 'purchase'", p=pid
    )
    assert granted == [[1]], granted
    refunds = env.rows("SELECT status, amount::text FROM refunds WHERE payment_id = :p::uuid", p=pid)
    moved = _money(env)
    assert moved["zikoyAPI"] + moved["CancelTrans"] <= 1, (moved, refunds)
    succeeded = [r for r in refunds if r[0] == "succeeded"]
    assert len(succeeded) <= 1, refunds
    assert env.credits() == before + 100 - (100 if succeeded else 0), (refunds, env.credits())
    # And the paid Hyp transaction has its journal row; the payment is completed
    assert env.rows("SELECT count(*) FROM hypay_transactions WHERE hypay_id = :i", i=paid.id) == [[1]]
    assert env.status(pid) == "completed"


def test_saved_card_charges_same_and_different_keys_at_once(env: Env, saved_card: str, envs: Environments) -> None:
    before_soft = _money(env)["soft"]
    before = env.credits()
    same = [("same", {"credit_pack_id": PRO, "saved_card": True, "cvv": CVV})] * 5
    other = [(f"other-{i}", {"credit_pack_id": STARTER, "saved_card": True, "cvv": CVV}) for i in range(3)]
    requests = same[:2] + other[:1] + same[2:4] + other[1:] + same[4:]
    answers = [f.result(120) for f in [envs.submit(post, body, key) for key, body in requests]]
    assert [(a.status, a.body) for a in answers if a.status >= 500] == []
    # The user's card is charged by one payment at a time: a charge asked while another's outcome is not stored
    # is refused (a final 409), nothing charged
    refused = {k for (k, _), a in zip(requests, answers, strict=True) if a.status == 409}
    assert all(
        "retry-after" not in a.headers and "nothing was charged" in a.json["detail"]
        for a in answers
        if a.status == 409 and "another saved-card charge" in a.body
    )
    charged = {(k, a.json["payment_id"]) for (k, _), a in zip(requests, answers, strict=True) if a.status == 201}
    soft = _money(env)["soft"] - before_soft
    assert soft == len(charged) >= 1, (soft, [(a.status, a.body) for a in answers])
    assert len({pid for k, pid in charged if k == "same"}) <= 1  # the repeated key: one payment, charged once
    # When every refused purchase is bought again with a new key, one after the other, each is charged once (a refused
    # key keeps its answer)
    for key, body in dict(requests).items():
        if key in refused and key not in {k for k, _ in charged}:
            again = post(body, f"{key}-again")
            assert again.status == 201, again.body
            charged.add((key, again.json["payment_id"]))
    keys = {k for k, _ in charged}
    assert keys == {"same", "other-0", "other-1", "other-2"}
    assert _money(env)["soft"] - before_soft == 4
    assert env.credits() == before + 500 + 3 * 100
    # Every Hyp transaction on a row
    txns = env.rows("SELECT count(*) FROM hypay_transactions")
    assert txns[0][0] >= 4


def test_concurrent_partial_refunds_never_exceed_the_original(env: Env, envs: Environments) -> None:
    payment = buy(env, key="partial")
    pid = payment["payment_id"]
    paid = pay(env, payment)
    assert notify(paid.redirect_query).status == 200
    second = pay(env, payment)  # a second charge, held for review
    jobs = [(admin_refund, (pid, f"p-{i}", {"reason": "partial", "amount": "30.00"})) for i in range(4)]
    jobs += [(admin_refund, (pid, f"s-{i}", {"reason": "second", "hypay_id": second.id})) for i in range(2)]
    jobs.insert(3, (notify, (second.redirect_query,)))
    jobs.insert(1, (browser, (second.redirect_query,)))
    answers = [f.result(120) for f in [envs.submit(fn, *a) for fn, a in jobs]]
    assert [(a.status, a.body) for a in answers if a.status >= 500 and a.status != 503] == []
    rows = env.rows(
        "SELECT original_hypay_id, status, amount::text FROM refunds WHERE payment_id = :p::uuid ORDER BY 1", p=pid
    )
    by_txn: dict[str, float] = {}
    for txn, status, amount in rows:
        if status in ("succeeded", "attempted", "unknown"):
            by_txn[txn] = by_txn.get(txn, 0) + float(amount)
    assert all(v <= 49.90 for v in by_txn.values()), rows
    assert by_txn.get(second.id, 0) <= 49.90
    assert env.rows("SELECT count(*) FROM hypay_transactions WHERE hypay_id IN (:a, :b)", a=paid.id, b=second.id) == [
        [2]
    ]
    assert env.rows(
        "SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid AND type = 'purchase'", p=pid
    ) == [[1]]


def test_saved_card_same_key_different_bodies_at_once_charges_once(
    env: Env, saved_card: str, envs: Environments
) -> None:
    before_soft = _money(env)["soft"]
    bodies = [{"credit_pack_id": PRO if i % 2 else STARTER, "saved_card": True, "cvv": CVV} for i in range(6)]
    bodies += [{"credit_pack_id": STARTER}]  # a page, same key
    answers = [f.result(120) for f in [envs.submit(post, b, "one-key") for b in bodies]]
    assert [(a.status, a.body) for a in answers if a.status >= 500] == []
    assert _money(env)["soft"] - before_soft <= 1
    assert env.rows("SELECT count(*) FROM payments WHERE idempotency_key LIKE '%one-key'")[0][0] <= 1
