"""Hypay's protocol, the pure part: raw query strings, the redirect `Sign`, answers and CCodes.

No network here (that is `payments.adapters.hypay`): everything can be tested on strings.
"""

from __future__ import annotations

import functools
import hmac
import re
from urllib.parse import unquote_to_bytes

from payments.domain.cards import CARD_NUMBER
from payments.errors import (
    GatewayAuthenticationError,
    GatewayDeclined,
    GatewayError,
    GatewayRejected,
    GatewayUnavailable,
)
from payments.names import repeatable
from payments.records import Record

# The redirect fields covered by `Sign`, in the order they are signed. Nothing else is: `Coin`,
# `L4digit`, `UID`, `Hesh` ... can be altered by anyone holding the URL.
SIGNED_FIELDS = ("Id", "CCode", "Amount", "ACode", "Order", "Fild1", "Fild2", "Fild3")

# Every field Hyp documents for the redirect (and notify), in no particular order. A VERIFY request
# carries these and only these, as received: nothing else from a callback reaches Hyp.
REDIRECT_FIELDS = frozenset(
    {
        *SIGNED_FIELDS,
        "Sign",
        "Bank",
        "TransType",
        "Payments",
        "UserId",
        "Brand",
        "Issuer",
        "L4digit",
        "street",
        "city",
        "zip",
        "cell",
        "Coin",
        "Tmonth",
        "Tyear",
        "Hesh",
        "UID",
        "spType",
        "bincard",
        "errMsg",
        "HKId",
    }
)
# Names our own requests to Hyp use that a callback never carries: a callback that has one is trying
# to steer a request (turn VERIFY into SIGN, or point it at another terminal) and is refused.
OUTGOING_ONLY_FIELDS = frozenset(
    {
        "action",
        "What",
        "Masof",
        "KEY",
        "PassP",
        "TransId",
        "CC",
        "Token",
        "cvv",
        "signature",
        "UTF8",
        "UTF8out",
        "MoreData",
        "Info",
        "ClientName",
        "ClientLName",
        "email",
        "phone",
        "PageLang",
        "Tash",
        "SendHesh",
        "Pritim",
        "heshDesc",
        "J5",
        "Postpone",
        "tmp",
        "Amount2",
        "page",
    }
)
_OUTGOING_LOWER = frozenset(name.lower() for name in OUTGOING_ONLY_FIELDS)
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,30}", re.ASCII)
# The names a callback may carry without a closer look (plain, not ours): Hyp's documented fields and `Sign`.
_ACCEPTABLE_NAMES = frozenset(
    name
    for name in (*REDIRECT_FIELDS, "Sign")
    if _NAME.fullmatch(name) and name not in OUTGOING_ONLY_FIELDS and name.lower() not in _OUTGOING_LOWER
)

APPROVED = 0
# Hyp's answers that our request did not validate (the protocol's 400-402).
VALIDATION_CODES = frozenset({400, 401, 402})
# Valid outcomes that charge nothing: J2 card check, J5 authorization, postponed.
NOT_CHARGED = {600: "card check only (J2)", 700: "authorized, not charged (J5)", 800: "postponed"}
_MESSAGES = {
    4: "declined by the card issuer",
    6: "wrong CVV or ID",
    15: "card expired",
    33: "more than the original amount",
    901: "terminal has no permission for this action",
    902: "authentication error (Masof, KEY or PassP)",
    400: "our request did not validate",
    401: "our request did not validate",
    402: "our request did not validate",
    425: "duplicate transaction",
    997: "invalid token",
    998: "cancelled",
    999: "communication error",
}
_PAN_LIKE = re.compile(r"\d[\d -]{10,}\d")


def split_raw_query(raw: str) -> list[tuple[str, str]]:
    """`a=1&b=x%20y` -> [("a", "1"), ("b", "x%20y")]: order and encoding kept exactly as received."""
    return list(_split(raw))


# One callback is read by the refusal rules, the signature check, VERIFY's field list and the service: split
# and decoded once per query (pure functions of the text; callers get their own list or dict).
@functools.lru_cache(maxsize=8)
def _split(raw: str) -> tuple[tuple[str, str], ...]:
    raw = raw[1:] if raw.startswith("?") else raw
    pairs = []
    for part in raw.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((name, value))
    return tuple(pairs)


