"""HTTP answers shared by the API functions: problem+json (RFC 9457), error mapping, security headers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.api_gateway import ResponseBuilder
from aws_lambda_powertools.metrics import MetricUnit

from payments import errors
from payments.names import repeatable
from payments.observability import logger, metrics, redact_secrets
from payments.problems import problem_body

SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


class _ResponseBuilder(ResponseBuilder):
    """Powertools' response builder, reading the request's headers for compression only when it can be on.

    Powertools reads `Accept-Encoding` first, building a case-insensitive copy of every header, and only then
    looks at whether the route or the response asks for compression; none of ours does. The same decision for
    every event API Gateway sends (string headers; property-tested against Powertools' own), without the copy
    when compression is off anyway. (An event whose headers are not strings, which API Gateway never sends, no
    longer fails in that copy: it is answered like any other.)"""

    @staticmethod
    def _has_compression_enabled(route_compression: bool, response_compression: bool | None, event: Any) -> bool:
        if not (response_compression or (response_compression is None and route_compression)):
            return False
        return ResponseBuilder._has_compression_enabled(route_compression, response_compression, event)


class HttpApi(APIGatewayHttpResolver):
    """The functions' HTTP API resolver: Powertools' `APIGatewayHttpResolver` with `_ResponseBuilder`, never in debug.

    Powertools' debug (on by default where POWERTOOLS_DEV is set) prints every request's whole event to stdout,
    outside the logging module and its redaction (a CVV, a bearer token), and answers an unhandled error with its
    traceback."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "debug": False})
        self._response_builder_class = _ResponseBuilder
        # A path no route matches (API Gateway hands over the decoded path, so `/payments/%22` arrives as
        # `/payments/"`, which no route's pattern takes): a 404 problem, never the app's catch-all 500.
        self.not_found(_no_such_route)


def _no_such_route(exc: Exception) -> Response[Any]:
    return problem(404, "Not Found", "nothing here answers this path")


def problem(status: int, title: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    """An application/problem+json response. `detail` must never carry card data or secrets."""
    return Response(
        status_code=status,
        content_type="application/problem+json",
        body=json.dumps(problem_body(status, title, detail, **extra)),
        headers=headers or {},
    )


def validation_problem(issues: Sequence[Any]) -> Response:
    """400 for a malformed request, naming each field and what is wrong, never echoing a value. A member the request
    does not take is named as sent (what a client needs to see) when it is a plain name (`names.repeatable`);
    any other (a card number sent as a member's name, or glued to one) is not repeated."""
    parts = []
    for issue in issues[:_ISSUES_SHOWN]:
        location = ".".join(_shown(p) for p in issue.get("loc", ()) if p not in ("body",)) or "body"
        parts.append(f"{location}: {issue.get('msg', 'invalid')}"[:_ISSUE_CHARACTERS])
    if len(issues) > _ISSUES_SHOWN:
        parts.append(f"and {len(issues) - _ISSUES_SHOWN} more")
    return problem(400, "Bad Request", redact_secrets("; ".join(parts)) or "the request is malformed")


# An answer stays small whatever the request held: the first issues, each cut short, then how many more there were.
_ISSUES_SHOWN = 10
_ISSUE_CHARACTERS = 300


def _shown(part: Any) -> str:
    if isinstance(part, str) and not repeatable(part):
        return "(a member, name not repeated)"
    return str(part)


def _retry_after(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(max(1, int(seconds)))}


def error_response(exc: errors.PaymentError) -> Response:
    """The HTTP answer for each error a caller can act on."""
    if isinstance(exc, errors.OutcomeUnconfirmed):
        body = {"payment_id": exc.payment_id, "status": exc.status, "detail": exc.message}
        return Response(status_code=202, content_type="application/json", body=json.dumps(body))
    if isinstance(exc, errors.ConfigurationError):
        # Ours (a setting or a secret missing or malformed): "not yet" for the caller, and for a human a log line
        # naming what is wrong (the message names the setting or secret, never its value) and an alarmed count.
        metrics.add_metric(name="NotConfigured", unit=MetricUnit.Count, value=1)
        logger.error("the service is not configured", extra={"reason": redact_secrets(exc.message)})
        return problem(503, "Service Unavailable", "the service is not ready; retry later", headers=_retry_after(30))
    if isinstance(exc, errors.RateLimited):
        return problem(429, "Too Many Requests", exc.message, headers=_retry_after(exc.retry_after))
    if isinstance(exc, errors.RequestInProgress):
        return problem(409, "Conflict", exc.message, headers=_retry_after(exc.retry_after))
    if isinstance(exc, errors.IdempotencyKeyReused):
        return problem(422, "Unprocessable Content", exc.message)
    if isinstance(exc, errors.Conflict):
        return problem(409, "Conflict", exc.message)
    if isinstance(exc, errors.InvalidRequest):
        return problem(400, "Bad Request", exc.message)
    if isinstance(exc, errors.Unauthorized):
        return problem(401, "Unauthorized", exc.message)
    if isinstance(exc, errors.NotFound):
        return problem(404, "Not Found", exc.message)
    if isinstance(exc, errors.GatewayError):
        if isinstance(exc, errors.GatewayAuthenticationError):
            # Counted for its alarm: every payment or refund waits until the configuration or the request is fixed.
            metrics.add_metric(name="GatewayRefusedOurRequest", unit=MetricUnit.Count, value=1)
            logger.error("hypay refused our request", extra={"ccode": exc.ccode, "reason": exc.message})
        if exc.retryable or isinstance(exc, errors.GatewayAuthenticationError):
            # Hyp unreachable, or our terminal's credentials or request refused: ours, so "not yet", never
            # "rejected".
            return problem(
                503,
                "Service Unavailable",
                "the payment gateway is unavailable; retry with the same Idempotency-Key",
                headers=_retry_after(5),
            )
        return problem(502, "Bad Gateway", "the payment gateway refused the request", ccode=exc.ccode)
    if isinstance(exc, errors.SecretUnavailable):
        return problem(
            503, "Service Unavailable", "a credential store is unavailable; retry later", headers=_retry_after(5)
        )
    if isinstance(exc, errors.DatabaseUnavailable) or getattr(exc, "retryable", False):
        return problem(
            503, "Service Unavailable", "the database is busy; retry with the same key", headers=_retry_after(2)
        )
    # Anything else is ours and will not pass by itself: the database refusing a statement for good (a constraint,
    # a trigger, a value out of range), or an error no mapping foresaw. "Not yet", never a rejection of the
    # request; counted as an unhandled error (alarmed at one) so that a human fixes it. Its code and SQLSTATE are
    # logged, never its text (a database error's detail holds the row's values).
    metrics.add_metric(name="UnhandledError", unit=MetricUnit.Count, value=1)
    logger.error(
        "request failed for a reason of ours", extra={"code": exc.code, "sqlstate": getattr(exc, "sqlstate", None)}
    )
    return problem(
        503, "Service Unavailable", "the service cannot complete this now; retry later", headers=_retry_after(30)
    )


def http_event_problem(event: Any) -> str | None:
    """Why `event` is not an API Gateway HTTP API payload 2.0 request, or None.

    API Gateway never sends such an event, but a direct `lambda invoke`, a hand-written test event or a trigger
    configured with payload format 1.0 does; Powertools' resolver would fail on it (a Lambda error, or the
    catch-all 500). The members read are checked for their type, nothing more: a cheap check on every request (a
    JSON event's objects are dicts: checked as such first, the abstract Mapping only for anything else).
    """
    if not _mapping(event):
        return "the event is not a JSON object"
    if event.get("version") != "2.0":
        return "the event is not payload format 2.0"
    context = event.get("requestContext")
    if not _mapping(context):
        return "the event has no requestContext.http.method"
    http = context.get("http")
    if not _mapping(http) or type(http.get("method")) is not str:
        return "the event has no requestContext.http.method"
    if type(context.get("stage")) is not str:
        return "the event has no requestContext.stage"
    if type(http.get("sourceIp")) is not str:
        return "the event has no requestContext.http.sourceIp"
    authorizer = context.get("authorizer") or {}
    jwt = (authorizer.get("jwt") or {}) if _mapping(authorizer) else None
    if not (_mapping(jwt) and _mapping(jwt.get("claims") or {}) and _mapping(authorizer.get("lambda") or {})):
        return "the event's requestContext.authorizer is not an object of objects"
    if type(event.get("rawPath")) is not str:
        return "the event has no rawPath"
    for member in ("rawQueryString", "body"):
        value = event.get(member, "")
        if value is not None and type(value) is not str:
            return f"the event's {member} is not a string"
    for member in ("headers", "queryStringParameters", "pathParameters"):
        values = event.get(member)
        if values is not None and not (_mapping(values) and _ONLY_STR.issuperset(map(type, values.values()))):
            return f"the event's {member} are not strings"
    return None


def _mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    return type(value) is dict or isinstance(value, Mapping)


_ONLY_STR = frozenset({str})  # exactly str: a subclass of it is not what a JSON event holds


def event_refused(detail: str) -> dict[str, Any]:
    """The 400 for an event that is not an HTTP API request (`http_event_problem`), as the resolver would answer it."""
    logger.warning("not an HTTP API payload 2.0 event: refused", extra={"problem": detail})
    return with_security_headers(
        {
            "statusCode": 400,
            "headers": {"Content-Type": "application/problem+json"},
            "body": json.dumps(problem_body(400, "Bad Request", detail)),
            "isBase64Encoded": False,
        }
    )


def with_security_headers(result: dict[str, Any]) -> dict[str, Any]:
    """Every answer, errors and 404s included, carries the security headers."""
    headers = result.setdefault("headers", {}) or {}
    result["headers"] = {**headers, **SECURITY_HEADERS}
    return result


def unhandled_error(detail: str, log_message: str = "unhandled error") -> Response[Any]:
    """The 500 for an exception no route handled: logged with its traceback, and counted (`UnhandledError`,
    alarmed): the invocation itself returns, so Lambda's own Errors metric never sees it."""
    metrics.add_metric(name="UnhandledError", unit=MetricUnit.Count, value=1)
    logger.exception(log_message)
    return problem(500, "Internal Server Error", detail)
