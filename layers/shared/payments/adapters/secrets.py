"""Reading Secrets Manager secrets (cached by Powertools parameters), with errors that never carry values."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import cache
from typing import Any, Literal

from payments import deadline
from payments.errors import ConfigurationError, PaymentError

# How long reading a secret may take. boto3's defaults (60 s to connect, 60 s for each wait for bytes, retried) would
# outlast every function's timeout against an endpoint that accepts and never answers, or trickles its answer (a VPC
# endpoint whose security group drops HTTPS, a regional degradation): Lambda would end the invocation before its
# "not yet" answer and its metrics. Two attempts (a pooled connection a NAT dropped while idle fails the first at once),
# each of 1 s to connect and 1.5 s for each wait, within TOTAL_SECONDS in all (and the invocation's time left): the
# shortest function (the authorizer, 5 s) still answers. A value read is cached (`max_age`).
CONNECT_TIMEOUT_SECONDS = 1.0
READ_TIMEOUT_SECONDS = 1.5
TOTAL_SECONDS = 3.0
# What a read leaves of the invocation near its end (for the "not yet" answer)
_ROOM_SECONDS = 0.5


class _Secrets:
    """One Secrets Manager provider per execution environment (its client), the values read, and when the read of
    each began (monotonic, before the asking): a value read within `max_age` is answered from here, without a thread;
    any other read is given TOTAL_SECONDS in all. A value is kept only if its read began after the one kept did: a read
    given up (its thread still running) that answers later never replaces a newer value (a secret rotated meanwhile)."""

    def __init__(self) -> None:
        from aws_lambda_powertools.utilities import parameters
        from botocore.config import Config

        self.provider = parameters.SecretsProvider(
            boto_config=Config(
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                read_timeout=READ_TIMEOUT_SECONDS,
                retries={"mode": "standard", "total_max_attempts": 2},
            )
        )
        self.asked: dict[tuple[str, bool], float] = {}
        self.held: dict[tuple[str, bool], Any] = {}
        self._lock = threading.Lock()

    def get(self, arn: str, *, json_object: bool, max_age: int, refresh: bool, stage: str | None = None) -> Any:
        transform: Literal["json"] | None = "json" if json_object else None
        key = (arn, json_object) if stage is None else (f"{arn}@{stage}", json_object)
        options = {} if stage is None else {"VersionStage": stage}
        with self._lock:
            asked = self.asked.get(key)
            if not refresh and asked is not None and time.monotonic() - asked < max_age - 1:
                return self.held[key]  # read since, within max_age
        started = time.monotonic()

        def read() -> Any:
            # Always from Secrets Manager (never Powertools' cache, which a late read may have overwritten)
            value = self.provider.get(arn, transform=transform, max_age=max_age, force_fetch=True, **options)
            self._keep(key, value, started)
            return value

        return _within(_time_limit(), read)

    def _keep(self, key: tuple[str, bool], value: Any, started: float) -> None:
        """`value`, read from `started`, kept unless a read that began later was kept already."""
        with self._lock:
            asked = self.asked.get(key)
            if asked is None or asked <= started:
                self.asked[key], self.held[key] = started, value


@cache
def _secrets() -> _Secrets:
    return _Secrets()


def _time_limit() -> float:
    left = deadline.until_the_end()
    if left is None:
        return TOTAL_SECONDS
    return max(0.1, min(TOTAL_SECONDS, left - _ROOM_SECONDS))


def _within[T](seconds: float, call: Callable[[], T]) -> T:
    """`call()`'s result within `seconds` in all, or TimeoutError (the call is left to end in its thread: a value
    it reads later is cached for the next read). botocore's timeouts bound each wait, not the whole answer."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
            outcome.append((False, exc))

    worker = threading.Thread(target=run, name="secret-read", daemon=True)
    worker.start()
    worker.join(seconds)
    if not outcome:
        raise TimeoutError(f"Secrets Manager did not answer within {seconds:g} s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def read_secret(
    arn: str,
    *,
    what: str,
    unavailable: type[PaymentError],
    max_age: int = 300,
    refresh: bool = False,
    json_object: bool = True,
    stage: str | None = None,
) -> Any:
    """The secret's value: a JSON object (default) or its raw text; `stage`: the version with that staging label
    (`AWSPENDING` during a rotation), else the current one.

    `unavailable` is raised (from the cause) when Secrets Manager cannot be read, or not within TOTAL_SECONDS; a
    malformed secret is a `ConfigurationError`. `what` names the secret in messages; its value never appears.
    """
    from aws_lambda_powertools.utilities import parameters

    try:
        value = _secrets().get(arn, json_object=json_object, max_age=max_age, refresh=refresh, stage=stage)
    except (parameters.exceptions.GetParameterError, TimeoutError) as exc:
        _count_unreadable(what, exc, stage)
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


def _count_unreadable(what: str, exc: Exception, stage: str | None = None) -> None:
    """Logged with Secrets Manager's error code (never a value); one no retry changes is also counted `NotConfigured`
    (alarmed at one): every request needing the secret answers "not yet" until it is fixed. A version asked for by its
    label (`stage`) that does not exist is no rotation under way, not a configuration error. Imported here: the metrics
    object reads its namespace from the environment when first imported."""
    from payments.observability import logger, metrics

    code = error_code(exc)
    cause = exc.__cause__ or exc.__context__ or exc
    if stage is not None and code == "ResourceNotFoundException":
        logger.info("a secret has no version of this stage", extra={"secret": what, "stage": stage})
    elif code in _FOR_GOOD:
        metrics.add_metric(name="NotConfigured", unit="Count", value=1)
        logger.error("a secret cannot be read", extra={"secret": what, "error": code})
    else:
        logger.warning("a secret could not be read", extra={"secret": what, "error": code or type(cause).__name__})


def error_code(exc: BaseException) -> str | None:
    """Secrets Manager's error code (`ResourceNotFoundException`, ...) of the answer somewhere in `exc`'s chain of
    causes, None when none is an answer of Secrets Manager's."""
    cause: BaseException | None = exc
    while cause is not None:
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            return response.get("Error", {}).get("Code")
        cause = cause.__cause__ or cause.__context__
    return None
