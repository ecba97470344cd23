"""A refund reads the payment's Hyp transaction id from the payments row, a column the web app writes. Every other Id
(callbacks, charge answers, an operator's hypay_id) must be a Hyp transaction id (1 to 20 ASCII digits, not all
zeros); this one was sent as it was: `abc`, a padded number or a 30-digit one went verbatim into CancelTrans and then
zikoyAPI, answered 502 with a final 'refused' row written (an outside review). Such an Id is never sent and never
taken for the payment's transaction: the refund is refused (409) before anything is written, and the operator names
the transaction to refund."""

from __future__ import annotations

import uuid

import pytest

from ops.seed import DEMO_USER_ID
from payments.adapters import hypay
from payments.domain.money import Money
from payments.errors import GatewayNotAsked
from tests.integration.test_admin_refund_http import refund
from tests.integration.test_close_transaction import REFUNDED, close
from tests.integration.test_hypay_callback import buy, notify, pay
from tests.integration.test_review import ALICE
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.support.api import invoke
from tests.support.payments import STARTER, Env, record_hyp_requests

NOT_HYP_IDS = ["abc", " 12", "12788261 ", "\u0661\u0662\u0663", "1" * 30, "1e3", "0"]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    return record_hyp_requests(monkeypatch)


def _reversals(sent: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(r["action"], r.get("TransId", "")) for r in sent if r.get("action") in ("CancelTrans", "zikoyAPI")]


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("web_app_id", NOT_HYP_IDS)
@pytest.mark.parametrize("named", [False, True], ids=["unnamed", "named-by-the-operator"])
def test_a_stored_id_that_is_no_hyp_id_never_reaches_hyp(
    env: Env, sent: list[dict[str, str]], web_app_id: str, named: bool
) -> None:
    pid = str(uuid.uuid4())
    env.rows(
        "INSERT INTO payments (id, user_id, credit_pack_id, amount, status, credits, hypay_transaction_id,"
        " idempotency_key, completed_at) VALUES (:p::uuid, :u::uuid, :k::uuid, 49.90, 'completed', 100, :h, :i, now())",
        p=pid,
        u=DEMO_USER_ID,
        k=STARTER,
        h=web_app_id,
        i=f"web-{pid}",
    )
    # Named: a number the stored text spells, with a space, as a Hyp Id; still not a transaction of this payment
    body = {"reason": "customer asked", **({"hypay_id": "12788261"} if named else {})}
    answer = invoke(
        "AdminFunction",
        "POST",
        f"/admin/payments/{pid}/refund",
        body=body,
        headers={"Authorization": f"Bearer {ALICE}", "Idempotency-Key": str(uuid.uuid4())},
    )
    assert _reversals(sent) == [], answer.status
    assert answer.status == 409, answer.body
    assert answer.headers["content-type"] == "application/problem+json"
    if not named:  # says what to do, without echoing what the row holds
        assert answer.json["detail"].endswith("name the transaction to refund (hypay_id)"), answer.json
    assert env.rows("SELECT count(*) FROM refunds WHERE payment_id = :p::uuid", p=pid) == [[0]]
    assert env.rows("SELECT count(*) FROM admin_audit_log WHERE payment_id = :p::uuid", p=pid) == [[0]]


@pytest.mark.parametrize("transaction_id", NOT_HYP_IDS)
def test_the_client_never_sends_a_reversal_of_what_is_no_hyp_id(
    env: Env, sent: list[dict[str, str]], transaction_id: str
) -> None:
    """The client's own guard, whatever a caller passes: not asked, nothing moved."""
    client = hypay.HypayClient.from_settings()
    with pytest.raises(GatewayNotAsked):
        client.cancel(transaction_id)
    with pytest.raises(GatewayNotAsked):
        client.refund(transaction_id, amount=Money.of("49.90"))
    assert _reversals(sent) == []


