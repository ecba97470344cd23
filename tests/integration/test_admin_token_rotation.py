"""The admin token secret rotated under warm functions: a removed admin is refused within `SecretCacheSeconds` (the
secret was kept 300 s whatever it said), and a new token is accepted at once (a token that matches none makes the
secret be read again, at most once in REFRESH_COOLDOWN_SECONDS): it was refused for up to five minutes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from payments.adapters import secrets
from tests.support.api import invoke, reset_function_state
from tests.support.payments import Env

ADMIN = "AdminFunction"
OLD = "old-admin-token-0123456789abcdef"
NEW = "new-admin-token-0123456789abcdef"


@pytest.fixture
def admin_secret(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, str]]:
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="eu-west-1")
        arn = client.create_secret(
            Name="payments/prod/admin-token-rotation", SecretString=json.dumps({"tokens": {"alice": OLD}})
        )["ARN"]
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        monkeypatch.setenv("ADMIN_TOKEN_SECRET_ARN", arn)
        monkeypatch.delenv("ADMIN_API_TOKEN", raising=False)
        from payments.settings import admin_settings

        admin_settings.cache_clear()
        secrets._secrets.cache_clear()
        reset_function_state(ADMIN)
        yield client, arn
        admin_settings.cache_clear()
        secrets._secrets.cache_clear()
        reset_function_state(ADMIN)


def _review(token: str) -> int:
    return invoke(ADMIN, "GET", "/admin/review", headers={"Authorization": f"Bearer {token}"}).status


def test_an_admin_removed_from_the_secret_is_refused_within_secret_cache_seconds(
    admin_secret: tuple[object, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, arn = admin_secret
    # Given the stack deployed with SecretCacheSeconds=0 (the template passes it as ADMIN_TOKEN_SECRET_MAX_AGE), and a
    # warm admin function that accepted alice
    monkeypatch.setenv("ADMIN_TOKEN_SECRET_MAX_AGE", "0")
    assert _review(OLD) == 200
    # When alice's access is taken away (docs/operations.md: "remove their entry (the functions re-read the secret
    # within SecretCacheSeconds)")
    client.put_secret_value(SecretId=arn, SecretString=json.dumps({"tokens": {"bob": NEW}}))  # type: ignore[attr-defined]
    # Then alice's token is refused at once (SecretCacheSeconds is 0), and bob's accepted
    assert _review(OLD) == 401
    assert _review(NEW) == 200


def test_a_rotated_admin_token_is_accepted_without_a_cold_start(admin_secret: tuple[object, str]) -> None:
    client, arn = admin_secret
    # Given a warm admin function that accepted the token
    assert _review(OLD) == 200
    # When the token is rotated in the secret (the old one replaced)
    client.put_secret_value(  # type: ignore[attr-defined]
        SecretId=arn, SecretString=json.dumps({"tokens": {"alice": NEW}})
    )
    # Then the new token works at once (a token the cached set lacks is looked up again, as the JWT secret is), and the
    # old one no longer does
    assert _review(NEW) == 200
    assert _review(OLD) == 401


def test_junk_tokens_read_the_secret_again_at_most_once_per_cooldown(
    admin_secret: tuple[object, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from payments.adapters import admin_token

    reads: list[bool] = []
    real = admin_token.read_secret

    def counted(*args: object, **kwargs: object) -> object:
        reads.append(bool(kwargs.get("refresh")))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(admin_token, "read_secret", counted)
    # Given a warm admin function
    assert _review(OLD) == 200
    # When junk tokens keep coming
    assert [_review(f"junk-token-{i:020d}") for i in range(5)] == [401] * 5
    # Then the secret was read again from Secrets Manager once for all of them
    assert reads.count(True) == 1


def test_a_wrong_admin_token_during_a_secrets_manager_outage_is_401_not_503(
    admin_secret: tuple[object, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integration.test_hyp_credentials_rotation import secrets_manager_outage

    # A warm admin function: the token secret read and cached (good for SecretCacheSeconds)
    assert _review(OLD) == 200

    secrets_manager_outage(monkeypatch)
    # A wrong token is a 401 with the cached tokens: the secret read again for it fails during the outage, which is no
    # reason to answer unauthenticated input 503
    assert _review("wrong-token-000000000000000000") == 401
    # and the genuine admin still works from the cached copy
    assert _review(OLD) == 200
