"""The per-request shortcuts (issue 14) give exactly what the general code gives, for any input.

Each shortcut skips work for the common case; these compare it with the general path it stands in for, over
generated inputs, so a shortcut can never change an answer, a stored hash or a statement.
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from decimal import Decimal
from enum import StrEnum
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
from hypothesis import given, settings
from hypothesis import strategies as st

from payments.adapters.db import bind, literal
from payments.domain import hypay as protocol
from payments.idempotency import PostgresPersistenceLayer
from payments.idempotency.persistence import _claim_id
from payments.names import repeatable

# -- bind: the exact types every request binds, rendered without the general `literal` ---------------------


@given(st.one_of(st.none(), st.integers(), st.text(), st.uuids()))
def test_bind_renders_the_common_types_as_literal_does(value: Any) -> None:
    try:
        expected = "SELECT " + literal(value)
    except ValueError as exc:  # NUL in text: refused the same way
        with pytest.raises(ValueError, match=str(exc)):
            bind("SELECT :v", v=value)
        return
    assert bind("SELECT :v", v=value) == expected


def test_bind_leaves_other_types_and_subclasses_to_literal() -> None:
    class Status(StrEnum):
        PAID = "it's paid"

    assert bind("SELECT :v", v=True) == "SELECT TRUE"  # a bool is an int, rendered as a bool
    assert bind("SELECT :v", v=Status.PAID) == "SELECT E'it''s paid'"
    assert bind("SELECT :v", v=Decimal("49.90")) == "SELECT (49.90)"
    with pytest.raises(TypeError):
        bind("SELECT :v", v=1.5)


def test_bind_still_names_a_missing_value() -> None:
    with pytest.raises(KeyError, match="no value for :v"):
        bind("SELECT :v")


# -- decoding a callback value: nothing encoded means nothing to decode ---------------------------------------


def _decoded_the_long_way(raw_value: str) -> str:
    data = unquote_to_bytes(raw_value.replace("+", " ")).replace(b"\x00", "\ufffd".encode())
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1255", errors="replace")


@given(st.text(alphabet=st.characters(codec="ascii")) | st.from_regex(r"[A-Za-z0-9%+.@ -]*", fullmatch=True))
def test_decode_value_shortcut_matches_the_full_decoding(raw_value: str) -> None:
    assert protocol.decode_value(raw_value) == _decoded_the_long_way(raw_value)


# -- callback_refusal: Hyp's own names, each once, need no closer look -----------------------------------------


def _refusal_the_long_way(raw: str) -> str | None:
    seen: set[str] = set()
    for name, _ in protocol.split_raw_query(raw):
        if not protocol._NAME.fullmatch(name):
            return "a parameter name is not a plain name"
        if name in protocol.OUTGOING_ONLY_FIELDS or name.lower() in protocol._OUTGOING_LOWER:
            return f"the parameter {name} belongs to requests to Hyp, not to callbacks"
        if name in seen:  # named only when the name may be repeated (payments.names)
            return f"the parameter {name} is repeated" if repeatable(name) else "a parameter is repeated"
        seen.add(name)
    return None


_NAMES = st.sampled_from(
    sorted(protocol.REDIRECT_FIELDS | protocol.OUTGOING_ONLY_FIELDS | {"sign", "ID", "Id%20", "", "x y", "KEY"})
)


@given(st.lists(_NAMES | st.text(max_size=6), max_size=12))
def test_callback_refusal_shortcut_matches_the_full_check(names: list[str]) -> None:
    raw = "&".join(f"{name}=1" for name in names)
    assert protocol.callback_refusal(raw) == _refusal_the_long_way(raw)


# -- the idempotency layer's hashing: Powertools' own results, computed once per call --------------------------

_PAYLOADS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


class _Reference(BasePersistenceLayer):
    """Powertools' base class as it is: the reference for every hash."""

    def _put_record(self, data_record: Any) -> None: ...
    def _get_record(self, idempotency_key: str) -> Any: ...
    def _update_record(self, data_record: Any) -> None: ...
    def _delete_record(self, data_record: Any) -> None: ...


