"""The Lambda authorizer (hs256, es256) as API Gateway calls it, the claims the handlers then see whichever
authorizer verified them, the local API emulating each mode for real, and `make run` in a Lambda mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import jwt
import pytest
from moto import mock_aws

from ops.lambda_context import LocalLambdaContext
from ops.local_api import LocalApi, build_authorizer_event, build_event
from ops.local_auth import LOCAL_JWT_SECRET, LocalAuth
from ops.seed import DEMO_USER_ID
from ops.template import load, load_module
from payments.adapters.jwks import SigningKeysUnavailable
from payments.services.authorize import context_claims
from payments.settings import auth_settings
from tests.support.api import TEMPLATE
from tests.support.leaks import find_leaks
from tests.support.make_run import MakeRun
from tests.support.payments import CREATE, STARTER, Env, post
from tests.support.tokens import claims, jwks_server, sign, unsigned

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_EVENT = ROOT / "events" / "authorizer" / "request.json"


@pytest.fixture
def authorizer(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The authorizer function's module, cold: environment read afresh, no verifier kept."""
    # Before the import: Powertools reads these when the shared logger / metrics are created
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "PaymentsTest")
    module = load_module(load().authorizer_functions["AuthorizerFunction"])
    auth_settings.cache_clear()
    module._verifier.cache_clear()
    yield module
    auth_settings.cache_clear()
    module._verifier.cache_clear()


def configure(monkeypatch: pytest.MonkeyPatch, auth: LocalAuth, **env: str) -> None:
    for name, value in {"JWT_MODE": auth.mode, "JWT_ISSUER": auth.issuer, "JWT_AUDIENCE": auth.audience, **env}.items():
        monkeypatch.setenv(name, value)


def request_with(token: str | None) -> dict[str, Any]:
    """The sample authorizer event with another Authorization header (or none)."""
    event = json.loads(SAMPLE_EVENT.read_text())
    event["headers"].pop("authorization")
    if token is not None:
        event["headers"]["authorization"] = f"Bearer {token}"
    event["identitySource"] = [event["headers"]["authorization"]] if token is not None else []
    return event


def call(module: ModuleType, event: dict[str, Any]) -> dict[str, Any]:
    return module.lambda_handler(event, LocalLambdaContext(function_name="AuthorizerFunction", timeout_seconds=5))


