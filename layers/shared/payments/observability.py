"""Logger, metrics and tracer shared by every function (Powertools), and the HTTP entry point that wires them."""

from __future__ import annotations

import json
import logging
import re
import traceback
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics

import payments.snapstart  # noqa: F401 - registers the SnapStart runtime hooks in every function
from payments import deadline
from payments.tracing import tracer  # X-Ray's SDK only when tracing is on

# What `json.loads` accepts as the first character of a document (JSON, plus Python's NaN and Infinity).
_JSON_STARTS = frozenset(' \t\n\r{["-0123456789tfnNI')


def _message_json(message: Any) -> Any:
    """Powertools logs a message that is a JSON document as that document: it tries `json.loads` on every message
    and keeps the text when that fails. A text that cannot start a document is kept as it is without the try (an
    exception raised and caught for every log line)."""
    if isinstance(message, str) and message[:1] not in _JSON_STARTS:
        return message
    return json.loads(message)


# In the text of an exception (ours, a library's, a chained database error's detail), what may be card data or a
# secret: a run of 13 to 19 digits or 4-digit groups standing alone (a card number, a Hyp token), the value of a
# field named like a credential (`KEY=...`, `KEY%3D...` in an encoded body, `"PassP": "..."`, `password=...`), the
# password of a connection URL, and a bearer token.
_CARD_LIKE = r"(?<![0-9A-Za-z_.-])(?:\d{13,19}|\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,3})?)(?![0-9A-Za-z_.-])"
_SECRET_NAME = r"(?<![A-Za-z_])(?:KEY|PassP|cvv|CC|token|password|secret)"
_SECRET_QUOTED = r"(?i)(" + _SECRET_NAME + r"""["']?\s*[:=]\s*)(["'])(?:(?!\2).)*\2"""
_SECRET_FIELD = r"(?i)(" + _SECRET_NAME + r"(?:=|%3D))(?:(?!%26)[^&\s\"',}])+"
_URL_PASSWORD = r"(://[^:/@\s]+:)[^@\s]+@"
_BEARER = r"(?i)(\bbearer\s+)[^\s\"',]+"
# A card number inside an encoded value (`CC%3D4580...`): the digits follow an escape, not a separator.
_ENCODED_CARD = r"(%[0-9A-Fa-f]{2})\d{13,19}(?![0-9])"


@cache
def _redactions() -> tuple[tuple[re.Pattern[str], str], ...]:
    """Each pattern with what replaces it, in order; compiled by the first text redacted (an error's, a DEBUG
    line's), not at every cold start."""
    return tuple(
        (re.compile(pattern), replacement)
        for pattern, replacement in (
            (_CARD_LIKE, "[redacted]"),
            (_ENCODED_CARD, r"\1[redacted]"),
            (_SECRET_QUOTED, r"\1\2[redacted]\2"),
            (_SECRET_FIELD, r"\1[redacted]"),
            (_URL_PASSWORD, r"\1[redacted]@"),
            (_BEARER, r"\1[redacted]"),
        )
    )


def redact_secrets(text: str) -> str:
    for pattern, replacement in _redactions():
        text = pattern.sub(replacement, text)
    return text


class _ExceptionRedaction(logging.Filter):
    """A record that carries an exception is logged with the exception's text redacted (`redact_secrets`),
    in Powertools' own keys (`exception`, `exception_name`): an exception no code foresaw may carry anything, and a
    database error's chained detail holds the values of the row. The record's `exc_info` is replaced, so no
    handler (Powertools' JSON, a test's capture) sees the original text."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = record.exc_info
        if isinstance(info, tuple) and info[0] is not None:
            record.exception = redact_secrets("".join(traceback.format_exception(*info)).rstrip())
            record.exception_name = info[0].__name__
            record.exc_info, record.exc_text = None, None
        return True


# A run of 12 digits or more, separated or not, anywhere (glued to a word too): what a debug line must not carry.
_DIGIT_RUN = r"[0-9](?:[ -]?[0-9]){11,}"


class _MessageRedaction(logging.Filter):
    """Powertools' event handler logs, at DEBUG, the arguments it calls a route with: the Idempotency-Key and the
    path parameters as the client sent them, which may be anything (a card number). Its lines are redacted
    (`redact_secrets`, and every long run of digits). A filter of that logger runs only for a record it writes: at
    any level above DEBUG, never."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = re.sub(_DIGIT_RUN, "[redacted]", redact_secrets(record.getMessage())), None
        return True


logging.getLogger("aws_lambda_powertools.event_handler.api_gateway").addFilter(_MessageRedaction())

# Service name and metrics namespace come from POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE.
logger = Logger(json_deserializer=_message_json)
# On the handler, not the logger: the package's child loggers (Logger(child=True)) write through this handler too.
logger.registered_handler.addFilter(_ExceptionRedaction())
metrics = Metrics()

LambdaHandler = Callable[[dict, Any], Any]


def request_id(event: Any) -> Any:
    """API Gateway's request id (`requestContext.requestId`), None when the event has none: what Powertools'
    `correlation_paths.API_GATEWAY_HTTP` selects (from any mapping, Powertools' event classes included), read
    without a JMESPath search per request."""
    context = event.get("requestContext") if isinstance(event, Mapping) else None
    return context.get("requestId") if isinstance(context, Mapping) else None


def http_handler(app: Any, *, other_events: LambdaHandler | None = None) -> LambdaHandler:
    """The Lambda entry point of an HTTP API resolver.

    JSON logs with API Gateway's request id as correlation id (never the event: it carries
    card-adjacent data and tokens), metrics flushed with a cold-start metric, tracing without
    capturing responses, and the security headers on every answer. `other_events` takes events that
    are not HTTP (the schedule's).
    """
    from payments.http import event_refused, http_event_problem, with_security_headers

    @logger.inject_lambda_context(log_event=False)
    @metrics.log_metrics(capture_cold_start_metric=True)
    @tracer.capture_lambda_handler(capture_response=False)
    def lambda_handler(event: dict, context: Any) -> Any:
        deadline.start(context)
        try:
            logger.set_correlation_id(request_id(event))
            if other_events is not None and isinstance(event, Mapping) and "requestContext" not in event:
                return other_events(event, context)
            refused = http_event_problem(event)
            if refused is not None:
                return event_refused(refused)
            return with_security_headers(app.resolve(event, context))
        finally:
            deadline.clear()

    return with_metrics_namespace(lambda_handler)


def with_metrics_namespace(handler: LambdaHandler) -> LambdaHandler:
    """The namespace is read when `metrics` is built; an import before the environment was complete (tests,
    tools) would leave it empty and every flush would fail: this entry point reads it again if so."""
    from payments.settings import metrics_namespace

    def entry(event: dict, context: Any) -> Any:
        if not metrics.namespace:
            metrics.namespace = metrics_namespace()
        return handler(event, context)

    return entry