@functools.lru_cache(maxsize=8)
def _fields(raw: str) -> tuple[dict[str, str], bool]:
    """(name -> raw value, the last one winning; whether every name came once). Internal: never changed."""
    pairs = _split(raw)
    last = dict(pairs)
    return last, len(last) == len(pairs)


def decode_value(raw_value: str) -> str:
    """A percent-encoded value as text: UTF-8 (UTF8out=True), else windows-1255 (Hyp's default)."""
    if raw_value.isascii() and "%" not in raw_value and "+" not in raw_value and "\x00" not in raw_value:
        return raw_value  # nothing encoded (digits, codes, most fields): the text is the value itself
    data = unquote_to_bytes(raw_value.replace("+", " ")).replace(b"\x00", "\ufffd".encode())  # NUL: never text
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1255", errors="replace")


def decode_query(raw: str) -> dict[str, str]:
    """Decoded name -> value (the last one wins, as Hyp sends each name once)."""
    return dict(_decoded(raw))


def decode_fields(raw: str, names: frozenset[str]) -> dict[str, str]:
    """`decode_query(raw)` restricted to `names`: only those values are decoded."""
    last = _fields(raw)[0]
    return {name: decode_value(last[name]) for name in names if name in last}


@functools.lru_cache(maxsize=8)
def _decoded(raw: str) -> tuple[tuple[str, str], ...]:
    return tuple(dict(_decoded_pairs(raw)).items())


@functools.lru_cache(maxsize=8)  # read by `unsignable` and by the signature check of the same callback
def redirect_sign_payload(raw_query: str) -> bytes | None:
    """The bytes `Sign` covers, from the raw values; None if a signed field is missing, repeated or not ASCII.

    Hyp percent-encodes every value, so a raw value arrives as ASCII; one that does not has no single byte form
    (which encoding would Hyp have signed?), and replacing its characters would let different values share one
    signature: refused."""
    last, unique = _fields(raw_query)
    if unique:  # the usual case: each name once
        signed = [last.get(name) for name in SIGNED_FIELDS]
        if not all(value is not None and value.isascii() for value in signed):
            return None
        return "&".join(f"{name}={value}" for name, value in zip(SIGNED_FIELDS, signed, strict=True)).encode("ascii")
    values: dict[str, str] = {}
    for name, value in _split(raw_query):
        if name in SIGNED_FIELDS:
            if name in values:
                return None  # a repeated signed field is ambiguous: refuse rather than guess
            if not value.isascii():
                return None
            values[name] = value
    if set(values) != set(SIGNED_FIELDS):
        return None
    return "&".join(f"{name}={values[name]}" for name in SIGNED_FIELDS).encode("ascii")


def redirect_signature(raw_query: str, key: str) -> str | None:
    """Hex HMAC-SHA256 keyed with the terminal's KEY over the signed fields, as they arrived."""
    payload = redirect_sign_payload(raw_query)
    if payload is None:
        return None
    return hmac.digest(key.encode(), payload, "sha256").hex()  # one call: hmac.new(...).hexdigest() without the object


def verify_redirect_signature(raw_query: str, key: str) -> bool:
    """The local check: `Sign` matches the signed fields (constant-time), as received or as Hyp sent them before a
    browser re-encoded them (`as_hyp_sent`). False on anything missing."""
    return signed_text(raw_query, key) is not None


def signed_text(raw_query: str, key: str) -> str | None:
    """The text whose signed fields `Sign` matches: as received, else as Hyp sent it before a browser re-encoded it;
    None when neither. What VERIFY is then asked about (Hyp compares what it signed)."""
    if _signature_matches(raw_query, key):
        return raw_query
    before_browser = as_hyp_sent(raw_query)
    return before_browser if before_browser != raw_query and _signature_matches(before_browser, key) else None


# Hyp encodes values as JavaScript's encodeURIComponent does, which leaves `'` as it is (its documented example shows
# `(0)` unencoded, from the same set); a browser following Hyp's redirect then sends `'` in a URL's query as `%27`
# (the URL standard's special-query percent-encode set), so the values that arrive are not the ones Hyp signed.
_BROWSER_APOSTROPHE = re.compile("%27", re.IGNORECASE)


