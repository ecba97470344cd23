"""The contract is the truth: schemathesis, with every check it has, against docs/openapi.json on a running stack.

`run(stack, examples)` runs schemathesis' engine (its Python API, the same engine as `st run`) in phases, each
one run of schemathesis' own test phases (examples, coverage, fuzzing; stateful where a token can follow the
links) over some operations:

- `user`: the web app's routes with a signed-in user's token. A new user every few payments, so the rate limit
  (CREATE_PAYMENT_RATE_LIMIT a minute per user) does not answer every case; a payment is read with its owner's
  token when it is one of ours (the stateful phase follows the 201's link to GET /payments/{payment_id}).
- `peers`: the same routes as two users, alice and bob, who must not see each other's payments.
- `admin`: the admin routes with the admin token.
- `crossed`: the admin routes with a user's token and the web app's routes with the admin token (all refused).
  This one and `peers` are about who calls, not what is sent: a fifth of the examples, no coverage phase.
- `anonymous`: every route without a token: Hyp's public routes for real, the others must refuse.

`examples` is schemathesis' `max-examples`: cases per operation in the fuzzing (and stateful) phase of each run;
the coverage phase adds its own deterministic cases (boundaries, missing and malformed parameters, other
methods and media types).

Checks, all of schemathesis 4.x's: not_a_server_error, status_code_conformance, content_type_conformance,
response_headers_conformance, response_schema_conformance, negative_data_rejection, positive_data_acceptance,
missing_required_header, allow_header_conformance, use_after_free, ensure_resource_availability, ignored_auth,
object_level_authorization (the `peers` phase), but one: `unsupported_method` expects 405 with an Allow header
for a method a path does not declare; API Gateway answers those itself with 404 before any function runs (the
local API does the same), so no code of ours can answer 405. Those requests are still sent (the coverage phase),
and `not_a_server_error` and the rest still judge them.

Configured, not excluded: a malformed or forged /hypay/return is answered with a redirect to the web app's
failure page (302), so 302 is the expected rejection there (negative_data_rejection); on the three POSTs that
take an Idempotency-Key, a key used before with another body is refused with 422, which no schema can rule
out, so 422 is an accepted answer to valid data there (positive_data_acceptance); a "negative" Hypay callback
that reaches the wire without any field is not sent (`filter_case`: it is the portal's connection test, 200);
`after` (the review queue's cursor) is generated as valid cursors (format `review-cursor`), since any other
string is refused; half the payments name a pack that exists (a schemathesis dictionary of the packs).

A failure is any check that failed or errored, a request that got no answer, and an engine error; each says
the phase, the request (method, path and query, body; never the Authorization header, a card or CVV) and what
was wrong.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.core import NotSet
from schemathesis.engine import Status, events, from_schema

from ops.openapi import OUT
from payments.services.review import encode_cursor
from proof.stack import Stack

DOCUMENT = OUT
EXCLUDED_CHECKS = {
    "unsupported_method": "API Gateway answers an undeclared method with 404 itself; no function can answer 405",
}
KEYED = ("/payments", "/admin/payments/{payment_id}/resolve", "/admin/payments/{payment_id}/refund")
POSITIVE_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "429"]  # schemathesis' own, but 5xx
PAYMENTS_PER_USER = 5  # under the rate limit's 10 a minute, whatever the order the cases come in
# A card number: 13 to 19 digits, spaced or dashed, standing alone (not a UUID's tail).
_PAN = re.compile(r"(?<![\w-])[0-9](?:[ -]?[0-9]){12,18}(?![\w-])")
_SHOWN_HEADERS = ("content-type", "idempotency-key")
_SECRET_MEMBERS = re.compile(r'("(?:cvv|CC|Token|KEY|PassP|token)"\s*:\s*)("(?:[^"\\]|\\.)*"|[0-9]+)', re.IGNORECASE)


@dataclass
class Failure:
    """One thing outside the contract, with the first request that showed it (and how many more did)."""

    phase: str
    check: str
    request: str
    status: int | None
    what: str
    times: int = 1

    def __str__(self) -> str:
        answered = f" -> {self.status}" if self.status is not None else ""
        again = f" (and {self.times - 1} more like it)" if self.times > 1 else ""
        return f"[{self.phase}] {self.check}: {self.request}{answered}: {self.what}{again}"


@dataclass
class Result:
    """Cases sent per phase and per operation, and what was outside the contract."""

    seconds: float = 0.0
    phases: dict[str, int] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    operations: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    _seen: dict[tuple[Any, ...], Failure] = field(default_factory=dict, repr=False)

    @property
    def cases(self) -> int:
        return sum(self.phases.values())

    def add(self, failure: Failure, operation: str = "") -> None:
        """Kept once per phase, check, operation, status and title; the others counted."""
        key = (failure.phase, failure.check, operation, failure.status, failure.what.split(":", 1)[0])
        if key in self._seen:
            self._seen[key].times += 1
            return
        self._seen[key] = failure
        self.failures.append(failure)

    def counts(self) -> dict[str, Any]:
        declared = set(operations())
        return {
            "cases": self.cases,
            "seconds": round(self.seconds, 1),
            "phases": dict(self.phases),
            "phase seconds": {name: round(t, 1) for name, t in self.phase_seconds.items()},
            "per operation": {op: n for op, n in sorted(self.operations.items()) if op in declared},
            "undeclared methods": sum(n for op, n in self.operations.items() if op not in declared),
            "statuses": dict(sorted(self.statuses.items())),
            "checks run": dict(sorted(self.checks.items())),
            "checks excluded": EXCLUDED_CHECKS,
        }


@dataclass(frozen=True)
class _Phase:
    name: str
    tags: tuple[str, ...]  # the operations it runs, by tag
    auth: Callable[[Stack], Any] | None  # -> an AuthProvider class for the schema; None: no token
    wfc_peers: bool = False
    stateful: bool = False
    # A phase about who may call, not about what is sent: a fifth of the examples, no coverage phase.
    about_auth: bool = False

    def examples(self, examples: int) -> int:
        return max(5, examples // 5) if self.about_auth else examples


TAGS = ("payments", "admin", "hypay")


def run(
    stack: Stack, examples: int, *, seed: int | None = None, workers: int = 4, only: tuple[str, ...] | None = None
) -> Result:
    """Every phase (or `only` these) against `stack.base`; `examples`: schemathesis' max-examples."""
    _register_formats()
    result = Result()
    started = time.monotonic()
    phases = [
        _Phase("user", ("payments",), _Users.provider, stateful=True),
        _Phase("peers", ("payments",), None, wfc_peers=True, stateful=True, about_auth=True),
        _Phase("admin", ("admin",), _Admin.provider),
        _Phase("crossed", ("admin", "payments"), _Crossed.provider, about_auth=True),
        _Phase("anonymous", TAGS, None),
    ]
    for phase in phases:
        if only is not None and phase.name not in only:
            continue
        with _phase_config(stack, phase, examples, seed, workers) as config:
            schema = schemathesis.openapi.from_path(DOCUMENT, config=config)
            schema.hook(filter_case)
            if phase.auth is not None:
                schema.auth(refresh_interval=None)(phase.auth(stack))
            _run_phase(phase.name, schema, result)
    result.seconds = time.monotonic() - started
    return result


