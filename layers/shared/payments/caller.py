"""Who is calling: the claims API Gateway's authorizer verified, whichever kind verified them.

The JWT authorizer (RS256) hands them over in `requestContext.authorizer.jwt.claims`; the Lambda authorizer
(HS256, ES256; simple responses) in `requestContext.authorizer.lambda`. Both carry the same string claims.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from payments.errors import Unauthorized


def caller_claims(event: APIGatewayProxyEventV2) -> dict[str, Any]:
    """The verified claims of the request, from the JWT or the Lambda authorizer; {} without either."""
    authorizer = event.request_context.authorizer
    return authorizer.jwt_claim or authorizer.get_lambda or {}


def authenticated_user(event: APIGatewayProxyEventV2, *, required_role: str) -> UUID:
    """The signed-in user (`sub`) with `required_role`; Unauthorized otherwise."""
    claims = caller_claims(event)
    if claims.get("role") != required_role:
        raise Unauthorized("the access token is not a signed-in user's")
    try:
        return UUID(str(claims.get("sub")))
    except ValueError:
        raise Unauthorized("the access token names no user") from None
