"""Fixtures for the payment flows: the Hypay simulator and a seeded database the functions use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ops.hypay_simulator import (
    PUBLIC_TEST_TERMINAL_KEY,
    PUBLIC_TEST_TERMINAL_MASOF,
    PUBLIC_TEST_TERMINAL_PASSP,
    HypaySimulator,
    public_test_terminal,
)
from ops.seed import seed
from tests.support.api import reset_function_state
from tests.support.payments import CALLBACK, CREATE, FAILURE_PAGE, OTHER_USER, PENDING_PAGE, SUCCESS_PAGE, Env
from tests.support.pg import database


@pytest.fixture
def sim() -> Iterator[HypaySimulator]:
    simulator = HypaySimulator([public_test_terminal()]).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def env(database_url: str, sim: HypaySimulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    db = database(database_url)
    seed(db)
    db.run(f"INSERT INTO profiles (id, email, full_name) VALUES ('{OTHER_USER}', 'other@example.com', 'Other User')")
    db.close()
    for name, value in {
        "DATABASE_URL": database_url,
        "HYPAY_URL": sim.url,
        "HYPAY_MASOF": PUBLIC_TEST_TERMINAL_MASOF,
        "HYPAY_KEY": PUBLIC_TEST_TERMINAL_KEY,
        "HYPAY_PASSP": PUBLIC_TEST_TERMINAL_PASSP,
        "HYPAY_TIMEOUT": "0.5",
        "HYPAY_BUDGET": "2",
        "WEB_APP_SUCCESS_URL": SUCCESS_PAGE,
        "WEB_APP_FAILURE_URL": FAILURE_PAGE,
        "WEB_APP_PENDING_URL": PENDING_PAGE,
        "POWERTOOLS_METRICS_NAMESPACE": "PaymentsTest",
        "POWERTOOLS_TRACE_DISABLED": "1",
    }.items():
        monkeypatch.setenv(name, value)
    for function in (CREATE, CALLBACK):
        reset_function_state(function)
    yield Env(database_url, sim)
    for function in (CREATE, CALLBACK):
        reset_function_state(function)
