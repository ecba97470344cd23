"""cleanup: hourly (EventBridge), POST /admin/cleanup-idempotency, and (outside prod) GET /debug/test-idempotency."""

from __future__ import annotations

import time
from functools import cache
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from payments import deadline
from payments.adapters import audit
from payments.adapters.admin_token import authenticate_current, tokens_provider
from payments.adapters.db import default_database, quote_table
from payments.adapters.review_store import ReviewStore
from payments.api_schema import (
    ADMIN_TOKEN,
    UNAUTHORIZED_ADMIN,
    UNAVAILABLE,
    json_answer,
    parameter,
    problem_json,
    reads_itself,
)
from payments.errors import DatabaseUnavailable, InvalidRequest, PaymentError
from payments.http import HttpApi, error_response, problem, unhandled_error
from payments.observability import http_handler, logger, metrics
from payments.services.cleanup import CleanupPolicy, CleanupReport, run_cleanup
from payments.services.debug_idempotency import KINDS, exercise
from payments.services.review import QueueQuery, review_queue
from payments.settings import api_settings, cleanup_settings, database_settings, idempotency_settings

app = HttpApi()


@cache
def _admin_tokens() -> Any:
    return tokens_provider(cleanup_settings())


def _admin() -> str | None:
    """The name of the admin credential the request carries (None: no valid token)."""
    return authenticate_current(app.current_event.headers.get("authorization"), _admin_tokens())


def _authorized() -> bool:
    return _admin() is not None


def _unauthorized() -> Response[Any]:
    # The same answer for a missing and a wrong token: no hint which.
    return problem(401, "Unauthorized", "a valid admin token is required", headers={"WWW-Authenticate": "Bearer"})


def _policy() -> CleanupPolicy:
    return CleanupPolicy.from_settings(cleanup_settings(), quote_table(idempotency_settings().table_name))


# API Gateway's HTTP API gives up on an integration 30 s after the request arrived (and answers 503 while the function
# runs on): a run asked over HTTP counts from the request's arrival (cold start and secrets included), starts no
# batch that could outlast the deadline (a batch may take up to the query timeout), and leaves time for the audit row
# and the answer; the rest is the next run's (the answer says complete: false). The invocation's own end is narrowed
# to API Gateway's (less a second for the answer to travel): a statement sent near it (the audit row after a slow last
# batch) is sent with limits that fit before it. The review-queue figure is the hourly run's alone.
HTTP_DEADLINE_MS = 25_000
API_GATEWAY_MS = 29_000
_AFTER_THE_BATCHES_MS = 2_000


def _arrived_ms() -> int:
    """When API Gateway received the request (its timeEpoch, ms); now for an event without one, or one no client
    can still be waiting for (a sample event replayed by `sam local invoke`, a clock far off)."""
    now = int(time.time() * 1000)
    epoch = app.current_event.raw_event.get("requestContext", {}).get("timeEpoch")
    if isinstance(epoch, int) and now - HTTP_DEADLINE_MS < epoch <= now + 5_000:
        return epoch
    return now


def _cleanup(context: Any, *, arrived_ms: int | None = None, report: CleanupReport | None = None) -> CleanupReport:
    """The run (`report` filled as its steps commit); the hourly one (no `arrived_ms`) measures the review queue."""
    remaining = getattr(context, "get_remaining_time_in_millis", None) or (lambda: 60_000)
    time_left_ms = remaining
    if arrived_ms is not None:
        deadline_ms = arrived_ms + HTTP_DEADLINE_MS
        deadline.narrow((arrived_ms + API_GATEWAY_MS - time.time() * 1000) / 1000)

        def time_left_ms() -> int:
            return min(remaining(), deadline_ms - int(time.time() * 1000))

    # No batch starts that could outlast the invocation (a statement may take up to the query timeout): Lambda ending
    # it midway would lose the run's counts, and with them the alarm of a charge it sent to review.
    reserve_ms = int(database_settings().query_timeout_seconds * 1000) + _AFTER_THE_BATCHES_MS
    report = CleanupReport() if report is None else report
    try:
        run_cleanup(
            default_database(), policy=_policy(), time_left_ms=time_left_ms, reserve_ms=reserve_ms, report=report
        )
    except Exception:
        # What the run committed before it failed is done (a charge sent to review is not flagged again by the next
        # run): counted now, or its alarm never fires. The error goes on (the run failed: its own alarm).
        report.complete = False
        _count(report)
        logger.error("cleanup failed midway", extra=report.as_dict())
        raise
    _count(report)
    logger.info("cleanup finished", extra=report.as_dict())
    if arrived_ms is None:
        _measure_review_queue()
    return report


def _count(report: CleanupReport) -> None:
    for name, value in report.as_dict().items():
        if not isinstance(value, bool):  # the counts; `complete` and `counts_exact` are in the log line
            metrics.add_metric(name=f"Cleanup_{name}", unit=MetricUnit.Count, value=int(value))


