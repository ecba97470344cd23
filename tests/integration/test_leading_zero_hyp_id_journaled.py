"""A Hyp Id with a leading zero, accepted from a callback (Hyp's Sign covers it) and journaled as sent, can be named by
the operator as the queue shows it, and is that transaction however the operator writes the number."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qsl

import pytest

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_callback_attacks import unpaid_claim, use_mode
from tests.integration.test_close_transaction import REFUNDED, close
from tests.integration.test_hypay_callback import buy, forge, metric_totals, notify, pay
from tests.integration.test_refund_lost_charge import _lost_charge
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import every_item, resolve
from tests.support.payments import Env


@pytest.mark.usefixtures("admin")
def test_a_second_charge_journaled_with_a_leading_zero_can_be_named_by_the_operator(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_mode(monkeypatch, "hmac")  # the callback below is then genuine (signed with our KEY)
    payment = buy(env, key=str(uuid.uuid4()))
    pid = payment["payment_id"]
    first = pay(env, payment)
    assert notify(first.redirect_query).status == 200
    # Hyp charges the Order a second time; its callback's Id is written with a leading zero: accepted, journaled
    second = "077700042"
    assert notify(forge([(k, second if k == "Id" else v) for k, v in unpaid_claim(pid)])).status == 200
    assert env.rows("SELECT decision FROM hypay_transactions WHERE hypay_id = :h", h=second) == [["review"]]
    queued = [i for i in every_item() if i["reason"] == "second_charge"]
    assert [i["hypay_ids"] for i in queued] == [[second]]  # the queue tells the operator to refund '077700042'
    # When the operator refunds it, naming it as the queue shows it: Then the refund goes to Hyp for that transaction
    # (the simulator, which never made '077700042', refuses it: nothing moved), neither refused as an Id (400) nor as
    # another payment's (409)
    as_queued = refund(pid, {"hypay_id": second, "reason": "paid twice"}, str(uuid.uuid4()))
    assert (as_queued.status, as_queued.json.get("refund_status")) == (502, "refused"), as_queued.body
    assert env.rows("SELECT original_hypay_id FROM refunds") == [[second]]


@pytest.mark.usefixtures("admin")
def test_a_real_second_charge_journaled_with_a_leading_zero_is_refunded_as_hyp_writes_its_id(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which spelling of a transaction's Id lands first decides the journal's; the refund sent that spelling to Hyp as
    TransId, which Hyp does not know: CancelTrans and zikoyAPI refused (502), a final refused row, and the charge could
    never be refunded through the API (an outside review's race). Hyp is asked about its Id as it writes it."""
    use_mode(monkeypatch, "hmac")  # the re-signed spelling below is then genuine
    payment = buy(env, key=str(uuid.uuid4()))
    pid = payment["payment_id"]
    assert notify(pay(env, payment).redirect_query).status == 200
    second = pay(env, payment)  # Hyp charges the Order a second time
    padded = [
        (k, "0" + v if k == "Id" else v)
        for k, v in parse_qsl(second.redirect_query, keep_blank_values=True)
        if k != "Sign"
    ]
    assert notify(forge(padded)).status == 200  # its notice spelled 0<Id>, first
    assert env.rows(
        "SELECT hypay_id, decision FROM hypay_transactions WHERE ltrim(hypay_id, '0') = :i", i=second.id
    ) == [["0" + second.id, "review"]]
    answer = refund(pid, {"hypay_id": second.id, "reason": "paid twice"}, str(uuid.uuid4()))
    assert (answer.status, answer.json.get("status")) == (201, "succeeded"), answer.body
    assert [r.original_id for r in env.sim.reversals] == [second.id]  # the money Hyp gave back: that charge's


