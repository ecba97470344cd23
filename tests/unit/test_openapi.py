"""docs/openapi.json is generated from the code and says what the code does.

Fails when the file is stale (fix: `make openapi`), and when a schema in it accepts what a route refuses or
refuses what a route accepts (the patterns the routes check by hand, the rules of the request models). The
running routes are held to the whole document by proof/contract.py (schemathesis).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from ops.openapi import OUT, build, render
from ops.template import load, load_module
from payments.api_schema import CALLBACK_FIELDS, CALLBACK_FORM, IDEMPOTENCY_KEY_SCHEMA
from payments.domain import hypay as protocol
from payments.domain.money import Money
from payments.domain.payment import CreatePaymentRequest
from payments.errors import InvalidRequest
from payments.services.review import OPERATOR_REASON_SCHEMA, ResolveRequest, operator_reason

DOCUMENT = build()
SCHEMAS = DOCUMENT["components"]["schemas"]


@cache
def _app(name: str) -> Any:
    return load_module(load().functions[name])


def _validator(schema: dict[str, Any]) -> Any:
    return jsonschema_rs.validator_for({**schema, "components": DOCUMENT["components"]}, validate_formats=True)


def _operation(method: str, path: str) -> dict[str, Any]:
    return DOCUMENT["paths"][path][method]


def test_openapi_document_is_up_to_date() -> None:
    assert OUT.read_text(encoding="utf-8") == render(), "docs/openapi.json is stale: run `make openapi`"


def test_openapi_documents_the_payment_contract() -> None:
    create = _operation("post", "/payments")
    assert create["security"] == [{"webAppJwt": []}]
    assert [(p["name"], p["required"]) for p in create["parameters"]] == [("Idempotency-Key", True)]
    assert set(create["responses"]) == {"201", "202", "400", "401", "402", "403", "404", "409", "415", "422", "429"} | {
        "502",
        "503",
    }
    assert "CreatePaymentRequest" in json.dumps(create["requestBody"])
    # API Gateway's authorizer answers 401 (and 403 in the Lambda authorizer's modes) in its own JSON
    assert set(create["responses"]["401"]["content"]) == {"application/problem+json", "application/json"}
    assert create["responses"]["503"]["headers"]["Retry-After"]["required"] is True
    # Our rate limit says when (Retry-After); API Gateway's throttle, the other 429, does not
    assert set(create["responses"]["429"]["content"]) == {"application/problem+json", "application/json"}
    assert create["responses"]["429"]["headers"]["Retry-After"]["required"] is False
    assert "Idempotent-Replayed" in create["responses"]["201"]["headers"]
    assert "security" not in _operation("get", "/hypay/return")  # Hyp's redirect carries no token


def test_no_route_declares_a_500_or_powertools_validation_answers() -> None:
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            assert "500" not in operation["responses"], (method, path)
            assert "HTTPValidationError" not in json.dumps(operation), (method, path)


def test_hypay_routes_declare_forms_text_and_redirects_not_json() -> None:
    back = _operation("get", "/hypay/return")["responses"]
    assert set(back) == {"200", "302", "429"}  # 429: API Gateway's throttle
    assert back["200"]["content"] == {"text/plain": {"schema": {"type": "string"}}}
    assert back["302"]["headers"]["Location"]["required"] is True and "content" not in back["302"]
    notify = _operation("post", "/hypay/notify")
    assert list(notify["requestBody"]["content"]) == ["application/x-www-form-urlencoded"]
    assert notify["requestBody"]["required"] is False  # no body: the query string is read instead
    for method in ("get", "post"):
        answers = _operation(method, "/hypay/notify")["responses"]
        assert set(answers) == {"200", "400", "403", "404", "409", "429", "503"}
        assert answers["503"]["headers"]["Retry-After"]["required"] is True
    names = [p["name"] for p in _operation("get", "/hypay/notify")["parameters"]]
    assert names == list(CALLBACK_FIELDS) and set(names) == protocol.REDIRECT_FIELDS


def test_admin_routes_take_the_admin_token_a_key_and_their_body() -> None:
    for path in ("/admin/payments/{payment_id}/resolve", "/admin/payments/{payment_id}/refund"):
        operation = _operation("post", path)
        assert operation["security"] == [{"adminToken": []}]
        assert ("Idempotency-Key", True) in [(p["name"], p["required"]) for p in operation["parameters"]]
        assert operation["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
        assert list(operation["requestBody"]["content"]) == ["application/json"]


# -- the schemas say what the code accepts -----------------------------------------------------------------

_PRINTABLE_AND_MORE = st.characters(codec="utf-8", max_codepoint=0x3100)


def _same_verdicts(schema: dict[str, Any], accepts: Callable[[Any], bool], value: Any) -> None:
    assert _validator(schema).is_valid(value) == accepts(value), repr(value)


def _key_accepted(value: str) -> bool:
    try:
        _app("CreatePaymentFunction")._idempotency_key(value)
    except InvalidRequest:
        return False
    return True


@pytest.mark.parametrize(
    "key",
    ["k", " k ", '"', '""', '" "', '"k"', "x" * 255, "x" * 256, f'"{"x" * 255}"', f'"{"x" * 256}"', "tab\there", "é"],
)
def test_idempotency_key_schema_edges(key: str) -> None:
    _same_verdicts(IDEMPOTENCY_KEY_SCHEMA, _key_accepted, key)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(max_codepoint=0x7F), max_size=8) | st.text(_PRINTABLE_AND_MORE, max_size=260))
def test_idempotency_key_schema_is_what_the_routes_accept(key: str) -> None:
    _same_verdicts(IDEMPOTENCY_KEY_SCHEMA, _key_accepted, key)


def _fields_accepted(raw: dict[str, str]) -> bool:
    return protocol.malformed("&".join(f"{k}={v}" for k, v in raw.items())) is None


_FIELD_VALUES = st.text(st.sampled_from("0123456789.0\u0660\uff11 +-\na"), max_size=24)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({"Id": _FIELD_VALUES, "CCode": _FIELD_VALUES, "Amount": _FIELD_VALUES}))
def test_callback_field_schemas_are_what_the_routes_accept(fields: dict[str, str]) -> None:
    schema = {"type": "object", "properties": {k: CALLBACK_FORM["properties"][k] for k in fields}}
    _same_verdicts(schema, _fields_accepted, fields)


def _reason_accepted(value: str) -> bool:
    try:
        operator_reason(value)
    except ValueError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=6) | st.text(_PRINTABLE_AND_MORE, max_size=20))
def test_operator_reason_schema_is_what_the_admin_routes_accept(reason: str) -> None:
    _same_verdicts({"type": "string", **OPERATOR_REASON_SCHEMA}, _reason_accepted, reason)


def _model_accepts(model: type[BaseModel]) -> Callable[[Any], bool]:
    def accepts(body: Any) -> bool:
        try:
            model.model_validate(body)
        except ValidationError:
            return False
        return True

    return accepts


_ANY = st.none() | st.booleans() | st.integers(-1, 1) | st.text(max_size=3) | st.just("123\n")
_BODIES = {
    "CreatePaymentRequest": st.dictionaries(
        st.sampled_from(["credit_pack_id", "save_card", "saved_card", "cvv", "price"]),
        st.uuids().map(str) | st.sampled_from(["123", "1234", "12345", "12a", "123\n", "\u0661\u0662\u0663"]) | _ANY,
    ),
    "ResolveRequest": st.dictionaries(
        st.sampled_from(["action", "reason", "hypay_id", "extra"]),
        st.sampled_from(["complete", "fail", "why", " ", "\x01x", "12", "0", "1\n", "a1"]) | _ANY,
    ),
    "RefundBody": st.dictionaries(
        st.sampled_from(["reason", "amount", "currency", "hypay_id"]),
        st.sampled_from(["why", "\t", "0", "0.00", "00.0", "0.01", "10", "1.5", "1.234", "ILS", "EUR", "XYZ", "7"])
        | _ANY,
    ),
}


def _refund_accepted(body: Any) -> bool:
    """The model, and then the service's own checks: a positive amount, a Hyp Id that is one (not all zeros)."""
    from payments.domain import hypay as protocol

    if not _model_accepts(_app("AdminFunction").RefundBody)(body):
        return False
    if body.get("hypay_id") is not None and protocol.hyp_id(body["hypay_id"]) is None:
        return False
    return body.get("amount") is None or Money.of(body["amount"], body.get("currency", "ILS")).minor > 0


