"""Calls to Hyp fit in the invocation (payments/deadline.py): a callback that verifies and then saves the card asks Hyp
twice, each call with its own retry budget, and the two together used to outlast the function's timeout when Hyp was
slow. Lambda then killed the invocation: a 500 for a customer who had paid, its metrics never flushed."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
import yaml

from ops.template import TEMPLATE, _CfnLoader
from payments import deadline
from payments.adapters import hypay as hypay_module
from payments.adapters.hypay import HypayClient, HypayCredentials, Token
from payments.domain.money import Money
from payments.errors import GatewayNotAsked, GatewayUnavailable

TOKEN_ANSWER = b"Id=12345678&CCode=0&Token=1234567890123456789&Tokef=2812"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Context:
    """A Lambda context whose remaining time follows the clock."""

    def __init__(self, clock: Clock, timeout: float) -> None:
        self.clock, self.until = clock, clock.now + timeout

    def get_remaining_time_in_millis(self) -> int:
        return int((self.until - self.clock.now) * 1000)


def _template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506 - safe subclass


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(hypay_module.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(deadline, "_deadline", None)
    return clock


def _client(opener: Any) -> HypayClient:
    params = _template()["Parameters"]
    return HypayClient(
        lambda: HypayCredentials("0010131918", "k" * 20, "pass"),
        timeout_seconds=params["HypayTimeout"]["Default"],
        budget_seconds=params["HypayBudget"]["Default"],
        opener=opener,
    )


def _slow_hyp(clock: Clock, calls: list[str]) -> Any:
    """Hyp degraded: every first attempt times out (the whole timeout spent), every retry answers after 5.5 s."""

    def send(request: urllib.request.Request, timeout: float) -> bytes:
        calls.append(f"{'VERIFY' if b'VERIFY' in (request.data or b'') else 'getToken'} {timeout:.1f}")
        if len(calls) % 2 == 1:
            clock.now += timeout
            raise TimeoutError
        clock.now += 5.5
        return b"CCode=0" if b"VERIFY" in (request.data or b"") else TOKEN_ANSWER

    return send


def test_verify_then_get_token_end_before_the_callback_functions_timeout(clock: Clock) -> None:
    doc = _template()
    function = doc["Resources"]["HypayCallbackFunction"]["Properties"]
    timeout = function.get("Timeout", doc["Globals"]["Function"]["Timeout"])
    calls: list[str] = []
    client = _client(_slow_hyp(clock, calls))
    # Given an invocation of the callback function, with Hyp slow
    started = clock.now
    deadline.start(Context(clock, timeout))
    # When it verifies (a timeout, then the retry's answer) and then asks for the token
    assert client.verify_redirect("Id=12345678&CCode=0&Amount=10&ACode=0&Order=x&Sign=abc")
    with pytest.raises(GatewayUnavailable):  # the caller's "card not saved yet": the next delivery saves it
        client.get_token("12345678")
    # Then the token's attempt was cut to what the invocation had left, and not retried: Hyp's last answer came with
    # the reserve still left for storing it and answering
    assert calls == ["VERIFY 6.0", "VERIFY 6.0", "getToken 6.0"]
    assert clock.now - started <= timeout - deadline.RESERVE_SECONDS


def test_a_read_is_shortened_to_the_time_left_and_not_made_with_less_than_a_second(clock: Clock) -> None:
    timeouts: list[float] = []

    def answer(request: urllib.request.Request, timeout: float) -> bytes:
        timeouts.append(timeout)
        return TOKEN_ANSWER

    client = _client(answer)
    deadline.start(Context(clock, deadline.RESERVE_SECONDS + 3.5))
    assert isinstance(client.get_token("12345678"), Token)
    assert timeouts == [3.5]
    clock.now += 2.6  # 0.9 s left before the reserve
    with pytest.raises(GatewayNotAsked):
        client.get_token("12345678")
    assert timeouts == [3.5]  # nothing sent


def test_a_call_that_moves_money_is_made_with_its_whole_timeout_or_not_at_all(clock: Clock) -> None:
    sent: list[float] = []

    def refund(request: urllib.request.Request, timeout: float) -> bytes:
        sent.append(timeout)
        return b"Id=87654321&CCode=0&ACode=0012345"

    client = _client(refund)
    # With less than its timeout left, a refund is not asked for: its answer cut short would be an unknown outcome
    deadline.start(Context(clock, deadline.RESERVE_SECONDS + 5.9))
    with pytest.raises(GatewayNotAsked):
        client.refund("12345678", amount=Money.of("10.00", "ILS"))
    assert sent == []
    # With its timeout left, it is asked, with its whole timeout
    deadline.start(Context(clock, deadline.RESERVE_SECONDS + 6.0))
    assert client.refund("12345678", amount=Money.of("10.00", "ILS")).transaction_id == "87654321"
    assert sent == [6.0]


def test_outside_an_invocation_there_is_no_deadline(clock: Clock) -> None:
    calls: list[str] = []
    client = _client(_slow_hyp(clock, calls))
    assert client.verify_redirect("Id=12345678&CCode=0&Amount=10&ACode=0&Order=x&Sign=abc")
    assert isinstance(client.get_token("12345678"), Token)
    assert calls == ["VERIFY 6.0", "VERIFY 6.0", "getToken 6.0", "getToken 6.0"]


def test_a_context_that_cannot_tell_its_time_gives_no_deadline(clock: Clock) -> None:
    class Broken:
        def get_remaining_time_in_millis(self) -> int:
            raise RuntimeError("no")

    deadline.start(Broken())
    assert deadline.seconds_left() is None
    deadline.start(object())
    assert deadline.seconds_left() is None


def test_the_deadline_lasts_the_invocation_only(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    # A function's entry point starts it from the context and clears it on the way out: code that runs after an
    # invocation (a tool, a test, the next cold path) never inherits a deadline that has passed.
    from payments.observability import http_handler

    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "DeadlineTest")
    seen: list[float | None] = []

    class App:
        def resolve(self, event: Any, context: Any) -> dict[str, Any]:
            seen.append(deadline.seconds_left())
            return {"statusCode": 200, "headers": {}, "body": ""}

    class LambdaContext(Context):
        function_name, memory_limit_in_mb, aws_request_id = "fn", 256, "req-1"
        invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:fn"

    event = {
        "version": "2.0",
        "rawPath": "/",
        "requestContext": {"stage": "$default", "http": {"method": "GET", "sourceIp": "203.0.113.7"}},
        "headers": {},
    }
    handler = http_handler(App())
    assert handler(event, LambdaContext(clock, 20))["statusCode"] == 200
    assert seen == [20 - deadline.RESERVE_SECONDS]
    assert deadline.seconds_left() is None
