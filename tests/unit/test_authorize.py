"""Verifying the web app's tokens: real tokens of each algorithm, against a real JWKS endpoint or the shared
secret; every way a token can be wrong is a rejection with its reason, never a pass."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ops.local_auth import LocalAuth
from payments.adapters.jwks import JwksKeys, SigningKeysUnavailable, require_https
from payments.adapters.jwt_secret import SharedSecret
from payments.errors import ConfigurationError
from payments.services.authorize import (
    TokenPolicy,
    TokenRejected,
    TokenVerifier,
    bearer_token,
    context_claims,
    verifier_from_settings,
)
from payments.settings import AuthSettings
from tests.support.tokens import USER, JwksServer, claims, hs256_with, jwks_server, sign, unsigned

MODES = ["hs256", "rs256", "es256"]


@pytest.fixture(scope="module")
def issuers() -> dict[str, LocalAuth]:
    return {mode: LocalAuth.generated(mode) for mode in MODES}  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def published(issuers: dict[str, LocalAuth]) -> Iterator[JwksServer]:
    """The asymmetric issuers' public keys, on a real HTTP endpoint."""
    with jwks_server(issuers["rs256"], issuers["es256"]) as server:
        yield server


def verifier(auth: LocalAuth, server: JwksServer, **keys: Any) -> TokenVerifier:
    policy = TokenPolicy(
        algorithm=auth.algorithm,  # type: ignore[arg-type]
        issuer=auth.issuer,
        audience=auth.audience,
        required_role="authenticated",
        leeway_seconds=30,
    )
    if auth.mode == "hs256":
        return TokenVerifier(policy, SharedSecret(lambda _refresh: auth.secret))
    return TokenVerifier(policy, JwksKeys(server.url, **keys))


def rejected(verify: TokenVerifier, token: str) -> str:
    with pytest.raises(TokenRejected) as caught:
        verify.verify(token)
    return caught.value.reason


@pytest.mark.parametrize("mode", MODES)
def test_a_valid_token_passes_with_its_claims_as_the_jwt_authorizer_hands_them_over(
    mode: str, issuers: dict[str, LocalAuth], published: JwksServer
) -> None:
    # Given a token signed as the issuer signs in this mode
    auth = issuers[mode]
    payload = claims(auth)
    # When it is verified
    verified = verifier(auth, published).verify(sign(auth, payload))
    # Then its claims come back, and the functions get every scalar claim as a string
    assert verified["sub"] == USER and verified["role"] == "authenticated"
    context = context_claims(verified)
    assert context["sub"] == USER and context["exp"] == str(payload["exp"]) and context["is_anonymous"] == "false"
    assert context["iss"] == auth.issuer and context["aud"] == "authenticated" and context["email"] == payload["email"]
    assert "app_metadata" not in context  # nested claims: left out
    assert all(isinstance(v, str) for v in context.values())


@dataclass(frozen=True)
class FromNow:
    seconds: int


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": FromNow(-120)}, "expired"),
        ({"nbf": FromNow(300)}, "not_yet_valid"),
        ({"iat": FromNow(300)}, "not_yet_valid"),
        ({"iss": "https://other-project.supabase.co/auth/v1"}, "issuer"),
        ({"aud": "anon"}, "audience"),
        ({"role": None}, "role"),
        ({"role": "anon"}, "role"),
        ({"role": "service_role"}, "role"),
        ({"exp": None}, "missing_exp"),
        ({"sub": None}, "missing_sub"),
    ],
    ids=[
        "expired",
        "nbf-future",
        "iat-future",
        "issuer",
        "audience",
        "no-role",
        "anon",
        "service-role",
        "no-exp",
        "no-sub",
    ],
)
def test_claims_that_are_wrong_are_rejected(
    mode: str, changes: dict[str, Any], reason: str, issuers: dict[str, LocalAuth], published: JwksServer
) -> None:
    auth = issuers[mode]
    # times are taken when the test runs, not when it was collected (a long suite runs it minutes later)
    changes = {k: int(time.time()) + v.seconds if isinstance(v, FromNow) else v for k, v in changes.items()}
    assert rejected(verifier(auth, published), sign(auth, claims(auth, **changes))) == reason


@pytest.mark.parametrize("mode", MODES)
def test_clock_skew_within_the_leeway_passes(mode: str, issuers: dict[str, LocalAuth], published: JwksServer) -> None:
    auth = issuers[mode]
    now = int(time.time())
    token = sign(auth, claims(auth, exp=now - 10, nbf=now + 10))
    assert verifier(auth, published).verify(token)["sub"] == USER


