"""Every events/*.json (kept for `sam local invoke -e`) runs through its function's handler, against the
simulator and a seeded database, and gets the answer a real deployment would give it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops.lambda_context import LocalLambdaContext
from ops.template import load, load_handler
from tests.support.api import reset_function_state
from tests.support.payments import Env

ROOT = Path(__file__).resolve().parents[2]
EVENTS = sorted((ROOT / "events").glob("*.json"))
TEMPLATE = load()
DANA = "11111111-1111-4111-8111-111111111111"  # the events' user (a production profile)
EXPECTED = {
    "admin_review.json": 200,
    "admin_resolve.json": 409,  # the events' payment is pending (its page may still be open): not resolvable
    "admin_refund.json": 409,  # ... and nothing of it was paid: nothing to refund
    "admin_refund_outcome.json": 404,  # ... nor any refund to settle
    "admin_close_transaction.json": 404,  # ... nor any Hyp transaction to close
    "cleanup_admin.json": 200,
    "cleanup_debug_test_idempotency.json": 200,
    "cleanup_schedule.json": None,  # not HTTP: the cleanup report
    "create_payment_get.json": 200,
    "create_payment_post.json": 201,
    # Hyp's documented example: its Sign right (the test terminal's KEY), unknown to VERIFY: settled on its Sign, and
    # its Order is not one of our payments (journaled)
    "hypay_callback_notify_get.json": 404,
    "hypay_callback_notify_post.json": 404,
    "hypay_callback_return.json": 302,
    "hypay_callback_return_connection_test.json": 200,
}


def function_for(event: dict, event_file: Path) -> str:
    """The function an event belongs to: by its route, else the scheduled function its file is named after."""
    for route in TEMPLATE.routes:
        if route.route_key == event.get("routeKey"):
            return route.function
    for name, function in TEMPLATE.functions.items():
        if event_file.name.startswith(function.code_uri.name + "_") and function.schedules:
            return name
    raise AssertionError(f"{event_file.name}: no route or schedule of the template takes it")


@pytest.fixture
def events_env(env: Env, monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.setenv("ADMIN_API_TOKEN", "local-admin-token")
    env.rows(f"INSERT INTO profiles (id, email, full_name) VALUES ('{DANA}', 'dana@example.co.il', 'דנה לוי')")
    env.rows(
        "INSERT INTO payments (id, user_id, credit_pack_id, amount, status) VALUES "
        f"('bbbbbbbb-0000-4000-8000-000000000002', '{DANA}', 'aaaaaaaa-0000-4000-8000-000000000002', 199, "
        "'pending')"
    )
    for name in TEMPLATE.functions:
        reset_function_state(name)
    return env


def test_every_route_and_schedule_has_an_event() -> None:
    route_keys = {json.loads(f.read_text()).get("routeKey") for f in EVENTS}
    assert {r.route_key for r in TEMPLATE.routes} <= route_keys
    assert any(json.loads(f.read_text()).get("source") == "aws.events" for f in EVENTS)
    assert {f.name for f in EVENTS} == set(EXPECTED)


@pytest.mark.parametrize("event_file", EVENTS, ids=lambda p: p.name)
def test_event_runs_through_its_handler(events_env: Env, event_file: Path) -> None:
    event = json.loads(event_file.read_text())
    name = function_for(event, event_file)
    answer = load_handler(TEMPLATE.functions[name])(event, LocalLambdaContext(function_name=name))
    expected = EXPECTED[event_file.name]
    if expected is None:
        assert answer["complete"] is True and "purged_idempotency_records" in answer
    else:
        assert answer["statusCode"] == expected, answer
        assert answer["headers"]["Cache-Control"] == "no-store"


def test_the_readmes_sam_local_invoke_names_a_function_and_an_event_of_its() -> None:
    # `sam local invoke -e` alone is refused by SAM when the template has more than one function: the README's
    # command names the function's logical ID, and the event is one of that function's
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"sam local invoke (\S+) -e (events/\S+\.json)", readme)
    assert commands and "sam local invoke -e" not in readme
    for function, event in commands:
        assert function in TEMPLATE.functions and (ROOT / event).is_file()
        assert event.removeprefix("events/").startswith(TEMPLATE.functions[function].code_uri.name)