def _pair(key: str, payload: str | None) -> tuple[PostgresPersistenceLayer, _Reference]:
    config = IdempotencyConfig(event_key_jmespath=key, payload_validation_jmespath=payload)
    ours, reference = PostgresPersistenceLayer(database=object()), _Reference()  # type: ignore[arg-type]
    for layer in (ours, reference):
        layer.configure(config, function_name="f", key_prefix="prefix")
    return ours, reference


@settings(max_examples=300)
@pytest.mark.filterwarnings("ignore:No idempotency key value found")
@given(
    st.sampled_from([("id", "body"), ("a.b", "[a, b]"), ("id", "powertools_json(raw)"), ("[id, b]", "b")]),
    st.dictionaries(st.sampled_from(["id", "body", "a", "b", "raw"]), _PAYLOADS, max_size=4),
)
def test_hashes_are_powertools_own(expressions: tuple[str, str], data: dict[str, Any]) -> None:
    ours, reference = _pair(*expressions)
    if "raw" in data:
        data["raw"] = json.dumps(data["raw"])
    try:
        expected_key = reference._get_hashed_idempotency_key(data)
    except Exception as exc:  # noqa: BLE001 - whatever Powertools raises, ours raises too
        with pytest.raises(type(exc)):
            ours._get_hashed_idempotency_key(data)
        return
    assert ours._get_hashed_idempotency_key(data) == expected_key
    assert ours._get_hashed_idempotency_key(data) == expected_key  # the kept one, for the same call
    try:
        expected_payload = reference._get_hashed_payload(data)
    except Exception as exc:  # noqa: BLE001
        with pytest.raises(type(exc)):
            ours._get_hashed_payload(data)
        return
    assert ours._get_hashed_payload(data) == expected_payload
    assert ours._get_hashed_payload(data) == expected_payload


def test_a_plain_field_missing_from_the_payload_is_refused_as_powertools_refuses_it() -> None:
    config = IdempotencyConfig(event_key_jmespath="id", raise_on_no_idempotency_key=True)
    layer = PostgresPersistenceLayer(database=object())  # type: ignore[arg-type]
    layer.configure(config, function_name="f")
    from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyKeyError

    for data in ({}, {"id": None}, {"id": ""}, {"id": []}):
        with pytest.raises(IdempotencyKeyError):
            layer._get_hashed_idempotency_key(data)


def test_kept_hashes_are_for_the_same_payload_object_and_function_only() -> None:
    ours, reference = _pair("id", "body")
    first, second = {"id": "1", "body": "a"}, {"id": "2", "body": "b"}
    assert ours._get_hashed_idempotency_key(first) == reference._get_hashed_idempotency_key(first)
    assert ours._get_hashed_idempotency_key(second) == reference._get_hashed_idempotency_key(second)
    equal = dict(first)  # equal, not the same: hashed again
    assert ours._get_hashed_idempotency_key(equal) == reference._get_hashed_idempotency_key(equal)
    ours.function_name = reference.function_name = "another"  # the same store serving another function
    assert ours._get_hashed_idempotency_key(equal) == reference._get_hashed_idempotency_key(equal)
    assert ours._get_hashed_payload(second) == reference._get_hashed_payload(second)


def test_expiry_is_now_plus_the_configured_seconds() -> None:
    ours, reference = _pair("id", "body")
    before = int(time.time())
    expiry = ours._get_expiry_timestamp()
    assert before + 3600 <= expiry <= int(time.time()) + 3600
    assert abs(expiry - reference._get_expiry_timestamp()) <= 1


def test_uuid_payloads_hash_as_powertools_hashes_them() -> None:
    ours, reference = _pair("id", "body")
    value = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert ours._generate_hash({"u": value}) == reference._generate_hash({"u": value})


