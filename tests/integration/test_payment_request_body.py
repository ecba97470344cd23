"""POST /payments reads only a UTF-8 JSON object sent as JSON: anything else is a 4xx problem and writes nothing.

Through the handler with real Postgres: each refusal leaves payments, idempotency_keys and rate_limits as
they were (a payment made before each test makes "as they were" more than "empty").
"""

from __future__ import annotations

import base64
import json

import pytest

from ops.lambda_context import LocalLambdaContext
from ops.local_api import build_event
from ops.seed import DEMO_USER_ID
from ops.template import load_handler
from tests.support.api import TEMPLATE, Answer
from tests.support.leaks import holds
from tests.support.payments import CREATE, CVV, STARTER, Env, post

TABLES = ("payments", "idempotency_keys", "rate_limits")
VALID = json.dumps({"credit_pack_id": STARTER}).encode()
WITH_CVV = json.dumps({"credit_pack_id": STARTER, "saved_card": True, "cvv": CVV}).encode()


def send(
    body: bytes, content_type: str | None = "application/json", *, binary: bool = False, flagged: str | None = None
) -> Answer:
    """One POST /payments as API Gateway hands it over: no Content-Type header when `content_type` is None;
    `binary`: the body base64-encoded, as API Gateway passes a body it does not take for text; `flagged`: this text
    as the event's body, said to be base64 (an event API Gateway never sends: a direct invoke, a hand-written one)."""
    found = TEMPLATE.find_route("POST", "/payments")
    assert found is not None
    route, _ = found
    headers = {"idempotency-key": "key-1"} | ({} if content_type is None else {"content-type": content_type})
    event = build_event(
        method="POST",
        target="/payments",
        headers=headers,
        body=body,
        source_ip="203.0.113.7",
        route_key=route.route_key,
        path_parameters={},
        claims={"sub": DEMO_USER_ID, "aud": "authenticated", "role": "authenticated"},
    )
    if binary:
        event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
    if flagged is not None:
        event["body"], event["isBase64Encoded"] = flagged, True
    handler = load_handler(TEMPLATE.functions[CREATE])
    result = handler(event, LocalLambdaContext(function_name=CREATE, timeout_seconds=20))
    return Answer(
        result["statusCode"], {k.lower(): v for k, v in (result.get("headers") or {}).items()}, result["body"]
    )


def tables(env: Env) -> dict[str, list[list]]:
    return {name: env.rows(f"SELECT to_jsonb(t)::text FROM {name} t ORDER BY 1") for name in TABLES}


@pytest.fixture
def before(env: Env) -> dict[str, list[list]]:
    """One payment made with another key, then what the tables hold."""
    assert post({"credit_pack_id": STARTER}, key="earlier").status == 201
    snapshot = tables(env)
    assert all(snapshot[name] for name in TABLES)
    return snapshot


def assert_refused(answer: Answer, status: int, env: Env, before: dict[str, list[list]]) -> str:
    """A problem+json answer with `status`, no CVV in it, nothing written; returns its detail."""
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/problem+json"
    problem = json.loads(answer.body)
    assert problem["status"] == status and problem["detail"]
    assert not holds(answer.body, CVV)
    assert tables(env) == before
    return problem["detail"]


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/xml",
        "text/json",
        "application/jsonx",
        "application/json-seq",
        "multipart/form-data",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        "application/json, text/plain",  # two Content-Type headers, joined by API Gateway
    ],
)
def test_a_json_body_under_another_media_type_is_415(env: Env, before: dict, content_type: str) -> None:
    # Given a well-formed request body, with a CVV, sent under a media type that is not JSON
    # When it is posted
    answer = send(WITH_CVV, content_type)
    # Then 415 says to send application/json, names what is accepted, and writes nothing
    detail = assert_refused(answer, 415, env, before)
    assert "application/json" in detail and answer.headers["accept"] == "application/json"


def test_a_form_that_would_be_a_valid_request_is_415(env: Env, before: dict) -> None:
    # Given the body as a form, which Powertools would parse and validate as the request
    form = f"credit_pack_id={STARTER}".encode()
    # When it is posted as a form
    answer = send(form, "application/x-www-form-urlencoded")
    # Then it is refused for its media type, not read as a form
    detail = assert_refused(answer, 415, env, before)
    assert detail == "application/x-www-form-urlencoded is not accepted: send the body as application/json"


def test_a_missing_content_type_is_415(env: Env, before: dict) -> None:
    # Given a valid JSON body with no Content-Type header
    # When it is posted
    answer = send(VALID, None)
    # Then 415: the media type is not guessed from the body
    assert "Content-Type header is required" in assert_refused(answer, 415, env, before)


def test_an_unreadable_content_type_is_not_repeated(env: Env, before: dict) -> None:
    # Given a Content-Type that is not a media type at all
    # When it is posted
    answer = send(VALID, f"{CVV} <script>")
    # Then 415 without repeating the header
    assert assert_refused(answer, 415, env, before).startswith("this Content-Type is not accepted")


