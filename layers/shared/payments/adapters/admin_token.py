"""The admin endpoints' bearer tokens: named credentials from Secrets Manager (or the environment locally),
compared in constant time.

The secret (or ADMIN_API_TOKEN) holds one of:
- a plain string: one token, named `admin`;
- JSON `{"token": "..."}`: the same;
- JSON `{"tokens": {"alice": "...", "ops-bot": "..."}}`: several, each named (the name is what the audit
  trail records, never the token). `token` beside `tokens` is kept too, as `admin`.
Every token is at least 16 characters, names are 1-64 of `A-Z a-z 0-9 . _ @ -`, and no two names share a token.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

from payments.adapters.secrets import read_secret
from payments.errors import ConfigurationError, SecretUnavailable

DEFAULT_NAME = "admin"
MIN_TOKEN_LENGTH = 16
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


# A token that matches none makes the secret be read again (it may have been rotated since it was cached), at most
# once in this many seconds per execution environment: junk tokens cannot turn every request into a read.
REFRESH_COOLDOWN_SECONDS = 30.0


class AdminTokenSettings(Protocol):
    admin_token_secret_arn: str | None
    admin_token: str | None
    admin_token_secret_max_age_seconds: int


def parse_tokens(text: str, *, what: str = "the admin token secret") -> dict[str, str]:
    """{name: token} from the secret's text (any of the three forms). Errors name the problem, never a value."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        found: dict[str, Any] = {DEFAULT_NAME: stripped}
    else:
        try:
            data = json.loads(stripped)
        except ValueError:
            raise ConfigurationError(f"{what} starts like JSON but is not JSON") from None
        if not isinstance(data, dict):
            raise ConfigurationError(f"{what} is not a JSON object")
        named = data.get("tokens")
        if named is not None and not isinstance(named, dict):
            raise ConfigurationError(f'{what}: "tokens" must be an object of name to token')
        found = dict(named or {})
        if "token" in data:
            if DEFAULT_NAME in found:
                raise ConfigurationError(f'{what}: "token" and tokens["{DEFAULT_NAME}"] both name "{DEFAULT_NAME}"')
            found[DEFAULT_NAME] = data["token"]
    if not found:
        raise ConfigurationError(f"{what} holds no token")
    seen: set[str] = set()
    for position, (name, token) in enumerate(found.items(), start=1):
        if not _NAME.match(name):
            raise ConfigurationError(f"{what}: admin names are 1-64 of A-Z a-z 0-9 . _ @ - (got a bad one)")
        if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
            # By position, never by name: a mapping written the wrong way round has tokens for names.
            raise ConfigurationError(
                f"{what}: the token of admin #{position} (in the secret's order) must be at least {MIN_TOKEN_LENGTH}"
                " characters"
            )
        if token in seen:
            raise ConfigurationError(f"{what}: two admins share a token; each needs its own")
        seen.add(token)
    return found


class SecretTokens:
    """{name: token} from the secret, kept for ADMIN_TOKEN_SECRET_MAX_AGE (`SecretCacheSeconds`), and read again
    before then when a presented token matches none (`refreshed`): a token added by a rotation is accepted at once,
    not after the cached copy ages out."""

    def __init__(self, arn: str, max_age: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._arn = arn
        self._max_age = max_age
        self._clock = clock
        self._last_refresh: float | None = None

    def __call__(self, refresh: bool = False) -> dict[str, str]:
        text = read_secret(
            self._arn,
            what="admin token",
            unavailable=SecretUnavailable,
            json_object=False,
            max_age=self._max_age,
            refresh=refresh,
        )
        return parse_tokens(str(text))

    def refreshed(self) -> dict[str, str] | None:
        """The tokens read again, if they changed and the cooldown allows; else None."""
        now = self._clock()
        if self._last_refresh is not None and now - self._last_refresh < REFRESH_COOLDOWN_SECONDS:
            return None
        self._last_refresh = now
        before = self()
        try:
            after = self(refresh=True)
        except (SecretUnavailable, ConfigurationError):
            return None  # the tokens held still answer (a wrong token stays a 401, never a 503 of ours)
        return after if after != before else None


def tokens_provider(settings: AdminTokenSettings) -> Callable[[], dict[str, str]]:
    """{name: token}: from the secret (`SecretTokens`), else ADMIN_API_TOKEN (local runs)."""
    if settings.admin_token_secret_arn:
        return SecretTokens(settings.admin_token_secret_arn, settings.admin_token_secret_max_age_seconds)
    if settings.admin_token:
        tokens = parse_tokens(settings.admin_token, what="ADMIN_API_TOKEN")
        return lambda: tokens
    raise ConfigurationError("set ADMIN_TOKEN_SECRET_ARN or ADMIN_API_TOKEN")


def _digest(value: str) -> bytes:
    # surrogatepass: a header with a lone surrogate is compared (and refused) like any other, not an encoding error
    return hmac.new(b"admin-token", value.encode("utf-8", "surrogatepass"), "sha256").digest()


def authenticate(authorization: str | None, tokens: dict[str, str]) -> str | None:
    """The name of the admin whose token `Authorization: Bearer <token>` carries, or None.

    Compared against EVERY token, each in constant time on equal-length digests, with no early exit: the
    time taken says nothing about which token (or how much of one) matched.
    """
    scheme, _, given = (authorization or "").partition(" ")
    presented = _digest(given.strip())
    matched: str | None = None
    for name, token in tokens.items():
        if hmac.compare_digest(presented, _digest(token)) and matched is None:
            matched = name
    return matched if scheme.lower() == "bearer" and given.strip() else None


def authenticate_current(authorization: str | None, tokens: Callable[[], dict[str, str]]) -> str | None:
    """`authenticate` against the provider's tokens; a bearer token that matches none is tried once more against the
    secret read again (`SecretTokens.refreshed`: rotated since it was cached), within its cooldown."""
    name = authenticate(authorization, tokens())
    if name is not None or not (authorization or "").strip():
        return name
    refreshed = getattr(tokens, "refreshed", None)
    fresh = refreshed() if refreshed is not None else None
    return authenticate(authorization, fresh) if fresh is not None else None


# -- the single-token interface the cleanup function started with -------------------------------


def token_provider(settings: AdminTokenSettings) -> Callable[[], str]:
    """One token: the `admin` one (the plain or `{"token"}` forms), else the only one there is."""
    tokens = tokens_provider(settings)

    def one() -> str:
        found = tokens()
        if DEFAULT_NAME in found:
            return found[DEFAULT_NAME]
        if len(found) == 1:
            return next(iter(found.values()))
        raise ConfigurationError("several admin tokens are configured: use tokens_provider")

    return one


def bearer_matches(authorization: str | None, expected: str) -> bool:
    """`Authorization: Bearer <token>` against the expected token, in constant time."""
    return authenticate(authorization, {DEFAULT_NAME: expected}) is not None


__all__ = [
    "DEFAULT_NAME",
    "SecretTokens",
    "authenticate",
    "authenticate_current",
    "bearer_matches",
    "parse_tokens",
    "token_provider",
    "tokens_provider",
]
