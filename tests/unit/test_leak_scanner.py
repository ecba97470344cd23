"""The suite's leak scanner finds what it must and nothing it must not."""

from __future__ import annotations

import json

import pytest

from ops.hypay_simulator import (
    APPROVING_CARD,
    DECLINING_CARD,
    PUBLIC_TEST_TERMINAL_KEY,
    PUBLIC_TEST_TERMINAL_PASSP,
)
from tests.support.leaks import fail_on_leaks, find_leaks, holds
from tests.support.payments import CVV


@pytest.mark.parametrize(
    "text",
    [
        "card 4580458045804580 declined",
        json.dumps({"ccno": "4580458045804580"}),
        "ccno=4580458045804580&cvv=1",
        "token 4123456789012345678",
        "KEY=7110eda4d09e062aa5e4a390b0a572ac0d2c0220",
        "admin token local-admin-token",
    ],
)
def test_it_finds_a_secret_or_card_number(text: str) -> None:
    assert find_leaks(text)


@pytest.mark.parametrize(
    "text",
    [
        # an md5 idempotency key whose hex happens to hold sixteen digits in a row
        "hypay_callback#2dbd079cb60ae1d2050202627102470c",
        "amount 1234567.8901234567",
        "order 123456789012345",  # fifteen digits
        "id 12345678901234567",  # seventeen digits
        "at 1795670943519",
    ],
)
def test_it_passes_what_is_not_a_secret(text: str) -> None:
    assert find_leaks(text) == []


def test_a_failure_report_shows_no_more_than_four_characters() -> None:
    with pytest.raises(pytest.fail.Exception) as failed:
        fail_on_leaks(find_leaks("card 4580458045804580"), "a test")
    assert "4580..." in str(failed.value) and "45804580" not in str(failed.value)


def test_the_simulators_test_terminal_and_cards_are_searched_for() -> None:
    for secret in (
        PUBLIC_TEST_TERMINAL_KEY,
        f"PassP={PUBLIC_TEST_TERMINAL_PASSP}",
        APPROVING_CARD,
        DECLINING_CARD,
        CVV,
    ):
        assert find_leaks(f"x {secret} y"), secret[:4]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("cvv=7319&x=1", True),
        ('{"cvv": "7319"}', True),
        ("request_hash 9c07319ab0e2", False),  # inside a hex digest
        ("at 1795673191234", False),
        ("took 0.7319 s", False),
        ("payment 27edc178-7319-4e35-ad53-3577a422df96", False),  # a UUID's group, by chance
    ],
)
def test_a_short_value_counts_only_standing_alone(text: str, found: bool) -> None:
    assert holds(text, CVV) is found
