"""Calling the functions as API Gateway does: payload 2.0 events with the authorizer's claims."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from ops.lambda_context import LocalLambdaContext
from ops.local_api import build_event
from ops.template import load, load_handler, load_module

TEMPLATE = load()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def invoke(
    function: str,
    method: str,
    path: str,
    *,
    user: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    source_ip: str = "203.0.113.7",
) -> Answer:
    """One request through the function's handler, as API Gateway would hand it over."""
    found = TEMPLATE.find_route(method, path.partition("?")[0])
    assert found is not None, f"no route {method} {path}"
    route, params = found
    raw = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
    data = raw.encode() if isinstance(raw, str) else (raw or b"")
    claims = {"sub": user, "aud": "authenticated", "role": "authenticated"} if user else None
    event = build_event(
        method=method,
        target=path,
        headers={"content-type": "application/json", **(headers or {})},
        body=data,
        source_ip=source_ip,
        route_key=route.route_key,
        path_parameters=params,
        claims=claims,
    )
    handler = load_handler(TEMPLATE.functions[function])
    result = handler(event, LocalLambdaContext(function_name=function, timeout_seconds=20))
    return Answer(
        result["statusCode"], {k.lower(): v for k, v in (result.get("headers") or {}).items()}, result.get("body")
    )


def reset_function_state(function: str) -> None:
    """Forget what a warm execution environment kept (its service and clients), like a cold start."""
    module = load_module(TEMPLATE.functions[function])
    for value in list(vars(module).values()):
        clear = getattr(value, "cache_clear", None)
        if callable(clear) and getattr(value, "__module__", None) == module.__name__:
            clear()


def notify_event(body: str, *, base64_encoded: bool) -> dict[str, Any]:
    """A `POST /hypay/notify` event carrying `body` as given: base64-encoded as API Gateway hands over a form body,
    or as text (what only a direct invocation can send)."""
    event = build_event(
        method="POST",
        target="/hypay/notify",
        headers={"content-type": "application/x-www-form-urlencoded"},
        body=b"x",
        source_ip="198.51.100.20",
        route_key="POST /hypay/notify",
        path_parameters={},
        claims=None,
    )
    event["body"] = base64.b64encode(body.encode()).decode() if base64_encoded else body
    event["isBase64Encoded"] = base64_encoded
    return event


def call(function: str, event: dict[str, Any]) -> dict[str, Any]:
    """One event through the function's handler, its raw answer."""
    handler = load_handler(TEMPLATE.functions[function])
    return handler(event, LocalLambdaContext(function_name=function, timeout_seconds=20))