@given(st.lists(st.tuples(_NAMES, st.from_regex(r"[A-Za-z0-9%+.@ -]{0,8}", fullmatch=True)), max_size=12))
def test_decoding_only_the_fields_read_gives_what_decoding_all_gives(pairs: list[tuple[str, str]]) -> None:
    raw = "&".join(f"{name}={value}" for name, value in pairs)
    wanted = frozenset({"Id", "Order", "errMsg", "KEY"})
    everything = protocol.decode_query(raw)
    assert protocol.decode_fields(raw, wanted) == {k: v for k, v in everything.items() if k in wanted}


def _sign_payload_the_long_way(raw: str) -> bytes | None:
    values: dict[str, str] = {}
    for name, value in protocol.split_raw_query(raw):
        if name in protocol.SIGNED_FIELDS:
            if name in values or not value.isascii():
                return None
            values[name] = value
    if set(values) != set(protocol.SIGNED_FIELDS):
        return None
    return "&".join(f"{name}={values[name]}" for name in protocol.SIGNED_FIELDS).encode("ascii")


_SIGNED_QUERY = st.lists(
    st.tuples(
        st.sampled_from([*protocol.SIGNED_FIELDS, "Sign", "Coin", "Hesh"]),
        st.from_regex(r"[A-Za-z0-9%.-]{0,6}", fullmatch=True) | st.sampled_from(["é", "49.90", ""]),
    ),
    max_size=14,
)


@given(_SIGNED_QUERY, st.booleans())
def test_the_signature_check_reads_a_query_as_the_full_walk_does(pairs: list[tuple[str, str]], whole: bool) -> None:
    if whole:  # every signed field present once, the rest as drawn: the usual shape
        pairs = [(name, "1") for name in protocol.SIGNED_FIELDS] + pairs
    raw = "&".join(f"{name}={value}" for name, value in pairs)
    assert protocol.redirect_sign_payload(raw) == _sign_payload_the_long_way(raw)
    key = "test-key"
    expected = protocol.redirect_signature(raw, key)
    signs = [value for name, value in pairs if name == "Sign"]
    genuine = expected is not None and len(signs) == 1 and signs[0].isascii() and signs[0].lower() == expected
    assert protocol.verify_redirect_signature(raw, key) == genuine
    raw_signed = raw + "&Sign=" + (expected or "")
    assert protocol.verify_redirect_signature(raw_signed, key) == (expected is not None and not signs)


def test_powertools_deep_copy_of_a_delivery_is_the_delivery_and_hashes_alike() -> None:
    import copy

    from payments.services.handle_callback import _Delivery

    plain = {"transaction_id": "70000001", "fingerprint": {"order": "o", "amount": "49.90", "ccode": 0}}
    delivery = _Delivery(plain)
    assert copy.deepcopy(delivery) is delivery
    ours, reference = _pair("transaction_id", "fingerprint")
    assert ours._get_hashed_idempotency_key(delivery) == reference._get_hashed_idempotency_key(plain)
    assert ours._get_hashed_payload(delivery) == reference._get_hashed_payload(plain)


def test_bind_keeps_percent_signs_and_renders_a_repeated_name_each_time() -> None:
    sql = "SELECT :n % 2, '100%' LIKE '%s%%', :n + :m -- 5% off: :n"
    assert bind(sql, n=7, m=None) == "SELECT (7) % 2, '100%' LIKE '%s%%', (7) + NULL -- 5% off: :n"


