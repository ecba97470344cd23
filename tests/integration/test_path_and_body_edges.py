"""Events API Gateway can deliver that no route takes: a decoded path character no route pattern matches, and a
notify body with a lone surrogate. Each is a 4xx problem, never the catch-all 500 (whose alarm anyone could fire)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from ops.lambda_context import LocalLambdaContext
from ops.local_api import build_event
from ops.seed import DEMO_USER_ID
from ops.template import load_handler
from tests.integration.test_hypay_callback import buy, pay
from tests.integration.test_review import ADMIN, admin  # noqa: F401 - the `admin` fixture
from tests.support.api import TEMPLATE
from tests.support.payments import CALLBACK, CREATE, Env

DOC = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_text(encoding="utf-8"))
CLAIMS = {"sub": DEMO_USER_ID, "aud": "authenticated", "role": "authenticated"}


def _call(function: str, event: dict[str, Any]) -> dict[str, Any]:
    handler = load_handler(TEMPLATE.functions[function])
    return handler(event, LocalLambdaContext(function_name=function, timeout_seconds=20))


def _event_with_decoded_path(method: str, route: str, raw_path: str, value: str, **kw: Any) -> dict[str, Any]:
    """The event API Gateway's HTTP API hands over for `route` when the client percent-encoded a path parameter:
    it decodes it, in `pathParameters` and in `rawPath` (see Powertools issue #1098: `/pets/Chester%20Mall`
    arrives as rawPath `/pets/Chester Mall`)."""
    event = build_event(
        method=method,
        target=raw_path,
        headers=kw.get("headers", {}),
        body=kw.get("body", b""),
        source_ip="203.0.113.7",
        route_key=f"{method} {route}",
        path_parameters={"payment_id": value},
        claims=kw.get("claims"),
    )
    event["rawPath"] = event["requestContext"]["http"]["path"] = raw_path
    return event


# GET /payments/%22, /payments/%F0%9F%98%80, /payments/a%5Cb ...: API Gateway routes them to
# GET /payments/{payment_id}; the path holds a character Powertools' route pattern does not take.
ODD_IDS = ['"', "\U0001f600", "a\\b", "a`b", "a\nb", "\u20ac"]


@pytest.mark.parametrize("value", ODD_IDS, ids=repr)
def test_get_payment_with_an_odd_path_character_is_a_404_problem_not_a_500(
    env: Env, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    event = _event_with_decoded_path("GET", "/payments/{payment_id}", f"/payments/{value}", value, claims=CLAIMS)
    result = _call(CREATE, event)
    assert result["statusCode"] == 404, result
    assert result["headers"]["Content-Type"] == "application/problem+json"
    assert not [r for r in caplog.records if r.getMessage() == "unhandled error"]


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("action", ["resolve", "refund"])
@pytest.mark.parametrize("value", ['"', "\U0001f600"], ids=repr)
def test_admin_post_with_an_odd_path_character_and_no_token_is_a_4xx_not_a_500(
    env: Env, action: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    # No admin token at all: the admin routes have no API Gateway authorizer, anyone on the internet can send this
    route = f"/admin/payments/{{payment_id}}/{action}"
    event = _event_with_decoded_path(
        "POST",
        route,
        f"/admin/payments/{value}/{action}",
        value,
        headers={"content-type": "application/json", "idempotency-key": "k-1"},
        body=b'{"reason": "x", "action": "fail"}',
    )
    result = _call(ADMIN, event)
    declared = DOC["paths"][route]["post"]["responses"]
    assert result["statusCode"] < 500 and str(result["statusCode"]) in declared, result
    assert result["headers"]["Content-Type"] == "application/problem+json"
    assert not [r for r in caplog.records if r.getMessage() == "unhandled error"]


def test_a_notify_body_with_a_lone_surrogate_is_a_400_not_a_500(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    # Info: API Gateway hands over valid text or base64, so this event comes from a direct invocation (or a test
    # harness), not from the internet. raw_payload's surrogateescape encode raises UnicodeEncodeError for U+D800.
    from tests.support.api import notify_event

    payment = buy(env)
    transaction = pay(env, payment)
    event = notify_event(transaction.redirect_query.replace("Fild1=", "Fild1=\ud800", 1), base64_encoded=False)
    with caplog.at_level(logging.ERROR):
        result = _call(CALLBACK, event)
    assert "\ud800" in event["body"]
    assert result["statusCode"] == 400, result
    assert env.status(payment["payment_id"]) == "pending"


def test_the_local_api_hands_over_the_path_decoded_and_the_query_string_as_received() -> None:
    # As API Gateway's HTTP API does: so that the local stack (make run, the proofs) meets these paths as Lambda does
    event = build_event(
        method="GET",
        target="/payments/%22%F0%9F%98%80?a=%20b&Sign=AB%2F",
        headers={},
        body=b"",
        source_ip="203.0.113.7",
        route_key="GET /payments/{payment_id}",
        path_parameters={"payment_id": "%22%F0%9F%98%80"},
        claims=CLAIMS,
    )
    assert event["rawPath"] == event["requestContext"]["http"]["path"] == '/payments/"\U0001f600'
    assert event["pathParameters"] == {"payment_id": '"\U0001f600'}
    assert event["rawQueryString"] == "a=%20b&Sign=AB%2F"
    # And such a path is a 404 problem from the function, as from Lambda
    result = _call(CREATE, event)
    assert result["statusCode"] == 404 and result["headers"]["Content-Type"] == "application/problem+json"
