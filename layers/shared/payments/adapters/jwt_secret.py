"""The web app's shared JWT secret (Supabase's legacy HS256 secret): from Secrets Manager (or the environment
locally), read again at most once per cooldown when a signature does not verify, so a rotation is picked up."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from payments.adapters.jwks import SigningKeysUnavailable
from payments.adapters.secrets import read_secret
from payments.errors import ConfigurationError
from payments.settings import AuthSettings

MIN_SECRET_LENGTH = 32  # Supabase's secrets are longer; anything shorter is a configuration mistake


def _checked(text: str) -> str:
    if len(text) < MIN_SECRET_LENGTH:
        raise ConfigurationError(f"the JWT secret must be at least {MIN_SECRET_LENGTH} characters")
    return text


def _shared_secret(text: str) -> str:
    """The secret's text: plain (the white space around it, a newline pasted from a file, dropped), or a JSON object
    whose `secret` is a string. Any other shape is a ConfigurationError: taken as the key, it would deny every
    signed-in user's token as forged (a 403 API Gateway caches) rather than fail the call (500, alarmed)."""
    text = text.strip()
    if not text.startswith(("{", "[", '"')):
        return text
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigurationError("the JWT secret starts like JSON but is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("secret"), str):
        raise ConfigurationError('the JWT secret must be plain text or a JSON object {"secret": "..."}')
    return str(data["secret"]).strip()


class SharedSecret:
    """The HS256 key. `kid` is ignored: there is one secret."""

    def __init__(
        self,
        read: Callable[[bool], str],
        *,
        refresh_cooldown_seconds: float = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._cooldown = refresh_cooldown_seconds
        self._clock = clock
        self._last_refresh: float | None = None

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> SharedSecret:
        """`JWT_SECRET_ARN` (plain text, or JSON with a `secret` field), else `JWT_SECRET` (local runs)."""
        if settings.secret_arn:
            arn, max_age = settings.secret_arn, settings.secret_max_age_seconds

            def from_secret(refresh: bool) -> str:
                text = str(
                    read_secret(
                        arn,
                        what="JWT",
                        unavailable=SigningKeysUnavailable,
                        max_age=max_age,
                        refresh=refresh,
                        json_object=False,
                    )
                )
                return _checked(_shared_secret(text))

            return cls(from_secret, refresh_cooldown_seconds=settings.jwks_refresh_cooldown_seconds)
        if settings.secret:
            value = _checked(settings.secret)
            return cls(lambda _refresh: value, refresh_cooldown_seconds=settings.jwks_refresh_cooldown_seconds)
        raise ConfigurationError("JWT_MODE hs256 needs JWT_SECRET_ARN (or JWT_SECRET locally)")

    def key(self, kid: str | None) -> str:
        return self._read(False)

    def refreshed(self, kid: str | None) -> str | None:
        """The secret read again, if it changed and the cooldown allows; else None."""
        now = self._clock()
        if self._last_refresh is not None and now - self._last_refresh < self._cooldown:
            return None
        self._last_refresh = now
        before = self._read(False)
        after = self._read(True)
        return after if after != before else None
