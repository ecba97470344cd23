"""Reading Secrets Manager secrets (cached by Powertools parameters), with errors that never carry values."""

from __future__ import annotations

from functools import cache
from typing import Any

from payments.errors import ConfigurationError, PaymentError

# How long reading a secret may take: boto3's defaults (60 s to connect, 60 s to read, retried) would outlast every
# function's timeout against an endpoint that accepts and never answers (a VPC endpoint whose security group drops
# HTTPS, a regional degradation): Lambda would end the invocation before its "not yet" answer and its metrics. One
# attempt of at most 3 s fits the shortest function (the authorizer, 5 s); a value read is cached (`max_age`).
CONNECT_TIMEOUT_SECONDS = 1.0
READ_TIMEOUT_SECONDS = 2.0


@cache
def _provider() -> Any:
    """One Secrets Manager provider per execution environment (its client and its cache of values), bounded in time."""
    from aws_lambda_powertools.utilities import parameters
    from botocore.config import Config

    return parameters.SecretsProvider(
        boto_config=Config(
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            retries={"mode": "standard", "total_max_attempts": 1},
        )
    )


def read_secret(
    arn: str,
    *,
    what: str,
    unavailable: type[PaymentError],
    max_age: int = 300,
    refresh: bool = False,
    json_object: bool = True,
) -> Any:
    """The secret's value: a JSON object (default) or its raw text.

    `unavailable` is raised (from the cause) when Secrets Manager cannot be read; a malformed secret is
    a `ConfigurationError`. `what` names the secret in messages; its value never appears.
    """
    from aws_lambda_powertools.utilities import parameters

    try:
        value = _provider().get(arn, transform="json" if json_object else None, max_age=max_age, force_fetch=refresh)
    except parameters.exceptions.GetParameterError as exc:
        _count_unreadable(what, exc)
        raise unavailable(f"could not read the {what} secret") from exc
    except parameters.exceptions.TransformParameterError:
        raise ConfigurationError(f"the {what} secret is not JSON") from None
    if json_object and not isinstance(value, dict):
        raise ConfigurationError(f"the {what} secret is not a JSON object")
    if not json_object and isinstance(value, bytes):
        return value.decode()
    return value


# Secrets Manager's answers that no retry changes: the secret's ARN, the role's permissions or the key's policy are
# wrong (a deployment problem), not an outage.
_FOR_GOOD = {
    "AccessDeniedException",
    "ResourceNotFoundException",
    "DecryptionFailure",
    "InvalidRequestException",
    "InvalidParameterException",
}


def _count_unreadable(what: str, exc: Exception) -> None:
    """Logged with Secrets Manager's error code (never a value); one no retry changes is also counted `NotConfigured`
    (alarmed at one): every request needing the secret answers "not yet" until it is fixed. Imported here: the metrics
    object reads its namespace from the environment when first imported."""
    from payments.observability import logger, metrics

    cause = exc.__cause__ or exc.__context__
    response = getattr(cause, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    if code in _FOR_GOOD:
        metrics.add_metric(name="NotConfigured", unit="Count", value=1)
        logger.error("a secret cannot be read", extra={"secret": what, "error": code})
    else:
        logger.warning("a secret could not be read", extra={"secret": what, "error": code or type(cause).__name__})
