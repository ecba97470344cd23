"""What the HTTP routes declare in OpenAPI beside their request models: every answer's status, media type,
body and headers, so that docs/openapi.json (`make openapi`) holds all a route can answer.

The bodies are built as dicts where they are answered (the services, `payments.http`); the models of
`payments.api_models` only describe them. A route names such a model (`json_answer("PaymentView", ...)`): its
schema is a `$ref` that `ops/openapi.py` fills from `payments.api_models`, so that a function's cold start
creates no pydantic model it never validates with. `proof/contract.py` fuzzes the running stack against the
document.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from payments.domain import hypay as protocol

if TYPE_CHECKING:
    from pydantic import BaseModel

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


REF_TEMPLATE = "#/components/schemas/{model}"


def model_ref(name: str) -> dict[str, Any]:
    """A schema naming a model of `payments.api_models`, which `ops/openapi.py` adds to the components."""
    return {"schema": {"$ref": REF_TEMPLATE.format(model=name)}}


# -- requests a route reads itself -------------------------------------------------------------------


def parameter(where: str, name: str, schema: dict[str, Any], description: str, *, required: bool = False) -> Any:
    return {"name": name, "in": where, "required": required, "description": description, "schema": schema}


IDEMPOTENCY_KEY = parameter(
    "header", "Idempotency-Key", IDEMPOTENCY_KEY_SCHEMA, IDEMPOTENCY_KEY_DESCRIPTION, required=True
)
# An operator's finding (a refund's outcome, a transaction closed) is not stored under its key: the key is recorded
# in the audit trail with the change, and repeating the finding is safe by the state it leaves.
AUDITED_KEY = parameter(
    "header",
    "Idempotency-Key",
    IDEMPOTENCY_KEY_SCHEMA,
    "1 to 255 printable ASCII characters (or the same in double quotes), recorded in the audit trail with the"
    " change. Repeating a finding is safe by state: one the row already holds answers as it is (200), another is"
    " a 409; the key itself is not replayed.",
    required=True,
)


def reads_itself(
    *,
    parameters: list[Any] | None = None,
    body: type[BaseModel] | str | dict[str, Any] | None = None,
    media_type: str = JSON,
    body_required: bool = True,
) -> dict[str, Any]:
    """The request of a route that reads it itself instead of through Powertools' validation (the admin
    routes check the admin first; the Hypay routes verify the raw bytes), for the decorator's
    `openapi_extensions`: `x-reads`, which `ops/openapi.py` merges into the operation (Powertools would
    replace a plain `parameters` with the signature's), a model's `$defs` into the components. A body named
    by a string is a model of `payments.api_models`."""
    declared: dict[str, Any] = {}
    if parameters:
        declared["parameters"] = parameters
    if body is not None:
        if isinstance(body, str):
            schema = model_ref(body)["schema"]
        elif isinstance(body, dict):
            schema = body
        else:
            schema = body.model_json_schema(ref_template=REF_TEMPLATE)
        declared["requestBody"] = {"required": body_required, "content": {media_type: {"schema": schema}}}
    return {"x-reads": declared}


PAYMENT_ID: dict[str, Any] = {"format": "uuid"}  # a path's payment_id: anything else is no payment (404)
REFUND_ID: dict[str, Any] = {"format": "uuid"}  # a path's refund_id: anything else is no refund (404)
# A path's hypay_id: a Hyp Id (any other text is no transaction: 404, as the document says by this pattern)
HYPAY_ID: dict[str, Any] = {"pattern": "^0*[1-9][0-9]*$", "maxLength": 20}


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
    answer: dict[str, Any] = {"description": description, "content": {PROBLEM_JSON: model_ref("Problem")}}
    if headers:
        answer["headers"] = headers
    return answer


def json_answer(model: type | str, description: str, *, headers: dict[str, Any] | None = None) -> Any:
    """A JSON answer; its body a model, or the name of one of `payments.api_models`."""
    body = model_ref(model) if isinstance(model, str) else {"model": model}
    answer: dict[str, Any] = {"description": description, "content": {JSON: body}}
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
