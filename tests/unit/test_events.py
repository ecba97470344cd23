"""Every events/*.json (kept for `sam local invoke -e`) runs through its function's handler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops.lambda_context import LocalLambdaContext
from ops.template import load, load_handler

ROOT = Path(__file__).resolve().parents[2]
EVENTS = sorted((ROOT / "events").glob("*.json"))
TEMPLATE = load()


def function_for(event_file: Path) -> str:
    for name, function in TEMPLATE.functions.items():
        if event_file.name.startswith(function.code_uri.name + "_"):
            return name
    raise AssertionError(f"{event_file.name}: name it after its function folder")


@pytest.fixture(autouse=True)
def _lambda_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "PaymentsTest")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")


def test_there_is_an_event_for_every_route_and_schedule() -> None:
    route_keys = {json.loads(f.read_text()).get("routeKey") for f in EVENTS}
    assert {r.route_key for r in TEMPLATE.routes} <= route_keys
    assert any(json.loads(f.read_text()).get("source") == "aws.events" for f in EVENTS)


@pytest.mark.parametrize("event_file", EVENTS, ids=lambda p: p.name)
def test_event_runs_through_its_handler(event_file: Path) -> None:
    # Given the event and the function it belongs to
    event = json.loads(event_file.read_text())
    name = function_for(event_file)
    if "routeKey" in event:
        assert any(r.route_key == event["routeKey"] and r.function == name for r in TEMPLATE.routes)
    handler = load_handler(TEMPLATE.functions[name])
    # When invoked as Lambda would / Then it answers (an HTTP response for API events)
    answer = handler(event, LocalLambdaContext(function_name=name))
    assert isinstance(answer, dict)
    if "routeKey" in event:
        assert isinstance(answer["statusCode"], int) and answer["statusCode"] != 404
        assert answer["headers"]["Cache-Control"] == "no-store"
