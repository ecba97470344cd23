"""Key trouble of ours in the authorizer fails the call (API Gateway's 500: nothing cached, the authorizer-errors
alarm), never denies a good token (a 403 API Gateway caches for 300 s per token): a JWKS that answers but holds no
usable signing key, and a JWT secret stored in the wrong shape (an outside review found both denied every user)."""

from __future__ import annotations

import json
import uuid
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws

from ops.local_auth import LocalAuth
from payments.adapters.jwks import SigningKeysUnavailable
from payments.errors import ConfigurationError
from tests.integration.test_authorizer import authorizer as authorizer  # noqa: F401 - the fixture
from tests.integration.test_authorizer import call, configure, request_with
from tests.support.tokens import claims, jwks_server, sign


def _documents(auth: LocalAuth) -> dict[str, Any]:
    key = auth.jwks()["keys"][0]
    no_kid = {k: v for k, v in key.items() if k != "kid"}
    return {
        "JSON null": None,
        "JSON array": [],
        "a string": "maintenance",
        "keys without kid": {"keys": [no_kid]},
        "keys marked enc": {"keys": [{**key, "use": "enc"}]},
    }


@pytest.mark.parametrize("case", ["JSON null", "JSON array", "a string", "keys without kid", "keys marked enc"])
def test_unusable_jwks_fails_the_call_instead_of_denying_a_good_token(
    authorizer: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    auth = LocalAuth.generated("es256")
    with jwks_server(auth) as server:
        server.document = _documents(auth)[case]
        configure(monkeypatch, auth, JWKS_URL=server.url)
        good = sign(auth, claims(auth))
        with pytest.raises(SigningKeysUnavailable):  # raised: API Gateway answers 500 and caches nothing
            call(authorizer, request_with(good))


SECRET = "supabase-legacy-jwt-secret-" + "0123456789abcdef" * 2


@pytest.mark.parametrize(
    "stored",
    [
        json.dumps({"secret": {"value": SECRET}}),  # nested one level too deep
        json.dumps({"secret": [SECRET]}),  # a list
        json.dumps([SECRET]),  # a JSON array, not the documented object
        SECRET + "\n",  # pasted from a file
    ],
    ids=["secret-is-object", "secret-is-list", "top-level-array", "trailing-newline"],
)
def test_wrong_shaped_secret_is_not_a_silent_denial(
    authorizer: ModuleType, monkeypatch: pytest.MonkeyPatch, stored: str
) -> None:
    auth = LocalAuth.generated("hs256", secret=SECRET)
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="eu-west-1")
        arn = client.create_secret(Name=f"payments/jwt-{uuid.uuid4().hex}", SecretString=stored)["ARN"]
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        configure(monkeypatch, auth, JWT_SECRET_ARN=arn)
        good = sign(auth, claims(auth))
        if stored.strip() == SECRET:  # a newline pasted from a file is no part of the secret
            assert call(authorizer, request_with(good))["isAuthorized"] is True
        else:  # a configuration error: 500, alarmed, nothing cached
            with pytest.raises(ConfigurationError):
                call(authorizer, request_with(good))


def _misbehave(server: Any, key: dict[str, Any], trouble: str) -> None:
    if trouble == "http-503":
        server.status = 503
    else:
        server.document = {
            "not-an-object": "maintenance",
            "no keys": {"keys": []},
            "unusable key": {"keys": [{"kty": "EC", "kid": "k"}]},
            "keys marked enc": {"keys": [{**key, "use": "enc"}]},
            # PyJWT looks the alg up in a dict: a TypeError, no error of PyJWT's (an outside review)
            "alg not a string": {"keys": [{**key, "alg": ["ES256"]}]},
        }[trouble]


def made_up_kid_outcomes(verify: Any, auth: LocalAuth, count: int) -> list[str]:
    """What `count` tokens, each naming a key nobody publishes, come to: 'allowed', the refusal's reason, 'keys
    unavailable', or the name of any other exception."""
    from payments.services.authorize import TokenRejected

    outcomes = []
    for n in range(count):
        try:
            verify.verify(sign(auth, claims(auth), kid=f"made-up-{n}"))
            outcomes.append("allowed")
        except TokenRejected as rejected:
            outcomes.append(rejected.reason)
        except SigningKeysUnavailable:
            outcomes.append("keys unavailable")
        except Exception as exc:  # noqa: BLE001 - named in the outcomes: a stray exception type fails the test
            outcomes.append(type(exc).__name__)
    return outcomes


@pytest.mark.parametrize(
    "trouble", ["http-503", "not-an-object", "no keys", "unusable key", "keys marked enc", "alg not a string"]
)
def test_made_up_kids_do_not_fetch_the_jwks_each_while_it_misbehaves(trouble: str) -> None:
    """An attacker's tokens naming keys nobody publishes, while the endpoint misbehaves (the good set still cached):
    one fetch per cooldown, not one a request (each waiting up to the timeout); never an allow. Each is 'the keys
    cannot be read now' (500, nothing cached: a key rotated meanwhile is no verdict on the token), or, after an
    answer with no signing key (PyJWT counts it as a fetch), unknown to the good set cached (a bogus token's 401)."""
    import time

    from tests.unit.test_authorize import verifier

    auth = LocalAuth.generated("es256")
    with jwks_server(auth) as server:
        verify = verifier(auth, server, refresh_cooldown_seconds=0.5, timeout_seconds=1)
        assert verify.verify(sign(auth, claims(auth)))
        assert server.fetches == 1
        _misbehave(server, auth.jwks()["keys"][0], trouble)
        time.sleep(0.6)  # one cooldown after the last good fetch (30 s deployed); the set stays cached (600 s)
        outcomes = made_up_kid_outcomes(verify, auth, 20)
        assert set(outcomes) <= {"keys unavailable", "unknown_key"} and server.fetches == 2, (outcomes, server.fetches)
        if trouble in ("http-503", "not-an-object"):
            assert outcomes == ["keys unavailable"] * 20
        # A good token still verifies with the cached set meanwhile
        assert verify.verify(sign(auth, claims(auth)))


@pytest.mark.parametrize("trouble", ["keys marked enc", "no keys", "http-503"])
def test_a_good_token_verifies_once_the_endpoint_recovered(trouble: str) -> None:
    """One bad answer of the endpoint (a refetch for an unknown kid meets it), then the endpoint is right again: a good
    token verifies, at most one cooldown later: a set with no signing key never replaces the good one cached."""
    import time

    from payments.services.authorize import TokenRejected
    from tests.unit.test_authorize import verifier

    auth = LocalAuth.generated("es256")
    key = auth.jwks()["keys"][0]
    with jwks_server(auth) as server:
        verify = verifier(auth, server, refresh_cooldown_seconds=0.5, timeout_seconds=1)
        good_document = server.document
        assert verify.verify(sign(auth, claims(auth)))
        time.sleep(0.6)
        _misbehave(server, key, trouble)
        with pytest.raises((SigningKeysUnavailable, TokenRejected)):
            verify.verify(sign(auth, claims(auth), kid="made-up"))
        server.status, server.document = 200, good_document  # recovered
        time.sleep(0.6)  # past one cooldown
        outcome = []
        for _ in range(3):
            try:
                outcome.append(bool(verify.verify(sign(auth, claims(auth)))))
            except SigningKeysUnavailable:
                outcome.append("keys unavailable")
            time.sleep(0.3)
        assert outcome == [True] * 3, (outcome, server.fetches)