def test_claim_ids_are_version_4_uuids_as_uuid4_writes_them() -> None:
    ids = {_claim_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in list(ids)[:500]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


@pytest.mark.parametrize("status", ["COMPLETED", "INPROGRESS", "EXPIRED", "pending", ""])
@pytest.mark.parametrize("offset", [-10, -1, 0, 1, 10, None])
def test_records_read_from_the_table_expire_as_powertools_records_do(offset: int | None, status: str) -> None:
    from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyInvalidStatusError
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord

    from payments.idempotency.persistence import _Record

    expiry = None if offset is None else int(time.time()) + offset
    fields = {"idempotency_key": "k", "status": status, "expiry_timestamp": expiry, "response_data": "{}"}
    assert _Record(**fields).is_expired == DataRecord(**fields).is_expired
    try:
        expected = DataRecord(**fields).status
    except IdempotencyInvalidStatusError:
        with pytest.raises(IdempotencyInvalidStatusError):
            _ = _Record(**fields).status
        return
    assert _Record(**fields).status == expected


class _Captured(PostgresPersistenceLayer):
    def _put_record(self, data_record: Any) -> None:
        self.put = data_record


class _ReferenceCaptured(_Reference):
    def _put_record(self, data_record: Any) -> None:
        self.put = data_record


@pytest.mark.parametrize("remaining", [None, 0, 12_345])
def test_save_inprogress_claims_the_record_powertools_would(remaining: int | None) -> None:
    config = IdempotencyConfig(event_key_jmespath="id", payload_validation_jmespath="body", expires_after_seconds=90)
    ours, reference = _Captured(database=object()), _ReferenceCaptured()  # type: ignore[arg-type]
    for layer in (ours, reference):
        layer.configure(config, function_name="f")
    data = {"id": "1", "body": {"a": 1}}
    with warnings.catch_warnings(record=True) as ours_warned:
        warnings.simplefilter("always")
        ours.save_inprogress(data, remaining_time_in_millis=remaining)
    with warnings.catch_warnings(record=True) as reference_warned:
        warnings.simplefilter("always")
        reference.save_inprogress(data, remaining_time_in_millis=remaining)
    mine, theirs = ours.put, reference.put
    assert (mine.idempotency_key, mine.status, mine.payload_hash) == (
        theirs.idempotency_key,
        theirs.status,
        theirs.payload_hash,
    )
    assert abs(mine.expiry_timestamp - theirs.expiry_timestamp) <= 1
    if remaining is None:
        assert mine.in_progress_expiry_timestamp is None is theirs.in_progress_expiry_timestamp
    else:
        assert abs(mine.in_progress_expiry_timestamp - theirs.in_progress_expiry_timestamp) <= 50
    assert [str(w.message) for w in ours_warned] == [str(w.message) for w in reference_warned]


def test_save_inprogress_answers_from_the_local_cache_as_powertools_does() -> None:
    from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyItemAlreadyExistsError
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord

    config = IdempotencyConfig(event_key_jmespath="id", use_local_cache=True)
    ours = _Captured(database=object())  # type: ignore[arg-type]
    ours.configure(config, function_name="f")
    data = {"id": "1"}
    key = ours._get_hashed_idempotency_key(data)
    ours._save_to_cache(DataRecord(idempotency_key=key, status="COMPLETED", expiry_timestamp=int(time.time()) + 60))
    with pytest.raises(IdempotencyItemAlreadyExistsError):
        ours.save_inprogress(data, remaining_time_in_millis=1000)
    assert not hasattr(ours, "put")


@given(
    st.text(max_size=12) | st.sampled_from(['{"a": 1}', "[1]", "NaN", "-1", " 7", "true", "nope", "payment completed"])
)
def test_log_messages_become_what_powertools_makes_of_them(message: str) -> None:
    from payments.observability import _message_json

    try:
        expected: Any = json.loads(message)
    except (json.JSONDecodeError, TypeError, ValueError):
        expected = message  # Powertools keeps the text when it is not a document
    try:
        got = _message_json(message)
    except (json.JSONDecodeError, TypeError, ValueError):
        got = message
    assert got == expected or (got != got and expected != expected)  # NaN is NaN


# -- the HTTP answers: compression, the correlation id, the redirect's payment id ---------------------------

_HEADERS = st.dictionaries(
    st.sampled_from(["accept-encoding", "Accept-Encoding", "ACCEPT-ENCODING", "accept", "user-agent"]),
    st.sampled_from(["gzip", "br, gzip", "deflate", "identity", "", "gzip;q=0", "text/html"]),
    max_size=4,
)


@given(st.booleans(), st.sampled_from([None, True, False]), _HEADERS)
def test_compression_is_decided_as_powertools_decides_it(route: bool, response: bool | None, headers: Any) -> None:
    from aws_lambda_powertools.event_handler.api_gateway import ResponseBuilder
    from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

    from payments.http import _ResponseBuilder

    def event() -> APIGatewayProxyEventV2:
        return APIGatewayProxyEventV2({"headers": dict(headers)})

    expected = ResponseBuilder._has_compression_enabled(route, response, event())
    assert _ResponseBuilder._has_compression_enabled(route, response, event()) == bool(expected)


def test_the_functions_answer_with_the_builder_that_skips_the_headers() -> None:
    from payments.http import HttpApi, _ResponseBuilder

    assert HttpApi()._response_builder_class is _ResponseBuilder


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@given(
    st.dictionaries(
        st.sampled_from(["requestContext", "headers", "version"]),
        _JSON | st.fixed_dictionaries({}, optional={"requestId": _JSON, "http": _JSON}),
        max_size=3,
    )
)
def test_the_correlation_id_is_what_powertools_path_selects(event: dict[str, Any]) -> None:
    from aws_lambda_powertools.logging import correlation_paths
    from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2
    from aws_lambda_powertools.utilities.jmespath_utils import query

    from payments.observability import request_id

    expected = query(envelope=correlation_paths.API_GATEWAY_HTTP, data=event)
    assert request_id(event) == expected
    # Powertools' own event class (a mapping, which its resolver also accepts): read alike
    assert request_id(APIGatewayProxyEventV2(event)) == expected


@given(
    st.uuids() | st.text(max_size=20),
    st.sampled_from(["https://app.example.test/done", "https://app.example.test/done?x=1"]),
)
def test_the_redirect_carries_the_payment_id_as_urlencode_writes_it(payment_id: Any, url: str) -> None:
    from urllib.parse import urlencode

    from payments.hypay_middleware import redirect

    expected = url + ("&" if "?" in url else "?") + urlencode({"payment_id": str(payment_id)})
    assert redirect(url, payment_id).headers["Location"] == expected


# -- the idempotency layer's two first-call statements, rendered without `bind`'s lookups --------------------------

_BOUND = st.none() | st.integers() | st.text()


@settings(max_examples=300)
@given(
    st.text(),
    st.none() | st.integers(),
    st.none() | st.integers(),
    st.none() | st.text(),
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.builds(_claim_id) | st.text(),
)
def test_the_claim_is_rendered_as_bind_renders_it(
    key: str, expiry: int | None, in_progress: int | None, payload_hash: str | None, now: float, claim: str
) -> None:
    from payments.idempotency.persistence import _Statements

    statements = _Statements('"public"."idempotency_keys"')
    try:
        expected = bind(
            statements.claim,
            key=key,
            claim=claim,
            expiry=expiry,
            in_progress_expiry=in_progress,
            hash=payload_hash,
            now=int(now),
            now_ms=int(now * 1000),
        )
    except ValueError as exc:  # NUL: refused the same way
        with pytest.raises(ValueError, match=str(exc)):
            statements.render_claim(
                key=key, claim=claim, expiry=expiry, in_progress_expiry=in_progress, payload_hash=payload_hash, now=now
            )
        return
    assert expected == statements.render_claim(
        key=key, claim=claim, expiry=expiry, in_progress_expiry=in_progress, payload_hash=payload_hash, now=now
    )


@settings(max_examples=300)
@given(st.text(), st.none() | st.text(), _BOUND, _BOUND, st.none() | st.integers(), st.none() | st.text())
def test_the_completion_is_rendered_as_bind_renders_it(
    key: str, claim: str | None, text: Any, data: Any, expiry: int | None, payload_hash: str | None
) -> None:
    from payments.idempotency.persistence import _Statements

    statements = _Statements("idempotency_keys")
    values = {"key": key, "claim": claim, "text": text, "data": data, "expiry": expiry}
    try:
        expected = bind(statements.complete, **values, hash=payload_hash)
    except ValueError as exc:
        with pytest.raises(ValueError, match=str(exc)):
            statements.render_complete(**values, payload_hash=payload_hash)
        return
    assert statements.render_complete(**values, payload_hash=payload_hash) == expected


@given(st.text() | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False))
def test_single_values_hash_as_powertools_hashes_them(value: Any) -> None:
    ours, reference = _pair("id", "body")
    assert ours._generate_hash(value) == reference._generate_hash(value)


