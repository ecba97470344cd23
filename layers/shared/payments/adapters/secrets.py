"""Reading Secrets Manager secrets (cached by Powertools parameters), with errors that never carry values."""

from __future__ import annotations

from typing import Any

from payments.errors import ConfigurationError, PaymentError


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
        value = parameters.get_secret(
            arn, transform="json" if json_object else None, max_age=max_age, force_fetch=refresh
        )
    except parameters.exceptions.GetParameterError as exc:
        raise unavailable(f"could not read the {what} secret") from exc
    except parameters.exceptions.TransformParameterError:
        raise ConfigurationError(f"the {what} secret is not JSON") from None
    if json_object and not isinstance(value, dict):
        raise ConfigurationError(f"the {what} secret is not a JSON object")
    if not json_object and isinstance(value, bytes):
        return value.decode()
    return value
