"""cleanup: hourly (EventBridge) and on demand (POST /admin/cleanup-idempotency).

Placeholder until the cleanup issue: the schedule is acknowledged and does nothing yet; the
admin route answers 501 problem+json.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from payments.http import problem, with_security_headers
from payments.observability import logger, metrics, tracer

app = APIGatewayHttpResolver()


@app.post("/admin/cleanup-idempotency")
def admin_cleanup() -> Response[Any]:
    return problem(501, "Not Implemented", "on-demand cleanup is not available yet")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict, context: LambdaContext) -> dict[str, Any]:
    if event.get("source") == "aws.events":
        logger.info("scheduled cleanup", extra={"purged_idempotency_records": 0, "expired_payments": 0})
        return {"purged_idempotency_records": 0, "expired_payments": 0}
    return with_security_headers(app.resolve(event, context))
