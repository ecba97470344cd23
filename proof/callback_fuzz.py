"""The callback fuzzer: hypothesis over `/hypay/return` and `/hypay/notify` on `make run`'s stack.

Requests are mutations of real callbacks (payments paid on the simulator, approved, declined, paid twice,
with a saved card): parameters dropped, repeated, moved, renamed (case changes, percent-encoded names),
values replaced (100 KB and larger, bytes that are not UTF-8, windows-1255 Hebrew raw and percent-encoded,
broken percent-encoding, odd numbers, another payment's `Order` or `Sign`), our own request names added
(`action`, `What`, `Masof`, `KEY`, `PassP` ...), other separators; and fully random query strings and bodies.
They go out as GET query strings and as POST bodies under every content type (form with and without a
charset, JSON, text, multipart, octet-stream, none, garbage), raw bytes in the request line included, and
with the methods no route takes.

Real payments behind them come in every kind the callback must handle: approved (with and without a saved
card), declined (by CVV, by the card), a second charge of a paid page, a page signed without `UTF8out` (its
Hebrew name comes back in windows-1255), and customers with odd names and addresses (Hebrew, quotes, `&`,
`%`, emoji, 2,000 characters), which Hyp echoes, signed, in `Fild1`/`Fild2`. About one request in twelve runs
under a VERIFY outage (the simulator's faults: HTTP 500, an HTML page, CCode 999 or 901, a dropped
connection, an answer cut short), the contract's "not yet".

The oracle models only the transport (what the function receives: the raw query string, or the POST body
when there is one, as the HTTP API hands it over) and Hyp's protocol (the documented fields, compared with
the real callback), never the middleware's code:

- blank (nothing sent): Hyp's portal connection test, `200 text/plain OK`;
- genuine (the documented fields exactly as Hyp sent them, nothing else): must be processed: the redirect
  answers 302 with our `payment_id`, the notification 200 (409 for a Hyp Id another payment owns);
- steered (genuine plus a name our requests to Hyp use, in any case, or a name given twice): refused;
- genuine plus other unknown names: either answer is right, but a refusal writes nothing;
- signed (what Hyp's `Sign` covers, and the Sign, as Hyp sent them; other fields edited, dropped, added or
  reordered): with the Sign checked (`both`), Hyp's signed decision stands whatever VERIFY says of the rest: either
  answer is right, as for unknown names (processed, it is that callback's first delivery or a replay);
- anything else (forged, poison bytes, malformed): refused: `/hypay/notify` 400 or 403 problem+json,
  `/hypay/return` a 302 to the web app's page *without* a `payment_id` (the browser must land somewhere;
  that is this route's rejection). A 302 carrying a `payment_id` means "processed" (or "still
  confirming"): for a forged request that is a failure.

Every request is checked: no 5xx; status and media type declared in docs/openapi.json for the route (the
gateway's own answers for methods no route takes: 404 `{"message":"Not Found"}`, and a request line over
the front door's limit: 414); every table of the public schema compared by content before and after: a
refused request changes nothing; a genuine one may write only on its first delivery (then the journal must
hold its Hyp Id, verified), a replay never touches money (but for what a callback settled on its Sign alone could
not record: Hyp's verified delivery after it fills in the invoice number and the saved card's last four digits),
and under an outage only the journal may change (the callback kept unverified, for reconciliation). At the end,
the money invariants: one purchase per completed payment, balances equal to their ledgers, each Hyp Id journaled
as it was treated.

It expects the stack's default `HYPAY_VERIFY_MODE` (`both`): with `hmac` alone the unsigned fields are not checked
(by design), and with `verify` alone a signed callback with edited fields is refused; the oracle models `both`.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import random
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode, urlsplit

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from ops.hypay_simulator import (
    APPROVING_CARD,
    DECLINING_CARD,
    PUBLIC_TEST_TERMINAL_KEY,
    PUBLIC_TEST_TERMINAL_MASOF,
    PUBLIC_TEST_TERMINAL_PASSP,
)
from proof.stack import Stack
from proof.stack import http as fetch

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = ROOT / "docs" / "openapi.json"

RETURN, NOTIFY = "/hypay/return", "/hypay/notify"
ROUTED = {(RETURN, "GET"), (NOTIFY, "GET"), (NOTIFY, "POST")}
STARTER = "aaaaaaaa-0000-4000-8000-000000000001"
TRIAL = "aaaaaaaa-0000-4000-8000-000000000004"

# Hyp's redirect and notify fields (docs: hypay-protocol.md, "The redirect back"), case-sensitive.
SIGNED = ("Id", "CCode", "Amount", "ACode", "Order", "Fild1", "Fild2", "Fild3")
DOCUMENTED = frozenset(
    {
        *SIGNED,
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
# Documented fields `Sign` does not cover: only VERIFY (or, when Hyp is unreachable, nothing) tells a changed one.
UNSIGNED = ("Coin", "L4digit", "Hesh", "errMsg", "UID", "bincard", "Tmonth", "Tyear", "UserId", "Brand", "Payments")
# Names of our own requests to Hyp: in a callback they could turn VERIFY into something else.
STEERING = (
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
    "page",
    "Info",
    "SendHesh",
    "J5",
    "Postpone",
)
_STEERING_LOWER = frozenset(name.lower() for name in STEERING)

HEBREW = "שלום עולם"
# Characters a request line may carry as they are: printable ASCII and the Latin-1 range (raw bytes 0x80-0xFF),
# less what http.client refuses (controls, space) and what the local front door splits request lines on
# (str.split: NEL and NO-BREAK SPACE), which would make its own 400 page, not our function's answer.
_URL_CHARS = "".join(chr(c) for c in range(0x21, 0x7F)) + "".join(
    chr(c) for c in range(0x80, 0x100) if not chr(c).isspace()
)
_FRONT_DOOR_LIMIT = 65_536  # the local API's request line (http.server); API Gateway's is lower
_PAN_LIKE = re.compile(r"\d{12,}")
_PERCENT = re.compile(r"%[0-9A-F]{2}")

# -- what is generated ------------------------------------------------------------------------------

_LITERAL_VALUES = (
    "",
    "%",
    "%G1",
    "%2",
    "%%41",
    "%2541",
    "%00",
    "%0D%0A",
    "%u05E9",
    "+",
    "%2B0",
    "%20",
    "a=b",
    "==",
    "%3D",
    "%26",
    "x&y",
    "?",
    "#frag",
    ";",
    "%5C",
    "'",
    '"',
    "<script>",
    "%3Cscript%3E",
    "null",
    "[]",
    "{}",
    "0",
    "-1",
    "+0",
    "%200",
    "00",
    "1e3",
    "0x1F",
    "%D9%A0",  # an Arabic-Indic zero
    "99999999999999999999999",
    "4990",
    "49.900",
    "49,90",
    "49.9",
    "0.00",
    "-49.90",
    "NaN",
    "Infinity",
    "1.001",
    "18446744073709551616",
    quote(HEBREW, encoding="cp1255"),  # windows-1255, percent-encoded (Hyp without UTF8out)
    quote(HEBREW),
    HEBREW.encode("cp1255").decode("latin-1"),  # windows-1255 bytes, raw
    HEBREW.encode().decode("latin-1"),  # UTF-8 bytes, raw
    "%FF%FE",
    "\xff\xfe",
    "%C3%28",
    "%ED%A0%80",  # a UTF-16 surrogate in UTF-8
    "%F4%90%80%80",  # beyond U+10FFFF
    "%C0%AF",  # overlong
    "%E9t%E9",
)
_HUGE_UNITS = ("A", "9", "%FF", "%D7%A9", "\xff", "%", "+", "&a=", "%F9")
_HUGE_SIZES = (1_000, 10_000, 60_000, 100_000, 1_000_000)
_NAME_ODDITIES = (
    "Wh%61t",
    "%41ction",
    "Id%00",
    "Id%20",
    "Id[]",
    "Id.",
    "id",
    "ID",
    "iD",
    "_x",
    "1a",
    "x" * 40,
    "a" * 31,
    "a" * 32,
    "",
    "%",
    "Sign%3D",
    "amount",
    "AMOUNT",
    "ccode",
    "order",
    "sign",
)
_CONTENT_TYPES = (
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=windows-1255",
    "application/x-www-form-urlencoded; charset=UTF-8",
    "APPLICATION/X-WWW-FORM-URLENCODED",
    'application/x-www-form-urlencoded; charset="',
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "text/plain; charset=windows-1255",
    "text/plain; charset=utf-16",
    "text/html",
    "application/xml",
    "multipart/form-data; boundary=xYzZY",
    "multipart/form-data",
    "application/octet-stream",
    "application/problem+json",
    "image/png",
    "*/*",
    "garbage",
    ";;;",
    "",
    None,
)
# A form body most often (what Hyp sends), then everything else.
_BODY_KINDS = ("form",) * 4 + ("json", "multipart", "binary", "base64", "utf16", "cp1255", "gzip", "empty")
_ODD_METHODS = ("PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "POST")
_ODD_HEADERS = (
    ("Cookie", "a=b; ; =; %FF=\xff; session=" + "x" * 4000),
    ("Origin", "https://evil.example"),
    ("Origin", "null"),
    ("X-Forwarded-For", "1.2.3.4, garbage, ::1"),
    ("Accept", "application/json"),
    ("Accept", "*/*;q=garbage"),
    ("Accept-Charset", "windows-1255"),
    ("Accept-Language", "he-IL"),
    ("Content-Encoding", "br"),
    ("Authorization", "Bearer not-a-token"),
    ("X-Http-Method-Override", "DELETE"),
    ("Expect", "100-continue"),
    ("Host", "evil.example"),
    ("User-Agent", "\xff\xfe"),
)
# Hyp's VERIFY unavailable (the simulator's faults, for the call and its one retry): the contract's "not yet".
OUTAGES = ("http500", "html", "ccode999", "ccode901", "drop", "cut")

Op = tuple[Any, ...]


@dataclass(frozen=True)
class Plan:
    """One request, as drawn: applied to a real callback (or to nothing: a random payload) when sent."""

    path: str
    method: str
    fresh: bool  # a callback not delivered yet (its first delivery is the one that may write)
    base: int
    random_payload: str | None
    ops: tuple[Op, ...]
    prefix: str
    joiner: str
    suffix: str
    body_kind: str | None
    content_type: str | None
    with_query: str  # POST: "none", "same" (the payload in the query too) or "genuine" (the real one there)
    noise: bytes
    preflight: bool
    outage: str | None  # a VERIFY fault injected in the simulator for this request only (see OUTAGES)
    headers: tuple[tuple[str, str], ...]


def _value() -> st.SearchStrategy[Op]:
    return st.one_of(
        st.sampled_from(_LITERAL_VALUES).map(lambda s: ("lit", s)),
        st.tuples(st.just("huge"), st.sampled_from(_HUGE_UNITS), st.sampled_from(_HUGE_SIZES)),
        st.text(alphabet=_URL_CHARS, max_size=40).map(lambda s: ("lit", s)),
        st.text(max_size=30).map(lambda s: ("lit", quote(s, safe=""))),
        st.text(max_size=30).map(lambda s: ("lit", quote(s, safe="", encoding="cp1255", errors="replace"))),
        st.sampled_from(
            ("other_sign", "other_order", "other_id", "random_uuid", "upper", "lower", "double", "plus", "bare")
        ).map(lambda k: (k,)),
    )


def _name() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(STEERING),
        st.sampled_from(STEERING).map(str.lower),
        st.sampled_from(STEERING).map(str.upper),
        st.sampled_from(sorted(DOCUMENTED)),
        st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,12}", fullmatch=True),
        st.text(alphabet=_URL_CHARS, max_size=20),
        st.sampled_from(_NAME_ODDITIES),
    )


def _innocent_name() -> st.SearchStrategy[str]:
    """A plain name Hyp does not document and we never send: an extra a genuine callback may carry."""
    return st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,12}", fullmatch=True).filter(
        lambda n: n not in DOCUMENTED and n.lower() not in _STEERING_LOWER
    )


def _op() -> st.SearchStrategy[Op]:
    index = st.integers(0, 63)
    return st.one_of(
        st.tuples(st.just("drop"), index),
        st.tuples(st.just("repeat"), index, index, st.one_of(st.none(), _value())),
        st.tuples(st.just("move"), index, index),
        st.tuples(st.just("value"), index, _value()),
        st.tuples(
            st.just("rename"), index, st.sampled_from(("upper", "lower", "swap", "pct", "brackets", "space", "other"))
        ),
        st.tuples(st.just("add"), index, _name(), _value()),
        st.tuples(st.just("extra"), index, _innocent_name(), st.sampled_from(("1", "", "x%20y", "%D7%A9"))),
        st.tuples(st.just("sign"), st.sampled_from(("flip", "upper", "truncate", "empty", "drop", "other")), index),
        st.tuples(st.just("unsigned"), st.sampled_from(UNSIGNED), _value()),
        st.tuples(st.just("shuffle"), st.integers(0, 2**16)),
        st.tuples(st.just("encode"), st.sampled_from(("quote_all", "plus", "lower_hex", "decode_all"))),
    )


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    """Where it goes, what it carries, how it is encoded."""
    route = draw(st.integers(0, 99))
    if route < 40:
        path, method = RETURN, "GET"
    elif route < 55:
        path, method = NOTIFY, "GET"
    elif route < 92:
        path, method = NOTIFY, "POST"
    else:  # what no route takes: other methods, other spellings of the paths
        path, method = draw(st.sampled_from((RETURN, NOTIFY))), draw(st.sampled_from(_ODD_METHODS))
        if (path, method) in ROUTED:
            method = "PUT"
        if draw(st.integers(0, 3)) == 3:
            method = draw(st.sampled_from(("GET", "POST")))
            path = draw(
                st.sampled_from((f"{RETURN}/", f"{NOTIFY}/", "/hypay//return", "/HYPAY/RETURN", "/hypay/Notify"))
            )
    kind = draw(st.integers(0, 99))  # hypothesis often draws the simplest value, 0: mutations, the bulk
    random_payload: str | None = None
    ops: tuple[Op, ...] = ()
    if kind >= 88:  # fully random
        random_payload = draw(
            st.one_of(
                st.text(alphabet=_URL_CHARS, min_size=1, max_size=300),
                st.lists(st.tuples(_name(), st.text(max_size=40)), min_size=1, max_size=12).map(urlencode),
                st.lists(
                    st.tuples(st.sampled_from(sorted(DOCUMENTED)), st.text(max_size=20)), min_size=1, max_size=30
                ).map(urlencode),
            )
        )
    elif kind >= 78:  # the real callback, as it is (first delivery or replay)
        ops = ()
    elif kind >= 66:  # the real callback plus harmless extras
        extra = st.tuples(st.just("extra"), st.integers(0, 63), _innocent_name(), st.just("1"))
        ops = tuple(draw(st.lists(extra, min_size=1, max_size=3)))
    else:
        ops = tuple(draw(st.lists(_op(), min_size=1, max_size=5)))
    separators = draw(st.integers(0, 99))
    prefix, joiner, suffix = "", "&", ""
    if separators >= 85:
        prefix = draw(st.sampled_from(("", "?", "&", "??", "=")))
        joiner = draw(st.sampled_from(("&", "&&", ";", "&amp;", "%26")))
        suffix = draw(st.sampled_from(("", "&", "=", "&=")))
    body_kind = content_type = None
    with_query = "none"
    # A body on POST, PUT and PATCH; sometimes on DELETE and GET too (where the function reads only the query).
    if method in ("POST", "PUT", "PATCH") or (method in ("DELETE", "GET") and draw(st.integers(0, 9)) == 9):
        body_kind = draw(st.sampled_from(_BODY_KINDS))
        content_type = draw(st.sampled_from(_CONTENT_TYPES)) if draw(st.integers(0, 3)) else _matching(body_kind)
        with_query = draw(st.sampled_from(("none", "none", "none", "same", "genuine")))
    return Plan(
        path=path,
        method=method,
        fresh=draw(st.integers(0, 9)) < 3,
        base=draw(st.integers(0, 10_000)),
        random_payload=random_payload,
        ops=ops,
        prefix=prefix,
        joiner=joiner,
        suffix=suffix,
        body_kind=body_kind,
        content_type=content_type,
        with_query=with_query,
        noise=draw(st.binary(max_size=512)) if body_kind == "binary" else b"",
        preflight=method == "OPTIONS" and draw(st.booleans()),
        outage=draw(st.sampled_from(OUTAGES)) if draw(st.integers(0, 99)) >= 92 else None,  # 0, the simplest: none
        headers=tuple(draw(st.lists(st.sampled_from(_ODD_HEADERS), max_size=3, unique_by=lambda h: h[0]))),
    )


def _matching(body_kind: str | None) -> str | None:
    return {
        "json": "application/json",
        "multipart": "multipart/form-data; boundary=xYzZY",
        "binary": "application/octet-stream",
        "base64": "text/plain",
        "utf16": "text/plain; charset=utf-16",
        "cp1255": "application/x-www-form-urlencoded; charset=windows-1255",
        "gzip": "application/x-www-form-urlencoded",
        "empty": None,
    }.get(body_kind or "", "application/x-www-form-urlencoded")


# -- the real callbacks ------------------------------------------------------------------------------


@dataclass
class Callback:
    """A transaction paid on the simulator and its signed redirect query, exactly as Hyp sent it."""

    kind: str
    payment_id: str
    hyp_id: str
    query: str
    pairs: list[tuple[str, str]]
    processed: bool = False
    on_sign_only: bool = False  # first settled by a "signed" copy: what only VERIFY vouches for is still to come

    def doc_pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(self.pairs)

    def signed(self) -> tuple[tuple[str, str], ...] | None:
        return signed_of(self.pairs)


def signed_of(pairs: list[tuple[str, str]]) -> tuple[tuple[str, str], ...] | None:
    """What Hyp's `Sign` covers, as a Sign check reads it (hypay-protocol.md, "Is the redirect genuine?"): the eight
    signed fields and the Sign, each given once, the values as they arrived (a browser's `%27` for the `'` Hyp sent,
    the hex in either case); None when one is missing or given twice."""
    names = [name for name, _ in pairs]
    if any(names.count(name) != 1 for name in (*SIGNED, "Sign")):
        return None
    found = dict(pairs)
    return (
        *((name, re.sub("%27", "'", found[name], flags=re.IGNORECASE)) for name in SIGNED),
        ("Sign", found["Sign"].lower()),
    )


class Shop:
    """Buys and pays credit packs like the web app and a browser do (new users, under the rate limit).

    Users get odd names and e-mail addresses (Hebrew, quotes, `&`, `%`, emoji, 2,000 characters): Hyp echoes
    them in `Fild1`/`Fild2`, signed, so genuine callbacks carry odd values too. The `windows-1255` kind is a
    page signed without `UTF8out` (as a terminal answering in Hyp's default charset does), for one of our
    payments: its redirect's Hebrew arrives percent-encoded in windows-1255.
    """

    KINDS = (
        "approved",
        "declined",
        "approved_saved",
        "windows-1255",
        "second_charge",
        "approved",
        "declined_card",
    )
    NAMES = (
        "",
        "ישראל ישראלי",
        "Zoë O'Brien-Łukasz",
        "a&b=c%20d+e;f",
        '<script>alert(1)</script> "q"',
        "x" * 2000,
        "שם ארוך " * 150,
        "emoji 🎉👍",
        "tab\tnew\nline",
        "%FF%FE %D7",
        "Robert'); DROP TABLE payments;--",
        "名前 テスト",
        "\u202eevil rtl",
    )
    EMAILS = (
        "",
        "a+b@example.com",
        "ישראל@example.co.il",
        'quote"d@example.com',
        "x" * 300 + "@example.com",
        "a&b=c@example.com",
        "%40@example.com",
    )

    def __init__(self, stack: Stack, budget: int) -> None:
        self.stack = stack
        self.budget = budget
        self.made = 0
        self.users = 0
        self.refused = 0  # payments the stack would not create or the simulator would not sign (odd profiles)
        self.callbacks: list[Callback] = []
        self._user: tuple[str, str] | None = None
        self._uses = 0
        self._paid_urls: list[tuple[str, str]] = []  # (payment_id, page) of approved payments

    def _token(self, plain: bool = False) -> str:
        if plain or self._user is None or self._uses >= 5:
            user = self.stack.new_user()
            if not plain:
                self.stack.sql(
                    "UPDATE public.profiles SET full_name = :name, email = coalesce(nullif(:email, ''), email)"
                    " WHERE id = :id::uuid",
                    name=self.NAMES[self.users % len(self.NAMES)],
                    email=self.EMAILS[self.users % len(self.EMAILS)],
                    id=user,
                )
                self.users += 1
            self._user, self._uses = (user, self.stack.token(user)), 0
        self._uses += 1
        return self._user[1]

    def _create(self, save_card: bool) -> tuple[str, str]:
        body: dict[str, Any] = {"credit_pack_id": STARTER if self.made % 2 else TRIAL}
        if save_card:
            body["save_card"] = True
        for plain in (False, True):  # an odd profile the backend will not sell to: a plain one instead
            reply = fetch(
                f"{self.stack.base}/payments",
                "POST",
                json.dumps(body).encode(),
                {
                    "Authorization": f"Bearer {self._token(plain)}",
                    "Content-Type": "application/json",
                    "Idempotency-Key": str(uuid.uuid4()),
                },
            )
            if reply.status == 201:
                return str(reply.json["payment_id"]), str(reply.json["payment_url"])
            self.refused += 1
        raise RuntimeError(f"POST /payments answered {reply.status} for a plain user")

    def _windows_1255_page(self, payment_url: str) -> str | None:
        """The same payment's page, signed by the simulator without UTF8/UTF8out and with a Hebrew name."""
        params = dict(parse_qsl(urlsplit(payment_url).query, keep_blank_values=True))
        for name in ("signature", "action", "UTF8", "UTF8out"):
            params.pop(name, None)
        params |= {"ClientName": "ישראל", "ClientLName": "כהן־לוי"}
        head = {
            "action": "APISign",
            "What": "SIGN",
            "Masof": PUBLIC_TEST_TERMINAL_MASOF,
            "KEY": PUBLIC_TEST_TERMINAL_KEY,
            "PassP": PUBLIC_TEST_TERMINAL_PASSP,
        }
        answer = fetch(
            self.stack.simulator,
            "POST",
            urlencode({**head, **params}, encoding="cp1255").encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        text = answer.body.decode("latin-1").strip()
        if answer.status != 200 or "&signature=" not in text:
            return None  # the stack runs another terminal than the public test one: not this kind
        return f"{self.stack.simulator}?{text}"

    def _pay(self, payment_url: str, card: str, cvv: str) -> str | None:
        page = fetch(payment_url)
        hidden = re.search(r'name="page" value="([^"]*)"', page.body.decode("utf-8", "replace"))
        if hidden is None:
            return None  # the simulator would not show this page (an odd profile it cannot sign)
        form = {
            "action": "simpay",
            "page": unescape(hidden.group(1)),
            "CC": card,
            "Tmonth": "12",
            "Tyear": "2030",
            "cvv": cvv,
            "UserId": "890108566",
        }
        submitted = fetch(
            self.stack.simulator,
            "POST",
            urlencode(form).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        target = urlsplit(submitted.headers.get("location", ""))
        if submitted.status != 302 or target.path != RETURN:
            return None
        return target.query

    def new(self) -> Callback | None:
        """The next kind of transaction, paid and not delivered; None when the budget is spent."""
        while self.made < self.budget:
            kind = self.KINDS[self.made % len(self.KINDS)]
            self.made += 1
            if kind == "second_charge" and not self._paid_urls:
                kind = "approved"
            if kind == "second_charge":
                payment_id, url = self._paid_urls.pop(0)  # the same page paid once more: a second charge
            else:
                payment_id, url = self._create(save_card=kind == "approved_saved")
            if kind == "windows-1255":
                url = self._windows_1255_page(url) or url
            card, cvv = {"declined": (APPROVING_CARD, "999"), "declined_card": (DECLINING_CARD, "125")}.get(
                kind, (APPROVING_CARD, "125")
            )
            query = self._pay(url, card, cvv)
            if query is None:
                self.refused += 1
                continue
            if kind in ("approved", "approved_saved"):
                self._paid_urls.append((payment_id, url))
            pairs = split_pairs(query)
            callback = Callback(kind, payment_id, dict(pairs)["Id"], query, pairs)
            self.callbacks.append(callback)
            return callback
        return None

    def fresh(self) -> Callback | None:
        waiting = [c for c in self.callbacks if not c.processed]
        return waiting[0] if waiting else self.new()

    def pick(self, plan: Plan) -> Callback:
        if plan.fresh:
            found = self.fresh()
            if found is not None:
                return found
        return self.callbacks[plan.base % len(self.callbacks)]


# -- building a request from a plan -----------------------------------------------------------------


def split_pairs(raw: str) -> list[tuple[str, str]]:
    """Hyp's query as pairs, raw (order and encoding kept); one leading `?` is the query's own."""
    raw = raw[1:] if raw.startswith("?") else raw
    return [(name, value) for name, _, value in (part.partition("=") for part in raw.split("&") if part)]


@dataclass
class Request:
    path: str
    method: str
    query: str | None
    body: bytes | None
    headers: dict[str, str]
    how: list[str]
    base: Callback | None

    def target(self) -> str:
        return self.path if self.query is None else f"{self.path}?{self.query}"

    def describe(self) -> str:
        """Short and reproducible (with the ops that made it); long values cut, nothing secret."""
        parts = ["[" + "; ".join(self.how) + "]", f"{self.method} {_cut(self.target(), 240)}"]
        if "Content-Type" in self.headers:
            parts.append(f"content-type {self.headers['Content-Type']!r}")
        if self.body is not None:
            parts.append(f"body ({len(self.body)} bytes) {_cut(self.body.decode('latin-1'), 120)!r}")
        return _PAN_LIKE.sub("[digits]", " ".join(parts))


def _cut(text: str, size: int) -> str:
    return text if len(text) <= size else f"{text[:size]}...(+{len(text) - size} chars)"


class Builder:
    def __init__(self, shop: Shop) -> None:
        self.shop = shop

    def _resolve(self, spec: Op, current: str, base: Callback) -> tuple[str | None, str]:
        """A value spec -> (raw value, or None for a bare name; its description)."""
        kind = spec[0]
        others = [c for c in self.shop.callbacks if c is not base] or [base]
        if kind == "lit":
            return spec[1], f"{spec[1][:24]!r}"
        if kind == "huge":
            unit, size = spec[1], spec[2]
            return (unit * (size // len(unit) + 1))[:size], f"{size} chars of {unit!r}"
        if kind == "other_sign":
            return dict(others[0].pairs).get("Sign", ""), "another callback's Sign"
        if kind == "other_order":
            return others[0].payment_id, "another payment's Order"
        if kind == "other_id":
            return others[0].hyp_id, "another transaction's Id"
        if kind == "random_uuid":
            return str(uuid.UUID(int=random.Random(current).getrandbits(128))), "an unknown uuid"
        if kind == "upper":
            return current.upper(), "upper-cased"
        if kind == "lower":
            return current.lower(), "lower-cased"
        if kind == "double":
            return quote(current, safe=""), "percent-encoded again"
        if kind == "plus":
            return current.replace("%20", "+"), "%20 as +"
        if kind == "bare":
            return None, "name without ="
        raise AssertionError(kind)

    def build(self, plan: Plan) -> Request:
        base: Callback | None = None
        how: list[str] = []
        if plan.random_payload is not None:
            pairs: list[tuple[str, str | None]] = list(split_pairs(plan.random_payload))
            how.append("random payload")
            payload = plan.random_payload
        else:
            base = self.shop.pick(plan)
            how.append(f"{base.kind} callback{'' if base.processed else ' (first delivery)'}")
            pairs = list(base.pairs)
            for op in plan.ops:
                pairs = self._apply(op, pairs, base, how)
            payload = (
                plan.prefix
                + plan.joiner.join(name if value is None else f"{name}={value}" for name, value in pairs)
                + plan.suffix
            )
            if plan.prefix or plan.joiner != "&" or plan.suffix:
                how.append(f"joined {plan.prefix!r}+{plan.joiner!r}+{plan.suffix!r}")
        headers: dict[str, str] = dict(plan.headers)
        if plan.headers:
            how.append("headers " + ", ".join(name for name, _ in plan.headers))
        if plan.preflight:
            headers |= {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
        if plan.body_kind is None:
            return Request(plan.path, plan.method, _url_safe(payload), None, headers, how, base)
        body = self._body(plan, payload, pairs)
        if plan.content_type is not None:
            headers["Content-Type"] = plan.content_type
        if plan.body_kind == "gzip":
            headers["Content-Encoding"] = "gzip"
        how.append(f"{plan.body_kind} body")
        query: str | None = None
        if plan.with_query == "same":
            query = _url_safe(payload)
            how.append("the payload in the query too")
        elif plan.with_query == "genuine" and base is not None:
            query = base.query
            how.append("the real callback in the query")
        return Request(plan.path, plan.method, query, body, headers, how, base)

    def _apply(
        self, op: Op, pairs: list[tuple[str, str | None]], base: Callback, how: list[str]
    ) -> list[tuple[str, str | None]]:
        kind = op[0]
        n = len(pairs)
        if kind == "shuffle":
            random.Random(op[1]).shuffle(pairs)
            how.append("shuffled")
            return pairs
        if kind == "encode":
            mode = op[1]
            how.append(f"every value {mode}")
            if mode == "quote_all":
                return [(k, None if v is None else quote(unquote(v), safe="")) for k, v in pairs]
            if mode == "plus":
                return [(k, None if v is None else v.replace("%20", "+")) for k, v in pairs]
            if mode == "lower_hex":
                return [(k, None if v is None else _PERCENT.sub(lambda m: m[0].lower(), v)) for k, v in pairs]
            return [(k, None if v is None else unquote(v, encoding="latin-1")) for k, v in pairs]
        if kind == "sign":
            at = next((i for i, (k, _) in enumerate(pairs) if k == "Sign"), None)
            if at is None:
                return pairs
            name, value = pairs[at]
            value = value or ""
            mode = op[1]
            how.append(f"Sign {mode}")
            if mode == "flip":
                i = op[2] % max(1, len(value))
                flipped = "0" if value[i : i + 1] != "0" else "1"
                pairs[at] = (name, value[:i] + flipped + value[i + 1 :])
            elif mode == "upper":
                pairs[at] = (name, value.upper())
            elif mode == "truncate":
                pairs[at] = (name, value[: op[2] % 64])
            elif mode == "empty":
                pairs[at] = (name, "")
            elif mode == "drop":
                del pairs[at]
            else:
                others = [c for c in self.shop.callbacks if c is not base]
                if others:
                    pairs[at] = (name, dict(others[0].pairs)["Sign"])
            return pairs
        if kind == "unsigned":
            at = next((i for i, (k, _) in enumerate(pairs) if k == op[1]), None)
            new, label = self._resolve(op[2], "" if at is None else pairs[at][1] or "", base)
            if at is None:
                pairs.append((op[1], new))
            else:
                pairs[at] = (op[1], new)
            how.append(f"{op[1]} = {label}")
            return pairs
        if kind in ("add", "extra"):
            at = op[1] % (n + 1)
            if kind == "extra":
                value, label = op[3], repr(op[3])
            else:
                value, label = self._resolve(op[3], "", base)
            pairs.insert(at, (op[2], value))
            how.append(f"added {_cut(op[2], 20)!r}={label}")
            return pairs
        if n == 0:
            return pairs
        i = op[1] % n
        name, value = pairs[i]
        if kind == "drop":
            del pairs[i]
            how.append(f"dropped {name}")
        elif kind == "repeat":
            copy = value
            label = "same value"
            if op[3] is not None:
                copy, label = self._resolve(op[3], value or "", base)
            pairs.insert(op[2] % (n + 1), (name, copy))
            how.append(f"repeated {name} ({label})")
        elif kind == "move":
            pairs.insert(op[2] % n, pairs.pop(i))
            how.append(f"moved {name}")
        elif kind == "value":
            new, label = self._resolve(op[2], value or "", base)
            pairs[i] = (name, new)
            how.append(f"{name} = {label}")
        elif kind == "rename":
            mode = op[2]
            renamed = {
                "upper": name.upper(),
                "lower": name.lower(),
                "swap": name.swapcase(),
                "pct": "".join(f"%{b:02X}" for b in name[:1].encode("latin-1")) + name[1:],
                "brackets": f"{name}[]",
                "space": f"{name}%20",
                "other": "Id" if name != "Id" else "Order",
            }[mode]
            pairs[i] = (renamed, value)
            how.append(f"renamed {name} -> {renamed}")
        return pairs

    @staticmethod
    def _body(plan: Plan, payload: str, pairs: list[tuple[str, str | None]]) -> bytes:
        kind = plan.body_kind
        raw = payload.encode("latin-1", errors="replace")
        if kind == "form":
            return raw
        if kind == "json":
            return json.dumps({k: unquote(v or "", errors="replace") for k, v in pairs}).encode()
        if kind == "multipart":
            parts = [
                f'--xYzZY\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{unquote(v or "")}\r\n'.encode(
                    "utf-8", errors="replace"
                )
                for k, v in pairs
            ]
            return b"".join(parts) + b"--xYzZY--\r\n"
        if kind == "binary":
            return plan.noise
        if kind == "base64":
            return base64.b64encode(raw)
        if kind == "utf16":
            return payload.encode("utf-16", errors="replace")
        if kind == "cp1255":
            return "&".join(f"{k}={unquote(v or '', encoding='utf-8', errors='replace')}" for k, v in pairs).encode(
                "cp1255", errors="replace"
            )
        if kind == "gzip":
            return gzip.compress(raw, mtime=0)
        return b""


def _url_safe(text: str) -> str:
    """What a request line can carry: controls and spaces percent-encoded, the rest as it is."""
    return "".join(c if c in _URL_CHARS else quote(c, safe="", encoding="utf-8") for c in text)


# -- sending -----------------------------------------------------------------------------------------


class _RawConnection(http.client.HTTPConnection):
    """Sends the request line's Latin-1 characters as the raw bytes 0x80-0xFF (http.client says ASCII)."""

    def _encode_request(self, request: str) -> bytes:  # type: ignore[override]
        return request.encode("latin-1")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def media(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    def summary(self) -> str:
        text = self.body[:120].decode("utf-8", "replace")
        return f"{self.status} {self.media or '-'} {text!r}"


def send(base: str, request: Request, timeout: float = 60) -> Answer:
    address = urlsplit(base)
    connection = _RawConnection(address.hostname or "127.0.0.1", address.port or 80, timeout=timeout)
    try:
        connection.request(request.method, request.target(), body=request.body, headers=request.headers)
        response = connection.getresponse()
        body = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        connection.close()


# -- the oracle --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """What the function receives, as the HTTP API hands it over, and what Hyp's protocol makes of it."""

    routed: bool
    payload: str
    ascii: bool
    kind: str  # blank, poison, genuine, steered, extras, signed, forged
    callback: Callback | None


_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")


def view_of(request: Request, callbacks: list[Callback]) -> View:
    routed = (request.path, request.method) in ROUTED
    query = urlsplit(request.target()).query  # a `#` ends the query, as in any URL
    if request.method == "POST" and request.body:
        media = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if media.startswith(_TEXT_TYPES) or media.endswith(("+json", "+xml")):
            data = request.body.decode("utf-8", errors="replace").encode("utf-8")  # passed as text
        else:
            data = request.body  # passed base64-encoded, decoded by the function
        payload, is_ascii = data.decode("latin-1"), data.isascii()
    else:
        payload, is_ascii = query, query.isascii()
    if not payload.strip():
        return View(routed, payload, is_ascii, "blank", None)
    if not is_ascii:
        return View(routed, payload, is_ascii, "poison", None)
    pairs = split_pairs(payload)
    documented = tuple((n, v) for n, v in pairs if n in DOCUMENTED)
    match = next((c for c in callbacks if c.doc_pairs() == documented), None)
    names = [n for n, _ in pairs]
    if match is None:
        # Not what Hyp sent, but what its Sign covers is (the other fields edited, dropped, added, reordered): with
        # the Sign checked (`both`), Hyp's decision on those fields stands, whatever VERIFY says of the rest.
        signed = signed_of(pairs)
        match = next((c for c in callbacks if signed is not None and c.signed() == signed), None)
        if match is None:
            return View(routed, payload, is_ascii, "forged", None)
        if any(n.lower() in _STEERING_LOWER for n in names if n not in DOCUMENTED) or len(set(names)) != len(names):
            return View(routed, payload, is_ascii, "steered", match)
        return View(routed, payload, is_ascii, "signed", match)
    extras = [n for n, _ in pairs if n not in DOCUMENTED]
    if not extras:
        return View(routed, payload, is_ascii, "genuine", match)
    if any(n.lower() in _STEERING_LOWER for n in extras) or len(set(names)) != len(names):
        return View(routed, payload, is_ascii, "steered", match)
    return View(routed, payload, is_ascii, "extras", match)


class Contract:
    """docs/openapi.json's declared answers per route and method."""

    def __init__(self, path: Path = OPENAPI) -> None:
        document = json.loads(path.read_text(encoding="utf-8"))
        self.paths: dict[str, Any] = document.get("paths", {})

    def check(self, path: str, method: str, answer: Answer) -> str | None:
        """None when the answer is declared; else what is not."""
        operation = self.paths.get(path, {}).get(method.lower())
        if operation is None:
            return f"{method} {path} is not in docs/openapi.json"
        responses = operation.get("responses", {})
        declared = (
            responses.get(str(answer.status))
            or responses.get(f"{answer.status // 100}XX")
            or responses.get(f"{answer.status // 100}xx")
            or responses.get("default")
        )
        if declared is None:
            return f"status {answer.status} is not declared for {method} {path} (declared: {', '.join(responses)})"
        content = {media.lower() for media in declared.get("content", {})}
        if not content:
            if answer.body:
                return f"status {answer.status} declares no body for {method} {path}, got {answer.media or '-'}"
            return None
        if answer.media not in content and "*/*" not in content:
            return f"{answer.media or 'no content type'} is not declared for {answer.status} of {method} {path}"
        return None


def _rows_kept(change: str) -> bool:
    """A table's "rows before -> after" (`Tables.changed`) says its rows were changed, none added or removed."""
    before, _, after = change.removesuffix(" rows").partition(" -> ")
    return before == after


class Tables:
    """Every table of the public schema, by content: (rows, md5 of the rows as text, sorted)."""

    MONEY = frozenset({"credit_transactions", "payments", "profiles", "invoices", "saved_cards"})

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        names = [
            str(row[0])
            for row in stack.sql(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
            )
        ]
        self.statement = " UNION ALL ".join(
            f"SELECT '{name}', count(*), md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), ''))"
            f' FROM public."{name}" x'
            for name in names
        )

    def snapshot(self) -> dict[str, tuple[int, str]]:
        return {str(name): (int(rows), str(digest)) for name, rows, digest in self.stack.sql(self.statement)}

    @staticmethod
    def changed(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> dict[str, str]:
        """Table -> "rows before -> after" for every table whose content changed (no row is shown)."""
        return {
            name: f"{before.get(name, (0, ''))[0]} -> {after.get(name, (0, ''))[0]} rows"
            for name in sorted(set(before) | set(after))
            if before.get(name) != after.get(name)
        }


# -- the run -----------------------------------------------------------------------------------------


@dataclass
class CallbackFuzzResult:
    examples: int = 0
    requests: int = 0
    seconds: float = 0.0
    seed: int = 0
    payments: int = 0
    payments_refused: int = 0
    first_deliveries: int = 0
    outages: int = 0
    kept_unverified: int = 0
    replays_touching_journal: int = 0
    filled_after_sign_only: int = 0
    gateway: int = 0
    by_route: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    views: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    extras: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "requests": self.requests,
            "seconds": round(self.seconds, 1),
            "seed": self.seed,
            "real payments paid (odd profiles, windows-1255 pages, second charges)": self.payments,
            "payments the stack would not create or sign": self.payments_refused,
            "first deliveries (the only requests that wrote money)": self.first_deliveries,
            "requests under a VERIFY outage": self.outages,
            "of which kept unverified (journal only)": self.kept_unverified,
            "replays that wrote (never money)": self.replays_touching_journal,
            "verified deliveries after one settled on its Sign (invoice, card's last four filled in)": (
                self.filled_after_sign_only
            ),
            "gateway answers (no route, request line too long)": self.gateway,
            "what the function received": dict(sorted(self.views.items())),
            "answers": dict(sorted(self.outcomes.items())),
            "genuine plus unknown names": dict(sorted(self.extras.items())),
            "by route": dict(sorted(self.by_route.items())),
            "statuses": dict(sorted(self.statuses.items())),
            "failures": len(self.failures),
        }


class Fuzzer:
    JOURNAL = frozenset({"hypay_transactions", "hypay_unverified_callbacks"})
    VERIFY_FILLS = frozenset({"invoices", "saved_cards"})

    def __init__(self, stack: Stack, budget: int) -> None:
        self.stack = stack
        self.shop = Shop(stack, budget)
        self.builder = Builder(self.shop)
        self.tables = Tables(stack)
        self.contract = Contract()
        self.result = CallbackFuzzResult()
        self.control = stack.simulator.removesuffix("/p/") + "/_sim/faults"

    def fail(self, request: Request, answer: Answer | None, what: str) -> None:
        got = answer.summary() if answer is not None else "no answer"
        self.result.failures.append(_PAN_LIKE.sub("[digits]", f"{what}: {got} <- {request.describe()}"))

    def prepare(self) -> None:
        for _ in range(4):
            self.shop.new()

    def _outage(self, kind: str | None) -> None:
        """VERIFY fails for this request (the call and its retry), or no fault at all."""
        if kind is None:
            fetch(self.control, "DELETE")
            return
        rule: dict[str, Any] = {"action": "VERIFY", "kind": kind, "times": 2}
        if kind.startswith("ccode"):
            rule |= {"kind": "ccode", "ccode": int(kind.removeprefix("ccode"))}
        answer = fetch(self.control, "POST", json.dumps(rule).encode(), {"Content-Type": "application/json"})
        if answer.status != 204:
            raise RuntimeError(f"the simulator refused the fault {kind}: {answer.status}")

    def one(self, plan: Plan) -> None:
        self.result.examples += 1
        request = self.builder.build(plan)
        if plan.outage is not None:
            request.how.append(f"VERIFY outage: {plan.outage}")
        view = view_of(request, self.shop.callbacks)
        was_processed = view.callback.processed if view.callback is not None else None
        before = self.tables.snapshot()
        if plan.outage is not None:
            self._outage(plan.outage)
        try:
            answer = send(self.stack.base, request)
        except (OSError, http.client.HTTPException) as exc:
            self.result.requests += 1
            if len(request.target()) > _FRONT_DOOR_LIMIT:
                self.result.gateway += 1  # the front door's 414 came while the body was still being sent
            else:
                self.fail(request, None, f"the connection failed ({type(exc).__name__})")
            return
        finally:
            if plan.outage is not None:
                self._outage(None)
        after = self.tables.snapshot()
        self.result.requests += 1
        self.result.by_route[f"{request.method} {request.path}"] += 1
        self.result.statuses[str(answer.status)] += 1
        self.result.views[view.kind if view.routed else "no route"] += 1
        if plan.outage is not None:
            self.result.outages += 1
        changed = Tables.changed(before, after)
        for problem in self.judge(request, view, answer, changed, bool(was_processed), plan.outage is not None):
            self.fail(request, answer, problem)

    def judge(
        self,
        request: Request,
        view: View,
        answer: Answer,
        changed: dict[str, str],
        was_processed: bool,
        outage: bool,
    ) -> list[str]:
        problems: list[str] = []
        if answer.status >= 500 and not (outage and answer.status == 503):
            problems.append("a 5xx")
        if answer.status == 414 and len(request.target()) > _FRONT_DOOR_LIMIT:
            self.result.gateway += 1  # refused by the front door before any function
            if changed:
                problems.append(f"rows written by a request the front door refused: {changed}")
            return problems
        if not view.routed:
            self.result.gateway += 1
            preflight = request.method == "OPTIONS" and answer.status == 204
            not_found = answer.status == 404 and answer.body in (b'{"message":"Not Found"}', b"")
            if not (preflight or not_found):
                problems.append("a method no route takes must be the gateway's 404")
            if changed:
                problems.append(f"rows written by a request no route takes: {changed}")
            return problems
        undeclared = self.contract.check(request.path, request.method, answer)
        if undeclared is not None:
            problems.append(f"outside the contract: {undeclared}")
        outcome = self.outcome(request, view, answer)
        self.result.outcomes[outcome] += 1
        expected = {
            "blank": {"connection_test"},
            "poison": {"refused"},
            "forged": {"refused"},
            "steered": {"refused"},
            "genuine": {"processed"},
            "extras": {"processed", "refused"},
            "signed": {"processed", "refused"},
        }[view.kind]
        if outage and view.kind in ("genuine", "extras", "signed", "forged"):
            # Not verifiable yet: notify says 503, the redirect sends the browser to the pending page with the
            # Order it names (which looks like any processed redirect: the tables tell the difference).
            expected = expected | {"unavailable"} | ({"processed"} if request.path == RETURN else set())
        if outcome not in expected:
            problems.append(f"{view.kind} payload answered as {outcome} (expected {' or '.join(sorted(expected))})")
        if view.kind == "extras":
            self.result.extras[outcome] += 1
        callback = view.callback if view.kind in ("genuine", "extras", "signed") else None
        if callback is not None and outcome == "processed":
            problems += self.answered_for(request, callback, answer)
        first = False
        if callback is not None and not was_processed and self.verified(callback):
            first = True
            callback.processed = True
            callback.on_sign_only = view.kind == "signed"
            self.result.first_deliveries += 1
            if outcome != "processed":
                problems.append(f"a callback processed (journal verified) but answered as {outcome}")
        elif callback is not None and not was_processed and outcome == "processed" and not outage:
            problems.append("answered as processed, but its journal row is missing or unverified")
        if first or not changed:
            return problems
        if outage and set(changed) <= self.JOURNAL:
            self.result.kept_unverified += 1  # the contract's "kept for reconciliation": never money
        elif callback is not None and was_processed and outcome == "processed" and not set(changed) & Tables.MONEY:
            self.result.replays_touching_journal += 1
        elif (
            callback is not None
            and callback.on_sign_only
            and view.kind in ("genuine", "extras")
            and outcome == "processed"
            and set(changed) & Tables.MONEY <= self.VERIFY_FILLS
            and ("saved_cards" not in changed or _rows_kept(changed["saved_cards"]))
        ):
            # Settled first on its Sign alone: Hyp's verified delivery fills in the invoice number and the saved card's
            # last four digits the Sign does not cover (a new invoice row, a card's row changed, never a new card)
            callback.on_sign_only = False
            self.result.filled_after_sign_only += 1
        else:
            problems.append(f"rows written by a {view.kind} request answered as {outcome}: {changed}")
        return problems

    def verified(self, callback: Callback) -> bool:
        rows = self.stack.sql("SELECT verified FROM public.hypay_transactions WHERE hypay_id = :id", id=callback.hyp_id)
        return bool(rows and rows[0][0])

    def outcome(self, request: Request, view: View, answer: Answer) -> str:
        """What the answer says happened: connection_test, processed, refused, unavailable, or the status."""
        if answer.status == 200 and answer.body == b"OK" and answer.media == "text/plain":
            return "connection_test" if view.kind == "blank" else ("processed" if request.path == NOTIFY else "odd")
        if request.path == RETURN:
            if answer.status != 302:
                return f"status {answer.status}"
            location = urlsplit(answer.headers.get("location", ""))
            if location.scheme not in ("http", "https") or not location.netloc:
                return "a redirect to no page"
            return "processed" if parse_qs(location.query).get("payment_id") else "refused"
        if answer.media != "application/problem+json":
            return f"status {answer.status} {answer.media or '-'}"
        if answer.status in (409, 404):
            return "processed"  # a verified callback's answer: another payment's Id, an Order not ours
        if answer.status in (400, 403):
            return "refused"
        if answer.status == 503 and answer.headers.get("retry-after", "").isdigit():
            return "unavailable"
        return f"status {answer.status}"

    @staticmethod
    def answered_for(request: Request, callback: Callback, answer: Answer) -> list[str]:
        """A processed answer names the callback's own payment (and ours is never 'not one of our payments')."""
        if request.path == RETURN:
            paid = parse_qs(urlsplit(answer.headers.get("location", "")).query).get("payment_id", [""])[0]
            if paid != callback.payment_id:
                return ["the redirect names another payment than the callback's Order"]
        elif answer.status == 404:
            return ["our own payment's callback answered 404 (Order not ours)"]
        return []

    def invariants(self) -> list[str]:
        problems = []
        doubles = self.stack.sql(
            "SELECT payment_id FROM public.credit_transactions WHERE type = 'purchase' AND payment_id IS NOT NULL"
            " GROUP BY payment_id HAVING count(*) > 1"
        )
        if doubles:
            problems.append(f"invariant: {len(doubles)} payment(s) granted credits more than once")
        unpaid = self.stack.sql(
            "SELECT p.id FROM public.payments p WHERE p.status = 'completed' AND NOT EXISTS"
            " (SELECT 1 FROM public.credit_transactions c WHERE c.payment_id = p.id AND c.type = 'purchase')"
        )
        if unpaid:
            problems.append(f"invariant: {len(unpaid)} completed payment(s) without their credits")
        drift = self.stack.sql(
            "SELECT u.id FROM public.profiles u WHERE u.id = ANY(:users::uuid[]) AND u.credits <>"
            " (SELECT coalesce(sum(c.amount), 0) FROM public.credit_transactions c WHERE c.user_id = u.id)",
            users="{" + ",".join(self.stack.users) + "}",
        )
        if drift:
            problems.append(f"invariant: {len(drift)} balance(s) differ from their ledger")
        for callback in self.shop.callbacks:
            rows = self.stack.sql(
                "SELECT verified FROM public.hypay_transactions WHERE hypay_id = :id", id=callback.hyp_id
            )
            verified = [bool(r[0]) for r in rows]
            # Processed: its verified row. Never processed: no row, or the unverified one an outage kept.
            if verified not in ([[True]] if callback.processed else [[], [False]]):
                state = "processed" if callback.processed else "never processed"
                problems.append(f"invariant: the journal of a {callback.kind} callback ({state}) is {verified}")
        return problems


def run(stack: Stack, examples: int, *, seed: int | None = None) -> CallbackFuzzResult:
    """`examples` hypothesis examples (one request each) against the stack.

    The seed is random unless given (and always in the result, to run the same requests again); the same seed
    and size draw the same plans, applied to the new stack's own payments.
    """
    started = time.monotonic()
    fuzzer = Fuzzer(stack, budget=max(8, examples // 20))
    fuzzer.result.seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    fuzzer.prepare()

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=(Phase.generate,),
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        print_blob=False,
    )
    @hypothesis_seed(fuzzer.result.seed)
    @given(plans())
    def fuzz(plan: Plan) -> None:
        fuzzer.one(plan)

    fuzz()
    fuzzer.result.failures += fuzzer.invariants()
    fuzzer.result.payments = len(fuzzer.shop.callbacks)
    fuzzer.result.payments_refused = fuzzer.shop.refused
    fuzzer.result.seconds = time.monotonic() - started
    return fuzzer.result


def _main() -> None:  # pragma: no cover - a developer's shortcut: python -m proof.callback_fuzz [examples] [seed]
    import sys

    from proof.stack import stack

    examples = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    chosen = int(sys.argv[2]) if len(sys.argv) > 2 else None
    with stack() as running:
        result = run(running, examples, seed=chosen)
    print(json.dumps(result.counts(), indent=1, default=str))
    for failure in result.failures:
        print("FAIL", failure)


if __name__ == "__main__":
    _main()
