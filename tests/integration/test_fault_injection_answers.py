"""Proof, continued: Hyp's answer in a shape Hyp never sends, at every call to Hyp of every customer flow.

Hyp does the work (the simulator charges, signs, verifies, keeps the card), and its answer comes back garbled:
- `field_twice`: its CCode (or, without one, its first field) named a second time with another value;
- `ccode_unreadable`: its CCode in a spelling Hyp never writes, of another code (`+4` for an approval, `+0` for any
  other: `int()` would read the opposite outcome);
- `too_long`: longer than any answer of Hyp's (past `MAX_ANSWER_BYTES`).
Which answer Hyp meant is unknown: a charge's outcome is unknown (review, never declined, never charged again), any
other call is "not yet". Found automatically: the points are each flow's calls to Hyp in a clean run. Same
invariants as the other proofs (the Harness's own checks: no 5xx but a 503 with Retry-After, every paid Hyp
transaction has its row, credits granted once, one payment per Idempotency-Key).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from payments.adapters.hypay import HypayClient
from payments.domain import hypay as protocol
from tests.integration.test_fault_injection import Harness, every_case
from tests.integration.test_fault_injection_more import _flows, _held, _installed
from tests.integration.test_fault_injection_transient import admin_proof
from tests.integration.test_review import admin  # noqa: F401 - the admin tokens fixture
from tests.support.faults import DatabaseFaults, Point, hyp_label
from tests.support.payments import Env

_CCODE = re.compile(rb"(?:^|&)CCode=([^&]*)")


def _field_twice(body: bytes) -> bytes:
    found = _CCODE.search(body)
    if found is not None:
        return body + (b"&CCode=4" if found.group(1) == b"0" else b"&CCode=0")
    name, _, value = body.split(b"&")[0].partition(b"=")
    return body + b"&" + name + b"=" + value + b"9"


def _ccode_unreadable(body: bytes) -> bytes:
    """Its CCode in a spelling Hyp never writes, of another code: `+4` for an approval, `+0` for anything else (what
    `int()` would read as the other outcome)."""
    found = _CCODE.search(body)
    if found is None:
        return body
    code = b"%2B4" if found.group(1) == b"0" else b"%2B0"
    return body[: found.start(1)] + code + body[found.end(1) :]


SHAPES: dict[str, Callable[[bytes], bytes]] = {
    "field_twice": _field_twice,
    "ccode_unreadable": _ccode_unreadable,
    "too_long": lambda body: body + b"&Fild3=" + b"a" * (protocol.MAX_ANSWER_BYTES + 1),
}


class Garbled(DatabaseFaults):
    """At point `at`, a call to Hyp: sent, Hyp does it, and its answer comes back in the shape `fault` names."""

    def _hyp(self, client: HypayClient, request: Any, send: Callable[[], bytes]) -> bytes:
        if not self.armed or not self._point(Point("hyp", hyp_label(request))):
            return send()
        real_open, shape = client._open, SHAPES[self.fault or ""]

        def garbled(req: Any, timeout: float) -> bytes:
            return shape(real_open(req, timeout))

        client._open = garbled  # type: ignore[method-assign]
        try:
            return send()
        finally:
            client._open = real_open  # type: ignore[method-assign]


def test_field_twice_shape_names_a_field_again_with_another_value() -> None:
    assert _field_twice(b"Id=5&CCode=0&Amount=1") == b"Id=5&CCode=0&Amount=1&CCode=4"
    assert _field_twice(b"Id=5&CCode=33") == b"Id=5&CCode=33&CCode=0"
    assert _field_twice(b"Sign=ab&Amount=1") == b"Sign=ab&Amount=1&Sign=ab9"
    assert _ccode_unreadable(b"Id=5&CCode=0&Amount=1") == b"Id=5&CCode=%2B4&Amount=1"
    assert _ccode_unreadable(b"CCode=33&Id=5") == b"CCode=%2B0&Id=5"


@pytest.mark.parametrize("shape", list(SHAPES))
def test_garbled_answers_at_every_call_to_hyp(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], shape: str
) -> None:
    started = time.monotonic()
    with _installed(env, monkeypatch, Garbled, Harness.cold_start) as injector:
        harness = Harness(env, injector)
        harness.answer_losing = frozenset({"drop_after", *SHAPES})
        harness.save_a_card()
        found = every_case(harness, _flows(), faults=(shape,), points=lambda p: p.kind == "hyp")
    _held(f"{shape} at every call to Hyp", found, injector, started, capsys)


@pytest.mark.usefixtures("admin")
@pytest.mark.parametrize("shape", list(SHAPES))
def test_garbled_answers_at_every_call_to_hyp_of_the_admin_flows(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], shape: str
) -> None:
    """Refunds, same-day cancellations, settling and resolving: a refund or cancellation answered in a shape Hyp
    never sends is an unknown outcome (reserved, confirmed later), never refused or repeated."""
    admin_proof(env, monkeypatch, capsys, Garbled, shape, "hyp", f"admin {shape} at every call to Hyp")
