"""hypay_callback: GET /hypay/return (browser redirect) and GET|POST /hypay/notify (server notice).

Placeholder until the callback issue: Hyp's portal connection test (no parameters) gets a
harmless 200; anything else answers 501 problem+json and changes nothing.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from payments.http import problem, with_security_headers
from payments.observability import logger, metrics, tracer

app = APIGatewayHttpResolver()


def _answer() -> Response[Any]:
    if not app.current_event.raw_query_string and not app.current_event.body:
        return Response(status_code=200, content_type="text/plain", body="OK")
    return problem(501, "Not Implemented", "callback processing is not available yet")


@app.get("/hypay/return")
def hypay_return() -> Response[Any]:
    return _answer()


@app.route("/hypay/notify", method=["GET", "POST"])
def hypay_notify() -> Response[Any]:
    return _answer()


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return with_security_headers(app.resolve(event, context))
