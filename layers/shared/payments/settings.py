"""Settings read from the environment once, lazily (never at import time).

Every model is built (`defer_build`) when it is first read: a function builds only the settings it reads.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from payments.errors import ConfigurationError

SslMode = Literal["disable", "require", "verify-full"]


class DatabaseSettings(BaseModel):
    """Where the database is and how to reach it.

    `DB_SECRET_ARN` (a Secrets Manager secret in the RDS format) wins over `DATABASE_URL`.
    """

    model_config = ConfigDict(defer_build=True, frozen=True)

    secret_arn: str | None = Field(default=None, alias="DB_SECRET_ARN")
    url: str | None = Field(default=None, alias="DATABASE_URL")
    # Unset: whatever the URL says (sslmode=...), else `verify-full` for a secret (a deployed function).
    ssl_mode: SslMode | None = Field(default=None, alias="DB_SSLMODE")
    # The PEM file of the CAs trusted under verify-full, or `system` (the OS's store). Unset: the URL's
    # sslrootcert, else the Amazon RDS bundle shipped in the layer (payments/certs/rds-ca-bundle.pem).
    ssl_root_cert: str | None = Field(default=None, alias="DB_SSLROOTCERT")
    connect_timeout_seconds: float = Field(default=5.0, gt=0, alias="DB_CONNECT_TIMEOUT")
    # Client-side socket timeout for one round trip; keeps a hung database from eating the Lambda.
    query_timeout_seconds: float = Field(default=10.0, gt=0, alias="DB_QUERY_TIMEOUT")
    secret_max_age_seconds: int = Field(default=300, ge=0, alias="DB_SECRET_MAX_AGE")

    @field_validator("ssl_mode", "ssl_root_cert", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """A template parameter left empty arrives as "": the default applies."""
        return None if value == "" else value


class IdempotencySettings(BaseModel):
    model_config = ConfigDict(defer_build=True, frozen=True)

    table_name: str = Field(default="idempotency_keys", alias="IDEMPOTENCY_TABLE")
    expires_after_seconds: int = Field(default=24 * 3600, gt=0, alias="IDEMPOTENCY_TTL_SECONDS")


class ApiSettings(BaseModel):
    """The payment API's own settings."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    stage: str = Field(default="dev", alias="STAGE")
    rate_limit: int = Field(default=10, gt=0, alias="CREATE_PAYMENT_RATE_LIMIT")
    rate_window_seconds: int = Field(default=60, gt=0, alias="CREATE_PAYMENT_RATE_WINDOW")
    page_language: Literal["HEB", "ENG"] = Field(default="HEB", alias="HYPAY_PAGE_LANG")
    # Ask Hyp to issue the invoice (SendHesh; needs Hyp's invoice module on the terminal).
    send_invoice: bool = Field(default=False, alias="HYPAY_SEND_INVOICE")


HYPAY_URL = "https://pay.hyp.co.il/p/"
DEFAULT_URL = HYPAY_URL


class HypaySettings(BaseModel):
    """Hyp's endpoint, the terminal's credentials (a secret, or the environment locally) and timeouts."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    url: str = Field(default=HYPAY_URL, alias="HYPAY_URL")
    secret_arn: str | None = Field(default=None, alias="HYPAY_SECRET_ARN")
    masof: str | None = Field(default=None, alias="HYPAY_MASOF")
    key: str | None = Field(default=None, alias="HYPAY_KEY", repr=False)
    passp: str | None = Field(default=None, alias="HYPAY_PASSP", repr=False)
    # Per attempt; with the one retry of an idempotent call the total stays under `budget_seconds`.
    timeout_seconds: float = Field(default=6.0, gt=0, alias="HYPAY_TIMEOUT")
    budget_seconds: float = Field(default=12.0, gt=0, alias="HYPAY_BUDGET")
    secret_max_age_seconds: int = Field(default=300, ge=0, alias="HYPAY_SECRET_MAX_AGE")


VerifyMode = Literal["hmac", "verify", "both"]


class CallbackSettings(BaseModel):
    """Where hypay_callback sends the browser, and how it checks what Hyp sent."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    success_url: str = Field(default="http://127.0.0.1:3000/demo/result", alias="WEB_APP_SUCCESS_URL")
    failure_url: str = Field(default="http://127.0.0.1:3000/demo/result", alias="WEB_APP_FAILURE_URL")
    pending_url: str = Field(default="http://127.0.0.1:3000/demo/result", alias="WEB_APP_PENDING_URL")
    verify_mode: VerifyMode = Field(default="both", alias="HYPAY_VERIFY_MODE")
    # Comma-separated CIDRs allowed to call /hypay/notify; empty = no IP check (warned at cold start).
    notify_allowed_cidrs: str = Field(default="", alias="HYPAY_NOTIFY_ALLOWED_CIDRS")


DEFAULT_DUTY_CYCLE_PERCENT = 25


class CleanupSettings(BaseModel):
    model_config = ConfigDict(defer_build=True, frozen=True)

    batch_size: int = Field(default=500, gt=0, le=10_000, alias="CLEANUP_BATCH_SIZE")
    # The share of a cleanup run's time spent in its batches, the rest paced out between them (100: back to
    # back): a purge of many records then leaves the database's CPU and WAL to the requests (docs/deploy.md).
    duty_cycle_percent: int = Field(
        default=DEFAULT_DUTY_CYCLE_PERCENT, gt=0, le=100, alias="CLEANUP_DUTY_CYCLE_PERCENT"
    )
    # 0 (default): the web app's own idempotency rows are kept, as the web app keeps them; docs/deploy.md.
    web_app_retention_seconds: int = Field(default=0, ge=0, alias="CLEANUP_WEB_APP_RETENTION_SECONDS")
    pending_payment_max_age_seconds: int = Field(default=2 * 3600, gt=0, alias="CLEANUP_PENDING_PAYMENT_MAX_AGE")
    admin_token_secret_arn: str | None = Field(default=None, alias="ADMIN_TOKEN_SECRET_ARN")
    admin_token: str | None = Field(default=None, alias="ADMIN_API_TOKEN", repr=False)