def _measure_review_queue() -> None:
    """The age of the oldest thing waiting for a human (the alarm fires past a day); 0 when none waits."""
    page = review_queue(
        ReviewStore(default_database()), QueueQuery.parse(reason=None, limit="1", after=None, page_max=1)
    )
    oldest = page["items"][0]["age_seconds"] if page["items"] else 0
    metrics.add_metric(name="ReviewQueueOldestSeconds", unit=MetricUnit.Seconds, value=oldest)


@app.post(
    "/admin/cleanup-idempotency",
    summary="Run the hourly cleanup now",
    tags=["admin"],
    security=ADMIN_TOKEN,
    responses={
        200: json_answer(CleanupReport, "What the cleanup did (kept in the audit trail)."),
        400: problem_json("An Idempotency-Key that is not printable ASCII (checked before any work)."),
        401: UNAUTHORIZED_ADMIN,
        503: UNAVAILABLE,
    },
    openapi_extensions=reads_itself(
        parameters=[
            parameter(
                "header",
                "Idempotency-Key",
                {"type": "string", "pattern": "^[ -~]*$"},  # printable ASCII: what the route takes
                "Optional: kept in the audit trail (its first 255 characters); printable ASCII.",
            )
        ]
    ),
)
def admin_cleanup() -> Response[Any]:
    admin = _admin()
    if admin is None:
        return _unauthorized()
    # Checked before any work: the audit row must be writable once the batches have committed.
    key = app.current_event.headers.get("idempotency-key")
    if key is not None and not (key.isascii() and key.isprintable()):
        raise InvalidRequest("the Idempotency-Key header must be printable ASCII")
    run = CleanupReport()
    try:
        _cleanup(app.lambda_context, arrived_ms=_arrived_ms(), report=run)
    except Exception as exc:
        # What its steps committed before the failure (a payment sent to review, payments expired) was done at this
        # admin's request: in the audit trail too, with the error, as far as the database still takes it, and only
        # with time left for a reconnect (the answer must still come before API Gateway gives up). The error goes on
        # (503: the run is not complete).
        error = exc.code if isinstance(exc, PaymentError) else type(exc).__name__
        left = deadline.until_the_end()
        try:
            if left is not None and left < database_settings().connect_timeout_seconds + 1:
                raise DatabaseUnavailable("no time left to write the audit row")
            _audit_cleanup(admin, key, {**run.as_dict(), "error": error})
        except PaymentError as lost:
            logger.error("failed cleanup run not audited", extra={"reason": lost.code})
        raise
    report = run.as_dict()
    # The audit trail: who ran it, and what it changed (the cleanup's own batches commit as they go).
    _audit_cleanup(admin, key, report)
    return Response(200, "application/json", report)


def _audit_cleanup(admin: str, key: str | None, after: dict[str, Any]) -> None:
    audit.record(
        default_database(),
        admin=admin,
        action=audit.AuditAction.CLEANUP,
        payment_id=None,
        idempotency_key=key[:255] if key else None,
        request={"route": "POST /admin/cleanup-idempotency"},
        before=None,
        after=after,
    )


@app.get(
    "/debug/test-idempotency",
    summary="Exercise the idempotency store end to end (not routed in prod)",
    tags=["admin"],
    security=ADMIN_TOKEN,
    responses={
        200: json_answer("IdempotencyExercise", "What ran, and whether the store behaved."),
        400: problem_json("No type, or an unknown one."),
        401: UNAUTHORIZED_ADMIN,
        404: problem_json("In prod: no such route."),
        503: UNAVAILABLE,
    },
    openapi_extensions=reads_itself(
        parameters=[parameter("query", "type", {"type": "string", "enum": list(KINDS)}, "The scenario.", required=True)]
    ),
)
def debug_idempotency() -> Response[Any]:
    if api_settings().stage == "prod":
        return problem(404, "Not Found", "no such route")  # the template does not even route it in prod
    if not _authorized():
        return _unauthorized()
    kind = app.current_event.get_query_string_value("type") or ""
    return Response(
        200, "application/json", exercise(kind, default_database(), table=idempotency_settings().table_name)
    )


@app.exception_handler(InvalidRequest)
def _invalid(exc: InvalidRequest) -> Response[Any]:
    return problem(400, "Bad Request", exc.message)


@app.exception_handler(PaymentError)
def _payment_error(exc: PaymentError) -> Response[Any]:
    return error_response(exc)


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response[Any]:
    return unhandled_error("something went wrong")


def _scheduled(event: dict, context: LambdaContext) -> dict[str, Any]:
    """The hourly EventBridge schedule."""
    return _cleanup(context).as_dict()


lambda_handler = http_handler(app, other_events=_scheduled)
