"""The web app's public signing keys, from its JWKS endpoint (PyJWT's PyJWKClient): fetched over HTTPS
with a timeout, cached for a bounded time, fetched again (at most once per cooldown) for an unknown `kid`."""

from __future__ import annotations

import ipaddress
import time
from typing import Any
from urllib.parse import urlsplit

from jwt import PyJWK, PyJWKClient, PyJWKSet
from jwt.api_jwk import PyJWTSetWithTimestamp
from jwt.exceptions import PyJWKClientConnectionError, PyJWKClientError, PyJWKError, PyJWKSetError

from payments.errors import ConfigurationError, PaymentError


class SigningKeysUnavailable(PaymentError):
    """The keys to verify tokens with could not be read (JWKS endpoint down, secret unreadable): ours, retryable."""

    code = "signing_keys_unavailable"
    retryable = True


class UnknownSigningKey(PaymentError):
    """The token names a key (`kid`) the issuer does not publish, even after fetching its keys again."""

    code = "unknown_signing_key"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_https(url: str) -> str:
    """`url` if it is HTTPS (plain HTTP only to this machine, for the local emulation), else ConfigurationError."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and _loopback(parts.hostname):
        return url
    raise ConfigurationError("the JWKS URL must be https://")


def _signing_keys(jwk_set: PyJWKSet) -> list[PyJWK]:
    """The set's keys PyJWT would verify a signature with: for signatures (or of no stated use), with a `kid`."""
    return [key for key in jwk_set.keys if key.public_key_use in ("sig", None) and key.key_id]


# How long past its lifespan the last good set may still be served while fetching it again fails (a cooldown at a time).
MAX_STALE_SECONDS = 300


class _Client(PyJWKClient):
    """PyJWT's client, except that trouble with the set itself is ours: PyJWT raises one PyJWKClientError for a set
    that is not a JSON object, a set with no signing key (none with a `kid`, all for encryption) and a `kid` the set
    lacks. Only the last is the token's (UnknownSigningKey); the others, and a body that is not JSON at all, would
    deny every good token (a 403 API Gateway caches), so they are SigningKeysUnavailable: the call fails (500,
    nothing cached, alarmed)."""

    _failed_at: float | None = None

    def fetch_data(self) -> Any:
        """As PyJWT's, except that after a fetch that failed (unreachable, not JSON, not an object) the endpoint is
        not asked again for one cooldown: PyJWT's own cooldown counts from the last fetch that succeeded, so while
        the endpoint misbehaves, every token naming a key the cached set lacks (an attacker's made-up `kid`) would
        fetch it again, each fetch waiting up to the timeout. The answer meanwhile is the same: the keys cannot be
        read now (500, nothing cached), never a verdict on the token."""
        failed_at = self._failed_at
        if failed_at is not None and time.monotonic() - failed_at < self.cooldown_duration:
            raise PyJWKClientConnectionError("the JWKS could not be read moments ago: not asked again yet")
        cache = self.jwk_set_cache
        kept = cache.jwk_set_with_timestamp if cache is not None else None
        try:
            data = super().fetch_data()
            if not _signing_keys(PyJWKSet.from_dict(data)):
                raise PyJWKClientError("the JWKS holds no signing key (none with a kid, for signatures)")
        except Exception as exc:  # noqa: BLE001 - whatever failed, the endpoint is not asked again for a cooldown
            # A set with no signing key is no answer either: the last good set stays cached (its keys still verify
            # tokens until it expires), and the endpoint is not asked again for one cooldown. What PyJWT does not
            # wrap (a connection reset while the body is read, a key whose `alg` is no string: a TypeError) is the
            # keys unreadable too.
            self._failed_at = time.monotonic()
            if cache is not None:
                cache.jwk_set_with_timestamp = self._stale(kept, cache.lifespan)
            if isinstance(exc, PyJWKClientError | PyJWKSetError | PyJWKError | ValueError):
                raise
            raise PyJWKClientConnectionError(f"the JWKS could not be read ({type(exc).__name__})") from exc
        self._failed_at = None
        return data

    def _stale(self, kept: PyJWTSetWithTimestamp | None, lifespan: float) -> PyJWTSetWithTimestamp | None:
        """The last good set, after a fetch that failed: kept as it was, and, when it expired, served for the failure's
        cooldown (its keys verify the tokens they signed: one reset at the set's expiry must not fail every good token
        for a cooldown), as long as it is no older than its lifespan and MAX_STALE_SECONDS."""
        if kept is None:
            return None
        now = time.monotonic()
        age = now - kept.get_timestamp()
        if age < lifespan or age > lifespan + MAX_STALE_SECONDS:
            return kept
        served = PyJWTSetWithTimestamp(kept.get_jwk_set())
        served.timestamp = min(kept.get_timestamp() + MAX_STALE_SECONDS, now - lifespan + self.cooldown_duration)
        return served

    def get_signing_keys(self, refresh: bool = False) -> list[PyJWK]:
        try:
            return super().get_signing_keys(refresh)
        except PyJWKClientConnectionError:
            raise
        except (PyJWKClientError, PyJWKSetError, PyJWKError, ValueError) as exc:
            raise SigningKeysUnavailable("the JWKS holds no usable signing key") from exc
        except Exception as exc:  # noqa: BLE001 - a set PyJWT cannot read (a key's odd member): the keys, not the token
            raise SigningKeysUnavailable(f"the JWKS could not be read ({type(exc).__name__})") from exc


class JwksKeys:
    """Signing keys by `kid`, from a JWKS URL; one instance per execution environment keeps the cache warm."""

    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float = 600,
        refresh_cooldown_seconds: float = 30,
        timeout_seconds: float = 3.0,
    ) -> None:
        self.url = require_https(url)
        self._client = _Client(
            self.url,
            cache_jwk_set=True,
            lifespan=cache_seconds,
            cooldown_duration=refresh_cooldown_seconds,
            timeout=timeout_seconds,
            headers={"User-Agent": "payments-authorizer"},
        )

    def key(self, kid: str | None) -> PyJWK:
        """The published key with this `kid`: from the cache, else fetched (again, when the cooldown allows)."""
        if not kid:
            raise UnknownSigningKey("the token names no key (kid)")
        try:
            return self._client.get_signing_key(kid)
        except PyJWKClientConnectionError as exc:
            raise SigningKeysUnavailable("could not fetch the JWKS") from exc
        except (PyJWKSetError, PyJWKError) as exc:
            raise SigningKeysUnavailable("the JWKS holds no usable key") from exc
        except PyJWKClientError as exc:
            # Not in the set even after a refetch (or the refetch is cooling down).
            raise UnknownSigningKey("no published key has this kid") from exc
        except Exception as exc:  # noqa: BLE001 - a set PyJWT cannot read (a key's odd member): the keys, not the token
            raise SigningKeysUnavailable(f"the JWKS could not be read ({type(exc).__name__})") from exc

    def refreshed(self, kid: str | None) -> PyJWK | None:
        """Asymmetric keys rotate by `kid`, which `key` already handles: a bad signature is the token's fault."""
        return None
