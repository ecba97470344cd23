"""What the payment tests share: the seeded packs and users, and calls to the payment API."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ops.hypay_simulator import (
    PUBLIC_TEST_TERMINAL_KEY,
    PUBLIC_TEST_TERMINAL_MASOF,
    PUBLIC_TEST_TERMINAL_PASSP,
    HypaySimulator,
)
from ops.seed import DEMO_USER_ID
from tests.support.api import Answer, invoke
from tests.support.pg import connect, with_user

CREATE = "CreatePaymentFunction"
CALLBACK = "HypayCallbackFunction"
STARTER = "aaaaaaaa-0000-4000-8000-000000000001"  # 49.90 ILS, 100 credits
PRO = "aaaaaaaa-0000-4000-8000-000000000002"  # 199.00 ILS, 500 credits
LEGACY = "aaaaaaaa-0000-4000-8000-000000000003"  # inactive
OTHER_USER = "0e000000-0000-4000-8000-000000000002"
CVV = "7319"  # distinctive, so searching tables and logs for it cannot hit by chance
SUCCESS_PAGE = "https://app.example.test/payments/success"
FAILURE_PAGE = "https://app.example.test/payments/failure"
PENDING_PAGE = "https://app.example.test/payments/confirming"


@dataclass
class Env:
    """A seeded database, the simulator, and the functions' environment pointing at both."""

    url: str
    sim: HypaySimulator

    def rows(self, sql: str, **params: object) -> list[list]:
        conn = connect(self.url)
        try:
            return conn.run(sql, **params)
        finally:
            conn.close()

    def payments(self) -> list[list]:
        return self.rows(
            "SELECT id::text, user_id::text, status, amount::text, idempotency_key, payment_url "
            "FROM payments ORDER BY created_at"
        )

    def credits(self, user: str = DEMO_USER_ID) -> int:
        return self.rows("SELECT credits FROM profiles WHERE id = :u::uuid", u=user)[0][0]

    def status(self, payment_id: str) -> str:
        return self.rows("SELECT status FROM payments WHERE id = :p::uuid", p=payment_id)[0][0]


def post(body: object, key: str | None = "key-1", user: str = DEMO_USER_ID, **headers: str) -> Answer:
    if key is not None:
        headers["Idempotency-Key"] = key
    return invoke(CREATE, "POST", "/payments", user=user, body=body, headers=headers)


def user_with_the_saved_card(rows: Callable[..., Any], name: str) -> str:
    """A new user (no credits) whose saved card is the demo user's, the same token at Hyp: `rows` runs a statement as
    the database's owner. A user's card is charged by one payment at a time, so a test or case that needs another
    saved-card charge while one is unsettled (in review) charges it as another user."""
    user = str(uuid.uuid4())
    rows(
        "INSERT INTO profiles (id, email, full_name, credits) VALUES (:u::uuid, :e, 'Israel Israeli', 0)",
        u=user,
        e=f"{name}@example.com",
    )
    rows(
        "INSERT INTO saved_cards (user_id, token, expiry_month, expiry_year, last4)"
        " SELECT :u::uuid, token, expiry_month, expiry_year, last4 FROM saved_cards WHERE user_id = :d::uuid",
        u=user,
        d=DEMO_USER_ID,
    )
    return user


def slow_down(rows: Callable[..., Any], name: str, fires: str, seconds: float = 1.0) -> None:
    """A trigger `name` that sleeps `seconds` (a busy server, a slow disk), e.g. `fires` = "BEFORE UPDATE ON refunds
    FOR EACH ROW WHEN (...)": it widens the window between a statement's start and its commit."""
    rows(f"""
        CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$""")
    rows(f"CREATE TRIGGER {name} {fires} EXECUTE FUNCTION {name}()")


def functions_environment(database_url: str, login: str, sim_url: str) -> dict[str, str]:
    """What the functions read from the environment in these tests: the database as the LOGIN member of
    `payments_backend` (least privilege, as deployed; a server that needs passwords, an external DATABASE_URL with
    one, cannot log the passwordless test login in: there the owner), the simulator's test terminal, the web app's
    pages, and metrics and tracing set for tests."""
    functions_url = database_url if urlsplit(database_url).password else with_user(database_url, login)
    return {
        "DATABASE_URL": functions_url,
        "HYPAY_URL": sim_url,
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
    }


def record_hyp_requests(monkeypatch: Any) -> list[dict[str, str]]:
    """Every request the Hyp client sends from now on (this test), as its fields, in order; still sent to Hyp."""
    from urllib.parse import parse_qsl

    from payments.adapters import hypay

    sent: list[dict[str, str]] = []
    real = hypay._opener()

    class Recording:
        def open(self, request: Any, timeout: float) -> Any:
            sent.append(dict(parse_qsl(request.data.decode(), keep_blank_values=True)))
            return real.open(request, timeout=timeout)

    monkeypatch.setattr(hypay, "_opener", lambda: Recording())
    return sent