# -- a number spelled with leading zeros is the number, however many (an outside review of the first check) --


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize(
    "spell",
    ["0000{id}", "0000000000000000{id}", "{id} ", " {id}", "{id}.0"],
    ids=["padded", "padded-past-20", "trailing-space", "leading-space", "decimal"],
)
def test_refunding_the_paying_transaction_takes_its_credits_back_whatever_the_payments_row_spells(
    env: Env, spell: str
) -> None:
    """The journal's granted row names the payment's paying transaction whatever the payments row says (the web app
    writes it): zero-padded, its number (a first form of the check refused one padded past 20 characters); not a Hyp
    Id at all, the refund the 409 asks for takes back the credits it granted (it took none: the money went back, the
    credits stayed; outside reviews)."""
    before = env.credits()
    payment = buy(env, key=str(uuid.uuid4()))
    pid = payment["payment_id"]
    paid = pay(env, payment)
    assert notify(paid.redirect_query).status == 200
    assert env.credits() == before + 100
    env.rows("UPDATE payments SET hypay_transaction_id = :h WHERE id = :p::uuid", h=spell.format(id=paid.id), p=pid)
    assert close(paid.id, REFUNDED).status == 409  # granted: credits stand on it, a refund through the API is the way
    if not spell.startswith("0"):
        unnamed = refund(pid, {"reason": "customer asked"}, str(uuid.uuid4()))
        assert unnamed.status == 409 and "name the transaction" in unnamed.json["detail"], unnamed.body
    done = refund(pid, {"hypay_id": paid.id, "reason": "customer asked"}, str(uuid.uuid4()))
    assert done.status == 201, done.body
    assert [r.original_id for r in env.sim.reversals] == [paid.id]
    assert done.json["credits_taken"] == 100, done.body
    assert env.credits() == before


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("named", [False, True], ids=["unnamed", "named"])
def test_a_legacy_payment_whose_id_the_web_app_padded_past_20_digits_can_still_be_refunded(
    env: Env, named: bool
) -> None:
    """A payment the web app completed itself (no journal row), its Hyp Id written zero-padded past 20 characters:
    the number is the payment's transaction, as everywhere else (a first form of the check above refused it)."""
    payment = buy(env, key=str(uuid.uuid4()))
    pid = payment["payment_id"]
    paid = pay(env, payment)  # Hyp charged it; the web app, not us, recorded it
    env.rows(
        "UPDATE payments SET status = 'completed', completed_at = now(), hypay_transaction_id = :h WHERE id = :p::uuid",
        h="0" * 16 + paid.id,
        p=pid,
    )
    body = {"reason": "customer asked", **({"hypay_id": paid.id} if named else {})}
    done = refund(pid, body, str(uuid.uuid4()))
    assert done.status == 201, done.body


@pytest.mark.usefixtures("admin")
def test_only_the_granting_transaction_pays_the_payment_when_the_payments_row_names_another(env: Env) -> None:
    before = env.credits()
    payment = buy(env)
    pid = payment["payment_id"]
    first = pay(env, payment)
    assert notify(first.redirect_query).status == 200  # granted: 100 credits
    second = pay(env, payment)  # paid again in another tab: held for review as a second charge
    assert notify(second.redirect_query).status == 200
    assert env.credits() == before + 100
    # The web app's own callback handler records the latest charge on the payments row
    env.rows("UPDATE payments SET hypay_transaction_id = :h WHERE id = :p::uuid", h=second.id, p=pid)
    # The customer paid 2 x 49.90 for 100 credits. The operator gives back half of each charge (49.90 in all):
    a = refund(pid, {"hypay_id": first.id, "amount": "24.95", "reason": "half"}, str(uuid.uuid4()))
    b = refund(pid, {"hypay_id": second.id, "amount": "24.95", "reason": "half"}, str(uuid.uuid4()))
    assert a.status == 201 and b.status == 201, (a.body, b.body)
    taken = a.json["credits_taken"] + b.json["credits_taken"]
    # One grant of 100 credits, one half of its transaction refunded: 50 credits go back, the second charge's refund
    # takes none (a first form of the journal's rule counted both transactions as paying it; an outside review)
    assert taken <= 50, (a.json["credits_taken"], b.json["credits_taken"])
    assert env.credits() >= before + 50