def as_hyp_sent(raw_query: str) -> str:
    """A callback's raw text with a browser's `%27` back to the `'` Hyp sent (the only change a browser makes to
    what encodeURIComponent left)."""
    return _BROWSER_APOSTROPHE.sub("'", raw_query) if "%" in raw_query else raw_query


def _signature_matches(raw_query: str, key: str) -> bool:
    last, unique = _fields(raw_query)
    if unique:
        signs = [last["Sign"]] if "Sign" in last else []
    else:
        signs = [value for name, value in _split(raw_query) if name == "Sign"]
    expected = redirect_signature(raw_query, key)
    if expected is None or len(signs) != 1 or not signs[0].isascii():
        return False
    return hmac.compare_digest(expected.encode(), signs[0].lower().encode("ascii"))


# An HMAC-SHA256 in hex: what a callback's `Sign` and a SIGN answer's `signature` are.
HMAC_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)


def unsignable(raw: str) -> str | None:
    """Why no KEY (ours, or one rotated since) could have signed this callback, or None: it has no `Sign`, or more
    than one, or one that is not an HMAC-SHA256 in hex, or a field the Sign covers is missing or repeated. Our pages
    are all made with `Sign=True`, so Hyp signs every callback of ours: where the Sign is checked, such a callback
    is not Hyp's whatever Hyp would say of our credentials."""
    last, unique = _fields(raw)
    signs = ([last["Sign"]] if "Sign" in last else []) if unique else [v for n, v in _split(raw) if n == "Sign"]
    if len(signs) != 1:
        return "it has no Sign" if not signs else "its Sign is repeated"
    if not HMAC_SHA256_HEX.fullmatch(signs[0]):
        return "its Sign is not an HMAC-SHA256 in hex"
    if redirect_sign_payload(raw) is None:
        return "a field its Sign covers is missing, repeated or not ASCII"
    return None


def callback_refusal(raw: str) -> str | None:
    """Why a callback's parameters cannot be Hyp's, or None.

    Refused: a name our outgoing requests use (`action`, `What`, `Masof`, `KEY`, `PassP` ...), a name
    that is not plain ASCII letters and digits (a percent-encoded name would decode to one), and any
    name given twice (which one would Hyp read?).
    """
    last, unique = _fields(raw)
    if unique and _ACCEPTABLE_NAMES.issuperset(last):
        return None  # the usual case: Hyp's documented names, each once
    seen: set[str] = set()
    for name, _ in _split(raw):
        if not _NAME.fullmatch(name):
            return "a parameter name is not a plain name"
        if name in OUTGOING_ONLY_FIELDS or name.lower() in _OUTGOING_LOWER:
            return f"the parameter {name} belongs to requests to Hyp, not to callbacks"
        if name in seen:
            return f"the parameter {name} is repeated" if repeatable(name) else "a parameter is repeated"
        seen.add(name)
    return None


# A Hyp transaction id: 1 to 20 ASCII digits, not all zeros. Hyp's documents never show an Id of 0; were one sent
# (say, with a failure), every such transaction would share one journal row and one idempotency key, so an
# all-zero Id is no Id: a callback carrying one is malformed, a charge answer carrying one has no transaction.
HYP_ID = re.compile(r"(?=[0-9]{1,20}\Z)0*[1-9][0-9]*", re.ASCII)
HYP_ID_PROBLEM = "Id is not a Hyp transaction id (1 to 20 ASCII digits, not all zeros)"
# An amount as Hyp writes it: digits, at most 2 decimals, at most 9 digits before the point (the journal keeps
# numeric(12, 2)). Anything else ("199,00", "1,199.00", "1e3") is not read as an amount at all.
AMOUNT = re.compile(r"[0-9]{1,9}(\.[0-9]{1,2})?", re.ASCII)


def hyp_id(value: str | None) -> str | None:
    """`value` when it is a Hyp transaction id, else None."""
    return value if value is not None and HYP_ID.fullmatch(value) else None


# A Hyp token of a card: 19 ASCII digits (getToken's answer; the protocol's `Token`).
HYP_TOKEN = re.compile(r"[0-9]{19}", re.ASCII)


def hyp_token(value: str | None) -> str | None:
    """`value` when it is a Hyp token, else None."""
    return value if value is not None and HYP_TOKEN.fullmatch(value) else None