class _Text(str):
    """A str subclass: hashed by the general encoder, as Powertools hashes it."""


def test_subclasses_of_str_and_int_take_the_general_encoder() -> None:
    ours, reference = _pair("id", "body")
    for value in (_Text("é"), True, False):
        assert ours._generate_hash(value) == reference._generate_hash(value)


_JSON_TEXT = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(alphabet=st.sampled_from('a\x00\\u0é"\ud800\udc00\U0001f600')),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(alphabet=st.sampled_from("k\x00\\u0"), max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
).map(json.dumps)


def _jsonb_the_long_way(text: str) -> str | None:
    from payments.idempotency.persistence import _unstorable

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        value = json.loads(text, parse_constant=refuse)
    except ValueError:
        return None
    return None if _unstorable(value) else text


@settings(max_examples=300)
@given(_JSON_TEXT | st.text(alphabet=st.sampled_from('{}[]"\\u0:,a1 ')))
def test_jsonb_refuses_what_the_full_walk_refuses(text: str) -> None:
    from payments.idempotency.persistence import _as_jsonb

    expected = _jsonb_the_long_way(text) if text else None
    assert _as_jsonb(text) == expected


@pytest.mark.parametrize("depth", [5_000, 200_000])
def test_jsonb_refuses_json_nested_deeper_than_python_reads(depth: int) -> None:
    from payments.idempotency.persistence import _as_jsonb

    assert _as_jsonb("[" * depth + '"\\u0000"' + "]" * depth) is None  # the NUL walk would recurse too deep
    assert _as_jsonb("[" * depth + "]" * depth) in (None, "[" * depth + "]" * depth)  # never an exception


