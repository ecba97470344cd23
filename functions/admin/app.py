"""admin: GET /admin/review, POST /admin/payments/{payment_id}/resolve and .../refund,
POST /admin/refunds/{refund_id}/outcome, POST /admin/transactions/{hypay_id}/close; admin token only."""

from __future__ import annotations

import json
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Literal
from uuid import UUID

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Path
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from payments.adapters.admin_token import authenticate_current, tokens_provider
from payments.adapters.db import default_database
from payments.adapters.review_store import ReviewStore
from payments.api_schema import (
    ADMIN_TOKEN,
    AUDITED_KEY,
    HYPAY_ID,
    IDEMPOTENCY_KEY,
    PAYMENT_ID,
    REFUND_ID,
    REPLAYED,
    UNAUTHORIZED_ADMIN,
    UNAVAILABLE,
    UNSUPPORTED_MEDIA_TYPE,
    json_answer,
    parameter,
    problem_json,
    reads_itself,
    retry_after,
)
from payments.domain import hypay as protocol
from payments.domain.ids import canonical_uuid
from payments.domain.money import Currency, Money
from payments.errors import InvalidRequest, NotFound, PaymentError
from payments.http import HttpApi, error_response, problem, unhandled_error, validation_problem
from payments.observability import http_handler
from payments.request_body import UnsupportedMediaType, json_object
from payments.services.review import (
    OperatorBody,
    QueueQuery,
    Reason,
    ResolvePayment,
    ResolveRequest,
    review_queue,
)
from payments.settings import AdminSettings, admin_settings, idempotency_settings

if TYPE_CHECKING:
    from payments.services.keyed import Answer
    from payments.services.refund import Refunds

app = HttpApi()


class _NotAnAdmin(PaymentError):
    code = "unauthorized"


@cache
def _tokens() -> Any:
    return tokens_provider(admin_settings())


def _admin() -> str:
    """The name of the admin credential the request carries; 401 otherwise (the same for missing and wrong)."""
    name = authenticate_current(app.current_event.headers.get("authorization"), _tokens())
    if name is None:
        raise _NotAnAdmin("a valid admin token is required")
    return name


def _idempotency_key() -> str:
    value = app.current_event.headers.get("idempotency-key")
    if not value:
        raise InvalidRequest("the Idempotency-Key header is required")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not (1 <= len(value) <= 255 and value.isascii() and value.isprintable() and value.strip()):
        raise InvalidRequest("the Idempotency-Key header must be 1 to 255 printable ASCII characters")
    return value


@cache
def _resolver() -> ResolvePayment:
    from payments.idempotency import PostgresPersistenceLayer  # at the first POST: it imports boto3

    idem, settings = idempotency_settings(), admin_settings()
    db = default_database()
    return ResolvePayment(
        db,
        PostgresPersistenceLayer(idem.table_name, database=db),
        expires_after_seconds=idem.expires_after_seconds,
        charge_settle_seconds=settings.charge_settle_seconds,
    )


class _InvalidBody(PaymentError):
    def __init__(self, issues: list[Any]) -> None:
        super().__init__("the request body is malformed")
        self.issues = issues


def _keyed_post[M: BaseModel](payment_id: str, model: type[M], *, what: str = "payment") -> tuple[str, UUID, str, M]:
    """What every admin POST on a payment (or a refund) needs, each checked: the admin, the id, the key, the body."""
    admin = _admin()
    pid = canonical_uuid(payment_id)
    if pid is None:
        raise NotFound(f"no such {what}")
    return admin, pid, *_key_and_body(model)


def _key_and_body[M: BaseModel](model: type[M]) -> tuple[str, M]:
    key = _idempotency_key()
    event = app.current_event
    body = json_object(event.headers.get("content-type"), event.body, base64_encoded=event.is_base64_encoded)
    try:
        return key, model.model_validate(body)
    except ValidationError as exc:
        raise _InvalidBody(exc.errors()) from None