def test_the_sample_event_is_allowed_with_the_claims_the_jwt_authorizer_would_pass(
    authorizer: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the authorizer in hs256 mode with the local secret, and API Gateway's sample payload 2.0 event
    configure(monkeypatch, LocalAuth("hs256"), JWT_SECRET=LOCAL_JWT_SECRET)
    event = json.loads(SAMPLE_EVENT.read_text())
    assert event["type"] == "REQUEST" and event["identitySource"] == [event["headers"]["authorization"]]
    # When it is called
    answer = call(authorizer, event)
    # Then it allows, handing over the token's claims as strings: what `jwt.claims` would hold
    token = event["headers"]["authorization"].split()[1]
    decoded = jwt.decode(token, options={"verify_signature": False})
    assert answer == {"isAuthorized": True, "context": context_claims(decoded)}
    assert answer["context"]["sub"] == "11111111-1111-4111-8111-111111111111"
    assert answer["context"]["role"] == "authenticated" and answer["context"]["exp"] == "4102444800"


def test_es256_allows_good_tokens_and_denies_bad_ones_without_logging_them(
    authorizer: ModuleType, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    auth = LocalAuth.generated("es256")
    with jwks_server(auth) as server:
        configure(monkeypatch, auth, JWKS_URL=server.url)
        good = sign(auth, claims(auth))
        bad = {
            "expired": sign(auth, claims(auth, exp=int(time.time()) - 300)),
            "alg none": unsigned(claims(auth), kid=auth.kid),
            "wrong audience": sign(auth, claims(auth, aud="anon")),
            "anon role": sign(auth, claims(auth, role="anon")),
        }
        assert call(authorizer, request_with(good))["isAuthorized"] is True
        for name, token in bad.items():
            assert call(authorizer, request_with(token)) == {"isAuthorized": False}, name
        assert call(authorizer, request_with(None)) == {"isAuthorized": False}
        assert server.fetches == 1  # one JWKS fetch served the whole warm environment
    # And no token, nor any of its signature, reached a log line
    logged = caplog.text + " ".join(json.dumps(r.__dict__, default=str) for r in caplog.records)
    for token in (good, *bad.values()):
        assert not find_leaks(logged, token, token.split(".")[-1] or token)
    reasons = {getattr(r, "reason", None) for r in caplog.records if r.getMessage() == "token rejected"}
    assert {"expired", "algorithm", "audience", "role", "missing"} <= reasons


def test_hs256_reads_the_secret_from_secrets_manager(authorizer: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    auth = LocalAuth.generated("hs256", secret="supabase-legacy-jwt-secret-" + uuid.uuid4().hex)
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="eu-west-1")
        arn = client.create_secret(Name=f"payments/jwt-{uuid.uuid4().hex}", SecretString=auth.secret)["ARN"]
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        configure(monkeypatch, auth, JWT_SECRET_ARN=arn)
        assert call(authorizer, request_with(sign(auth, claims(auth))))["isAuthorized"] is True
        forged = sign(LocalAuth.generated("hs256"), claims(auth))  # the local secret, not the project's
        assert call(authorizer, request_with(forged)) == {"isAuthorized": False}


def test_an_unreadable_secret_fails_the_call_instead_of_denying(
    authorizer: ModuleType, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a secret that cannot be read (an outage, a wrong ARN)
    auth = LocalAuth.generated("hs256")
    with mock_aws():
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        configure(
            monkeypatch,
            auth,
            JWT_SECRET_ARN=f"arn:aws:secretsmanager:eu-west-1:123456789012:secret:x-{uuid.uuid4().hex}",
        )
        token = sign(auth, claims(auth))
        # Then the invocation fails (API Gateway answers 500 and caches nothing), it does not deny the token
        with pytest.raises(SigningKeysUnavailable):
            call(authorizer, request_with(token))
    assert "tokens cannot be verified" in caplog.text and not find_leaks(caplog.text, token)


def test_the_handler_sees_the_same_user_from_either_authorizer(env: Env) -> None:
    # Given a payment of the demo user, created through the JWT authorizer's claims
    created = post({"credit_pack_id": STARTER}, key="either-way")
    assert created.status == 201, created.body
    path = f"/payments/{created.json['payment_id']}"
    auth = LocalAuth.generated("es256")
    verified = context_claims(claims(auth, sub=DEMO_USER_ID))
    handler = load_module(TEMPLATE.functions[CREATE]).lambda_handler

    def get(authorizer: dict[str, Any]) -> tuple[int, Any]:
        event = build_event(
            method="GET",
            target=path,
            headers={},
            body=b"",
            source_ip="203.0.113.7",
            route_key="GET /payments/{payment_id}",
            path_parameters={"payment_id": created.json["payment_id"]},
            claims=None,
            authorizer=authorizer,
        )
        answer = handler(event, LocalLambdaContext(function_name=CREATE))
        return answer["statusCode"], json.loads(answer["body"])

    # When the same claims arrive as the JWT authorizer's and as the Lambda authorizer's
    from_jwt = get({"jwt": {"claims": verified, "scopes": None}})
    from_lambda = get({"lambda": verified})
    # Then the owner reads the same payment either way
    assert from_jwt == from_lambda and from_jwt[0] == 200 and from_jwt[1]["payment_id"] == created.json["payment_id"]
    # And without the signed-in role, or without a user, it is nobody's
    assert get({"lambda": {**verified, "role": "anon"}})[0] == 401
    assert get({"lambda": {k: v for k, v in verified.items() if k != "sub"}})[0] == 401
    assert get({})[0] == 401


# -- through the local API: the authorizer function in its own execution environment -----------------


def http(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


@pytest.mark.parametrize("mode", ["es256", "hs256"])
def test_local_api_runs_the_lambda_authorizer_for_real(env: Env, mode: str) -> None:
    # Given the local API in a Lambda-authorizer mode (its own issuer: a fresh key, or the local secret)
    auth = LocalAuth.generated(mode)  # type: ignore[arg-type]
    environment = {k: os.environ[k] for k in ("DATABASE_URL", "HYPAY_URL", "HYPAY_MASOF", "HYPAY_KEY", "HYPAY_PASSP")}
    environment |= {"POWERTOOLS_METRICS_NAMESPACE": "PaymentsTest", "POWERTOOLS_TRACE_DISABLED": "1"}
    api = LocalApi(load(), environment, port=0, workers=1, run_schedules=False, auth=auth)
    api.start()
    try:

        def pay(authorization: str | None, key: str) -> tuple[int, Any]:
            headers = {"Content-Type": "application/json", "Idempotency-Key": key}
            if authorization is not None:
                headers["Authorization"] = authorization
            return http(f"{api.url}/payments", "POST", json.dumps({"credit_pack_id": STARTER}).encode(), headers)

        # When a good token pays, the function gets the authorizer's claims and answers
        token = auth.token(DEMO_USER_ID)
        status, body = pay(f"Bearer {token}", "local-1")
        assert status == 201 and body["status"] == "pending", body
        assert http(f"{api.url}/payments/{body['payment_id']}", headers={"Authorization": f"Bearer {token}"})[0] == 200
        # Then bad tokens get API Gateway's answers: no header 401 (the authorizer is not called), a denial 403
        assert pay(None, "local-2") == (401, {"message": "Unauthorized"})
        expired = auth.token(DEMO_USER_ID, ttl_seconds=-300)
        assert pay(f"Bearer {expired}", "local-3") == (403, {"message": "Forbidden"})
        assert pay(f"Bearer {unsigned(claims(auth, sub=DEMO_USER_ID))}", "local-4")[0] == 403
        assert pay(f"Bearer {token[:-4]}AAAA", "local-5")[0] == 403
        assert pay("Basic dXNlcjpwYXNz", "local-6")[0] == 403
        assert len(env.payments()) == 1
        # And the issuer's keys are published where Supabase publishes them
        status, jwks = http(api.jwks_url)
        assert status == 200 and jwks == auth.jwks()
    finally:
        api.stop()


def test_make_run_in_es256_prints_a_working_token_and_how_to_mint_another(
    private_tmp: Path, request: pytest.FixtureRequest
) -> None:
    # Given `make run` with AUTH_MODE=es256 (its key kept in a folder of this test's own)
    keys = private_tmp / "auth"
    env = {"LOCAL_DATA_DIR": str(private_tmp / "pgdata"), "AUTH_MODE": "es256", "LOCAL_AUTH_DIR": str(keys)}
    if "DATABASE_URL" in os.environ:
        env["DATABASE_URL"] = request.getfixturevalue("empty_database_url")
    run = MakeRun(env)
    try:
        run.start()
        out = run.output
        assert "AUTH_MODE=es256" in out and "AuthorizerFunction" in out and "/.well-known/jwks.json" in out, out
        token = next(line.split()[-1] for line in run.lines if "demo token" in line)
        assert jwt.get_unverified_header(token)["alg"] == "ES256"
        mint = next(line for line in run.lines if "ops.token" in line)
        assert "--mode es256" in mint and "--user <uuid>" in mint
        # Then the printed token pays through the real Lambda authorizer
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Idempotency-Key": "mr-1"}
        body = json.dumps({"credit_pack_id": STARTER}).encode()
        status, answer = http(f"{run.base}/payments", "POST", body, headers)
        assert status == 201, answer
        # And the printed command mints a token for another user that the running API accepts
        other = str(uuid.uuid4())
        minted = subprocess.run(
            [sys.executable, "-m", "ops.token", "--mode", "es256", "--user", other],
            cwd=ROOT,
            env={**os.environ, "LOCAL_AUTH_DIR": str(keys), "PYTHONPATH": f"{ROOT / 'layers' / 'shared'}:{ROOT}"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert jwt.decode(minted, options={"verify_signature": False})["sub"] == other
        status, _ = http(f"{run.base}/payments/{uuid.uuid4()}", headers={"Authorization": f"Bearer {minted}"})
        assert status == 404  # through the authorizer, and nobody's payment
        assert http(f"{run.base}/payments/{uuid.uuid4()}", headers={"Authorization": f"Bearer {minted}x"})[0] == 403
    finally:
        code, rest = run.stop()
    assert code == 0, rest


def test_the_local_api_default_is_the_jwt_authorizer(env: Env) -> None:
    # (rs256: API Gateway's JWT authorizer, emulated against the JWKS the local API publishes; a bad token is 401)
    auth = LocalAuth.generated("rs256")
    environment = {
        "DATABASE_URL": env.url,
        "POWERTOOLS_METRICS_NAMESPACE": "PaymentsTest",
        "POWERTOOLS_TRACE_DISABLED": "1",
    }
    api = LocalApi(load(), environment, port=0, workers=1, run_schedules=False, auth=auth)
    api.start()
    try:
        assert api.authorizers["WebApp"].kind == "jwt" and "AuthorizerFunction" not in api.pools
        wrong_key = LocalAuth.generated("rs256").token(DEMO_USER_ID)
        assert http(f"{api.url}/payments/{uuid.uuid4()}", headers={"Authorization": f"Bearer {wrong_key}"})[0] == 401
        hs = LocalAuth("hs256").token(DEMO_USER_ID)  # the old local emulation's tokens no longer pass
        assert http(f"{api.url}/payments/{uuid.uuid4()}", headers={"Authorization": f"Bearer {hs}"})[0] == 401
        good = auth.token(DEMO_USER_ID)
        assert http(f"{api.url}/payments/{uuid.uuid4()}", headers={"Authorization": f"Bearer {good}"})[0] == 404
    finally:
        api.stop()


def test_local_authorizer_events_are_what_api_gateway_sends() -> None:
    sample = json.loads(SAMPLE_EVENT.read_text())
    event = build_event(
        method="POST",
        target="/payments?x=1",
        headers={"Authorization": "Bearer t", "Content-Type": "application/json"},
        body=b"{}",
        source_ip="127.0.0.1",
        route_key="POST /payments",
        path_parameters={},
        claims=None,
    )
    built = build_authorizer_event(event, ["Bearer t"])
    assert set(sample) <= set(built) | {"cookies", "queryStringParameters", "pathParameters", "stageVariables"}
    assert "body" not in built and built["type"] == "REQUEST" and built["identitySource"] == ["Bearer t"]
    assert built["routeArn"].endswith("/$default/POST/payments") and built["rawQueryString"] == "x=1"


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_a_signed_time_past_any_integer_is_denied_not_an_error(
    authorizer: ModuleType, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, claim: str
) -> None:
    """JSON's `1e400` (or Infinity) reads as an infinite float: a time no integer holds. Only a token whose signature
    verifies gets that far, but the issuer is not ours: such a token is denied, never a failed call (API Gateway's
    500), whatever PyJWT's time checks make of it."""
    auth = LocalAuth("hs256")
    configure(monkeypatch, auth, JWT_SECRET=LOCAL_JWT_SECRET)
    token = sign(auth, claims(auth, **{claim: float("inf")}))
    assert call(authorizer, request_with(token)) == {"isAuthorized": False}
    reasons = {getattr(r, "reason", None) for r in caplog.records if r.getMessage() == "token rejected"}
    assert len(reasons) == 1 and None not in reasons, reasons
