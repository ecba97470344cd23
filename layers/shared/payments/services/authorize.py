"""Verifying the web app's access tokens (Supabase), for the Lambda authorizer.

Everything the token could choose is pinned: the one algorithm of the mode (never the token's `alg`),
the issuer, the audience, the required role; `exp` and `iat` must be there, `exp` / `nbf` are checked with
a small leeway. The answer handed to API Gateway is the token's scalar claims as strings, the shape API
Gateway's JWT authorizer hands to the functions, so handlers read the same claims whichever verified them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import jwt
from jwt import PyJWK

from payments.adapters.jwks import JwksKeys, UnknownSigningKey
from payments.adapters.jwt_secret import SharedSecret
from payments.errors import ConfigurationError, Unauthorized
from payments.settings import AuthSettings

Algorithm = Literal["HS256", "RS256", "ES256"]
ALGORITHMS: dict[str, Algorithm] = {"hs256": "HS256", "rs256": "RS256", "es256": "ES256"}
MAX_TOKEN_LENGTH = 16 * 1024  # an access token is well under 2 KB; longer is junk, refused before parsing
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")


class TokenRejected(Unauthorized):
    """Not a valid access token of a signed-in user. `reason` is short and safe to log (never the token)."""

    code = "token_rejected"

    def __init__(self, reason: str) -> None:
        super().__init__(f"access token rejected: {reason}")
        self.reason = reason


class SigningKeys(Protocol):
    def key(self, kid: str | None) -> Any:
        """The key that verifies a token naming `kid` (raises UnknownSigningKey)."""
        ...

    def refreshed(self, kid: str | None) -> Any | None:
        """A newer key after a signature failed to verify (a rotated secret), or None."""
        ...


@dataclass(frozen=True)
class TokenPolicy:
    algorithm: Algorithm
    issuer: str
    audience: str
    # None: no role check (API Gateway's JWT authorizer has none; the handlers check it anyway).
    required_role: str | None
    leeway_seconds: int = 30


class TokenVerifier:
    """Verifies tokens against a policy and a key source; holds the key cache for a warm environment."""

    def __init__(self, policy: TokenPolicy, keys: SigningKeys) -> None:
        self.policy = policy
        self._keys = keys

    def verify(self, token: str) -> dict[str, Any]:
        """The token's verified claims, or TokenRejected. Key or configuration trouble raises other errors."""
        if not token:
            raise TokenRejected("missing")
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenRejected("oversized")
        if not token.isascii():  # a compact JWS is base64url and dots; PyJWT cannot even encode a lone surrogate
            raise TokenRejected("malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenRejected("malformed") from None
        # Before any key is looked at: `none`, or HS256 signed with a public key, ends here.
        if header.get("alg") != self.policy.algorithm:
            raise TokenRejected("algorithm")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("malformed")
        try:
            key = self._keys.key(kid)
        except UnknownSigningKey:
            raise TokenRejected("unknown_key") from None
        try:
            claims = self._decode(token, key)
        except jwt.InvalidSignatureError:
            newer = self._keys.refreshed(kid)
            if newer is None:
                raise TokenRejected("signature") from None
            try:
                claims = self._decode(token, newer)
            except jwt.InvalidSignatureError:
                raise TokenRejected("signature") from None
        if self.policy.required_role is not None and claims.get("role") != self.policy.required_role:
            raise TokenRejected("role")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise TokenRejected("subject")
        return claims

    def _decode(self, token: str, key: Any) -> dict[str, Any]:
        if isinstance(key, PyJWK):
            # The published key must be of the pinned algorithm too (an RSA key never verifies ES256).
            if key.algorithm_name != self.policy.algorithm:
                raise TokenRejected("key_algorithm")
            key = key.key
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[self.policy.algorithm],
                audience=self.policy.audience,
                issuer=self.policy.issuer,
                leeway=self.policy.leeway_seconds,
                options={"require": list(REQUIRED_CLAIMS), "verify_signature": True},
            )
        except jwt.InvalidSignatureError:
            raise
        except jwt.ExpiredSignatureError:
            raise TokenRejected("expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("not_yet_valid") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("issuer") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"missing_{exc.claim}") from None
        except jwt.InvalidIssuedAtError:
            raise TokenRejected("issued_at") from None
        except jwt.InvalidTokenError:
            raise TokenRejected("invalid") from None
        except jwt.InvalidKeyError:
            raise TokenRejected("invalid") from None


def bearer_token(authorization: object) -> str:
    """The token of an `Authorization: Bearer <token>` header; "" when there is none (or it is not text)."""
    if not isinstance(authorization, str):
        return ""
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _as_string(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    return None


def context_claims(claims: Mapping[str, Any]) -> dict[str, str]:
    """The claims handed to the functions: every scalar claim as a string (as API Gateway's JWT authorizer
    hands them over); nested ones (app_metadata, amr, ...) are left out, no handler reads them."""
    out: dict[str, str] = {}
    for name, value in claims.items():
        text = _as_string(value)
        if text is not None:
            out[name] = text
    return out


def verifier_from_settings(settings: AuthSettings, *, check_role: bool = True) -> TokenVerifier:
    """The verifier `settings` describe (`check_role=False`: no role check, as API Gateway's JWT authorizer)."""
    if settings.mode is None:
        raise ConfigurationError("JWT_MODE is not set (hs256, rs256 or es256)")
    if not settings.issuer:
        raise ConfigurationError("JWT_ISSUER is not set")
    policy = TokenPolicy(
        algorithm=ALGORITHMS[settings.mode],
        issuer=settings.issuer,
        audience=settings.audience,
        required_role=settings.required_role if check_role else None,
        leeway_seconds=settings.leeway_seconds,
    )
    keys: SigningKeys
    if settings.mode == "hs256":
        keys = SharedSecret.from_settings(settings)
    else:
        keys = JwksKeys(
            settings.jwks_url or settings.issuer.rstrip("/") + "/.well-known/jwks.json",
            cache_seconds=settings.jwks_cache_seconds,
            refresh_cooldown_seconds=settings.jwks_refresh_cooldown_seconds,
            timeout_seconds=settings.jwks_timeout_seconds,
        )
    return TokenVerifier(policy, keys)
