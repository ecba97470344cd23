"""The review queue's and resolving's pure parts: reasons, cursors, what a resolve may do; the admin credentials."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from payments.adapters.admin_token import authenticate, parse_tokens
from payments.adapters.review_store import JournalRow, LockedPayment
from payments.domain.money import Money
from payments.domain.payment import PaymentStatus
from payments.errors import ConfigurationError, Conflict, InvalidRequest
from payments.services.review import (
    QueueQuery,
    Reason,
    ResolveRequest,
    classify,
    decode_cursor,
    encode_cursor,
    plan_resolution,
)


@pytest.mark.parametrize(
    ("kind", "decision", "text", "attempted", "reason"),
    [
        ("payment", None, "amount mismatch: Hyp transaction 1 paid 1.00 ILS", False, "amount_mismatch"),
        (
            "payment",
            None,
            "saved-card charge outcome unknown (gateway_unavailable, CCode None); check",
            True,
            "charge_outcome_unknown",
        ),
        ("payment", None, "saved-card charge attempted, outcome never stored", True, "charge_outcome_unknown"),
        ("payment", None, None, True, "charge_outcome_unknown"),
        ("payment", None, "Hyp transaction 5 approved after it was declined", False, "paid_under_review"),
        ("payment", None, "a purchase was already granted for this payment", False, "paid_under_review"),
        (
            "payment",
            None,
            "Hyp transaction 7 approved for this payment, journaled for payment 1b4e28ba-2fa1-11d2-883f-0016d3cca427",
            False,
            "transaction_of_another_payment",
        ),
        ("payment", None, "something new", False, "other"),
        (
            "journal",
            "review",
            "second charge: the payment was already completed by Hyp transaction 1",
            False,
            "second_charge",
        ),
        ("journal", "review", "amount mismatch: ...", False, "amount_mismatch"),
        ("journal", "review", "paid while under review", False, "paid_under_review"),
        ("journal", "review", "paid while the payment holds a status from before this backend", False, "legacy"),
        ("journal", "unmatched", "Order is not one of our payments", False, "unmatched"),
        ("journal", "unverified", "hyp refused our credentials", False, "unverified"),
    ],
)
def test_each_item_gets_a_stable_reason(
    kind: str, decision: str | None, text: str | None, attempted: bool, reason: str
) -> None:
    detail, review_reason = (text, None) if kind == "journal" else (None, text)
    got = classify(kind=kind, decision=decision, detail=detail, review_reason=review_reason, charge_attempted=attempted)
    assert got == Reason(reason)


def test_cursor_round_trips_and_refuses_anything_else() -> None:
    since, key = "2024-05-01T10:11:12.123456Z", f"p:{uuid.uuid4()}"
    assert decode_cursor(encode_cursor(since, key)) == (since, key)
    assert decode_cursor(encode_cursor(since, "j:12345")) == (since, "j:12345")
    for bad in ("", "!!!", encode_cursor("yesterday", key), encode_cursor(since, "x:1"), "WyJhIl0"):
        with pytest.raises(InvalidRequest, match="^after"):
            decode_cursor(bad)


@pytest.mark.parametrize(
    ("since", "key"),
    [
        ("\u0662\u0660\u0662\u0664-05-01T10:11:12.123456Z", "j:1"),  # Arabic-Indic digits: strptime reads them
        ("2024-05-01T10:11:12.\uff11\uff12\uff13\uff14\uff15\uff16Z", "j:1"),  # fullwidth digits
        ("2024-05-01T10:11:12.123456Z\n", "j:1"),
        ("2024-05-01T10:11:12.123456Z", "j:1\n"),
        ("2024-05-01T10:11:12.123456Z", "j:\u0661"),
    ],
)
def test_cursor_with_anything_but_ascii_digits_is_refused(since: str, key: str) -> None:
    # Given a cursor this API never returned, whose instant or key a lax pattern would let through to the
    # database (which then fails: a 500 for a crafted query string)
    cursor = encode_cursor(since, key)
    # When it is read / Then it is refused in words
    with pytest.raises(InvalidRequest, match="^after"):
        decode_cursor(cursor)


def test_query_parameters_are_checked() -> None:
    assert QueueQuery.parse(reason=None, limit=None, after=None, page_max=200) == QueueQuery(None, 50, None)
    assert QueueQuery.parse(reason="unmatched", limit="7", after=None, page_max=200).limit == 7
    for reason, limit in (
        ("nope", None),
        ("", None),  # `reason=`: not one of the reasons either
        (None, "0"),
        (None, "201"),
        (None, "-1"),
        (None, "1e2"),
        (None, "٣"),
        (None, "0" * 4300 + "1"),  # past int()'s 4,300 digits: was a ValueError, a 500
    ):
        with pytest.raises(InvalidRequest):
            QueueQuery.parse(reason=reason, limit=limit, after=None, page_max=200)


def _payment(status: PaymentStatus = PaymentStatus.NEEDS_REVIEW, **changes: object) -> LockedPayment:
    fields: dict = {
        "id": uuid.UUID(int=1),
        "status": status,
        "stored_status": str(status),
        "review_reason": "amount mismatch",
        "amount": Money.of("49.90"),
        "user_id": uuid.UUID(int=2),
        "credits": 100,
        "credits_sold": 100,
        "paid_by": None,
        "charge_attempted": False,
        "charge_attempted_at": None,
        "charge_settled": False,
        "granted_before": False,
        "completed_at": None,
        "balance": 0,
    }
    fields.update(changes)
    return LockedPayment(**fields)


def _row(hypay_id: str = "555", decision: str = "review", ccode: int = 0, payment: int | None = 1) -> JournalRow:
    return JournalRow(
        hypay_id,
        uuid.UUID(int=payment) if payment else None,
        decision,
        "amount mismatch",
        ccode,
        Money.of("1.00"),
        True,
        "notify",
        True,
        str(uuid.UUID(int=1)),
        "0012345",
        datetime.now(UTC),
    )


def _plan(
    payment: LockedPayment,
    journal: list[JournalRow],
    action: str = "complete",
    hypay_id: str | None = None,
    named: JournalRow | None = None,
    elsewhere: bool = False,
):  # noqa: ANN202
    request = ResolveRequest(action=action, reason="checked", hypay_id=hypay_id)  # type: ignore[arg-type]
    return plan_resolution(payment, journal, request, named=named, paid_elsewhere=elsewhere)


def test_complete_takes_the_one_flagged_transaction_with_its_own_amount() -> None:
    plan = _plan(_payment(), [_row()])
    assert plan.action == "complete" and plan.txn is not None
    assert (plan.txn.hypay_id, plan.txn.amount, plan.txn.source) == ("555", Money.of("1.00"), "notify")


@pytest.mark.parametrize(
    ("payment", "journal", "hypay_id", "named", "elsewhere", "error", "words"),
    [
        (_payment(PaymentStatus.COMPLETED, paid_by="1"), [], None, None, False, Conflict, "is completed"),
        (_payment(PaymentStatus.FAILED), [], None, None, False, Conflict, "is failed"),
        (_payment(PaymentStatus.EXPIRED), [], None, None, False, Conflict, "holds no Hyp transaction"),
        (_payment(PaymentStatus.PENDING), [], None, None, False, Conflict, "waiting for Hyp"),
        (
            _payment(PaymentStatus.PENDING, charge_attempted=True),
            [],
            None,
            None,
            False,
            Conflict,
            "may still be running",
        ),
        (_payment(PaymentStatus.LEGACY, stored_status="paid"), [], None, None, False, Conflict, "before this backend"),
        (_payment(), [], None, None, False, Conflict, "hypay_id"),
        (_payment(), [_row("1"), _row("2")], None, None, False, Conflict, "several"),
        (_payment(), [], "9", None, True, Conflict, "another payment"),
        (_payment(), [], "9", None, False, Conflict, "not in the journal"),
        (_payment(), [], "9", _row("9", payment=3), False, Conflict, "belongs to payment"),
        (_payment(), [], "9", _row("9", payment=None, decision="unmatched"), False, Conflict, "not ours"),
        (_payment(), [], "9", _row("9", decision="unverified"), False, Conflict, "not verified"),
        (_payment(), [], "9", _row("9", decision="declined", ccode=4), False, Conflict, "did not pay"),
    ],
)
def test_resolve_refuses_with_a_reason(
    payment: LockedPayment,
    journal: list[JournalRow],
    hypay_id: str | None,
    named: JournalRow | None,
    elsewhere: bool,
    error: type,
    words: str,
) -> None:
    with pytest.raises(error, match=words):
        _plan(payment, journal, hypay_id=hypay_id, named=named, elsewhere=elsewhere)


def test_a_payment_granted_before_is_completed_by_its_transaction_never_failed() -> None:
    # Credits the web app granted while the payment was pending: completing binds them to the transaction that paid
    # (no second grant: settle_by_operator's BIND); failing would hide them
    granted = _payment(granted_before=True, granted_in_full=True)
    assert _plan(granted, [_row()]).action == "complete"
    with pytest.raises(Conflict, match="already granted"):
        _plan(granted, [_row()], action="fail")
    # Not in full (a purchase of another amount, or reversed): neither
    for action in ("complete", "fail"):
        with pytest.raises(Conflict):
            _plan(_payment(granted_before=True), [_row()], action=action)


def test_fail_needs_review_or_a_settled_unknown_charge() -> None:
    assert _plan(_payment(), [], action="fail").action == "fail"
    settled = _payment(PaymentStatus.PENDING, charge_attempted=True, charge_settled=True)
    assert _plan(settled, [], action="fail").action == "fail"
    lost = _plan(settled, [], hypay_id="77")  # a lost saved-card answer: the operator names the transaction
    assert lost.txn is not None and (lost.txn.source, lost.txn.amount) == ("token_charge", Money.of("49.90"))


def test_admin_credentials_are_named_and_matched_against_each() -> None:
    tokens = parse_tokens(json.dumps({"tokens": {"alice": "a" * 16, "ops-bot": "b" * 20}}))
    assert authenticate("Bearer " + "a" * 16, tokens) == "alice"
    assert authenticate("bearer " + "b" * 20, tokens) == "ops-bot"
    for header in (None, "", "Bearer", "Bearer ", "Basic " + "a" * 16, "Bearer " + "a" * 15, "Bearer " + "c" * 16):
        assert authenticate(header, tokens) is None, header
    # A lone surrogate (what non-UTF-8 header bytes can decode to) is refused, not an encoding error (a 500)
    for header in ("Bearer \ud800", "Bearer " + "a" * 16 + "\ud800"):
        assert authenticate(header, tokens) is None, header
    assert parse_tokens("x" * 16) == {"admin": "x" * 16}
    assert parse_tokens(json.dumps({"token": "y" * 16})) == {"admin": "y" * 16}
    for bad in (
        "short",
        json.dumps({"tokens": {"alice": "short"}}),
        json.dumps({"tokens": {"bad name": "z" * 16}}),
        json.dumps({"tokens": {"a": "z" * 16, "b": "z" * 16}}),
        json.dumps({"tokens": []}),
        "{nope",
        json.dumps({"tokens": {}}),
    ):
        with pytest.raises(ConfigurationError) as refused:
            parse_tokens(bad)
        assert "z" * 16 not in refused.value.message
    # A mapping written the wrong way round (token to name): the message never repeats a key, which is then a token
    token = "Zq3vK8pW1xN7rT2mB5cY9hJ4dF6gL0sA"
    with pytest.raises(ConfigurationError) as refused:
        parse_tokens(json.dumps({"tokens": {token: "alice"}}))
    assert token not in refused.value.message and "admin #1" in refused.value.message