def test_a_card_number_sent_as_the_content_type_is_not_repeated(env: Env, before: dict) -> None:
    # Given a Content-Type shaped as a media type, made of card numbers
    pan = "4580458045804580"
    # When it is posted
    answer = send(VALID, f"{pan}/{pan}")
    # Then 415 without repeating it
    assert assert_refused(answer, 415, env, before).startswith("this Content-Type is not accepted")
    assert pan not in answer.body


@pytest.mark.parametrize("flagged", ["\x80", "é30=", '{"credit_pack_id": "é"}'])
def test_a_body_said_to_be_base64_that_is_not_ascii_is_400(env: Env, before: dict, flagged: str) -> None:
    # Given an event whose body is said to be base64 but holds a character base64 never has
    # When it is handled
    answer = send(b"", flagged=flagged)
    # Then 400 saying so (it used to be the catch-all 500 and the UnhandledError alarm)
    assert assert_refused(answer, 400, env, before) == "the body is not valid base64 although the event says it is"


@pytest.mark.parametrize("charset", ["utf-16", "iso-8859-8", ""])
def test_a_charset_other_than_utf8_is_415(env: Env, before: dict, charset: str) -> None:
    # Given JSON declared in another charset
    # When it is posted
    answer = send(VALID, f"application/json; charset={charset}")
    # Then 415: JSON is UTF-8
    assert "UTF-8 only" in assert_refused(answer, 415, env, before)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "APPLICATION/JSON",
        "Application/Json",
        "application/json; charset=UTF-8",
        'application/json;charset="utf-8"',
        " application/json ; charset=utf8 ",
        "application/merge-patch+json",
        "application/vnd.api+json",
    ],
)
def test_json_media_types_are_matched_without_case_and_with_parameters(env: Env, content_type: str) -> None:
    # Given a valid request under a JSON media type, however written
    # When it is posted, as text and base64-encoded
    text, binary = send(VALID, content_type), send(VALID, content_type, binary=True)
    # Then it is created once (the second is the same key's replay)
    assert text.status == 201, text.body
    assert binary.status == 201 and binary.headers["idempotent-replayed"] == "true", binary.body
    assert len(env.payments()) == 1


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"credit_pack_id": "\xff"}', "byte 21: invalid start byte"),
        (b'{"saved_card": true, "cvv": "7\xe23\x8219"}', "byte 31: invalid continuation byte"),
        (b'{"credit_pack_id": "\xe2\x82', "byte 21: unexpected end of data"),
        (b"\xff\xfe{\x00}\x00", "byte 1: invalid start byte"),  # UTF-16
    ],
)
def test_a_body_that_is_not_utf8_is_400_saying_where(env: Env, before: dict, body: bytes, where: str) -> None:
    # Given bytes that are not UTF-8, passed base64-encoded as API Gateway passes them
    # When they are posted as JSON
    answer = send(body, "application/json", binary=True)
    # Then 400 names the byte, and repeats none of the body
    assert assert_refused(answer, 400, env, before) == f"the body is not UTF-8: {where}"


def test_a_body_that_is_not_utf8_is_400_when_decoded_as_text(env: Env, before: dict) -> None:
    # Given bytes that are not UTF-8, which the gateway decodes as text (replacing what is not UTF-8)
    # When they are posted as JSON
    answer = send(b"\xff\xfe{}", "application/json")
    # Then 400 all the same: what is left is not JSON
    assert "line 1, column 1" in assert_refused(answer, 400, env, before)


def test_a_byte_order_mark_is_400(env: Env, before: dict) -> None:
    # Given a valid body after a UTF-8 byte order mark
    # When it is posted
    answer = send(b"\xef\xbb\xbf" + VALID, binary=True)
    # Then 400 says so
    assert "byte order mark" in assert_refused(answer, 400, env, before)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ('{"credit_pack_id": }', "line 1, column 20: Expecting value"),
        ('{\n  "credit_pack_id": "x",\n}', "line 2, column 24: Illegal trailing comma before end of object"),
        ('{"saved_card": true, "cvv": "' + CVV + '"', "line 1, column 35: Expecting ',' delimiter"),
        ('{"saved_card": true, "cvv": "' + CVV, "line 1, column 29: Unterminated string"),
        ('{"cvv": "73\x0119"}', "line 1, column 12: Invalid control character"),
        ("{'credit_pack_id': 1}", "line 1, column 2: Expecting property name enclosed in double quotes"),
        ('{"credit_pack_id": "' + STARTER + '"} x', "line 1, column 60: Extra data"),
        ("not json", "line 1, column 1: Expecting value"),
        ("   ", "line 1, column 4: Expecting value"),
    ],
)
def test_malformed_json_is_400_naming_line_and_column(env: Env, before: dict, body: str, detail: str) -> None:
    # Given a body that is not JSON
    # When it is posted
    answer = send(body.encode())
    # Then 400 says where in words, and repeats none of the body
    assert assert_refused(answer, 400, env, before) == f"the body is not valid JSON: {detail}"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ('{"credit_pack_id": NaN}', "the body is not valid JSON: NaN is not a JSON number"),
        ('{"credit_pack_id": -Infinity}', "the body is not valid JSON: -Infinity is not a JSON number"),
        ('{"save_card": true, "save_card": false}', "the body names the same member twice in one object"),
        ('{"credit_pack_id": ' + "1" * 5000 + "}", "the body holds a number too long to read"),
        ("[" * 10_000, "the body nests arrays or objects too deeply"),
    ],
)
def test_json_python_reads_but_the_api_does_not_is_400(env: Env, before: dict, body: str, detail: str) -> None:
    # Given a body Python's parser takes (or fails on with an error of its own) but that is no request
    # When it is posted
    answer = send(body.encode())
    # Then 400 says why, never 500
    assert assert_refused(answer, 400, env, before) == detail


