"""Secrets Manager's single-user RDS rotation under warm functions: createSecret (the new password as AWSPENDING),
setSecret (the database takes only the new password from then on), testSecret, finishSecret (AWSPENDING becomes
AWSCURRENT). Between setSecret and finishSecret, AWSCURRENT holds a password the database refuses: every environment
that reconnected answered 503 until finishSecret ran (for good, if the rotation stopped there). A login refused twice
with the current version now tries the pending one, as the rotation's own functions do."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from moto import mock_aws

from payments.adapters import secrets
from payments.adapters.db import default_database, parse_database_url
from payments.errors import DatabaseUnavailable
from tests.integration.test_database import password_role, proxy, rds_secret_in_use  # noqa: F401 - fixtures
from tests.integration.test_hypay_callback import metric_totals
from tests.support.pg import connect
from tests.support.tcp_proxy import TcpProxy


@pytest.fixture
def rotating(
    proxy: TcpProxy,  # noqa: F811 - the fixture
    database_url: str,
    password_role: str,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[object, str, dict]]:
    """A warm function logged in with the secret's current password."""
    name = parse_database_url(database_url).database
    secrets._secrets.cache_clear()
    with mock_aws():
        client, arn, secret = rds_secret_in_use(
            monkeypatch, "payments/rotating-pending", password_role, proxy.port, name
        )
        assert default_database().run("SELECT current_user") == [[password_role]]
        yield client, arn, secret
    secrets._secrets.cache_clear()


def _set_secret_step(database_url: str, role: str) -> None:
    """setSecret: the database's password changed; the connections drop."""
    admin = connect(database_url)
    admin.run(f"ALTER ROLE {role} PASSWORD 'new-Pa55word'")
    admin.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :u", u=role)
    admin.close()
    time.sleep(0.1)


def test_a_reconnect_between_set_secret_and_finish_secret_logs_in_with_the_pending_password(
    rotating: tuple[object, str, dict],
    database_url: str,
    password_role: str,  # noqa: F811 - the fixture
    capsys: pytest.CaptureFixture[str],
) -> None:
    client, arn, secret = rotating
    # Given the rotation ran createSecret and setSecret, not yet finishSecret
    client.put_secret_value(  # type: ignore[attr-defined]
        SecretId=arn, SecretString=json.dumps({**secret, "password": "new-Pa55word"}), VersionStages=["AWSPENDING"]
    )
    _set_secret_step(database_url, password_role)
    # When the function's next statement reconnects
    rows = default_database().run("SELECT current_user")
    # Then it logs in with the pending password
    assert rows == [[password_role]]
    assert "Pa55word" not in "".join(capsys.readouterr())


def test_without_a_rotation_under_way_a_refused_login_is_not_yet_and_no_configuration_alarm(
    rotating: tuple[object, str, dict],
    database_url: str,
    password_role: str,  # noqa: F811 - the fixture
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from payments.observability import metrics

    monkeypatch.setattr(metrics, "namespace", metrics.namespace or "PaymentsTest")
    # Given the password changed in the database and nowhere in the secret (no pending version)
    _set_secret_step(database_url, password_role)
    capsys.readouterr()
    # When the function reconnects / Then "not yet", as before, and no secret is said to be misconfigured
    with pytest.raises(DatabaseUnavailable) as refused:
        default_database().run("SELECT current_user")
    assert "password authentication failed" in refused.value.message
    metrics.flush_metrics()
    assert "NotConfigured" not in metric_totals(capsys.readouterr().out)
