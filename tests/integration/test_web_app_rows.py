"""The web app's own rows against the backend's money rules: a row of its own under a callback's idempotency key, a
double grant it reversed itself, and catalogue rows that are not a sale."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest

from ops.seed import DEMO_USER_ID
from payments.services.cleanup import CleanupPolicy, run_cleanup
from tests.integration.test_admin_refund_http import refund
from tests.integration.test_hypay_callback import browser, buy, notify, pay
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.support.payments import Env, post
from tests.support.pg import database

ODD_PACK = "aaaaaaaa-0000-4000-8000-0000000000f1"


def callback_key(hyp_id: str) -> str:
    """The idempotency key hypay_callback claims for a Hyp Id (Powertools: `<prefix>#md5(json(value))`)."""
    return "hypay_callback#" + hashlib.md5(json.dumps(hyp_id).encode()).hexdigest()


# -- 1. a web-app idempotency row under a callback's key ------------------------------------------------------------


def test_a_web_app_row_under_a_callbacks_key_never_leaves_a_paid_transaction_on_no_row(env: Env) -> None:
    # Given a paid transaction, and a row the web app wrote (no expiry_timestamp) under the key its callback claims
    payment = buy(env)
    paid = pay(env, payment)
    env.rows("INSERT INTO idempotency_keys (key, status) VALUES (:k, 'completed')", k=callback_key(paid.id))
    # When Hyp's redirect and notification arrive (verified, approved, the exact amount)
    browser(paid.redirect_query)
    notify(paid.redirect_query)
    # And the hourly cleanup runs two hours later
    env.rows("UPDATE payments SET created_at = now() - interval '1 day'")
    db = database(env.url)
    run_cleanup(db, policy=CleanupPolicy(pending_payment_max_age_seconds=60))
    db.close()
    # Then the journal settled it once (the foreign row cannot be the record): completed, credits granted once
    assert env.rows("SELECT count(*) FROM hypay_transactions WHERE hypay_id = :h", h=paid.id) == [[1]]
    assert env.status(payment["payment_id"]) == "completed"
    granted = "SELECT count(*) FROM credit_transactions WHERE payment_id = :p::uuid AND type = 'purchase'"
    assert env.rows(granted, p=payment["payment_id"]) == [[1]]


# -- 3. credits taken back for a payment the web app granted twice and already corrected --------------------------


@pytest.mark.usefixtures("admin")
def test_refund_of_an_adopted_double_grant_the_web_app_reversed_takes_back_only_the_net_grant(env: Env) -> None:
    # A payment granted twice by the web app's old code, adopted by `migrate --adopt-legacy` (the second purchase row
    # marked legacy_duplicate_of), the extra grant already reversed by the web app: tests/fixtures/legacy_web_app.sql's
    # d4 (eeeeeeee-...-01/02 +500 +500, eeeeeeee-...-09 -500 'refund' 'Double grant').
    payment = buy(env)
    pid = payment["payment_id"]
    assert notify(pay(env, payment).redirect_query).status == 200
    env.rows("DROP INDEX credit_transactions_one_purchase_per_payment")
    env.rows(
        "CREATE UNIQUE INDEX credit_transactions_one_purchase_per_payment ON credit_transactions (payment_id)"
        " WHERE type = 'purchase' AND payment_id IS NOT NULL AND legacy_duplicate_of IS NULL"
    )
    [[first]] = env.rows("SELECT id::text FROM credit_transactions WHERE payment_id = :p::uuid", p=pid)
    env.rows(
        "INSERT INTO credit_transactions (user_id, amount, type, description, payment_id, legacy_duplicate_of)"
        " VALUES (:u::uuid, 100, 'purchase', 'Starter', :p::uuid, :f::uuid),"
        "        (:u::uuid, -100, 'refund', 'Double grant', :p::uuid, NULL)",
        u=DEMO_USER_ID,
        p=pid,
        f=first,
    )
    env.rows("UPDATE profiles SET credits = credits + 500 WHERE id = :u::uuid", u=DEMO_USER_ID)  # other packs
    before = env.credits()
    answer = refund(pid, {"reason": "customer asked"}, key=str(uuid.uuid4()))
    assert answer.status == 201, answer.json
    # The payment left the user 100 credits (100 + 100 - 100): a full refund takes back 100, not 200
    assert before - env.credits() == 100, answer.json


# -- 4. the catalogue's odd packs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("credits", [0, -50])
def test_a_pack_that_grants_no_credits_is_not_sold(env: Env, credits: int) -> None:
    env.rows(f"INSERT INTO credit_packs (id, name, credits, price) VALUES ('{ODD_PACK}', 'odd', {credits}, 10.00)")
    answer = post({"credit_pack_id": ODD_PACK}, key="odd-credits")
    # Then it is not sold (409), and nothing is written
    assert answer.status == 409 and env.payments() == [], answer.body


@pytest.mark.parametrize("price", ["0.00", "-5.00"])
def test_a_pack_priced_at_nothing_is_refused_as_not_sold_writing_nothing(env: Env, price: str) -> None:
    env.rows(f"INSERT INTO credit_packs (id, name, credits, price) VALUES ('{ODD_PACK}', 'odd', 100, {price})")
    answer = post({"credit_pack_id": ODD_PACK}, key="odd-price")
    # Then it is not sold (409: the client's request was fine), and nothing is written
    assert answer.status == 409, answer.body
    assert env.payments() == []


def test_a_pack_named_at_any_length_still_opens_hyps_page_and_is_paid(env: Env) -> None:
    # A name of 20,000 Hebrew letters: sent whole, it made Hyp's page URL too long to open (414; an outside review)
    name = "\u05d0" * 20_000
    env.rows(f"INSERT INTO credit_packs (id, name, credits, price) VALUES ('{ODD_PACK}', '{name}', 100, 10.00)")
    payment = buy(env, ODD_PACK, key="long-name")
    assert len(payment["payment_url"]) < 4000
    paid = pay(env, payment)
    assert browser(paid.redirect_query).status == 302
    [[status]] = env.rows("SELECT status FROM payments WHERE id = :p::uuid", p=payment["payment_id"])
    assert status == "completed"
