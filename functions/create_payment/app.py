"""create_payment: POST /payments and GET /payments/{payment_id}, behind the JWT authorizer."""

from __future__ import annotations

import json
from functools import cache
from typing import Any
from uuid import UUID

from aws_lambda_powertools.event_handler import Response
from pydantic_core import ValidationError

from payments.adapters.db import default_database
from payments.adapters.hypay import HypayClient
from payments.adapters.payments_store import PaymentsStore
from payments.api_schema import (
    IDEMPOTENCY_KEY,
    PAYMENT_ID,
    REPLAYED,
    UNAVAILABLE,
    UNSUPPORTED_MEDIA_TYPE,
    json_answer,
    parameter,
    problem_json,
    reads_itself,
    retry_after,
)
from payments.caller import authenticated_user
from payments.domain.ids import canonical_uuid
from payments.domain.payment import CreatePaymentRequest
from payments.errors import InvalidRequest, NotFound, PaymentError
from payments.http import HttpApi, error_response, problem, unhandled_error, validation_problem
from payments.idempotency import PostgresPersistenceLayer
from payments.observability import http_handler
from payments.request_body import UnsupportedMediaType, json_object
from payments.services.create_payment import CreatePayment, CreatePaymentDeps, get_payment
from payments.settings import api_settings, auth_settings, idempotency_settings

# The routes read their requests themselves (body, Idempotency-Key, path), as `reads_itself` declares them for the
# OpenAPI document: no Powertools request validation, so no pydantic model is made at a cold start.
app = HttpApi()

_PROBLEMS: dict[int, Any] = {
    400: problem_json("Malformed body, or a missing or malformed Idempotency-Key."),
    401: problem_json("The token is not a signed-in user's."),
    402: problem_json(
        "A saved card was declined (payment_id, Hyp's ccode and gateway_message in the body).", headers=REPLAYED
    ),
    404: problem_json("Unknown credit pack, or the user has no profile."),
    409: problem_json(
        "Inactive pack, no saved card, the payment expired before its saved card was charged (nothing charged: use a"
        " new key), another saved-card charge of the user has no confirmed outcome yet (nothing charged; stored for"
        " the key: once that charge is settled, use a new key), or the first request with this key is still running"
        " (then Retry-After).",
        headers={**retry_after(required=False), **REPLAYED},
    ),
    415: UNSUPPORTED_MEDIA_TYPE,
    422: problem_json("The Idempotency-Key was used with a different request."),
    429: problem_json("Too many payments for this user.", headers=retry_after()),
    502: problem_json(
        "The payment gateway refused the request: the saved-card charge, or the payment page (ccode in the body).",
        headers=REPLAYED,
    ),
    503: UNAVAILABLE,
}


def _user_id() -> UUID:
    """The user is whoever the authorizer verified (`sub`, signed in: the required role), from the JWT or the
    Lambda authorizer's claims; nothing the client sends says otherwise."""
    return authenticated_user(app.current_event, required_role=auth_settings().required_role)


def _idempotency_key(value: str | None) -> str:
    if value is None or value == "":
        raise InvalidRequest("the Idempotency-Key header is required")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]  # the draft's structured-field form: "key"
    if not (1 <= len(value) <= 255 and value.isascii() and value.isprintable() and value.strip()):
        raise InvalidRequest("the Idempotency-Key header must be 1 to 255 printable ASCII characters")
    return value


@cache
def _service() -> CreatePayment:
    settings, idem = api_settings(), idempotency_settings()
    db = default_database()
    deps = CreatePaymentDeps(
        store=PaymentsStore(db),
        gateway=HypayClient.from_settings(),
        rate_limit=settings.rate_limit,
        rate_window_seconds=settings.rate_window_seconds,
        page_language=settings.page_language,
        send_invoice=settings.send_invoice,
    )
    store = PostgresPersistenceLayer(idem.table_name, database=db)
    return CreatePayment(deps, store, expires_after_seconds=idem.expires_after_seconds)


@app.post(
    "/payments",
    operation_id="createPayment",
    summary="Create a payment for a credit pack",
    description="Prices the pack, records a pending payment and returns Hyp's signed payment page URL; "
    "with saved_card, charges the saved card instead. Idempotent on the Idempotency-Key header.",
    responses={
        201: {
            **json_answer("PaymentView", "Created: the payment page's URL (saved_card: completed).", headers=REPLAYED),
            "links": {
                "GetPayment": {
                    "operationId": "getPayment",
                    "parameters": {"payment_id": "$response.body#/payment_id"},
                }
            },
        },
        202: json_answer(
            "PaymentConfirming", "A saved-card charge is being confirmed: poll GET /payments/{id}.", headers=REPLAYED
        ),
        **_PROBLEMS,
    },
    tags=["payments"],
    openapi_extensions=reads_itself(parameters=[IDEMPOTENCY_KEY], body="CreatePaymentRequest"),
)
def post_payment() -> Response[Any]:
    event = app.current_event
    body = json_object(event.headers.get("content-type"), event.body, base64_encoded=bool(event.is_base64_encoded))
    request = CreatePaymentRequest.model_validate(body)
    key = _idempotency_key(event.headers.get("idempotency-key"))
    answer = _service()(user_id=_user_id(), idempotency_key=key, request=request, context=app.lambda_context)
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else {}
    content_type = "application/problem+json" if answer.status >= 400 else "application/json"
    return Response(answer.status, content_type, json.dumps(answer.body), headers)


@app.get(
    "/payments/<payment_id>",
    operation_id="getPayment",
    summary="A payment's status, for its owner",
    responses={
        200: json_answer("PaymentView", "The payment."),
        401: _PROBLEMS[401],
        404: problem_json("No such payment (or not this user's)."),
        503: UNAVAILABLE,
    },
    tags=["payments"],
    openapi_extensions=reads_itself(
        parameters=[parameter("path", "payment_id", {"type": "string", **PAYMENT_ID}, "The payment.", required=True)]
    ),
)
def read_payment(payment_id: str) -> Response[Any]:
    pid = canonical_uuid(payment_id)
    if pid is None:
        raise NotFound("no such payment")
    body = get_payment(PaymentsStore(default_database()), user_id=_user_id(), payment_id=pid)
    return Response(200, "application/json", json.dumps(body))


@app.exception_handler(ValidationError)
def _invalid(exc: ValidationError) -> Response:
    return validation_problem(exc.errors())


@app.exception_handler(UnsupportedMediaType)
def _unsupported_media_type(exc: UnsupportedMediaType) -> Response:
    return problem(415, "Unsupported Media Type", exc.message, headers={"Accept": "application/json"})


@app.exception_handler(PaymentError)
def _payment_error(exc: PaymentError) -> Response:
    return error_response(exc)


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response:
    return unhandled_error("something went wrong; retry with the same Idempotency-Key")


lambda_handler = http_handler(app)
