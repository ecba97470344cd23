"""authorizer: the HTTP API's Lambda authorizer (payload 2.0, simple responses) for the web app's HS256 or
ES256 access tokens. Deployed only when JwtMode is hs256 or es256; RS256 keeps API Gateway's JWT authorizer."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import event_source
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerEventV2,
    APIGatewayAuthorizerResponseV2,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from payments.errors import PaymentError
from payments.observability import logger, metrics, tracer, with_metrics_namespace
from payments.services.authorize import (
    TokenRejected,
    TokenVerifier,
    bearer_token,
    context_claims,
    verifier_from_settings,
)
from payments.settings import auth_settings


@cache
def _verifier() -> TokenVerifier:
    """Built at the first invocation and kept by the warm environment, with its key cache."""
    return verifier_from_settings(auth_settings())


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
@event_source(data_class=APIGatewayAuthorizerEventV2)
def _authorize(event: APIGatewayAuthorizerEventV2, context: LambdaContext) -> dict[str, Any]:
    """Allow with the token's claims (they reach the function as `requestContext.authorizer.lambda`), or deny.

    A denial is cached by API Gateway for this token; key or configuration trouble is raised instead (API
    Gateway answers 500 and caches nothing), so an outage never sticks to a good token.
    """
    token = bearer_token(event.headers.get("authorization"))
    try:
        claims = _verifier().verify(token)
    except TokenRejected as exc:
        logger.info("token rejected", reason=exc.reason, route=event.get("routeKey"))
        metrics.add_metric(name="TokenRejected", unit=MetricUnit.Count, value=1)
        return APIGatewayAuthorizerResponseV2(authorize=False).asdict()
    except PaymentError as exc:
        logger.error("tokens cannot be verified", error=exc.code, reason=str(exc))
        metrics.add_metric(name="AuthorizerUnavailable", unit=MetricUnit.Count, value=1)
        raise
    return APIGatewayAuthorizerResponseV2(authorize=True, context=context_claims(claims)).asdict()


def _readable(event: Any, context: LambdaContext) -> dict[str, Any]:
    """Deny an event that is not a payload 2.0 authorizer request (a direct invoke, a 1.0 TOKEN event): raising
    would be API Gateway's 500, and the AuthorizerErrors alarm, for a request that is simply not a token's."""
    headers = event.get("headers") if isinstance(event, Mapping) else None
    if not isinstance(headers, Mapping):
        logger.warning("not a payload 2.0 authorizer event: denied")
        return APIGatewayAuthorizerResponseV2(authorize=False).asdict()
    return _authorize(event, context)


lambda_handler = with_metrics_namespace(_readable)