def _answer(answer: Answer) -> Response[Any]:
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else {}
    content_type = "application/problem+json" if answer.status >= 400 else "application/json"
    return Response(answer.status, content_type, json.dumps(answer.body), headers)


# What every admin POST on a payment may answer besides its own success.
_KEYED_POST_PROBLEMS: dict[int, Any] = {
    400: problem_json("Malformed body, or a missing or malformed Idempotency-Key."),
    401: UNAUTHORIZED_ADMIN,
    404: problem_json("No such payment."),
    409: problem_json(
        "The payment cannot be changed so, or the first request with this key is still running (then Retry-After).",
        headers=retry_after(required=False),
    ),
    415: UNSUPPORTED_MEDIA_TYPE,
    503: UNAVAILABLE,
}
_PAGE_MAX = AdminSettings.default("review_page_max")


@app.get(
    "/admin/review",
    summary="Everything that needs a human, oldest first",
    tags=["admin"],
    security=ADMIN_TOKEN,
    responses={
        200: json_answer("ReviewPage", "One page of the queue."),
        400: problem_json("A malformed reason, limit or after."),
        401: UNAUTHORIZED_ADMIN,
        503: UNAVAILABLE,
    },
    openapi_extensions=reads_itself(
        parameters=[
            parameter("query", "reason", {"type": "string", "enum": [r.value for r in Reason]}, "Only this reason."),
            parameter(
                "query",
                "limit",
                {"type": "integer", "minimum": 1, "maximum": _PAGE_MAX},
                f"Items per page (50; at most ADMIN_REVIEW_PAGE_MAX, {_PAGE_MAX} by default).",
            ),
            parameter(
                "query",
                "after",
                {"type": "string", "format": "review-cursor"},
                "The `next` of the page before: an opaque cursor this API returned.",
            ),
        ]
    ),
)
def get_review() -> Response[Any]:
    _admin()
    event = app.current_event
    query = QueueQuery.parse(
        reason=event.get_query_string_value("reason"),
        limit=event.get_query_string_value("limit"),
        after=event.get_query_string_value("after"),
        page_max=admin_settings().review_page_max,
    )
    return Response(200, "application/json", json.dumps(review_queue(ReviewStore(default_database()), query)))


@app.post(
    "/admin/payments/<payment_id>/resolve",
    summary="Complete (grant the credits once) or fail a payment under review",
    tags=["admin"],
    security=ADMIN_TOKEN,
    responses={
        200: json_answer("Resolved", "Resolved (or replayed: Idempotent-Replayed: true).", headers=REPLAYED),
        **_KEYED_POST_PROBLEMS,
        422: problem_json("The Idempotency-Key was used with a different request."),
    },
    openapi_extensions=reads_itself(parameters=[IDEMPOTENCY_KEY], body=ResolveRequest),
)
def post_resolve(payment_id: Annotated[str, Path(json_schema_extra=PAYMENT_ID)]) -> Response[Any]:
    admin, pid, key, request = _keyed_post(payment_id, ResolveRequest)
    answer = _resolver()(admin=admin, payment_id=pid, idempotency_key=key, request=request, context=app.lambda_context)
    return _answer(answer)


# An amount as the API takes it. Zero is refused by the service ("must be positive"): the document says so too.
_POSITIVE_AMOUNT: dict[str, Any] = {
    "pattern": r"^[0-9]{1,9}(\.[0-9]{1,2})?$",
    "json_schema_extra": {"not": {"type": "string", "pattern": "^0*([.]0*)?$"}},
}


class RefundBody(OperatorBody):
    """`POST /admin/payments/{id}/refund` body. Without `amount`: all that remains of the transaction."""

    amount: str | None = Field(default=None, **_POSITIVE_AMOUNT)
    currency: Currency = Currency.ILS
    # What Hyp's transactions show the refunded transaction paid, in `currency`: only for a transaction whose amount
    # Hyp's answer gave unreadably (the journal keeps it from then on); anywhere else it must match the journal's.
    original_amount: str | None = Field(default=None, **_POSITIVE_AMOUNT)
    # An all-zero Id names no transaction (the one Hyp Id rule): refused by the service, and the document says so. One
    # with leading zeros is taken as the journal holds that number, or as Hyp writes it (services.hyp_ids.as_named).
    hypay_id: str | None = Field(
        default=None, pattern=r"^[0-9]{1,20}$", json_schema_extra={"not": {"type": "string", "pattern": "^0+$"}}
    )


