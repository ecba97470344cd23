"""How the API reads a JSON request body: media type, encoding, syntax and shape, each refused in words.

Every route taking a body reads it with `json_object` before anything else, so a body the API cannot take is
a 4xx before any database write. (Powertools' request validation picks the body parser by a case-sensitive
`application/json` prefix and raises an unhandled error for any other media type: a 500.)
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from payments.errors import InvalidRequest
from payments.names import without_digit_runs

# `application/json`, or a structured `+json` type (RFC 6838 section 4.2.8), e.g. application/merge-patch+json.
_JSON_MEDIA_TYPE = re.compile(r"application/(json|[a-z0-9][a-z0-9!#$&^_.+-]*\+json)")
# A well-formed type/subtype (RFC 6838 restricted names): only such a value is repeated in an answer.
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_UTF8 = frozenset({"utf-8", "utf8"})


class UnsupportedMediaType(InvalidRequest):
    """415: the body is not sent as JSON (a 400 wherever no 415 mapping is registered)."""

    code = "unsupported_media_type"


class _Refused(ValueError):
    """Read by Python's parser, refused here: NaN/Infinity (not JSON), a repeated member (read two ways)."""


def json_object(content_type: str | None, body: str | None, *, base64_encoded: bool = False) -> dict[str, Any]:
    """The body as a JSON object, or `UnsupportedMediaType` / `InvalidRequest` saying what is wrong.

    `content_type` is the Content-Type header (None when absent); `body` is the event's body, base64
    when API Gateway encoded it (`base64_encoded`). The detail never repeats the body's content.
    """
    _require_json_media_type(content_type)
    text = _text(body, base64_encoded=base64_encoded)
    try:
        value = json.loads(text, object_pairs_hook=_members, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        what = exc.msg.removesuffix(" at").removesuffix(" starting")  # their sentences end in "at <position>"
        raise InvalidRequest(f"the body is not valid JSON: line {exc.lineno}, column {exc.colno}: {what}") from None
    except _Refused as exc:
        raise InvalidRequest(str(exc)) from None
    except RecursionError:
        raise InvalidRequest("the body nests arrays or objects too deeply") from None
    except ValueError:  # e.g. an integer past Python's digit limit: the message would repeat the number
        raise InvalidRequest("the body holds a number too long to read") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"the body must be a JSON object, not {_kind(value)}")
    return value


def _require_json_media_type(content_type: str | None) -> None:
    if content_type is None or not content_type.strip():
        raise UnsupportedMediaType("the Content-Type header is required: send the body as application/json")
    media_type, _, parameters = content_type.partition(";")
    media_type = media_type.strip().lower()
    if not _JSON_MEDIA_TYPE.fullmatch(media_type):
        shown = _MEDIA_TYPE.fullmatch(media_type) and without_digit_runs(media_type)
        named = media_type if shown else "this Content-Type"
        raise UnsupportedMediaType(f"{named} is not accepted: send the body as application/json")
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in _UTF8:
            raise UnsupportedMediaType("JSON is read as UTF-8 only: send charset=utf-8 or no charset")


# Every body this API takes is a small JSON object (a few hundred bytes): anything much larger is refused before it
# is parsed or validated, so that no body costs seconds of CPU or an answer past Lambda's 6 MB limit.
MAX_BODY_CHARACTERS = 16 * 1024
_TOO_LARGE = f"the body is too large: this API takes JSON objects of at most {MAX_BODY_CHARACTERS} characters"


def _text(body: str | None, *, base64_encoded: bool) -> str:
    if not body:
        raise InvalidRequest("the body is empty: send a JSON object")
    # base64 is 4/3 of its bytes: a body past the limit in either form is refused before anything else is done with it
    if len(body) > (MAX_BODY_CHARACTERS * 4 // 3 + 4 if base64_encoded else MAX_BODY_CHARACTERS):
        raise InvalidRequest(_TOO_LARGE)
    text = _utf8(body) if base64_encoded else body  # else API Gateway decoded it already
    if len(text) > MAX_BODY_CHARACTERS:  # decoded base64 (its padding allowance aside, the same limit)
        raise InvalidRequest(_TOO_LARGE)
    if text.startswith("\ufeff"):
        raise InvalidRequest("the body starts with a byte order mark: send UTF-8 JSON without one")
    return text


def _utf8(body: str) -> str:
    try:
        raw = base64.b64decode(body, validate=True)
    except ValueError:  # binascii.Error, and the plain ValueError a str with a non-ASCII character raises
        raise InvalidRequest("the body is not valid base64 although the event says it is") from None
    if not raw:
        raise InvalidRequest("the body is empty: send a JSON object")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the body is not UTF-8: byte {exc.start + 1}: {exc.reason}") from None


def _members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated member is read differently by different parsers (first or last wins): refuse it.
    members = dict(pairs)
    if len(members) != len(pairs):
        raise _Refused("the body names the same member twice in one object")
    return members


def _no_constant(name: str) -> Any:
    raise _Refused(f"the body is not valid JSON: {name} is not a JSON number")


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
