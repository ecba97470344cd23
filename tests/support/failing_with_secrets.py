"""A test that fails holding secrets, run only by tests/unit/test_failure_reports.py (in a pytest of its own): what
pytest then prints must not repeat them. Not collected otherwise (not a test_ file), and skipped unless asked."""

from __future__ import annotations

import logging
import os

import pytest

from tests.support.leaks import FORBIDDEN


@pytest.mark.skipif(os.environ.get("FAIL_WITH_SECRETS") != "1", reason="run by test_failure_reports only")
@pytest.mark.parametrize(
    "body",
    ["card 5326105300985614.", "card 5326.1053.0098.5614", "card_5326105300985614", "53261053009856141226"],
    ids=["a full stop after it", "in its groups", "glued to a word", "with its expiry"],  # a test's id is printed too
)
def test_fails_holding_a_card_number(body: str) -> None:
    print("answer body:", body)  # noqa: T201 - what pytest shows as captured output
    assert "card" not in body and "1226" not in body


@pytest.mark.skipif(os.environ.get("FAIL_WITH_SECRETS") != "1", reason="run by test_failure_reports only")
def test_fails_holding_secrets() -> None:
    secrets = " ".join(FORBIDDEN)
    print("captured stdout:", secrets)  # noqa: T201 - what pytest shows as captured output
    logging.getLogger("payments.test").warning("captured log: %s", "4580000000000000")
    assert "5326105300985614" not in f"the card 5326105300985614 and {secrets}"
