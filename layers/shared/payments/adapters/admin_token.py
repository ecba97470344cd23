"""The admin endpoints' bearer token: from Secrets Manager (or the environment locally), compared in constant time."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from payments.adapters.secrets import read_secret
from payments.errors import ConfigurationError, DatabaseUnavailable
from payments.settings import CleanupSettings


def token_provider(settings: CleanupSettings) -> Callable[[], str]:
    """The secret's value (a plain string, or JSON with a `token` field), cached; else ADMIN_API_TOKEN."""
    if settings.admin_token_secret_arn:
        arn = settings.admin_token_secret_arn

        def from_secret() -> str:
            text = str(read_secret(arn, what="admin token", unavailable=DatabaseUnavailable, json_object=False))
            if text.lstrip().startswith("{"):
                text = str(json.loads(text).get("token", ""))
            if len(text) < 16:
                raise ConfigurationError("the admin token must be at least 16 characters")
            return text

        return from_secret
    if settings.admin_token:
        if len(settings.admin_token) < 16:
            raise ConfigurationError("ADMIN_API_TOKEN must be at least 16 characters")
        token = settings.admin_token
        return lambda: token
    raise ConfigurationError("set ADMIN_TOKEN_SECRET_ARN or ADMIN_API_TOKEN")


def bearer_matches(authorization: str | None, expected: str) -> bool:
    """`Authorization: Bearer <token>` against the expected token, in constant time."""
    scheme, _, given = (authorization or "").partition(" ")
    ok_scheme = scheme.lower() == "bearer"
    # compare_digest on equal-length digests: no early exit, no length leak
    same = hmac.compare_digest(
        hmac.new(b"admin-token", given.strip().encode(), "sha256").digest(),
        hmac.new(b"admin-token", expected.encode(), "sha256").digest(),
    )
    return ok_scheme and same