@cache
def _refunds() -> Refunds:
    # At the first refund, not at the cold start: the gateway, the refunds and the idempotency layer (boto3).
    from payments.adapters.hypay import HypayClient
    from payments.adapters.refunds_store import RefundsStore
    from payments.idempotency import PostgresPersistenceLayer
    from payments.services.refund import Refunds, RefundsDeps

    idem = idempotency_settings()
    db = default_database()
    return Refunds(
        RefundsDeps(RefundsStore(db), HypayClient.from_settings()),
        PostgresPersistenceLayer(idem.table_name, database=db),
    )


@app.post(
    "/admin/payments/<payment_id>/refund",
    summary="Refund (or cancel the same day) a Hyp transaction of a payment; never twice for one key",
    tags=["admin"],
    security=ADMIN_TOKEN,
    responses={
        201: json_answer("Refund", "Refunded (or replayed: Idempotent-Replayed: true).", headers=REPLAYED),
        202: json_answer(
            "RefundConfirming", "Hyp's answer was lost: being confirmed, never sent again.", headers=REPLAYED
        ),
        **_KEYED_POST_PROBLEMS,
        422: problem_json(
            "More than remains, another currency, or the Idempotency-Key was used with a different request."
        ),
        502: problem_json("Hyp refused the refund (in words, final).", headers=REPLAYED),
    },
    openapi_extensions=reads_itself(parameters=[IDEMPOTENCY_KEY], body=RefundBody),
)
def post_refund(payment_id: Annotated[str, Path(json_schema_extra=PAYMENT_ID)]) -> Response[Any]:
    admin, pid, key, request = _keyed_post(payment_id, RefundBody)
    amount = Money.of(request.amount, request.currency) if request.amount else None
    original = Money.of(request.original_amount, request.currency) if request.original_amount else None
    answer = _refunds()(
        payment_id=pid,
        amount=amount,
        original=original,
        reason=request.reason,
        admin=admin,
        idempotency_key=key,
        hypay_id=request.hypay_id,
        context=app.lambda_context,
    )
    return _answer(answer)


# Hyp's refund Id is only said of a refund found made: with `not_refunded` it is malformed (the document says so).
_NO_REFUND_ID_UNLESS_REFUNDED: dict[str, Any] = {
    "if": {"required": ["outcome"], "properties": {"outcome": {"const": "not_refunded"}}},
    "then": {"properties": {"hypay_refund_id": {"type": "null"}}},
}


class RefundOutcomeBody(OperatorBody):
    """`POST /admin/refunds/{refund_id}/outcome` body: what Hyp's portal shows of a refund whose answer was lost."""

    model_config = ConfigDict(json_schema_extra=_NO_REFUND_ID_UNLESS_REFUNDED)

    outcome: Literal["refunded", "not_refunded"]
    # Hyp's refund transaction (zikoyAPI makes one; a cancellation none). An all-zero Id names none; one with leading
    # zeros is taken as the journal holds that number, or as Hyp writes it (services.hyp_ids.as_named).
    hypay_refund_id: str | None = Field(
        default=None, pattern=r"^[0-9]{1,20}$", json_schema_extra={"not": {"type": "string", "pattern": "^0+$"}}
    )