def hyp_number(value: str | None) -> str | None:
    """The Hyp transaction id `value` spells, in any spelling (leading zeros: sql/014 holds them one by their number),
    as Hyp writes it (no leading zero); None when it spells none (`abc`, ` 12`, `1e3`, all zeros, over 20 digits)."""
    number = value.lstrip("0") if value is not None else None
    return number if hyp_id(number) is not None else None


def same_hyp_id(one: str | None, other: str | None) -> bool:
    """Whether two Hyp transaction ids are one transaction: the same number, in any spelling (leading zeros; sql/014
    holds them one by their number). False when either is missing."""
    return one is not None and other is not None and one.lstrip("0") == other.lstrip("0")


# A CCode as Hyp writes it, in a callback or an answer: ASCII digits only (re.ASCII: `\d` would take Arabic-Indic
# digits; int() would take "+0" and "٠").
CCODE = re.compile(r"[0-9]{1,3}", re.ASCII)
_FORMATS = (
    ("Id", HYP_ID, HYP_ID_PROBLEM),
    ("CCode", CCODE, "CCode is not a Hyp code (1 to 3 ASCII digits)"),
    ("Amount", re.compile(r"[0-9]{1,9}(\.[0-9]{1,2})?", re.ASCII), "Amount is not an amount"),
)


def malformed(raw: str) -> str | None:
    """What makes a callback's deciding fields malformed (as received, before decoding), or None.

    `+0`, `٠` (an Arabic-Indic zero) or `99999999999` are never a CCode: refused before anything is asked.
    """
    fields = _fields(raw)[0]
    for name, pattern, problem in _FORMATS:
        if not pattern.fullmatch(fields.get(name, "")):
            return problem
    return None


def verify_fields(raw: str) -> list[tuple[str, str]]:
    """The documented redirect fields of a callback, in the order received, each value as received but for what Hyp
    never sends unencoded: a separator (`;`, a raw `=`), a space, a quote, a control character or a lone `%` is
    percent-encoded, so no value can add to or split the request it is echoed in (Hyp reads the same value back)."""
    return [(name, _as_form_value(value)) for name, value in split_raw_query(raw) if name in REDIRECT_FIELDS]


# What a value Hyp sends holds: percent-encoded bytes, and characters form encoding leaves as they are.
_FORM_VALUE = re.compile(r"(?:%[0-9A-Fa-f]{2}|[A-Za-z0-9._~()!*'+-])*")
_NOT_FORM_VALUE = re.compile(r"%(?![0-9A-Fa-f]{2})|[^A-Za-z0-9._~()!*'+%-]")


def _as_form_value(raw_value: str) -> str:
    if _FORM_VALUE.fullmatch(raw_value):
        return raw_value  # the usual case: as Hyp sent it
    return _NOT_FORM_VALUE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), raw_value)


# Hyp's invoice lines (`heshDesc` with `Pritim=True`): `[code~description~quantity~price]`, one bracket a line. Its
# separators in the item's text (a pack's name is the web app's row) would add lines or move the quantity and price.
_INVOICE_SEPARATORS = str.maketrans({"[": "(", "]": ")", "~": "-"})


def invoice_line(description: str, price: str) -> str:
    """The one invoice line of a page: code 0, `description` with Hyp's separators replaced, quantity 1, `price`."""
    return f"[0~{description.translate(_INVOICE_SEPARATORS)}~1~{price}]"


def redact(text: str) -> str:
    """Masks anything that looks like a card number, for messages that came from outside: written in a card's groups
    with any separators (`domain.cards`: dots, slashes, no-break spaces ...), and any long run of digits, spaces and
    hyphens."""
    return _PAN_LIKE.sub("[redacted]", CARD_NUMBER.sub("[redacted]", text))


class Answer(Record):
    """A parsed Hypay answer: its fields (decoded) and CCode."""

    fields: dict[str, str]
    raw: str

    @property
    def ccode(self) -> int | None:
        """The answer's code, or None when it has none or one Hyp never writes (`+0`, ` 0`, an Arabic-Indic zero,
        `0000`: what `int()` would read as an approval is not Hyp's): then whatever happened is unknown."""
        value = self.fields.get("CCode")
        if value is None or not CCODE.fullmatch(value):
            return None
        return int(value)