def test_a_lost_charge_is_not_completed_with_another_payments_hyp_id_journaled_with_a_leading_zero(
    admin: Env, saved_card: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = admin
    use_mode(monkeypatch, "hmac")  # the callback below is genuine (signed with our KEY)
    # Given payment P completed by Hyp transaction '077700042' (Hyp's callback wrote it so; journaled as sent)
    page = buy(env, key=str(uuid.uuid4()))
    pid = page["payment_id"]
    zero_x = "077700042"
    assert notify(forge([(k, zero_x if k == "Id" else v) for k, v in unpaid_claim(pid)])).status == 200
    assert env.status(pid) == "completed"
    # And a saved-card charge A whose answer was lost
    a, _ = _lost_charge(env, "lost-a")
    before = env.credits()
    # When an operator completes A naming P's transaction as Hyp's portal would show it, without the leading zero
    done = resolve(a, {"action": "complete", "reason": "charged in Hyp", "hypay_id": zero_x[1:]}, key=str(uuid.uuid4()))
    # Then it is taken as the journal holds it, P's: refused, one Hyp transaction is never credited twice
    assert (done.status, env.credits() - before) == (409, 0), (done.status, done.body, env.credits() - before)
    assert "another payment" in done.json["detail"], done.body


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize(
    ("first", "second"),
    [("77700042", "077700042"), ("077700042", "77700042"), ("00000000000000000001", "1"), ("1", "0001")],
)
@pytest.mark.parametrize("same_payment", [False, True])
def test_one_hyp_transaction_in_two_spellings_is_one_transaction(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], first: str, second: str,
    same_payment: bool,
) -> None:  # fmt: skip
    """Were Hyp to send one transaction's Id in two spellings, the second delivery is decided as that transaction (its
    journal row read by number): for the same payment, its outcome again; for another payment, a duplicate (409,
    alarmed). Never a second credit, and never "not yet" for good (before: 503 on every delivery, the database refusing
    a second row for the number, and the copy kept of it refused alike; an outside review)."""
    use_mode(monkeypatch, "hmac")  # the callbacks below are genuine (signed with our KEY)
    a = buy(env, key=str(uuid.uuid4()))
    b = a if same_payment else buy(env, key=str(uuid.uuid4()))
    before = env.credits()
    assert notify(forge([(k, first if k == "Id" else v) for k, v in unpaid_claim(a["payment_id"])])).status == 200
    capsys.readouterr()
    again = notify(forge([(k, second if k == "Id" else v) for k, v in unpaid_claim(b["payment_id"])]))
    assert again.status == (200 if same_payment else 409), again.body
    assert env.status(a["payment_id"]) == "completed"
    assert env.status(b["payment_id"]) == ("completed" if same_payment else "pending")
    assert env.credits() == before + 100
    assert env.rows("SELECT hypay_id FROM hypay_transactions") == [[first]]
    if not same_payment:
        assert metric_totals(capsys.readouterr().out).get("DuplicateTransaction") == 1