@contextlib.contextmanager
def _phase_config(stack: Stack, phase: _Phase, examples: int, seed: int | None, workers: int) -> Iterator[Any]:
    """Schemathesis' configuration (as `schemathesis.toml` would hold it) for one phase."""
    packs = [row[0] for row in stack.sql("SELECT id::text FROM public.credit_packs ORDER BY id")]
    config: dict[str, Any] = {
        "base-url": stack.base,
        "workers": workers,
        "request-timeout": 30,
        "max-redirects": 0,
        "generation": {"max-examples": phase.examples(examples), "database": "none"},
        "checks": {name: {"enabled": name not in EXCLUDED_CHECKS} for name in _all_checks()},
        "phases": {
            "coverage": {
                "enabled": not phase.about_auth,
                "unexpected-methods": ["put", "patch", "delete", "options", "trace"],
            },
            # The links (POST /payments -> GET /payments/{payment_id}) with a token that can follow them.
            "stateful": {"enabled": phase.stateful},
        },
        "output": {"sanitization": {"enabled": True}},
        "cache": {"enabled": False},  # nothing kept between runs (no .schemathesis/ folder)
        # Half the payments name a pack that exists (active or not), or every one would be a 404.
        "dictionaries": {"packs": {"values": packs}},
        "parameters": {"body.credit_pack_id": {"dictionary": "packs", "probability": 0.5}},
        "operations": [
            *({"include-tag": tag, "enabled": False} for tag in TAGS if tag not in phase.tags),
            # A malformed or forged redirect sends the customer's browser to the failure page.
            {
                "include-path": "/hypay/return",
                "checks": {"negative_data_rejection": {"expected-statuses": ["302"]}},
            },
            # A key used before with another body is refused (422): valid by the schema, not by the key's history.
            *(
                {
                    "include-path": path,
                    "include-method": "POST",
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*POSITIVE_STATUSES, "422"]}},
                }
                for path in KEYED
            ),
            # type=cleanup waits two seconds for a record to expire: a few of them say all there is to say.
            {"include-path": "/debug/test-idempotency", "generation": {"max-examples": min(examples, 5)}},
        ],
    }
    if seed is not None:
        config["seed"] = seed
    with _wfc_file(stack) if phase.wfc_peers else contextlib.nullcontext() as wfc:
        if wfc is not None:
            config["auth"] = {"wfc": {"path": str(wfc), "peers": ["alice", "bob"]}}
        yield SchemathesisConfig.from_dict(config)