@pytest.mark.parametrize("mode", MODES)
def test_alg_none_and_tampering_are_rejected(mode: str, issuers: dict[str, LocalAuth], published: JwksServer) -> None:
    auth = issuers[mode]
    verify = verifier(auth, published)
    good = sign(auth, claims(auth))
    head, body, signature = good.split(".")
    # alg none, with and without the issuer's kid
    assert rejected(verify, unsigned(claims(auth))) == "algorithm"
    assert rejected(verify, unsigned(claims(auth), kid=auth.kid or "k")) == "algorithm"
    # another user's id put into a genuine token
    other = sign(auth, claims(auth, sub="0e000000-0000-4000-8000-00000000beef")).split(".")[1]
    assert rejected(verify, f"{head}.{other}.{signature}") == "signature"
    # a signature from another key of the same kind (or secret)
    stranger = LocalAuth.generated(auth.mode, secret="another-secret-of-at-least-32-characters!")
    forged = sign(stranger, claims(auth), **({"kid": auth.kid} if auth.kid else {}))
    assert rejected(verify, forged) == "signature"
    # junk
    assert rejected(verify, "") == "missing"
    assert rejected(verify, "not.a.token") == "malformed"
    assert rejected(verify, "x" * 20_000) == "oversized"
    # non-ASCII, even a lone surrogate (PyJWT raised UnicodeEncodeError: the authorizer failed, a 500)
    assert rejected(verify, good + "\ud800") == "malformed"
    assert rejected(verify, "\ud800") == "malformed"


@pytest.mark.parametrize("mode", ["rs256", "es256"])
def test_hs256_signed_with_the_public_key_is_rejected(
    mode: str, issuers: dict[str, LocalAuth], published: JwksServer
) -> None:
    # Given the classic confusion: HS256 keyed with the issuer's public key (PEM, and the JWKS's own text)
    auth = issuers[mode]
    verify = verifier(auth, published)
    for key in (auth.public_key_pem(), auth.jwks_json()):
        token = hs256_with(key, claims(auth), kid=auth.kid)
        # Then the pinned algorithm refuses it before any key is used
        assert rejected(verify, token) == "algorithm"


def test_each_mode_accepts_only_its_own_algorithm(issuers: dict[str, LocalAuth], published: JwksServer) -> None:
    for mode in MODES:
        for other in MODES:
            if other != mode:
                token = sign(issuers[other], claims(issuers[mode]))
                assert rejected(verifier(issuers[mode], published), token) == "algorithm", (mode, other)


def test_a_published_key_of_another_algorithm_is_not_used(issuers: dict[str, LocalAuth], published: JwksServer) -> None:
    # Given an ES256 token whose kid names the RSA key of the same JWKS
    es, rs = issuers["es256"], issuers["rs256"]
    token = sign(es, claims(es), kid=rs.kid)
    # Then the RSA key is never used to verify it
    assert rejected(verifier(es, published), token) == "key_algorithm"


@pytest.mark.parametrize("mode", ["rs256", "es256"])
def test_unknown_kid_is_rejected_after_one_rate_limited_refetch(mode: str, issuers: dict[str, LocalAuth]) -> None:
    auth = issuers[mode]
    with jwks_server(auth) as server:
        verify = verifier(auth, server, refresh_cooldown_seconds=60)
        assert verify.verify(sign(auth, claims(auth)))["sub"] == USER
        assert server.fetches == 1
        # When tokens name a kid the JWKS lacks
        assert rejected(verify, sign(auth, claims(auth), kid="rotated-away")) == "unknown_key"
        assert rejected(verify, sign(auth, claims(auth), kid="made-up-2")) == "unknown_key"
        assert rejected(verify, sign(auth, claims(auth), kid="made-up-3")) == "unknown_key"
        # Then the JWKS was not fetched again within the cooldown: unknown kids cannot hammer the issuer
        assert server.fetches == 1


def test_a_rotated_in_key_is_fetched_once_and_the_cache_lifetime_is_bounded() -> None:
    old, new = LocalAuth.generated("es256"), LocalAuth.generated("es256")
    with jwks_server(old) as server:
        verify = verifier(old, server, refresh_cooldown_seconds=0, cache_seconds=0.5)
        for _ in range(3):
            verify.verify(sign(old, claims(old)))
        assert server.fetches == 1  # cached
        # When the issuer publishes a new key and signs with it
        server.document = {"keys": old.jwks()["keys"] + new.jwks()["keys"]}
        assert verify.verify(sign(new, claims(new)))["sub"] == USER
        assert server.fetches == 2  # one refetch for the unknown kid
        # And when the issuer withdraws the old key, the cached set stops trusting it once its lifetime ends
        server.document = new.jwks()
        time.sleep(0.6)
        assert rejected(verify, sign(old, claims(old))) == "unknown_key"