# An invoice number Hyp issued (`Hesh`); `0` is none, and anything else (`EZ`, `-1`, `00`) is not one to record.
INVOICE_NUMBER = re.compile(r"[1-9][0-9]{0,19}", re.ASCII)
# Hyp's answers are a few hundred bytes; a longer one is not Hyp's, and would be stored and handed on (a page URL, a
# decline's message) into answers over Lambda's 6 MB limit.
MAX_ANSWER_BYTES = 64 * 1024
MESSAGE_CHARS = 200  # of Hyp's free text (errMsg) kept and handed on, as a callback's


def parse_answer(body: bytes) -> Answer:
    """Hyp answers HTTP 200 with a query string, even on errors; an HTML page means a system error.

    A field named twice with different values (`CCode=0&...&CCode=4`) is refused: which one Hyp meant is unknown, and
    the last one winning could record a charge or refund that moved money as declined (a callback's repeated name
    is refused likewise, `callback_refusal`). The Id, when it is not the field repeated, still names the transaction
    to look up."""
    if len(body) > MAX_ANSWER_BYTES:
        raise GatewayUnavailable(f"Hypay's answer is too long ({len(body)} bytes)")
    text = body.decode("latin-1").strip()  # bytes as-is: percent-encoded values are decoded per field
    if not text or text.lstrip().startswith("<") or "<html" in text[:512].lower():
        raise GatewayUnavailable("Hypay answered with an error page instead of a result")
    if "=" not in text:
        raise GatewayUnavailable("Hypay answered something that is not a result")
    fields = decode_query(text)
    if not _fields(text)[1]:
        seen: dict[str, str] = {}
        twice = sorted({name for name, value in _decoded_pairs(text) if seen.setdefault(name, value) != value})
        if twice:
            # Named only when a name could never carry a card number (the answer's names are Hyp's text, or whatever
            # a malformed answer's unencoded `&` made of its free text)
            named = ", ".join(twice) if len(twice) <= 3 and all(map(repeatable, twice)) else "a field"
            raise GatewayUnavailable(
                f"Hypay answered {named} twice, with different values",
                transaction_id=hyp_id(fields.get("Id")) if "Id" not in twice else None,
            )
    return Answer(fields, text)


def _decoded_pairs(raw: str) -> list[tuple[str, str]]:
    """Every (name, decoded value) of a query, repeats included, in order."""
    return [(name, decode_value(value)) for name, value in _split(raw)]


def raise_for_ccode(answer: Answer, action: str, *, invalid_is_ours: bool = True) -> None:
    """Typed errors for everything but an approval (CCode 0). Hyp finding our request invalid (VALIDATION_CODES) is
    ours, as its refusal of our credentials is (`GatewayAuthenticationError`: nothing moved, "not yet", alarmed),
    unless `invalid_is_ours` is False (the call names something Hyp may rightly not have: refused)."""
    code = answer.ccode
    if code == APPROVED:
        return
    hyp_message = redact(answer.fields.get("errMsg", "").strip())[:MESSAGE_CHARS] or None
    if code is None:
        # Whatever happened is unknown; the Id, when the answer has one, names the transaction to look up.
        raise GatewayUnavailable(
            f"Hypay {action}: answer without a CCode", transaction_id=hyp_id(answer.fields.get("Id"))
        )
    meaning = NOT_CHARGED.get(code) or _MESSAGES.get(code) or "refused"
    message = f"Hypay {action}: CCode {code} ({meaning})"
    error: type[GatewayError]
    if code in (901, 902) or (invalid_is_ours and code in VALIDATION_CODES):
        error = GatewayAuthenticationError
    elif code == 999:
        error = GatewayUnavailable
    elif 1 <= code <= 200 or code in (997, 998) or code in NOT_CHARGED:
        error = GatewayDeclined
    else:
        error = GatewayRejected
    raise error(
        message,
        ccode=code,
        gateway_message=hyp_message or meaning,
        transaction_id=hyp_id(answer.fields.get("Id")),
    )


def ccode_message(code: int) -> str:
    return NOT_CHARGED.get(code) or _MESSAGES.get(code) or ("approved" if code == APPROVED else "refused")