@pytest.mark.parametrize("name", sorted(_BODIES))
def test_request_body_schemas_are_what_the_routes_accept(name: str) -> None:
    accepts = {
        "CreatePaymentRequest": _model_accepts(CreatePaymentRequest),
        "ResolveRequest": _model_accepts(ResolveRequest),
        "RefundBody": _refund_accepted,
    }[name]
    schema = SCHEMAS.get(name) or next(
        content["schema"]
        for item in DOCUMENT["paths"].values()
        for operation in item.values()
        for content in operation.get("requestBody", {}).get("content", {}).values()
        if content["schema"].get("title") == name
    )

    @settings(max_examples=400, deadline=None)
    @given(_BODIES[name])
    def check(body: dict[str, Any]) -> None:
        _same_verdicts(schema, accepts, body)

    check()


def test_a_cvv_with_a_new_line_is_refused() -> None:
    # Given a CVV that `re.match` with `$` let through (a trailing new line passed on to Hyp)
    body = {"credit_pack_id": "aaaaaaaa-0000-4000-8000-000000000001", "saved_card": True, "cvv": "123\n"}
    # Then the request model refuses it, as the document does
    with pytest.raises(ValidationError, match="cvv must be 3 or 4 digits"):
        CreatePaymentRequest.model_validate(body)
    assert not _validator(SCHEMAS["CreatePaymentRequest"]).is_valid(body)
