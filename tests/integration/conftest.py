"""Fixtures for the payment flows: the Hypay simulator and a seeded database the functions use."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from ops.hypay_simulator import (
    APPROVING_CARD,
    PUBLIC_TEST_TERMINAL_KEY,
    PUBLIC_TEST_TERMINAL_MASOF,
    PUBLIC_TEST_TERMINAL_PASSP,
    HypaySimulator,
    public_test_terminal,
)
from ops.seed import DEMO_USER_ID, seed
from payments.adapters import db as db_module
from payments.adapters.hypay import HypayClient, HypayCredentials
from payments.adapters.payments_store import PaymentsStore
from payments.settings import database_settings
from tests.support.api import reset_function_state
from tests.support.payments import (
    CALLBACK,
    CREATE,
    OTHER_USER,
    STARTER,
    Env,
    functions_environment,
    post,
)
from tests.support.pg import Server, connect, database, with_user


@pytest.fixture
def sim() -> Iterator[HypaySimulator]:
    simulator = HypaySimulator([public_test_terminal()]).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def env(database_url: str, sim: HypaySimulator, backend_login: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """The functions run as a LOGIN member of `payments_backend` (`functions_environment`); `Env.url`, what tests
    arrange and check with, is the owner's."""
    db = database(database_url)
    seed(db)
    db.run(f"INSERT INTO profiles (id, email, full_name) VALUES ('{OTHER_USER}', 'other@example.com', 'Other User')")
    db.close()
    for name, value in functions_environment(database_url, backend_login, sim.url).items():
        monkeypatch.setenv(name, value)
    for function in (CREATE, CALLBACK):
        reset_function_state(function)
    yield Env(database_url, sim)
    for function in (CREATE, CALLBACK):
        reset_function_state(function)


@pytest.fixture
def saved_card(env: Env) -> str:
    """The demo user paid once with the approving card and agreed to keep it: a token is saved."""
    client = HypayClient(
        lambda: HypayCredentials(PUBLIC_TEST_TERMINAL_MASOF, PUBLIC_TEST_TERMINAL_KEY, PUBLIC_TEST_TERMINAL_PASSP),
        url=env.sim.url,
    )
    created = post({"credit_pack_id": STARTER, "save_card": True}, key="first-payment").json
    transaction = env.sim.pay(created["payment_url"], APPROVING_CARD, cvv="125")
    token = client.get_token(transaction.id)
    store = PaymentsStore(database(env.url))
    store.save_card(
        user_id=uuid.UUID(DEMO_USER_ID),
        payment_id=uuid.UUID(created["payment_id"]),
        token=token.value,
        expiry_month=token.expiry_month,
        expiry_year=token.expiry_year,
        last4=transaction.card_last4,
    )
    store.db.close()
    return token.value


@pytest.fixture(scope="session")
def backend_login(pg_server: Server, migrated_template: str) -> Iterator[str]:
    """A LOGIN member of `payments_backend` (the role sql/005 creates), as a deployment creates one."""
    name = f"payments_app_{uuid.uuid4().hex[:8]}"
    admin = connect(pg_server.url)
    admin.run(f"CREATE ROLE {name} LOGIN IN ROLE payments_backend")
    yield name
    admin.run(f"DROP ROLE IF EXISTS {name}")
    admin.close()


@pytest.fixture
def backend_env(env: Env, backend_login: str, monkeypatch: pytest.MonkeyPatch) -> Env:
    """`env` with the functions logging in as a member of `payments_backend`, not as the tables' owner.
    `Env.url` (what the tests check and arrange with) stays the owner's."""
    monkeypatch.setenv("DATABASE_URL", with_user(env.url, backend_login))
    db_module.reset_default_database()
    database_settings.cache_clear()
    for function in (CREATE, CALLBACK):
        reset_function_state(function)
    return env
