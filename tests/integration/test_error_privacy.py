"""What reaches clients when the database refuses us: a generic "not yet", never the server's own words.

The database server's messages name the database, the role or the host (`database "x" does not exist`,
`password authentication failed for user "y"`): the 503 says only that the store is unavailable; the log keeps
the server's message for the operator."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from payments.adapters import db as db_module
from tests.support.api import invoke, reset_function_state
from tests.support.payments import CALLBACK, CREATE, STARTER, Env, post

ADMIN = "AdminFunction"
CLEANUP = "CleanupFunction"
MISSING_DATABASE = "payments_db_that_is_not_there"
ADMIN_TOKEN = "privacy-admin-token-0123456789"


@pytest.fixture
def broken_database(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """The functions' DATABASE_URL names a database the server does not have."""
    from payments.settings import admin_settings, cleanup_settings, database_settings

    url = env.url.split("?")[0].rsplit("/", 1)[0] + "/" + MISSING_DATABASE
    query = env.url.partition("?")[2]
    monkeypatch.setenv("DATABASE_URL", url + (f"?{query}" if query else ""))
    monkeypatch.setenv("ADMIN_API_TOKEN", ADMIN_TOKEN)

    def reset() -> None:
        for cached in (admin_settings, cleanup_settings, database_settings):
            cached.cache_clear()
        db_module.reset_default_database()
        for name in (CREATE, CALLBACK, ADMIN, CLEANUP):
            reset_function_state(name)

    reset()
    yield env
    reset()


def test_a_database_refusal_reaches_clients_as_a_generic_503(
    broken_database: Env, caplog: pytest.LogCaptureFixture
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Idempotency-Key": "privacy-1"}
    # When every route that needs the database is called
    answers = {
        "POST /payments": post({"credit_pack_id": STARTER}, key="privacy-key"),
        "GET /payments/{id}": invoke(CREATE, "GET", "/payments/9fde9537-8e81-4945-a8a3-2c3925826fb0", user=STARTER),
        "GET /admin/review": invoke(ADMIN, "GET", "/admin/review", headers=admin),
        "POST resolve": invoke(
            ADMIN,
            "POST",
            "/admin/payments/9fde9537-8e81-4945-a8a3-2c3925826fb0/resolve",
            headers=admin,
            body={"action": "fail", "reason": "checked"},
        ),
        "POST /admin/cleanup-idempotency": invoke(CLEANUP, "POST", "/admin/cleanup-idempotency", headers=admin),
    }
    # Then each is a 503 "not yet" whose body names neither the database nor the server's message
    for route, answer in answers.items():
        assert answer.status == 503, (route, answer.status, answer.body)
        assert "retry-after" in answer.headers, route
        assert MISSING_DATABASE not in answer.body and "does not exist" not in answer.body, (route, answer.body)
        assert json.loads(answer.body)["detail"], route
    # And the operator's log keeps the server's own words
    reasons = [getattr(r, "reason", "") for r in caplog.records if r.getMessage() == "database connection failed"]
    assert reasons and all(MISSING_DATABASE in reason for reason in reasons)


def test_an_unreadable_admin_token_secret_is_not_a_database_outage(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from moto import mock_aws

    from payments.settings import admin_settings, cleanup_settings

    with mock_aws():
        # Given the admin token's secret cannot be read (deleted, no permission, Secrets Manager down)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        monkeypatch.setenv("ADMIN_TOKEN_SECRET_ARN", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gone-AbCdEf")
        monkeypatch.delenv("ADMIN_API_TOKEN", raising=False)
        for cached in (admin_settings, cleanup_settings):
            cached.cache_clear()
        for name in (ADMIN, CLEANUP):
            reset_function_state(name)
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        # When an admin route is called
        answers = [
            invoke(ADMIN, "GET", "/admin/review", headers=headers),
            invoke(CLEANUP, "POST", "/admin/cleanup-idempotency", headers=headers),
        ]
    for cached in (admin_settings, cleanup_settings):
        cached.cache_clear()
    for name in (ADMIN, CLEANUP):
        reset_function_state(name)
    # Then "not yet" (503, Retry-After) that says a credential store, not the database, is unavailable
    for answer in answers:
        assert answer.status == 503 and answer.headers.get("retry-after"), answer.body
        detail = json.loads(answer.body)["detail"]
        assert "database" not in detail and "credential" in detail, detail
