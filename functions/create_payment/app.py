"""create_payment: POST /payments and GET /payments/{payment_id} (behind the JWT authorizer).

Placeholder until the create-payment issue: the routes exist and answer 501 problem+json.
"""

from __future__ import annotations

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from payments.http import problem
from payments.observability import logger, metrics, tracer

app = APIGatewayHttpResolver()


@app.post("/payments")
def post_payment() -> Response:
    return problem(501, "Not Implemented", "payment creation is not available yet")


@app.get("/payments/<payment_id>")
def get_payment(payment_id: str) -> Response:
    return problem(501, "Not Implemented", "payment status is not available yet")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
