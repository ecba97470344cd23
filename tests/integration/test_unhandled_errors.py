"""An exception no route handled: a 500 that says nothing of it, the traceback in the log, and a metric that
alarms (the invocation returns normally, so Lambda's own Errors metric never counts it)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from ops.seed import DEMO_USER_ID
from ops.template import load_module
from tests.integration.test_hypay_callback import buy, metric_totals, notify, pay
from tests.integration.test_review import ADMIN, ALICE, CLEANUP, admin  # noqa: F401 - the fixture
from tests.support.api import TEMPLATE, Answer, invoke
from tests.support.payments import CALLBACK, CREATE, Env

SECRET = "4580458045804580 KEY=abcdef"  # what an exception's text may carry: never answered


def _boom(*args: object, **kwargs: object) -> object:
    raise RuntimeError(SECRET)


def _create(env: Env) -> Answer:
    return invoke(CREATE, "GET", f"/payments/{uuid.uuid4()}", user=DEMO_USER_ID)


def _callback(env: Env) -> Answer:
    return notify(pay(env, buy(env)).redirect_query)


def _admin(env: Env) -> Answer:
    return invoke(ADMIN, "GET", "/admin/review", headers={"Authorization": f"Bearer {ALICE}"})


def _cleanup(env: Env) -> Answer:
    return invoke(CLEANUP, "POST", "/admin/cleanup-idempotency", headers={"Authorization": f"Bearer {ALICE}"})


@pytest.mark.parametrize(
    ("function", "broken", "call"),
    [
        pytest.param(CREATE, "get_payment", _create, id="create_payment"),
        pytest.param(CALLBACK, "_handle", _callback, id="hypay_callback"),
        pytest.param(ADMIN, "review_queue", _admin, id="admin"),
        pytest.param(CLEANUP, "run_cleanup", _cleanup, id="cleanup"),
    ],
)
def test_an_unhandled_error_is_a_plain_500_logged_and_counted_for_the_alarm(
    admin: Env,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    function: str,
    broken: str,
    call: Callable[[Env], Answer],
) -> None:
    # Given a bug: a step of the route raises what nobody expected
    monkeypatch.setattr(load_module(TEMPLATE.functions[function]), broken, _boom)
    capsys.readouterr()
    # When a request reaches it
    answer = call(admin)
    # Then the caller gets a 500 problem that tells nothing of the error
    assert answer.status == 500 and answer.headers["content-type"] == "application/problem+json"
    assert SECRET not in answer.body and "RuntimeError" not in answer.body
    # And the error is counted (UnhandledError: the alarm fires on the first) and logged with its traceback, the
    # card-like number and the credential in its text redacted (the suite's leak check reads every record too)
    out = capsys.readouterr().out
    assert metric_totals(out).get("UnhandledError") == 1
    [logged] = [r for r in caplog.records if getattr(r, "exception_name", None) == "RuntimeError"]
    assert logged.levelname == "ERROR" and "Traceback" in logged.exception
    assert "RuntimeError: [redacted] KEY=[redacted]" in logged.exception and logged.exc_info is None
    assert "4580458045804580" not in out and "abcdef" not in out