@contextlib.contextmanager
def _wfc_file(stack: Stack) -> Iterator[Path]:
    """A Web Fuzzing Commons auth file naming two users (peers), deleted after the phase."""
    users = [{"name": name, "token": stack.token(stack.new_user())} for name in ("alice", "bob")]
    document = {
        "auth": [
            {"name": u["name"], "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {u['token']}"}]}
            for u in users
        ]
    }
    path = stack.folder / f"wfc-{uuid.uuid4().hex}.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def operations() -> list[str]:
    """`METHOD /path` of every operation the document declares."""
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    return sorted(f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item)


def _all_checks() -> list[str]:
    from schemathesis.config._checks import _BUILTIN_CHECK_CONFIGS

    return sorted(_BUILTIN_CHECK_CONFIGS)


# -- who calls ------------------------------------------------------------------------------------


def _bearer(case: Any, token: str) -> None:
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}


class _Users:
    """Signed-in users' tokens: a new user every PAYMENTS_PER_USER payments; a payment read by its owner."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.lock = threading.Lock()
        self.owners: dict[str, str] = {}  # user id -> token, for our users only
        self.current = self._new()
        self.payments = 0

    def _new(self) -> str:
        user = self.stack.new_user()
        self.owners[user] = self.stack.token(user)
        return self.owners[user]

    def token(self, case: Any) -> str:
        with self.lock:
            if case.method == "GET":
                owner = self._owner(str((case.path_parameters or {}).get("payment_id", "")))
                if owner is not None:
                    return owner
            if case.method == "POST":
                self.payments += 1
                if self.payments % PAYMENTS_PER_USER == 0:
                    self.current = self._new()
            return self.current

    def _owner(self, payment_id: str) -> str | None:
        try:
            uuid.UUID(payment_id)
        except ValueError:
            return None
        rows = self.stack.sql("SELECT user_id::text FROM public.payments WHERE id = :id::uuid", id=payment_id)
        return self.owners.get(rows[0][0]) if rows else None

    @classmethod
    def provider(cls, stack: Stack) -> type:
        users = cls(stack)

        class Provider:
            def get(self, case: Any, context: Any) -> str:
                return users.token(case)

            def set(self, case: Any, data: str, context: Any) -> None:
                _bearer(case, data)

        return Provider


class _Admin:
    @staticmethod
    def provider(stack: Stack) -> type:
        token = stack.admin_token

        class Provider:
            def get(self, case: Any, context: Any) -> str:
                return token

            def set(self, case: Any, data: str, context: Any) -> None:
                _bearer(case, data)

        return Provider


class _Crossed:
    """The admin token where a user's is needed, a user's where the admin's is."""

    @staticmethod
    def provider(stack: Stack) -> type:
        user_token, admin_token = stack.token(stack.new_user()), stack.admin_token

        class Provider:
            def get(self, case: Any, context: Any) -> str:
                return user_token if "admin" in (case.operation.tags or []) else admin_token

            def set(self, case: Any, data: str, context: Any) -> None:
                _bearer(case, data)

        return Provider


