"""One Hyp transaction Id, two decisions at the same moment (an outside review: the checks that an operator's finding
names a transaction no other decision holds ran under the lock of the refund's own payment only, so two findings, or
a finding and a resolve, each naming the same Id, both passed and both were stored).

Each decision's journal row for the Id is written in its own transaction; the second waits on the first's row and
then finds it another decision's. An operator's finding is then refused, nothing of it stored; Hyp's own answer is
stored as Hyp gave it (the money went back), with what the journal holds said on its row, counted and alarmed.

A second-long trigger on storing a refund as succeeded stands in for a busy server: the window in which both read."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from payments.adapters.journal import HypTransaction, Source
from payments.domain.money import Money
from payments.domain.payment import PaymentStatus
from payments.services.settle import OperatorGrantRefused, settle_by_operator
from payments.services.settle import settle as settle_callback
from tests.integration.test_admin_refund_http import refund
from tests.integration.test_close_transaction import close
from tests.integration.test_hypay_callback import browser, buy, metric_totals, notify, pay
from tests.integration.test_money_races import envs as envs  # noqa: F401 - the fixture
from tests.integration.test_refund_lost_charge import _lost_charge
from tests.integration.test_refund_outcome import _lost_refund, settle
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import every_item, resolve
from tests.integration.test_serializable import Environments
from tests.support.payments import PRO, Env, slow_down, user_with_the_saved_card
from tests.support.pg import database


def _slow_success(env: Env) -> None:
    slow_down(
        env.rows,
        "test_slow_refund_success",
        "BEFORE UPDATE ON refunds FOR EACH ROW WHEN (OLD.status <> 'succeeded' AND NEW.status = 'succeeded')",
    )


def _page_named_for_another_lost_charge(env: Env, *, hyp_refuses: bool) -> tuple[dict[str, Any], Any, str]:
    """A page payment of 199.00 paid at Hyp (Id X), its callbacks not delivered yet, and an operator who refunds another
    customer's lost saved-card charge naming X (the wrong row of the portal; X is in no journal row yet, so nothing
    refuses it): Hyp refunds X in full, or refuses the refund (the issuer declined: nothing moved, X stays journaled
    for that payment, unverified). (The page, X's transaction, the lost charge.)"""
    page = buy(env, pack=PRO, key="races-page")
    x = pay(env, page)
    lost, _ = _lost_charge(env, "races-p", user_with_the_saved_card(env.rows, "races-p"))
    if hyp_refuses:
        env.sim.faults.add("zikoyAPI", "ccode", ccode=4)
    body = {"hypay_id": x.id, "original_amount": "199.00", "reason": "money back"}
    assert refund(lost, body, key=str(uuid.uuid4())).status == (502 if hyp_refuses else 201)
    assert env.sim.refunded.get(x.id, 0) == (0 if hyp_refuses else 19900)
    return page, x, lost


def _others_lost_charge(env: Env) -> tuple[str, str]:
    """Another customer's saved-card charge whose answer was lost (in review): (user, payment)."""
    user = user_with_the_saved_card(env.rows, "races")
    return user, _lost_charge(env, "races-lost", user)[0]


@pytest.mark.usefixtures("admin")
def test_two_findings_naming_one_hyp_refund_at_once_store_one(
    env: Env,
    monkeypatch: pytest.MonkeyPatch,
    envs: Environments,  # noqa: F811
) -> None:
    # Given two payments, each with a refund of 20.00 whose answer was lost
    _, first, hyp_refund = _lost_refund(env, monkeypatch)
    _, second, _ = _lost_refund(env, monkeypatch)
    env.rows("UPDATE refunds SET updated_at = now() - interval '1 hour'")
    credits = env.credits()
    _slow_success(env)
    # When two operators settle them at once, both naming the one refund transaction Hyp's portal shows
    body = {"outcome": "refunded", "hypay_refund_id": hyp_refund, "reason": "Hyp portal: refunded 20.00"}
    answers = [f.result(60) for f in [envs.submit(settle, r, body, str(uuid.uuid4())) for r in (first, second)]]
    # Then one is stored and the other refused, saying whose it is: Hyp refunded 20.00 once, 40 credits come back once
    assert sorted(a.status for a in answers) == [200, 409], [a.body for a in answers]
    [refused] = [a for a in answers if a.status == 409]
    assert hyp_refund in refused.json["detail"]
    assert env.rows("SELECT count(*) FROM refunds WHERE hypay_refund_id = :h", h=hyp_refund) == [[1]]
    assert credits - env.credits() == 40
    assert env.rows("SELECT count(*) FROM refunds WHERE status = 'unknown'") == [[1]]  # the other waits for a human


@pytest.mark.usefixtures("admin")
def test_a_finding_and_a_resolve_naming_one_hyp_id_at_once_store_one(
    env: Env,
    monkeypatch: pytest.MonkeyPatch,
    saved_card: str,
    envs: Environments,  # noqa: F811
) -> None:
    # Given a refund whose answer was lost (Hyp's refund transaction Z), and another customer's lost saved-card charge
    refunded_payment, refund_id, z = _lost_refund(env, monkeypatch)
    env.rows("UPDATE refunds SET updated_at = now() - interval '1 hour'")
    other, charge = _others_lost_charge(env)
    credits, others = env.credits(), env.credits(other)
    _slow_success(env)
    # When one operator settles the refund as Z while another completes the charge naming Z (one of them is wrong)
    finding = envs.submit(settle, refund_id, {"outcome": "refunded", "hypay_refund_id": z, "reason": "portal"})
    time.sleep(0.4)
    completing = envs.submit(resolve, charge, {"action": "complete", "reason": "portal", "hypay_id": z}, "races-r")
    answers = [finding.result(60), completing.result(60)]
    # Then Z is one of the two, never both: no credits granted for money that went back while taken back for it
    [[paid_by]] = env.rows("SELECT hypay_transaction_id FROM payments WHERE id = :p::uuid", p=charge)
    owned = env.rows("SELECT id::text FROM refunds WHERE hypay_refund_id = :z AND status = 'succeeded'", z=z)
    assert sorted(a.status for a in answers) == [200, 409], [a.body for a in answers]
    assert (paid_by == z) != bool(owned)
    [[journaled_for]] = env.rows("SELECT payment_id::text FROM hypay_transactions WHERE hypay_id = :z", z=z)
    assert journaled_for == (charge if paid_by == z else refunded_payment)
    assert (credits - env.credits(), env.credits(other) - others) in ((40, 0), (0, 500))


@pytest.mark.usefixtures("admin")
def test_hyps_refund_answer_naming_an_id_an_operator_gave_another_payment_is_stored_and_said(
    env: Env,
    monkeypatch: pytest.MonkeyPatch,
    saved_card: str,
    envs: Environments,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.integration.test_callback_attacks import use_mode

    # Given a paid payment, and another customer's lost saved-card charge in review
    use_mode(monkeypatch, "hmac")
    payment = buy(env, key="races-paid")
    assert notify(pay(env, payment).redirect_query).status == 200
    other, charge = _others_lost_charge(env)
    credits, others = env.credits(), env.credits(other)
    _slow_success(env)
    reversals = len(env.sim.reversals)

    def wrong_resolve() -> Any:
        # An operator completes the charge naming Hyp's refund transaction (the wrong row of the portal), in an
        # execution environment of its own, while the refund's answer is being stored
        deadline = time.monotonic() + 10
        while len(env.sim.reversals) == reversals and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        body = {"action": "complete", "reason": "portal", "hypay_id": env.sim.reversals[-1].id}
        return envs.submit(resolve, charge, body, "races-r").result(60)

    # When the refund is sent and Hyp answers it while the operator's resolve names that answer's Id
    capsys.readouterr()
    with ThreadPoolExecutor(1) as watcher:
        resolving: Future[Any] = watcher.submit(wrong_resolve)
        answer = refund(payment["payment_id"], {"amount": "20.00", "reason": "partial"}, key="races-refund")
        assert resolving.result(60).status == 200
    # Then the refund stands as Hyp answered (the money went back, its credits taken back once), the charge keeps the
    # credits the operator granted, and the refund's row says what the journal holds instead, counted for the alarm
    z = env.sim.reversals[-1].id
    assert answer.status == 201, answer.body
    [[status, message]] = env.rows("SELECT status, message FROM refunds WHERE hypay_refund_id = :z", z=z)
    assert status == "succeeded" and z in message and charge in message
    assert (credits - env.credits(), env.credits(other) - others) == (40, 500)
    assert metric_totals(capsys.readouterr().out).get("DuplicateTransaction") == 1


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("held_as", ["a refund's own", "another payment's second charge"])
def test_an_operators_grant_never_takes_over_an_id_another_decision_journaled_since_its_check(
    env: Env, monkeypatch: pytest.MonkeyPatch, saved_card: str, held_as: str
) -> None:
    # Given a Hyp Id the journal holds as another decision's: Hyp's refund transaction of a payment, or another
    # payment's second charge (one that paid a payment is another's by the unique index on payments already)
    if held_as == "a refund's own":
        _, refund_id, z = _lost_refund(env, monkeypatch)
        body = {"outcome": "refunded", "hypay_refund_id": z, "reason": "portal"}
        assert settle(refund_id, body).status == 200
    else:  # its page paid twice: the second charge, journaled for it in review (money to give back, not its payment)
        payment = buy(env, key="races-other")
        first, second = pay(env, payment), pay(env, payment)
        assert notify(first.redirect_query).status == 200 and notify(second.redirect_query).status == 200
        z = second.id
    # And a lost saved-card charge in review, whose resolve checked the Id before that decision was journaled
    other, charge = _others_lost_charge(env)
    before = env.rows("SELECT * FROM hypay_transactions WHERE hypay_id = :z", z=z)
    credits = env.credits(other)
    txn = HypTransaction(
        hypay_id=z,
        order_ref=charge,
        payment_id=uuid.UUID(charge),
        ccode=0,
        amount=Money.of("199.00", "ILS"),
        source=Source.TOKEN_CHARGE,
        verified=False,
    )
    # When its grant is applied
    db = database(env.url)
    try:
        with pytest.raises(OperatorGrantRefused):
            db.atomic(
                lambda tx: settle_by_operator(
                    tx, txn, previous_status=PaymentStatus.NEEDS_REVIEW, detail="op", credits=100
                )
            )
    finally:
        db.close()
    # Then the statement itself refuses it (the resolve decides again, and answers 409): the journal's row, the charge
    # and the customer's credits are as they were
    assert env.rows("SELECT * FROM hypay_transactions WHERE hypay_id = :z", z=z) == before
    assert env.status(charge) == "needs_review" and env.credits(other) == credits


@pytest.mark.usefixtures("admin")
def test_an_operators_grant_never_takes_over_an_id_a_refund_named_meanwhile_for_another_lost_charge(
    env: Env,
    saved_card: str,
    envs: Environments,  # noqa: F811
) -> None:
    # Given two lost saved-card charges: Q (Hyp Id X) and another customer's P
    q, x = _lost_charge(env, "races-q")
    other = user_with_the_saved_card(env.rows, "races-p")
    p, _ = _lost_charge(env, "races-p", other)
    credits = env.credits(other)
    # And an operator's grant held between its check and its write (a busy server)
    slow_down(
        env.rows,
        "test_slow_grant",
        "BEFORE INSERT ON hypay_transactions FOR EACH ROW"
        " WHEN (NEW.decision = 'granted' AND NEW.source = 'token_charge')",
        seconds=1.5,
    )
    # When one operator completes P naming X (wrong: it is Q's) while another refunds Q's charge X (which journals X
    # for Q, unverified, before asking Hyp)
    body = {"action": "complete", "reason": "portal", "hypay_id": x}
    completing = envs.submit(resolve, p, body, str(uuid.uuid4()))
    time.sleep(0.4)
    refunded = refund(q, {"hypay_id": x, "original_amount": "199.00", "reason": "money back"}, key=str(uuid.uuid4()))
    resolved = completing.result(60)
    # Then X stays Q's: the refund goes through, the grant is refused saying whose it is, no credits for P
    assert (refunded.status, resolved.status) == (201, 409), (refunded.body, resolved.body)
    assert q in resolved.json["detail"]
    journaled = env.rows("SELECT payment_id::text, source FROM hypay_transactions WHERE hypay_id = :x", x=x)
    assert journaled == [[q, "token_charge"]]
    assert env.status(p) == "needs_review" and env.credits(other) == credits


@pytest.mark.usefixtures("admin")
def test_a_page_callback_never_grants_a_transaction_a_refund_of_another_payment_sent_back(
    env: Env, saved_card: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a page payment paid at Hyp (Id X), and another customer's lost charge refunded naming X: Hyp refunded X
    page, x, _ = _page_named_for_another_lost_charge(env, hyp_refuses=False)
    before = env.credits()
    capsys.readouterr()
    # When the page's callback arrives (Hyp's signed word that X paid it)
    assert browser(x.redirect_query).status == 302
    # Then no credits for money that went back: the payment goes to a human, counted for the alarm, listed with a
    # reason of its own; a resolve cannot complete it with X either
    assert env.credits() == before and env.status(page["payment_id"]) == "needs_review"
    assert metric_totals(capsys.readouterr().out).get("DuplicateTransaction") == 1
    [item] = every_item("reason=refunded_through_another_payment")
    assert item["id"] == f"p:{page['payment_id']}" and "resolve this one fail" in item["next_step"]
    answer = resolve(page["payment_id"], {"action": "complete", "reason": "portal", "hypay_id": x.id}, "races-c")
    assert answer.status == 409 and "refunded" in answer.json["detail"], answer.body
    assert env.credits() == before


@pytest.mark.usefixtures("admin")
def test_a_refund_tried_again_while_the_page_callback_settles_never_leaves_credits_for_money_sent_back(
    env: Env,
    saved_card: str,
    envs: Environments,  # noqa: F811
) -> None:
    # Given a page payment paid at Hyp (Id X), and another customer's lost charge whose refund naming X Hyp refused
    page, x, lost = _page_named_for_another_lost_charge(env, hyp_refuses=True)
    before = env.credits()
    # And a busy server: the callback's grant statement is slow (after its reading statement found no refund)
    slow_down(
        env.rows, "test_slow_completion", "BEFORE UPDATE ON payments FOR EACH ROW WHEN (NEW.status = 'completed')", 2.0
    )
    # When the page's callback is settled while the operator tries the refund again
    callback = envs.submit(browser, x.redirect_query)
    time.sleep(0.6)
    again = refund(lost, {"hypay_id": x.id, "reason": "money back, again"}, key=str(uuid.uuid4()))
    assert callback.result(60).status == 302
    # Then never both: either the refund is refused (the callback proved X the page's first), or Hyp refunded X and the
    # page's payment went to a human with no credits
    refunded = env.sim.refunded.get(x.id, 0)
    assert (again.status, refunded) in ((409, 0), (201, 19900)), again.body
    if refunded:
        assert env.credits() == before and env.status(page["payment_id"]) == "needs_review"
    else:
        assert env.credits() == before + 500 and env.status(page["payment_id"]) == "completed"


@pytest.mark.usefixtures("admin")
def test_a_page_callback_never_grants_a_transaction_an_operator_closed_as_refunded_in_hyp(
    env: Env, saved_card: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a page payment paid at Hyp (Id X), and another customer's lost charge whose refund naming X Hyp refused: the
    # operator failed the charge, refunded X in Hyp's portal and closed X's row as refunded there
    page, x, lost = _page_named_for_another_lost_charge(env, hyp_refuses=True)
    assert resolve(lost, {"action": "fail", "reason": "the customer has the money back"}, "races-f").status == 200
    env.sim.refund_in_portal(x.id, "199.00")
    assert close(x.id).status == 200
    before = env.credits()
    capsys.readouterr()
    # When the page's callback arrives
    assert browser(x.redirect_query).status == 302
    # Then no credits for money that went back: the page's payment goes to a human, counted, listed with its reason;
    # X's row is the page's now (Hyp's word), still closed as refunded, so no resolve can complete it with X
    assert env.credits() == before and env.status(page["payment_id"]) == "needs_review"
    assert metric_totals(capsys.readouterr().out).get("DuplicateTransaction") == 1
    assert [i["id"] for i in every_item("reason=refunded_through_another_payment")] == [f"p:{page['payment_id']}"]
    journaled = env.rows("SELECT payment_id::text, closed_as FROM hypay_transactions WHERE hypay_id = :x", x=x.id)
    assert journaled == [[page["payment_id"], "refunded_in_hyp"]]
    answer = resolve(page["payment_id"], {"action": "complete", "reason": "portal", "hypay_id": x.id}, "races-c")
    assert answer.status == 409 and env.credits() == before, answer.body


def _page_sent_back_through_another(env: Env, amount: str = "199.00", hyp_answer: str | None = None) -> tuple[Any, Any]:
    """A page payment of 199.00 (Hyp Id X, its callback late), another customer's lost charge refunded naming X
    (`amount` of it; `hyp_answer` a fault: "lost"), then the page's callback: in review. (The page, X.)"""
    page = buy(env, pack=PRO, key="races-page")
    x = pay(env, page)
    lost, _ = _lost_charge(env, "races-p", user_with_the_saved_card(env.rows, "races-p"))
    if hyp_answer:
        env.sim.faults.add("zikoyAPI", hyp_answer)
    body = {"hypay_id": x.id, "original_amount": "199.00", "amount": amount, "reason": "money back"}
    assert refund(lost, body, key=str(uuid.uuid4())).status == (202 if hyp_answer else 201)
    assert browser(x.redirect_query).status == 302 and env.status(page["payment_id"]) == "needs_review"
    return page, x


def _step(page: dict[str, Any]) -> str:
    [item] = every_item("reason=refunded_through_another_payment")
    assert item["id"] == f"p:{page['payment_id']}"
    return str(item["next_step"])


@pytest.mark.usefixtures("admin")
def test_the_queue_says_what_to_do_as_the_money_sent_back_through_another_payment_stands(
    env: Env, saved_card: str
) -> None:
    # Given a page payment whose transaction X was refunded in full through another payment's refund
    page, x = _page_sent_back_through_another(env)
    # Then the queue says: all of it went back, fail it (nothing to close); and doing so leaves nothing in the queue
    assert "went back in full" in _step(page) and "resolve this one fail" in _step(page)
    assert resolve(page["payment_id"], {"action": "fail", "reason": "money back"}, "races-f").status == 200
    left = [i["id"] for i in every_item("") if page["payment_id"] in i["id"] or x.id in i["hypay_ids"]]
    assert left == [] and env.sim.refunded.get(x.id) == 19900  # (the lost charge itself stays, its own to settle)


@pytest.mark.usefixtures("admin")
def test_the_queue_says_to_refund_the_rest_when_part_went_back_through_another_payment(
    env: Env, saved_card: str
) -> None:
    # Given a page payment whose transaction X (199.00) was refunded 50.00 through another payment's refund
    page, x = _page_sent_back_through_another(env, amount="50.00")
    step = _step(page)
    assert "refund the rest (149.00) through this payment" in step, step
    # When the operator does so, then fails it
    rest = {"hypay_id": x.id, "amount": "149.00", "reason": "the rest"}
    assert refund(page["payment_id"], rest, key=str(uuid.uuid4())).status == 201
    assert resolve(page["payment_id"], {"action": "fail", "reason": "money back"}, "races-f").status == 200
    # Then all of the customer's money is back, and nothing of it is left in the queue
    assert env.sim.refunded.get(x.id) == 19900
    assert [i["id"] for i in every_item("") if page["payment_id"] in i["id"] or x.id in i["hypay_ids"]] == []


@pytest.mark.usefixtures("admin")
def test_the_queue_says_to_complete_the_payment_when_the_refund_naming_it_moved_nothing(
    env: Env, saved_card: str
) -> None:
    # Given a page payment whose transaction X another payment's refund named, Hyp's answer lost
    page, x = _page_sent_back_through_another(env, hyp_answer="lost")
    assert "not settled yet" in _step(page)
    # When the operator finds at Hyp that it moved nothing, and settles it so
    [[refund_id]] = env.rows("SELECT id::text FROM refunds WHERE original_hypay_id = :x", x=x.id)
    env.rows("UPDATE refunds SET updated_at = now() - interval '1 hour'")
    env.sim.refunded.pop(x.id, None)  # Hyp's portal shows no refund of it
    assert settle(refund_id, {"outcome": "not_refunded", "reason": "Hyp portal: no refund"}).status == 200
    # Then the queue says to complete the payment with X, and that works: the customer's credits, once
    step = _step(page)
    assert f"resolve this one complete with hypay_id {x.id}" in step, step
    before = env.credits()
    answer = resolve(page["payment_id"], {"action": "complete", "reason": "paid", "hypay_id": x.id}, "races-c")
    assert answer.status == 200 and env.credits() == before + 500, answer.body


def _hyp_reports_its_refund(env: Env, hypay_id: str, page_id: str, amount: str) -> None:
    """Hyp's verified callback for its refund transaction of a page's transaction: the page's Order, CCode 0."""
    db = database(env.url)
    try:
        txn = HypTransaction(
            hypay_id=hypay_id,
            order_ref=page_id,
            payment_id=uuid.UUID(page_id),
            ccode=0,
            amount=Money.of(amount, "ILS"),
            source=Source.NOTIFY,
            verified=True,
        )
        settle_callback(db, txn)
    finally:
        db.close()


@pytest.mark.usefixtures("admin")
def test_hyps_report_of_its_refund_through_another_payment_changes_nothing_after_the_queue_step(
    env: Env, saved_card: str
) -> None:
    # Given a page payment whose transaction went back in full through another payment's refund, failed as the queue
    # says
    page, _ = _page_sent_back_through_another(env)
    assert resolve(page["payment_id"], {"action": "fail", "reason": "money back"}, "races-f").status == 200
    # When Hyp reports its refund transaction (the page's Order), as it may at any time
    _hyp_reports_its_refund(env, env.sim.reversals[-1].id, page["payment_id"], "199.00")
    # Then the page's payment stays failed, out of the queue
    assert env.status(page["payment_id"]) == "failed"
    assert [i for i in every_item("") if page["payment_id"] in i["id"]] == []


@pytest.mark.usefixtures("admin")
def test_hyps_report_of_its_refund_before_the_page_callback_keeps_the_refund_the_rest_step(
    env: Env, saved_card: str
) -> None:
    # Given a page payment (Id X, its callback late) refunded 50.00 through another payment's refund naming X
    page = buy(env, pack=PRO, key="races-page")
    x = pay(env, page)
    lost, _ = _lost_charge(env, "races-p", user_with_the_saved_card(env.rows, "races-p"))
    body = {"hypay_id": x.id, "original_amount": "199.00", "amount": "50.00", "reason": "money back"}
    assert refund(lost, body, key=str(uuid.uuid4())).status == 201
    # When Hyp reports its refund transaction (the page's Order) before the page's own callback arrives
    _hyp_reports_its_refund(env, env.sim.reversals[-1].id, page["payment_id"], "50.00")
    assert browser(x.redirect_query).status == 302 and env.status(page["payment_id"]) == "needs_review"
    # Then the queue still says to refund the rest
    assert "refund the rest (149.00)" in _step(page)
