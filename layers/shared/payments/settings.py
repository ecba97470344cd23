"""Settings read from the environment once, lazily (never at import time).

Each settings class names its environment variables and their pydantic-core schemas; a class's validator is
built when it is first read, so a function builds only the settings it reads, and no function's cold start
loads pydantic's model machinery for them (pydantic-core, which validates them, is loaded with pydantic).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, ClassVar, Literal, Self, get_args

from pydantic_core import SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from payments.errors import ConfigurationError


class _Variable:
    """One environment variable: its name, its schema and its default (absent: required)."""

    __slots__ = ("default", "name", "schema", "secret")

    def __init__(self, name: str, schema: cs.CoreSchema, default: object, secret: bool) -> None:
        self.name, self.schema, self.default, self.secret = name, schema, default, secret


def env(name: str, schema: cs.CoreSchema, default: object = None, *, secret: bool = False) -> Any:
    """A field read from the environment variable `name` (a secret is left out of the settings' repr)."""
    return _Variable(name, schema, default, secret)


def _empty_is_unset(value: object) -> object:
    """A template parameter left empty arrives as "": the default applies."""
    return None if value == "" else value


def optional(schema: cs.CoreSchema, *, empty_is_unset: bool = False) -> cs.CoreSchema:
    """The schema, or None (also for "" when `empty_is_unset`)."""
    nullable = cs.nullable_schema(schema)
    return cs.no_info_before_validator_function(_empty_is_unset, nullable) if empty_is_unset else nullable


def one_of(choices: Any) -> cs.CoreSchema:
    """One of a `Literal`'s values (the type the field is annotated with says them once)."""
    return cs.literal_schema(list(get_args(choices)))


TEXT = cs.str_schema()
OPTIONAL_TEXT = optional(TEXT)


class EnvSettings:
    """Frozen settings validated from a mapping of environment variables (other variables are ignored)."""

    _variables: ClassVar[dict[str, _Variable]]
    _validator: ClassVar[SchemaValidator | None]

    def __init_subclass__(cls) -> None:
        cls._variables = {k: v for k, v in vars(cls).items() if isinstance(v, _Variable)}
        cls._validator = None

    def __init__(self, **variables: object) -> None:
        cls = type(self)
        if cls._validator is None:
            cls._validator = SchemaValidator(
                cs.typed_dict_schema(
                    {
                        attr: cs.typed_dict_field(
                            cs.with_default_schema(v.schema, default=v.default), required=False, validation_alias=v.name
                        )
                        for attr, v in cls._variables.items()
                    },
                    cls_name=cls.__name__,
                )
            )
        self.__dict__.update(cls._validator.validate_python(variables))

    @classmethod
    def from_mapping(cls, variables: Mapping[str, object]) -> Self:
        return cls(**{str(k): v for k, v in variables.items()})

    @classmethod
    def default(cls, attr: str) -> Any:
        return cls._variables[attr].default

    @classmethod
    def variable_names(cls) -> list[str]:
        return [v.name for v in cls._variables.values()]

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((type(self), tuple(vars(self).values())))

    def __repr__(self) -> str:
        shown = ", ".join(f"{a}={self.__dict__[a]!r}" for a, v in self._variables.items() if not v.secret)
        return f"{type(self).__name__}({shown})"


SslMode = Literal["disable", "require", "verify-full"]


class DatabaseSettings(EnvSettings):
    """Where the database is and how to reach it.

    `DB_SECRET_ARN` (a Secrets Manager secret in the RDS format) wins over `DATABASE_URL`.
    """

    secret_arn: str | None = env("DB_SECRET_ARN", OPTIONAL_TEXT)
    url: str | None = env("DATABASE_URL", OPTIONAL_TEXT, secret=True)  # it may carry the password
    # Unset (or empty): whatever the URL says (sslmode=...), else `verify-full` for a secret (a deployed function).
    ssl_mode: SslMode | None = env("DB_SSLMODE", optional(one_of(SslMode), empty_is_unset=True))
    # The PEM file of the CAs trusted under verify-full, or `system` (the OS's store). Unset (or empty): the URL's
    # sslrootcert, else the Amazon RDS bundle shipped in the layer (payments/certs/rds-ca-bundle.pem).
    ssl_root_cert: str | None = env("DB_SSLROOTCERT", optional(TEXT, empty_is_unset=True))
    connect_timeout_seconds: float = env("DB_CONNECT_TIMEOUT", cs.float_schema(gt=0), 5.0)
    # Client-side socket timeout for one round trip; keeps a hung database from eating the Lambda.
    query_timeout_seconds: float = env("DB_QUERY_TIMEOUT", cs.float_schema(gt=0), 10.0)
    secret_max_age_seconds: int = env("DB_SECRET_MAX_AGE", cs.int_schema(ge=0), 300)


class IdempotencySettings(EnvSettings):
    table_name: str = env("IDEMPOTENCY_TABLE", TEXT, "idempotency_keys")
    expires_after_seconds: int = env("IDEMPOTENCY_TTL_SECONDS", cs.int_schema(gt=0), 24 * 3600)


PageLanguage = Literal["HEB", "ENG"]


class ApiSettings(EnvSettings):
    """The payment API's own settings."""

    stage: str = env("STAGE", TEXT, "dev")
    rate_limit: int = env("CREATE_PAYMENT_RATE_LIMIT", cs.int_schema(gt=0), 10)
    rate_window_seconds: int = env("CREATE_PAYMENT_RATE_WINDOW", cs.int_schema(gt=0), 60)
    page_language: PageLanguage = env("HYPAY_PAGE_LANG", one_of(PageLanguage), "HEB")
    # Ask Hyp to issue the invoice (SendHesh; needs Hyp's invoice module on the terminal).
    send_invoice: bool = env("HYPAY_SEND_INVOICE", cs.bool_schema(), False)


HYPAY_URL = "https://pay.hyp.co.il/p/"
DEFAULT_URL = HYPAY_URL


class HypaySettings(EnvSettings):
    """Hyp's endpoint, the terminal's credentials (a secret, or the environment locally) and timeouts."""

    url: str = env("HYPAY_URL", TEXT, HYPAY_URL)
    secret_arn: str | None = env("HYPAY_SECRET_ARN", OPTIONAL_TEXT)
    masof: str | None = env("HYPAY_MASOF", OPTIONAL_TEXT)
    key: str | None = env("HYPAY_KEY", OPTIONAL_TEXT, secret=True)
    passp: str | None = env("HYPAY_PASSP", OPTIONAL_TEXT, secret=True)
    previous_key: str | None = env("HYPAY_PREVIOUS_KEY", OPTIONAL_TEXT, secret=True)  # a rotation's grace period
    # Per attempt; with the one retry of an idempotent call the total stays under `budget_seconds`.
    timeout_seconds: float = env("HYPAY_TIMEOUT", cs.float_schema(gt=0), 6.0)
    budget_seconds: float = env("HYPAY_BUDGET", cs.float_schema(gt=0), 12.0)
    secret_max_age_seconds: int = env("HYPAY_SECRET_MAX_AGE", cs.int_schema(ge=0), 300)


VerifyMode = Literal["hmac", "verify", "both"]
_LOCAL_RESULT_PAGE = "http://127.0.0.1:3000/demo/result"


class CallbackSettings(EnvSettings):
    """Where hypay_callback sends the browser, and how it checks what Hyp sent."""

    success_url: str = env("WEB_APP_SUCCESS_URL", TEXT, _LOCAL_RESULT_PAGE)
    failure_url: str = env("WEB_APP_FAILURE_URL", TEXT, _LOCAL_RESULT_PAGE)
    pending_url: str = env("WEB_APP_PENDING_URL", TEXT, _LOCAL_RESULT_PAGE)
    verify_mode: VerifyMode = env("HYPAY_VERIFY_MODE", one_of(VerifyMode), "both")
    # Comma-separated CIDRs allowed to call /hypay/notify; empty = no IP check (warned at cold start).
    notify_allowed_cidrs: str = env("HYPAY_NOTIFY_ALLOWED_CIDRS", TEXT, "")


DEFAULT_DUTY_CYCLE_PERCENT = 25
DEFAULT_BATCH_SIZE = 50


class CleanupSettings(EnvSettings):
    # Rows a batch; the purges' batches are short bursts on the server with pauses between (docs/deploy.md).
    batch_size: int = env("CLEANUP_BATCH_SIZE", cs.int_schema(gt=0, le=10_000), DEFAULT_BATCH_SIZE)
    # The share of a cleanup run's time spent in its batches, the rest paced out between them (100: back to
    # back): a purge of many records then leaves the database's CPU and WAL to the requests (docs/deploy.md).
    duty_cycle_percent: int = env("CLEANUP_DUTY_CYCLE_PERCENT", cs.int_schema(gt=0, le=100), DEFAULT_DUTY_CYCLE_PERCENT)
    # 0 (default): the web app's own idempotency rows are kept, as the web app keeps them; docs/deploy.md.
    web_app_retention_seconds: int = env("CLEANUP_WEB_APP_RETENTION_SECONDS", cs.int_schema(ge=0), 0)
    pending_payment_max_age_seconds: int = env("CLEANUP_PENDING_PAYMENT_MAX_AGE", cs.int_schema(gt=0), 2 * 3600)
    admin_token_secret_arn: str | None = env("ADMIN_TOKEN_SECRET_ARN", OPTIONAL_TEXT)
    admin_token: str | None = env("ADMIN_API_TOKEN", OPTIONAL_TEXT, secret=True)
    admin_token_secret_max_age_seconds: int = env("ADMIN_TOKEN_SECRET_MAX_AGE", cs.int_schema(ge=0), 300)


class AdminSettings(EnvSettings):
    """The admin function (review queue, resolving): its bearer tokens, and how many queue items a page holds."""

    admin_token_secret_arn: str | None = env("ADMIN_TOKEN_SECRET_ARN", OPTIONAL_TEXT)
    admin_token: str | None = env("ADMIN_API_TOKEN", OPTIONAL_TEXT, secret=True)
    admin_token_secret_max_age_seconds: int = env("ADMIN_TOKEN_SECRET_MAX_AGE", cs.int_schema(ge=0), 300)
    review_page_max: int = env("ADMIN_REVIEW_PAGE_MAX", cs.int_schema(gt=0, le=1000), 200)
    # A saved-card charge attempt younger than this may still be running: not resolvable by hand yet.
    charge_settle_seconds: int = env("ADMIN_CHARGE_SETTLE_SECONDS", cs.int_schema(ge=0), 120)


def _from_env[T: EnvSettings](settings: type[T]) -> T:
    try:
        return settings.from_mapping(os.environ)
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


class AuthSettings(EnvSettings):
    """The web app's access tokens (Supabase): how the Lambda authorizer verifies them, and the role
    every handler requires of the caller.

    `JWT_MODE` pins the one algorithm accepted: `hs256` (the shared secret, from `JWT_SECRET_ARN`, or
    `JWT_SECRET` locally), `rs256` / `es256` (the keys published at `JWKS_URL`, by default
    `<JWT_ISSUER>/.well-known/jwks.json`). Template parameters left empty arrive as "": unset.
    """

    mode: JwtMode | None = env("JWT_MODE", optional(one_of(JwtMode), empty_is_unset=True))
    issuer: str | None = env("JWT_ISSUER", optional(TEXT, empty_is_unset=True))
    audience: str = env("JWT_AUDIENCE", cs.str_schema(min_length=1), "authenticated")
    required_role: str = env("JWT_REQUIRED_ROLE", cs.str_schema(min_length=1), "authenticated")
    # Clock skew tolerated on exp / nbf / iat.
    leeway_seconds: int = env("JWT_LEEWAY_SECONDS", cs.int_schema(ge=0, le=300), 30)
    jwks_url: str | None = env("JWKS_URL", optional(TEXT, empty_is_unset=True))
    jwks_cache_seconds: float = env("JWKS_CACHE_SECONDS", cs.float_schema(gt=0, le=3600), 600)
    # At most one refetch per this many seconds when a token names a key the cached set lacks.
    jwks_refresh_cooldown_seconds: float = env("JWKS_REFRESH_COOLDOWN", cs.float_schema(ge=0, le=3600), 30)
    jwks_timeout_seconds: float = env("JWKS_TIMEOUT", cs.float_schema(gt=0, le=10), 3.0)
    secret_arn: str | None = env("JWT_SECRET_ARN", optional(TEXT, empty_is_unset=True))
    secret: str | None = env("JWT_SECRET", optional(TEXT, empty_is_unset=True), secret=True)
    secret_max_age_seconds: int = env("JWT_SECRET_MAX_AGE", cs.int_schema(ge=0), 300)


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
