"""What the HTTP routes declare in OpenAPI beside their request models: every answer's status, media type,
body and headers, so that docs/openapi.json (`make openapi`) holds all a route can answer.

The bodies are built as dicts where they are answered (the services, `payments.http`); the models here
only describe them. `proof/contract.py` fuzzes the running stack against the document.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from payments.domain import hypay as protocol
from payments.domain.payment import PaymentStatus, Problem

PROBLEM_JSON = "application/problem+json"
JSON = "application/json"
TEXT = "text/plain"
FORM = "application/x-www-form-urlencoded"
ADMIN_TOKEN: list[dict[str, list[str]]] = [{"adminToken": []}]  # a route's `security`: the admin's bearer token

# The Idempotency-Key header as the routes read it: 1 to 255 printable ASCII characters, not all spaces;
# also in the draft's structured-field form `"key"` (the quotes not counted), whose key may not be blank.
IDEMPOTENCY_KEY_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": "^[ -~]*[!-~][ -~]*$",
    "anyOf": [{"maxLength": 255}, {"pattern": '^".*"$', "maxLength": 257}],
    "not": {"pattern": '^" *"$'},
}
IDEMPOTENCY_KEY_DESCRIPTION = (
    "Unique per request: 1 to 255 printable ASCII characters (or the same in double quotes). The same key with "
    "the same request answers the stored answer (Idempotent-Replayed: true); with another request, 422."
)


# -- requests a route reads itself -------------------------------------------------------------------


def parameter(where: str, name: str, schema: dict[str, Any], description: str, *, required: bool = False) -> Any:
    return {"name": name, "in": where, "required": required, "description": description, "schema": schema}


IDEMPOTENCY_KEY = parameter(
    "header", "Idempotency-Key", IDEMPOTENCY_KEY_SCHEMA, IDEMPOTENCY_KEY_DESCRIPTION, required=True
)


def reads_itself(
    *,
    parameters: list[Any] | None = None,
    body: type[BaseModel] | dict[str, Any] | None = None,
    media_type: str = JSON,
    body_required: bool = True,
) -> dict[str, Any]:
    """The request of a route that reads it itself instead of through Powertools' validation (the admin
    routes check the admin first; the Hypay routes verify the raw bytes), for the decorator's
    `openapi_extensions`: `x-reads`, which `ops/openapi.py` merges into the operation (Powertools would
    replace a plain `parameters` with the signature's), a model's `$defs` into the components."""
    declared: dict[str, Any] = {}
    if parameters:
        declared["parameters"] = parameters
    if body is not None:
        schema = body if isinstance(body, dict) else body.model_json_schema(ref_template="#/components/schemas/{model}")
        declared["requestBody"] = {"required": body_required, "content": {media_type: {"schema": schema}}}
    return {"x-reads": declared}


PAYMENT_ID: JsonDict = {"format": "uuid"}  # a path's payment_id: anything else is no payment (404)
REFUND_ID: JsonDict = {"format": "uuid"}  # a path's refund_id: anything else is no refund (404)


# The fields a callback is refused without (`protocol.malformed`), as JSON Schema; a test holds them to the code.
_DECIDING: dict[str, dict[str, Any]] = {
    "Id": {"type": "string", "pattern": "^0*[1-9][0-9]*$", "maxLength": 20},
    "CCode": {"type": "string", "pattern": "^[0-9]{1,3}$"},
    "Amount": {"type": "string", "pattern": "^[0-9]{1,9}([.][0-9]{1,2})?$"},
}


def _hyp_field(name: str) -> dict[str, Any]:
    return dict(_DECIDING.get(name, {"type": "string"}))


# Hyp's callback fields (docs/hypay-protocol: the redirect's query string, or the same as a form): the ones the
# routes decide on must be well formed; a callback that names a field of our requests to Hyp is refused.
CALLBACK_REQUIRED = tuple(_DECIDING)
CALLBACK_FIELDS = (
    *protocol.SIGNED_FIELDS,
    "Sign",
    *sorted(protocol.REDIRECT_FIELDS - {*protocol.SIGNED_FIELDS, "Sign"}),
)
CALLBACK_QUERY = [
    parameter(
        "query",
        name,
        _hyp_field(name),
        "Hyp's callback field, as Hyp sends it."
        + (" Required unless no field is sent (Hyp's connection test)." if name in CALLBACK_REQUIRED else ""),
        required=name in CALLBACK_REQUIRED,
    )
    for name in CALLBACK_FIELDS
]
CALLBACK_FORM: dict[str, Any] = {
    "type": "object",
    "description": "Hyp's callback fields as a form; without a body, the query string is read instead.",
    "properties": {name: _hyp_field(name) for name in CALLBACK_FIELDS},
    "required": list(CALLBACK_REQUIRED),
    "additionalProperties": False,
}


# -- answers -------------------------------------------------------------------------------------------


class GatewayMessage(BaseModel):
    """API Gateway's own answer: its authorizer's 401 (403 with the Lambda authorizer), 404 for no route."""

    model_config = ConfigDict(defer_build=True)

    message: str


class PaymentConfirming(BaseModel):
    """202: a saved-card charge may have happened and is being confirmed; never charged again for this key."""

    model_config = ConfigDict(defer_build=True)

    payment_id: str
    status: PaymentStatus
    detail: str


def header(description: str, schema: dict[str, Any], *, required: bool = False) -> Any:
    """A response header (Powertools' `OpenAPIResponseHeader` has no `required`; OpenAPI has)."""
    return {"description": description, "schema": schema, "required": required}


def retry_after(*, required: bool = True) -> dict[str, Any]:
    return {
        "Retry-After": header(
            "Seconds to wait before sending it again.", {"type": "integer", "minimum": 1}, required=required
        )
    }


REPLAYED = {
    "Idempotent-Replayed": header(
        "`true` when this is the stored answer to an earlier request with the same Idempotency-Key.",
        {"type": "string", "enum": ["true"]},
    )
}


def problem_json(description: str, *, headers: dict[str, Any] | None = None) -> Any:
    """An application/problem+json answer (RFC 9457). What API Gateway answers itself is added by ops/openapi.py."""
    answer: dict[str, Any] = {"description": description, "content": {PROBLEM_JSON: {"model": Problem}}}
    if headers:
        answer["headers"] = headers
    return answer


def json_answer(model: type, description: str, *, headers: dict[str, Any] | None = None) -> Any:
    answer: dict[str, Any] = {"description": description, "content": {JSON: {"model": model}}}
    if headers:
        answer["headers"] = headers
    return answer


def text_answer(description: str) -> Any:
    return {"description": description, "content": {TEXT: {"schema": {"type": "string"}}}}


def redirect_answer(description: str) -> Any:
    """A 302 with an empty body (no media type) and where to go."""
    return {
        "description": description,
        "content": {},
        "headers": {"Location": header("The web app's page.", {"type": "string"}, required=True)},
    }


UNAUTHORIZED_ADMIN = problem_json(
    "No admin token, or not a valid one (the same answer for both).",
    headers={"WWW-Authenticate": header("Bearer", {"type": "string"}, required=True)},
)
UNSUPPORTED_MEDIA_TYPE = problem_json(
    "The body is not sent as application/json (or another +json type) in UTF-8.",
    headers={"Accept": header("The media type the route reads.", {"type": "string"}, required=True)},
)
UNAVAILABLE = problem_json(
    "The database (or the payment gateway, or a setting) is unavailable: retry later, with the same key.",
    headers=retry_after(),
)


class IdempotencyExercise(BaseModel):
    """What GET /debug/test-idempotency ran, and whether the store behaved."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    type: str
    function_ran: int
    ok: bool


class ReviewItem(BaseModel):
    """One thing that needs a human (docs/operations.md); the payment, the journal and the next step."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    id: str
    kind: str = Field(description="payment, refund or transaction")
    reason: str
    since: str
    age_seconds: float
    next_step: str


class ReviewPage(BaseModel):
    model_config = ConfigDict(defer_build=True)

    items: list[ReviewItem]
    next: str | None = Field(description="The cursor of the next page (`after`), or null at the end.")


class Resolved(BaseModel):
    model_config = ConfigDict(defer_build=True)

    payment_id: str
    action: str
    status: str
    hypay_id: str | None
    credits_granted: int
    audit_id: str
    resolved_by: str


class RefundConfirming(BaseModel):
    """202: a refund (or the charge behind it) may have moved money and is being confirmed."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    payment_id: str
    status: str
    detail: str


class RefundSettled(BaseModel):
    """A refund of unknown outcome settled by an operator (200): succeeded or refused, as found at Hyp."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    refund_id: str
    payment_id: str
    hypay_transaction_id: str
    method: str
    amount: str
    currency: str
    status: str
    hypay_refund_id: str | None
    credits_taken: int
    detail: str | None


class Refund(BaseModel):
    """A refund that succeeded (201)."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    refund_id: str
    payment_id: str
    method: str
    amount: str
    currency: str
    hypay_transaction_id: str
    status: str
