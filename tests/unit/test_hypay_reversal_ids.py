"""A refund's or cancellation's answer that names the reversed transaction's own number, in any spelling (leading
zeros), names no transaction of its own: it is never stored as the reversal's Id."""

from __future__ import annotations

import pytest

from payments.adapters.hypay import HypayClient, HypayCredentials
from payments.domain import hypay as protocol
from payments.domain.money import Money
from payments.errors import GatewayUnavailable

REVERSED = "12345678"
SPELLINGS = [REVERSED, "0" + REVERSED, "000" + REVERSED]


def _client(answer: bytes) -> HypayClient:
    return HypayClient(
        lambda: HypayCredentials("0010131918", "k" * 20, "pass"),
        url="https://hyp.test/p/",
        timeout_seconds=5,
        budget_seconds=10,
        opener=lambda request, timeout: answer,
    )


@pytest.mark.parametrize("echoed", SPELLINGS)
def test_a_refund_answer_echoing_the_refunded_transaction_is_an_unknown_outcome(echoed: str) -> None:
    client = _client(f"Id={echoed}&CCode=0&ACode=0012345".encode())
    with pytest.raises(GatewayUnavailable, match="without a transaction Id"):
        client.refund(REVERSED, amount=Money.of("10.00", "ILS"))


def test_a_refund_answer_with_an_id_of_its_own_is_the_refund() -> None:
    reversal = _client(b"Id=87654321&CCode=0&ACode=0012345").refund(REVERSED, amount=Money.of("10.00", "ILS"))
    assert reversal.transaction_id == "87654321"


@pytest.mark.parametrize("echoed", SPELLINGS)
def test_a_cancellation_answer_echoing_the_cancelled_transaction_keeps_no_id(echoed: str) -> None:
    reversal = _client(f"Id={echoed}&TransId={REVERSED}&CCode=0&ReversalStatus=777".encode()).cancel(REVERSED)
    assert reversal.transaction_id is None


def test_a_cancellation_answer_with_an_id_of_its_own_keeps_it() -> None:
    reversal = _client(f"Id=87654321&TransId={REVERSED}&CCode=0&ReversalStatus=777".encode()).cancel(REVERSED)
    assert reversal.transaction_id == "87654321"


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [("123", "0123", True), ("00123", "123", True), ("123", "1230", False), ("123", None, False), (None, None, False)],
)
def test_hyp_ids_are_compared_by_their_number(one: str | None, other: str | None, same: bool) -> None:
    assert protocol.same_hyp_id(one, other) is same