class AdminSettings(BaseModel):
    """The admin function (review queue, resolving): its bearer tokens, and how many queue items a page holds."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    admin_token_secret_arn: str | None = Field(default=None, alias="ADMIN_TOKEN_SECRET_ARN")
    admin_token: str | None = Field(default=None, alias="ADMIN_API_TOKEN", repr=False)
    review_page_max: int = Field(default=200, gt=0, le=1000, alias="ADMIN_REVIEW_PAGE_MAX")
    # A saved-card charge attempt younger than this may still be running: not resolvable by hand yet.
    charge_settle_seconds: int = Field(default=120, ge=0, alias="ADMIN_CHARGE_SETTLE_SECONDS")


def _from_env[T: BaseModel](model: type[T]) -> T:
    try:
        return model.model_validate(dict(os.environ))
    except ValidationError as exc:
        # Only field names and messages: values may be secrets (a DATABASE_URL has a password).
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"invalid settings: {problems}") from None


@lru_cache(maxsize=1)
def database_settings() -> DatabaseSettings:
    return _from_env(DatabaseSettings)


@lru_cache(maxsize=1)
def idempotency_settings() -> IdempotencySettings:
    return _from_env(IdempotencySettings)


@lru_cache(maxsize=1)
def api_settings() -> ApiSettings:
    return _from_env(ApiSettings)


@lru_cache(maxsize=1)
def callback_settings() -> CallbackSettings:
    return _from_env(CallbackSettings)


@lru_cache(maxsize=1)
def cleanup_settings() -> CleanupSettings:
    return _from_env(CleanupSettings)


@lru_cache(maxsize=1)
def admin_settings() -> AdminSettings:
    return _from_env(AdminSettings)


@lru_cache(maxsize=1)
def hypay_settings() -> HypaySettings:
    return _from_env(HypaySettings)


JwtMode = Literal["hs256", "rs256", "es256"]


class AuthSettings(BaseModel):
    """The web app's access tokens (Supabase): how the Lambda authorizer verifies them, and the role
    every handler requires of the caller.

    `JWT_MODE` pins the one algorithm accepted: `hs256` (the shared secret, from `JWT_SECRET_ARN`, or
    `JWT_SECRET` locally), `rs256` / `es256` (the keys published at `JWKS_URL`, by default
    `<JWT_ISSUER>/.well-known/jwks.json`).
    """

    model_config = ConfigDict(defer_build=True, frozen=True)

    mode: JwtMode | None = Field(default=None, alias="JWT_MODE")
    issuer: str | None = Field(default=None, alias="JWT_ISSUER")
    audience: str = Field(default="authenticated", min_length=1, alias="JWT_AUDIENCE")
    required_role: str = Field(default="authenticated", min_length=1, alias="JWT_REQUIRED_ROLE")
    # Clock skew tolerated on exp / nbf / iat.
    leeway_seconds: int = Field(default=30, ge=0, le=300, alias="JWT_LEEWAY_SECONDS")
    jwks_url: str | None = Field(default=None, alias="JWKS_URL")
    jwks_cache_seconds: float = Field(default=600, gt=0, le=3600, alias="JWKS_CACHE_SECONDS")
    # At most one refetch per this many seconds when a token names a key the cached set lacks.
    jwks_refresh_cooldown_seconds: float = Field(default=30, ge=0, le=3600, alias="JWKS_REFRESH_COOLDOWN")
    jwks_timeout_seconds: float = Field(default=3.0, gt=0, le=10, alias="JWKS_TIMEOUT")
    secret_arn: str | None = Field(default=None, alias="JWT_SECRET_ARN")
    secret: str | None = Field(default=None, alias="JWT_SECRET", repr=False)
    secret_max_age_seconds: int = Field(default=300, ge=0, alias="JWT_SECRET_MAX_AGE")

    @field_validator("mode", "issuer", "jwks_url", "secret_arn", "secret", mode="before")
    @classmethod
    def _auth_empty_is_unset(cls, value: object) -> object:
        """Template parameters left empty arrive as "": unset."""
        return None if value == "" else value


@lru_cache(maxsize=1)
def auth_settings() -> AuthSettings:
    return _from_env(AuthSettings)


def metrics_namespace() -> str | None:
    """Powertools' own POWERTOOLS_METRICS_NAMESPACE, read now (not cached: see observability.http_handler)."""
    return os.environ.get("POWERTOOLS_METRICS_NAMESPACE")


def tracing_enabled() -> bool:
    """X-Ray tracing is on: in Lambda (not SAM's local emulator), unless POWERTOOLS_TRACE_DISABLED says off; the
    same rule as Powertools' Tracer, read before building one (building one imports the X-Ray SDK)."""
    if os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() in ("1", "true", "yes", "on", "y"):
        return False
    return bool(os.environ.get("LAMBDA_TASK_ROOT")) and not os.environ.get("AWS_SAM_LOCAL")
