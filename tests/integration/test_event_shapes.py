"""Events a direct `aws lambda invoke`, a sample file or a misconfigured trigger can deliver (a payload
1.0 event, no requestContext, `null`, a body or header that is not a string). Each HTTP function must answer them
with a 4xx problem (never raise: a Lambda error is a 500 from API Gateway and fires the Errors alarm; never the
catch-all 500, whose UnhandledError alarm fires too), and the authorizer must deny them (a raise is API Gateway's
500 for every request with that token, and AuthorizerErrors' alarm)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from ops.lambda_context import LocalLambdaContext
from ops.local_api import build_event
from ops.local_auth import LOCAL_JWT_SECRET, LocalAuth
from ops.seed import DEMO_USER_ID
from ops.template import load_handler
from tests.integration.test_authorizer import SAMPLE_EVENT, authorizer, configure  # noqa: F401 - the fixture
from tests.integration.test_review import ADMIN, ALICE, CLEANUP, admin  # noqa: F401 - the fixture
from tests.support.api import TEMPLATE, notify_event
from tests.support.payments import CALLBACK, CREATE, STARTER, Env

CLAIMS = {"sub": DEMO_USER_ID, "aud": "authenticated", "role": "authenticated"}
PAYMENT = "aaaaaaaa-0000-4000-8000-0000000000ff"


def _v2(function: str) -> dict[str, Any]:
    """A well-formed payload 2.0 event for one route of `function`."""
    route = {
        CREATE: (
            "POST",
            "/payments",
            "POST /payments",
            {},
            {"content-type": "application/json", "idempotency-key": "k"},
            json.dumps({"credit_pack_id": STARTER}).encode(),
            CLAIMS,
        ),
        CALLBACK: ("GET", "/hypay/return?Id=1&CCode=0", "GET /hypay/return", {}, {}, b"", None),
        ADMIN: (
            "POST",
            f"/admin/payments/{PAYMENT}/resolve",
            "POST /admin/payments/{payment_id}/resolve",
            {"payment_id": PAYMENT},
            {"content-type": "application/json", "idempotency-key": "k"},
            b'{"action": "fail", "reason": "x"}',
            None,
        ),
        CLEANUP: ("POST", "/admin/cleanup-idempotency", "POST /admin/cleanup-idempotency", {}, {}, b"", None),
    }[function]
    method, target, key, params, headers, body, claims = route
    return build_event(
        method=method,
        target=target,
        headers=headers,
        body=body,
        source_ip="198.51.100.9",
        route_key=key,
        path_parameters=params,
        claims=claims,
    )


def _v1(event: dict[str, Any]) -> Any:
    """What a payload format 1.0 integration (or a REST API) hands over for the same request."""
    method = event["requestContext"]["http"]["method"]
    return {
        "version": "1.0",
        "resource": event["routeKey"].split(" ", 1)[1],
        "path": event["rawPath"],
        "httpMethod": method,
        "headers": event["headers"],
        "multiValueHeaders": {k: [v] for k, v in event["headers"].items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": event.get("pathParameters"),
        "stageVariables": None,
        "requestContext": {
            "requestId": "r-1",
            "httpMethod": method,
            "path": event["rawPath"],
            "stage": "$default",
            "identity": {"sourceIp": "198.51.100.9"},
        },
        "body": event.get("body"),
        "isBase64Encoded": False,
    }


def _without(name: str) -> Callable[[dict[str, Any]], Any]:
    def change(event: dict[str, Any]) -> Any:
        event.pop(name)
        return event

    return change


def _no_http(event: dict[str, Any]) -> Any:
    del event["requestContext"]["http"]
    return event


def _body_object(event: dict[str, Any]) -> Any:
    event["body"] = {"credit_pack_id": STARTER}  # a hand-written event's usual mistake: the body as an object
    return event


def _header_number(event: dict[str, Any]) -> Any:
    event["headers"]["x-retry"] = 1
    return event


def _no_stage(event: dict[str, Any]) -> Any:
    del event["requestContext"]["stage"]  # Powertools' event.path reads it
    return event


def _no_source_ip(event: dict[str, Any]) -> Any:
    del event["requestContext"]["http"]["sourceIp"]
    return event


def _claims(claims: object) -> Callable[[dict[str, Any]], Any]:
    def shape(event: dict[str, Any]) -> Any:
        event["requestContext"]["authorizer"] = {"jwt": {"claims": claims, "scopes": None}}
        return event

    return shape


SHAPES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "no requestContext.stage": _no_stage,
    "no requestContext.http.sourceIp": _no_source_ip,
    "claims that are a number": _claims(5131841),
    "claims that are a list": _claims(["sub"]),
    "an authorizer that is a string": lambda event: {
        **event,
        "requestContext": {**event["requestContext"], "authorizer": "x"},
    },
    "payload 1.0": _v1,
    "no requestContext": _without("requestContext"),
    "requestContext without http": _no_http,
    "null": lambda event: None,
    "a list": lambda event: [event],
    "body is an object": _body_object,
    "a header value that is a number": _header_number,
}
# The cleanup takes an event without requestContext for the schedule's (by design): those two are not HTTP to it.
CASES = [
    (function, shape)
    for function in (CREATE, CALLBACK, ADMIN, CLEANUP)
    for shape in SHAPES
    if not (function == CLEANUP and shape in ("no requestContext", "a list"))
    and not (function in (CALLBACK, CLEANUP) and shape == "body is an object")
    # Only POST /payments reads every header (Powertools' header validation): the others ignore an extra one.
    and not (function != CREATE and shape == "a header value that is a number")
]


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize(("function", "shape"), CASES)
def test_an_event_that_is_not_an_http_api_2_0_request_is_a_4xx_problem_never_a_lambda_error_or_500(
    env: Env, function: str, shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    event = SHAPES[shape](copy.deepcopy(_v2(function)))
    if function in (ADMIN, CLEANUP) and isinstance(event, dict) and isinstance(event.get("headers"), dict):
        event["headers"]["authorization"] = f"Bearer {ALICE}"
    before = env.rows(
        "SELECT (SELECT count(*) FROM payments), (SELECT count(*) FROM idempotency_keys),"
        " (SELECT count(*) FROM admin_audit_log)"
    )
    handler = load_handler(TEMPLATE.functions[function])
    try:
        result = handler(event, LocalLambdaContext(function_name=function, timeout_seconds=20))
    except Exception as exc:  # noqa: BLE001 - what is being tested
        pytest.fail(f"{function} raised on {shape}: {type(exc).__name__}: {exc} (a Lambda error: API Gateway's 500)")
    assert isinstance(result, dict) and 400 <= result["statusCode"] < 500, result
    headers = {k.lower(): v for k, v in result["headers"].items()}
    assert headers["content-type"] == "application/problem+json" and json.loads(result["body"])["detail"]
    assert "unhandled error" not in caplog.text and "hypay callback failed" not in caplog.text
    assert (
        env.rows(
            "SELECT (SELECT count(*) FROM payments), (SELECT count(*) FROM idempotency_keys),"
            " (SELECT count(*) FROM admin_audit_log)"
        )
        == before
    )


def _authorizer_shapes(sample: dict[str, Any]) -> dict[str, Any]:
    token = sample["headers"]["authorization"]
    number = copy.deepcopy(sample)
    number["headers"]["authorization"] = 12345
    listed = copy.deepcopy(sample)
    listed["headers"]["authorization"] = [token]
    return {
        # authorizerPayloadFormatVersion 1.0 (a TOKEN authorizer): the token is in authorizationToken, no headers
        "payload 1.0 TOKEN": {"type": "TOKEN", "authorizationToken": token, "methodArn": "arn:aws:execute-api:x"},
        "no headers": {k: v for k, v in sample.items() if k != "headers"},
        "authorization is a number": number,
        "authorization is a list": listed,
        "null": None,
    }


@pytest.mark.parametrize(
    "shape", ["payload 1.0 TOKEN", "no headers", "authorization is a number", "authorization is a list", "null"]
)
def test_the_authorizer_denies_an_event_it_cannot_read_instead_of_failing(
    authorizer: ModuleType,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
    shape: str,
) -> None:
    configure(monkeypatch, LocalAuth("hs256"), JWT_SECRET=LOCAL_JWT_SECRET)
    event = _authorizer_shapes(json.loads(SAMPLE_EVENT.read_text()))[shape]
    try:
        answer = authorizer.lambda_handler(
            event, LocalLambdaContext(function_name="AuthorizerFunction", timeout_seconds=5)
        )
    except Exception as exc:  # noqa: BLE001 - what is being tested
        pytest.fail(f"the authorizer raised on {shape}: {type(exc).__name__}: {exc} (API Gateway answers 500)")
    assert answer == {"isAuthorized": False}


def test_a_return_event_without_raw_query_string_is_the_connection_test_not_a_500(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    # A hand-written or trimmed GET /hypay/return event (payload 2.0, no rawQueryString key: nothing was sent)
    event = build_event(
        method="GET",
        target="/hypay/return",
        headers={},
        body=b"",
        source_ip="198.51.100.9",
        route_key="GET /hypay/return",
        path_parameters={},
        claims=None,
    )
    event.pop("rawQueryString")
    result = load_handler(TEMPLATE.functions[CALLBACK])(
        event, LocalLambdaContext(function_name=CALLBACK, timeout_seconds=20)
    )
    assert result["statusCode"] in (200, 302), result
    assert "hypay callback failed" not in caplog.text


def test_a_notify_whose_method_is_not_upper_case_is_never_answered_ok_unread(env: Env) -> None:
    # Powertools routes `post` to POST /hypay/notify (it upper-cases the method): its form body is read as a POST's,
    # never taken for Hyp's connection test (an empty query string) and answered "OK" unread.
    event = notify_event(
        "Id=12345&CCode=0&Amount=49.90&ACode=1&Order=x&Fild1=&Fild2=&Fild3=&Sign=00", base64_encoded=False
    )
    event["requestContext"]["http"]["method"] = "post"
    result = load_handler(TEMPLATE.functions[CALLBACK])(
        event, LocalLambdaContext(function_name=CALLBACK, timeout_seconds=20)
    )
    assert not (result["statusCode"] == 200 and result["body"] == "OK"), result


def test_the_authorizer_denies_a_bad_token_in_an_event_without_a_route_key(
    authorizer: ModuleType,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.integration.test_authorizer import call

    configure(monkeypatch, LocalAuth("hs256"), JWT_SECRET=LOCAL_JWT_SECRET)
    event = json.loads(SAMPLE_EVENT.read_text())
    event["headers"]["authorization"] = "Bearer nope"
    del event["routeKey"]
    assert call(authorizer, event) == {"isAuthorized": False}


@pytest.mark.usefixtures("admin")
def test_a_review_cursor_that_is_not_ours_is_a_400_however_deep_or_long(env: Env) -> None:
    import base64

    from tests.integration.test_review import queue

    for raw in (b"[" * 10_000, b'["x", "' + b"y" * 300 + b'"]'):
        answer = queue(f"after={base64.urlsafe_b64encode(raw).decode().rstrip('=')}")
        assert answer.status == 400 and "not a cursor" in answer.json["detail"], (answer.status, answer.body)