@pytest.mark.parametrize("binary", [False, True])
def test_an_empty_body_is_400(env: Env, before: dict, binary: bool) -> None:
    # Given no body at all
    # When it is posted as JSON
    answer = send(b"", binary=binary)
    # Then 400
    assert assert_refused(answer, 400, env, before) == "the body is empty: send a JSON object"


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ([], "an array"),
        ([{"credit_pack_id": STARTER}], "an array"),
        ("credit_pack_id", "a string"),
        (1, "a number"),
        (1.5, "a number"),
        (True, "a boolean"),
        (None, "null"),
    ],
)
def test_json_that_is_not_an_object_is_400(env: Env, before: dict, body: object, kind: str) -> None:
    # Given JSON that is not an object
    # When it is posted
    answer = send(json.dumps(body).encode())
    # Then 400 names what it is
    assert assert_refused(answer, 400, env, before) == f"the body must be a JSON object, not {kind}"


@pytest.mark.parametrize("field", ["save_card", "saved_card"])
@pytest.mark.parametrize("value", ["yes", 1, 0, "true", "false", None])
def test_booleans_are_json_true_or_false_only(env: Env, before: dict, field: str, value: object) -> None:
    # Given a flag that is not JSON true/false
    body = json.dumps({"credit_pack_id": STARTER, field: value}).encode()
    # When it is posted
    answer = send(body)
    # Then 400 names the field
    assert assert_refused(answer, 400, env, before) == f"{field}: Input should be a valid boolean"


@pytest.mark.parametrize("value", [True, False])
def test_json_true_and_false_are_taken(env: Env, value: bool) -> None:
    # Given save_card as a JSON boolean
    # When it is posted
    answer = send(json.dumps({"credit_pack_id": STARTER, "save_card": value}).encode())
    # Then the payment is created
    assert answer.status == 201, answer.body
    assert len(env.payments()) == 1


@pytest.mark.parametrize("member", ["5326105300985614", "cvv=7319", "card 5326 1053 0098 5614"])
def test_a_member_named_like_card_data_is_not_repeated_in_the_400(env: Env, before: dict, member: str) -> None:
    # Given a body with a member the request does not take, named like card data (a client's mistake)
    answer = send(json.dumps({"credit_pack_id": STARTER, member: 1}).encode())
    # Then the 400 says a member is not taken, without repeating what looks like card data
    detail = assert_refused(answer, 400, env, before)
    assert detail == "(a member, name not repeated): Extra inputs are not permitted"
    assert "5326105300985614" not in answer.body and "5326 1053" not in answer.body and "7319" not in answer.body


def test_a_member_the_request_does_not_take_is_named(env: Env, before: dict) -> None:
    answer = send(json.dumps({"credit_pack_id": STARTER, "coupon": "X"}).encode())
    assert assert_refused(answer, 400, env, before) == "coupon: Extra inputs are not permitted"


def test_a_body_of_many_unknown_members_gets_a_small_400_naming_the_first(env: Env, before: dict) -> None:
    # Given a body of 1,000 members the request does not take (a small JSON text: under the size limit)
    members = {f"m{n}": 0 for n in range(1000)}
    answer = send(json.dumps({"credit_pack_id": STARTER, **members}, separators=(",", ":")).encode())
    # Then the 400 names the first ten and counts the rest: its size does not grow with the request's
    detail = assert_refused(answer, 400, env, before)
    assert detail.startswith("m0: Extra inputs are not permitted; m1: ") and detail.endswith("; and 990 more")
    assert len(answer.body) < 2000


@pytest.mark.parametrize("encoded", [False, True], ids=["text", "base64"])
def test_a_body_past_the_size_limit_is_refused_before_it_is_read(env: Env, before: dict, encoded: bool) -> None:
    from payments.request_body import MAX_BODY_CHARACTERS

    # Given a body just past the limit (what API Gateway lets through is up to 10 MB; a request of this API is a
    # few hundred bytes)
    body = json.dumps({"credit_pack_id": STARTER, "x": "a" * MAX_BODY_CHARACTERS}).encode()
    answer = send(body, binary=encoded)
    # Then it is refused, saying so, without naming what it held
    assert assert_refused(answer, 400, env, before).startswith("the body is too large")
    # And a body just under it is read as any other
    fits = json.dumps({"credit_pack_id": STARTER, "x": ""}).encode()
    fits = fits[:-1] + b" " * (MAX_BODY_CHARACTERS - len(fits)) + b"}"
    assert assert_refused(send(fits), 400, env, before) == "x: Extra inputs are not permitted"