@app.post(
    "/admin/refunds/<refund_id>/outcome",
    summary="Settle a refund whose outcome is unknown from what Hyp's portal shows; nothing is sent to Hyp",
    tags=["admin"],
    security=ADMIN_TOKEN,
    responses={
        200: json_answer("RefundSettled", "Settled as found (or already so: the same answer)."),
        400: problem_json("Malformed body, or a missing or malformed Idempotency-Key."),
        401: UNAUTHORIZED_ADMIN,
        404: problem_json("No such refund."),
        409: problem_json(
            "Settled otherwise already (a finding never overwrites an outcome stored), or the attempt may still be"
            " asking Hyp (then Retry-After).",
            headers=retry_after(required=False),
        ),
        415: UNSUPPORTED_MEDIA_TYPE,
        503: UNAVAILABLE,
    },
    openapi_extensions=reads_itself(parameters=[AUDITED_KEY], body=RefundOutcomeBody),
)
def post_refund_outcome(refund_id: Annotated[str, Path(json_schema_extra=REFUND_ID)]) -> Response[Any]:
    admin, rid, key, request = _keyed_post(refund_id, RefundOutcomeBody, what="refund")
    from payments.adapters.refunds_store import RefundsStore
    from payments.services.refund_outcome import RefundOutcome

    settled = RefundOutcome(RefundsStore(default_database()))(
        refund_id=rid,
        outcome=request.outcome,
        hypay_refund_id=request.hypay_refund_id,
        reason=request.reason,
        admin=admin,
        idempotency_key=key,
    )
    return Response(settled.status, "application/json", json.dumps(settled.body))


class CloseBody(OperatorBody):
    """`POST /admin/transactions/{hypay_id}/close` body: what Hyp's portal shows of a transaction no action of ours
    settles."""

    outcome: Literal["refunded_in_hyp"]


@app.post(
    "/admin/transactions/<hypay_id>/close",
    summary="Close a Hyp transaction no action of ours settles (refunded in Hyp's portal); nothing is sent to Hyp",
    tags=["admin"],
    security=ADMIN_TOKEN,
    responses={
        200: json_answer("TransactionClosed", "Closed as found (or already so: the same answer)."),
        400: problem_json("Malformed body, or a missing or malformed Idempotency-Key."),
        401: UNAUTHORIZED_ADMIN,
        404: problem_json("No such Hyp transaction in the journal."),
        409: problem_json(
            "Not one to close so (its payment under review, not verified, not charged, a refund of it unsettled,"
            " refunded in full already), or closed otherwise already."
        ),
        415: UNSUPPORTED_MEDIA_TYPE,
        503: UNAVAILABLE,
    },
    openapi_extensions=reads_itself(parameters=[AUDITED_KEY], body=CloseBody),
)
def post_close(hypay_id: Annotated[str, Path(json_schema_extra=HYPAY_ID)]) -> Response[Any]:
    admin = _admin()
    if protocol.hyp_id(hypay_id) is None:
        raise NotFound("no such Hyp transaction in the journal")
    key, request = _key_and_body(CloseBody)
    from payments.services.close_transaction import CloseTransaction

    closed = CloseTransaction(default_database())(
        hypay_id=hypay_id, outcome=request.outcome, reason=request.reason, admin=admin, idempotency_key=key
    )
    return Response(closed.status, "application/json", json.dumps(closed.body))


@app.exception_handler(_InvalidBody)
def _invalid_body(exc: _InvalidBody) -> Response[Any]:
    return validation_problem(exc.issues)


@app.exception_handler(_NotAnAdmin)
def _unauthorized(exc: _NotAnAdmin) -> Response[Any]:
    return problem(401, "Unauthorized", exc.message, headers={"WWW-Authenticate": "Bearer"})


@app.exception_handler(UnsupportedMediaType)
def _unsupported_media_type(exc: UnsupportedMediaType) -> Response[Any]:
    return problem(415, "Unsupported Media Type", exc.message, headers={"Accept": "application/json"})


@app.exception_handler(PaymentError)
def _payment_error(exc: PaymentError) -> Response[Any]:
    return error_response(exc)


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response[Any]:
    return unhandled_error("something went wrong; retry with the same Idempotency-Key")


lambda_handler = http_handler(app)