# -- generation -------------------------------------------------------------------------------------


def filter_case(context: Any, case: Any) -> bool:
    """Drops a "negative" Hypay callback that reaches the wire without any field: a form that encodes to no
    body, a query without parameters. That request is Hyp's portal connection test, which the contract answers
    200; schemathesis calls it invalid only because the deciding fields are required once any field is sent."""
    if not case.operation.path.startswith("/hypay/") or case.meta is None or not case.meta.generation.mode.is_negative:
        return True
    if case.method == "POST":
        body = case.body
        if isinstance(body, NotSet) or body is None:
            return False
        if not isinstance(body, Mapping):
            return bool(body) or not isinstance(body, (str, bytes))  # anything else is sent as JSON text
        return bool(requests.Request("POST", "http://form", data=body).prepare().body)
    return bool(case.query)


_registered = False


def _register_formats() -> None:
    """`review-cursor`: a cursor as GET /admin/review returns them (any other string is refused, 400)."""
    global _registered
    if _registered:
        return
    instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(
        lambda t: t.replace(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    )
    keys = st.one_of(
        st.uuids().map(lambda u: f"p:{u}"),
        st.uuids().map(lambda u: f"r:{u}"),
        st.integers(min_value=1, max_value=10**20 - 1).map(lambda n: f"j:{n}"),
    )
    schemathesis.openapi.format("review-cursor", st.builds(encode_cursor, instants, keys))
    _registered = True


# -- running and reading the events --------------------------------------------------------------


def _run_phase(name: str, schema: Any, result: Result) -> None:
    sent, began = 0, time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            sent += _read_scenario(name, event.recorder, result)
        elif isinstance(event, events.NonFatalError):
            result.add(Failure(name, "error", event.label, None, _short(str(event.value))), event.label)
        elif isinstance(event, events.FatalError):
            result.add(Failure(name, "fatal", "-", None, _short(str(event.exception))))
        elif isinstance(event, events.EngineFinished):
            for failure in event.failures:
                result.add(Failure(name, failure.code, failure.operation or "-", None, _what(failure)))
    result.phases[name] = result.phases.get(name, 0) + sent
    result.phase_seconds[name] = time.monotonic() - began


def _read_scenario(phase: str, recorder: Any, result: Result) -> int:
    sent = 0
    for case_id, node in recorder.cases.items():
        case = node.value
        interaction = recorder.interactions.get(case_id)
        if interaction is None:
            continue
        sent += 1
        operation = f"{case.method} {case.operation.path}"
        result.operations[operation] += 1
        response = interaction.response
        status = response.status_code if response is not None else None
        if status is not None:
            result.statuses[status] += 1
        request = _describe(interaction.request)
        if response is None:
            result.add(Failure(phase, "no answer", request, None, "the request got no answer"), operation)
        for check in recorder.checks.get(case_id, []):
            result.checks[check.name] += 1
            if check.status == Status.ERROR:
                result.add(Failure(phase, check.name, request, status, "the check errored"), operation)
            elif check.status == Status.FAILURE and check.failure_info is not None:
                what = _what(check.failure_info.failure)
                result.add(Failure(phase, check.name, request, status, what), operation)
    return sent


def _describe(request: Any) -> str:
    """Method, path and query, the headers that say what was sent, body; never the Authorization header."""
    url = urlsplit(request.uri)
    target = url.path + (f"?{url.query}" if url.query else "")
    text = f"{request.method} {_short(target, 300)}"
    for name, values in request.headers.items():
        if name.lower() in _SHOWN_HEADERS:
            text += f" {name}: {_short(repr(values[0] if isinstance(values, list) else values), 80)}"
    if request.body:
        body = request.body if isinstance(request.body, bytes) else str(request.body).encode()
        shown = _SECRET_MEMBERS.sub(r'\1"[redacted]"', body.decode("utf-8", errors="replace"))
        text += f" body {_short(shown, 300)!r}"
    return _PAN.sub("[redacted]", text)


def _what(failure: Any) -> str:
    title = getattr(failure, "title", "") or type(failure).__name__
    message = " ".join(str(getattr(failure, "message", "")).split())
    return _PAN.sub("[redacted]", _short(f"{title}: {message}", 500))


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
