"""Logger, metrics and tracer shared by every function (Powertools), and the HTTP entry point that wires them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import correlation_paths

import payments.snapstart  # noqa: F401 - registers the SnapStart runtime hooks in every function
from payments.tracing import tracer  # X-Ray's SDK only when tracing is on

# Service name and metrics namespace come from POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE.
logger = Logger()
metrics = Metrics()

LambdaHandler = Callable[[dict, Any], Any]


def http_handler(app: Any, *, other_events: LambdaHandler | None = None) -> LambdaHandler:
    """The Lambda entry point of an HTTP API resolver.

    JSON logs with API Gateway's request id as correlation id (never the event: it carries
    card-adjacent data and tokens), metrics flushed with a cold-start metric, tracing without
    capturing responses, and the security headers on every answer. `other_events` takes events that
    are not HTTP (the schedule's).
    """
    from payments.http import with_security_headers

    @logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
    @metrics.log_metrics(capture_cold_start_metric=True)
    @tracer.capture_lambda_handler(capture_response=False)
    def lambda_handler(event: dict, context: Any) -> Any:
        if other_events is not None and "requestContext" not in event:
            return other_events(event, context)
        return with_security_headers(app.resolve(event, context))

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
