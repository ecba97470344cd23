"""A test that fails holding secrets, run only by tests/unit/test_failure_reports.py (in a pytest of its own): what
pytest then prints must not repeat them. Not collected otherwise (not a test_ file), and skipped unless asked."""

from __future__ import annotations

import logging
import os

import pytest

from tests.support.leaks import FORBIDDEN


@pytest.mark.skipif(os.environ.get("FAIL_WITH_SECRETS") != "1", reason="run by test_failure_reports only")
def test_fails_holding_secrets() -> None:
    secrets = " ".join(FORBIDDEN)
    print("captured stdout:", secrets)  # noqa: T201 - what pytest shows as captured output
    logging.getLogger("payments.test").warning("captured log: %s", "4580000000000000")
    assert "5326105300985614" not in f"the card 5326105300985614 and {secrets}"