@pytest.mark.usefixtures("admin")
def test_a_number_adopted_in_two_spellings_is_read_as_one_row_and_answered(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal adopted over one number held in two spellings (ops/migrate.py leaves the later row out of sql/014's
    index, for a human to settle): each delivery reads one row, its own spelling's. Before, the number matched both
    rows, and every delivery failed in the database (21000), 503 for good (an outside review)."""
    use_mode(monkeypatch, "hmac")  # the callbacks below are genuine (signed with our KEY)
    a = buy(env, key=str(uuid.uuid4()))
    claim = unpaid_claim(a["payment_id"])
    first = forge([(k, "77700042" if k == "Id" else v) for k, v in claim])
    assert notify(first).status == 200 and env.status(a["payment_id"]) == "completed"
    # Given the journal holds the number in a second spelling too, left out of the index as an adoption leaves it
    env.rows("DROP INDEX public.hypay_transactions_number_key")
    env.rows(
        "INSERT INTO public.hypay_transactions (hypay_id, order_ref, ccode, source, verified, decision, first_seen)"
        " VALUES ('077700042', 'not-ours', 0, 'notify', true, 'unmatched', now())"
    )
    env.rows(
        "CREATE UNIQUE INDEX hypay_transactions_number_key ON public.hypay_transactions ((ltrim(hypay_id, '0')))"
        " WHERE hypay_id NOT IN ('077700042')"
    )
    before = env.credits()
    env.rows("DELETE FROM public.idempotency_keys")  # the callback's record expired: the journal decides
    # When Hyp delivers the callback again, and the other spelling for the same payment
    again = notify(first)
    other = notify(forge([(k, "077700042" if k == "Id" else v) for k, v in claim]))
    # Then the first is its outcome again, the other is answered (no 5xx), and nothing more is credited
    assert again.status == 200, again.body
    assert other.status < 500, other.body
    assert env.credits() == before and env.status(a["payment_id"]) == "completed"


@pytest.mark.usefixtures("admin")
def test_a_second_spelling_that_cannot_be_verified_yet_is_kept_under_the_journals_spelling(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a transaction journaled as "77700042" (granted)
    use_mode(monkeypatch, "hmac")
    a = buy(env, key=str(uuid.uuid4()))
    claim = unpaid_claim(a["payment_id"])
    assert notify(forge([(k, "77700042" if k == "Id" else v) for k, v in claim])).status == 200
    # When its Id arrives spelled "077700042" while Hyp's VERIFY cannot be reached
    use_mode(monkeypatch, "both")
    env.sim.faults.add("VERIFY", "http500", times=4)
    again = notify(forge([(k, "077700042" if k == "Id" else v) for k, v in claim]))
    # Then it is "not yet", and kept (before: refused by the number's index, its copy with it, and only logged)
    assert again.status == 503, again.body
    assert env.rows("SELECT hypay_id FROM hypay_unverified_callbacks") == [["77700042"]]
    assert env.rows("SELECT hypay_id, decision FROM hypay_transactions") == [["77700042", "granted"]]
    assert "unverified hypay callback not kept" not in caplog.text


def _with(claim: list[tuple[str, str]], hyp_id: str) -> str:
    return forge([(k, hyp_id if k == "Id" else v) for k, v in claim])


def _adopted_with(env: Env, left_out: str, insert: str) -> None:
    """The journal as ops/migrate.py's adoption leaves a number held in two spellings: `insert` writes the second
    row, and `left_out` stays out of sql/014's index."""
    env.rows("DROP INDEX public.hypay_transactions_number_key")
    env.rows(insert)
    env.rows(
        "CREATE UNIQUE INDEX hypay_transactions_number_key ON public.hypay_transactions ((ltrim(hypay_id, '0')))"
        f" WHERE hypay_id NOT IN ('{left_out}')"
    )


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("spelling", ["77700042", "0077700042"])
def test_a_number_another_payment_holds_in_another_spelling_is_never_credited_again(
    env: Env, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    # Given payment Q completed by Hyp transaction "077700042", and a journal adopted with the number's other spelling
    # "77700042" held (first seen) for payment P, unverified
    use_mode(monkeypatch, "hmac")
    p, q = buy(env, key=str(uuid.uuid4())), buy(env, key=str(uuid.uuid4()))
    assert notify(_with(unpaid_claim(q["payment_id"]), "077700042")).status == 200
    _adopted_with(
        env,
        "077700042",
        "INSERT INTO public.hypay_transactions (hypay_id, payment_id, order_ref, ccode, source, verified, decision,"
        f" first_seen) VALUES ('77700042', '{p['payment_id']}', '{p['payment_id']}', 0, 'notify', false,"
        " 'unverified', now() - interval '1 day')",
    )
    before = env.credits()
    # When Hyp's genuine delivery for P arrives, in either spelling that is not Q's
    answer = notify(_with(unpaid_claim(p["payment_id"]), spelling))
    # Then P is not credited: Q holds the number (before: compared in one spelling, P was credited a second time for
    # the transaction; an outside review)
    assert answer.status < 500, answer.body
    assert env.credits() == before and env.status(p["payment_id"]) != "completed"


@pytest.mark.usefixtures("admin")
def test_a_close_naming_a_spelling_the_journal_holds_closes_that_row(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a journal adopted with "77700042" (unmatched) and, seen later, "077700042" (unmatched), and the first
    # delivered again (its row's version moved)
    use_mode(monkeypatch, "hmac")
    assert notify(_with(unpaid_claim(str(uuid.uuid4())), "77700042")).status == 404
    _adopted_with(
        env,
        "077700042",
        "INSERT INTO public.hypay_transactions (hypay_id, order_ref, ccode, amount, currency, source, verified,"
        " decision, first_seen) VALUES ('077700042', 'not-ours', 0, 49.90, 'ILS', 'notify', true, 'unmatched',"
        " now() + interval '1 minute')",
    )
    assert notify(_with(unpaid_claim(str(uuid.uuid4())), "77700042")).status in (404, 409)
    # When the operator closes "77700042", as the journal spells it
    done = close("77700042", REFUNDED)
    # Then that row is closed, not the other (before: whichever the server returned first)
    assert done.status == 200, done.body
    assert env.rows("SELECT hypay_id FROM hypay_transactions WHERE closed_as IS NOT NULL") == [["77700042"]]


def _adopted_review_row(env: Env, pid: str) -> None:
    [[amount, currency]] = env.rows("SELECT amount::text, currency FROM payments WHERE id = :id::uuid", id=pid)
    _adopted_with(
        env,
        "077700042",
        "INSERT INTO public.hypay_transactions (hypay_id, payment_id, order_ref, ccode, amount, currency, source,"
        f" verified, decision, first_seen) VALUES ('77700042', '{pid}', '{pid}', 0, {amount}, '{currency}', 'notify',"
        " true, 'review', now() - interval '1 day')",
    )


@pytest.mark.usefixtures("admin")
def test_an_operators_complete_with_a_number_another_payment_holds_in_another_spelling_is_refused(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given payment Q completed (credited) by Hyp transaction "077700042", and a journal adopted with the number's other
    # spelling "77700042" held (first seen) for payment P, verified, in review (as in the callback's test above)
    use_mode(monkeypatch, "hmac")
    p, q = buy(env, key=str(uuid.uuid4())), buy(env, key=str(uuid.uuid4()))
    assert notify(_with(unpaid_claim(q["payment_id"]), "077700042")).status == 200
    assert env.status(q["payment_id"]) == "completed"
    _adopted_review_row(env, p["payment_id"])
    # When an operator completes P with the number as the queue shows P's row
    # Then it is refused (Q holds the transaction), as the callback's decision now refuses it: no second credit
    assert _completed_as_the_queue_shows(env, p["payment_id"]) == (409, 0)


@pytest.mark.usefixtures("admin")
def test_an_operators_complete_with_a_number_closed_as_refunded_in_another_spelling_is_refused(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the journal adopted with "077700042" closed as refunded in Hyp's portal (its money went back) and
    # "77700042" (P's, verified, review)
    use_mode(monkeypatch, "hmac")
    p = buy(env, key=str(uuid.uuid4()))
    _adopted_with(
        env,
        "077700042",
        "INSERT INTO public.hypay_transactions (hypay_id, order_ref, ccode, amount, currency, source, verified,"
        " decision, first_seen, closed_as, closed_at) VALUES ('077700042', 'not-ours', 0, 49.90, 'ILS', 'notify',"
        " true, 'unmatched', now(), 'refunded_in_hyp', now())",
    )
    _adopted_review_row(env, p["payment_id"])
    # When an operator completes P with the number as the queue shows P's row
    # Then refused as refunded (closed in Hyp's portal), as services.review says: no credits for money that went back
    assert _completed_as_the_queue_shows(env, p["payment_id"]) == (409, 0)


def _completed_as_the_queue_shows(env: Env, pid: str) -> tuple[int, int]:
    """Payment `pid` put in review, then an operator's complete of it with "77700042": (the answer's status, the
    credits it granted)."""
    env.rows(
        "UPDATE payments SET status = 'needs_review', review_reason = 'paid while under review' WHERE id = :id::uuid",
        id=pid,
    )
    before = env.credits()
    done = resolve(pid, {"action": "complete", "reason": "paid", "hypay_id": "77700042"}, str(uuid.uuid4()))
    return done.status, env.credits() - before
