"""Powertools' dev mode (POWERTOOLS_DEV, documented by Powertools for local work) turns its resolver's debug on: every
request's whole event printed to stdout, outside the logging module and its redaction, so a saved-card charge's CVV
and an admin's bearer token reach CloudWatch on a function where an operator set it (an outside review); debug also
answers an unhandled error with its traceback. Our resolver never debugs, whatever the environment says."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ops.local_api import build_event
from payments.http import HttpApi

CVV = "7319"
TOKEN = "planted-admin-token-0042"


def test_the_resolver_never_prints_the_request_whatever_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWERTOOLS_DEV", "true")
    app = HttpApi()

    @app.post("/payments")
    def create() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/boom")
    def boom() -> dict[str, Any]:
        raise RuntimeError(f"planted {TOKEN}")

    def event(method: str, target: str, body: bytes) -> dict[str, Any]:
        return build_event(
            method=method,
            target=target,
            headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"},
            body=body,
            source_ip="203.0.113.7",
            route_key=f"{method} {target}",
            path_parameters={},
            claims=None,
        )

    answer = app.resolve(event("POST", "/payments", json.dumps({"cvv": CVV}).encode()), None)
    assert answer["statusCode"] == 200
    with pytest.raises(RuntimeError):  # no traceback in an answer: the function's own handler answers 500
        app.resolve(event("GET", "/boom", b""), None)
    printed = capsys.readouterr()
    assert CVV not in printed.out + printed.err
    assert TOKEN not in printed.out + printed.err