def test_a_record_with_a_status_of_no_string_is_refused_as_powertools_refuses_it() -> None:
    from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyInvalidStatusError

    from payments.idempotency.persistence import _Record

    with pytest.raises(IdempotencyInvalidStatusError):
        _ = _Record(idempotency_key="k", status=["COMPLETED"], expiry_timestamp=None).status  # type: ignore[arg-type]


# -- the event's string maps: every value exactly a str ----------------------------------------------------------


class _Text(str):
    pass


@given(
    st.sampled_from(["headers", "queryStringParameters", "pathParameters"]),
    st.none()
    | st.lists(st.sampled_from(["x", _Text("x"), 1, None, b"x", ["x"]]), max_size=4).map(
        lambda values: {f"k{i}": v for i, v in enumerate(values)}
    )
    | st.sampled_from([[], "x"]),
)
def test_the_event_check_takes_string_maps_as_the_walk_over_their_values_does(member: str, values: Any) -> None:
    from payments.http import http_event_problem

    event = {
        "version": "2.0",
        "rawPath": "/",
        "requestContext": {"stage": "$default", "http": {"method": "GET", "sourceIp": "203.0.113.7"}},
        member: values,
    }
    strings = values is None or (
        isinstance(values, dict) and all(type(v) is str for v in values.values())  # noqa: E721 - exact str
    )
    assert (http_event_problem(event) is None) == strings