def test_an_unreachable_jwks_is_an_error_never_a_verdict() -> None:
    # Given a JWKS endpoint that is gone (nothing listens on its port any more)
    auth = LocalAuth.generated("es256")
    with jwks_server(auth) as server:
        url = server.url
    verify = TokenVerifier(
        TokenPolicy("ES256", auth.issuer, auth.audience, "authenticated"), JwksKeys(url, timeout_seconds=1)
    )
    # Then a good token gets an error (API Gateway: 500, nothing cached), not a denial that would stick
    with pytest.raises(SigningKeysUnavailable):
        verify.verify(sign(auth, claims(auth)))


def test_the_jwks_must_be_fetched_over_https() -> None:
    assert require_https("https://abc.supabase.co/auth/v1/.well-known/jwks.json")
    assert require_https("http://127.0.0.1:3000/auth/v1/.well-known/jwks.json")  # the local emulation
    assert require_https("http://localhost:3000/x")
    for url in ("http://abc.supabase.co/auth/v1/.well-known/jwks.json", "file:///etc/passwd", "ftp://x/y", "https://"):
        with pytest.raises(ConfigurationError):
            require_https(url)


def test_a_rotated_shared_secret_is_read_again_at_most_once_per_cooldown() -> None:
    # Given a secret rotated in Secrets Manager while the cached read still holds the old one
    old = LocalAuth.generated("hs256")
    new = LocalAuth.generated("hs256", secret="the-rotated-secret-of-at-least-32-characters")
    versions = {"cached": old.secret, "stored": new.secret}
    refreshes: list[str] = []

    def read(refresh: bool) -> str:
        if refresh:
            refreshes.append("read")
            versions["cached"] = versions["stored"]
        return versions["cached"]

    clock = {"now": 100.0}
    secret = SharedSecret(read, refresh_cooldown_seconds=30, clock=lambda: clock["now"])
    verify = TokenVerifier(TokenPolicy("HS256", old.issuer, old.audience, "authenticated"), secret)
    # When a token signed with the new secret arrives, it passes after one fresh read
    assert verify.verify(sign(new, claims(new)))["sub"] == USER
    assert refreshes == ["read"]
    # And forgeries right after neither pass nor make it read again until the cooldown is over
    forged = sign(LocalAuth.generated("hs256", secret="x" * 40), claims(old))
    assert rejected(verify, forged) == "signature"
    assert rejected(verify, forged) == "signature"
    assert refreshes == ["read"]
    clock["now"] += 31
    assert rejected(verify, forged) == "signature"
    assert refreshes == ["read", "read"]


def test_short_or_missing_secrets_and_settings_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        SharedSecret.from_settings(AuthSettings.from_mapping({"JWT_MODE": "hs256", "JWT_SECRET": "short"})).key(None)
    with pytest.raises(ConfigurationError):
        SharedSecret.from_settings(AuthSettings.from_mapping({"JWT_MODE": "hs256"}))
    with pytest.raises(ConfigurationError):
        verifier_from_settings(AuthSettings.from_mapping({"JWT_ISSUER": "https://p.supabase.co/auth/v1"}))
    with pytest.raises(ConfigurationError):
        verifier_from_settings(AuthSettings.from_mapping({"JWT_MODE": "es256"}))
    with pytest.raises(ConfigurationError):  # a plain-HTTP JWKS
        verifier_from_settings(
            AuthSettings.from_mapping({"JWT_MODE": "es256", "JWT_ISSUER": "http://p.supabase.co/auth/v1"})
        )


def test_settings_from_the_template_pin_the_mode_and_default_the_jwks_url() -> None:
    settings = AuthSettings.from_mapping(
        {"JWT_MODE": "es256", "JWT_ISSUER": "https://p.supabase.co/auth/v1/", "JWKS_URL": "", "JWT_SECRET_ARN": ""}
    )
    verify = verifier_from_settings(settings)
    assert verify.policy.algorithm == "ES256" and verify.policy.required_role == "authenticated"
    assert verify._keys.url == "https://p.supabase.co/auth/v1/.well-known/jwks.json"  # type: ignore[attr-defined]
    assert verifier_from_settings(settings, check_role=False).policy.required_role is None


def test_bearer_token_reads_only_the_bearer_scheme() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer   abc") == "abc"
    assert bearer_token("Basic dXNlcjpwYXNz") == ""
    assert bearer_token("abc.def.ghi") == ""
    assert bearer_token(None) == "" and bearer_token("") == ""
