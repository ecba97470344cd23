"""docs/openapi.json, generated from the functions' own routes (Powertools' OpenAPI support).

`python -m ops.openapi` writes it; a test fails when the file no longer matches the code. Each route declares
in its decorator what it answers (`responses=`: statuses, media types, bodies, headers) and, when it reads its
request itself, what it reads (`openapi_extensions=payments.api_schema.reads_itself(...)`). Added here, because
no function says it: which routes the template puts behind API Gateway's authorizer, and what API Gateway
itself answers on them (401 and 403 from the authorizer, 404 when no route matches, 429 from its throttle).

Out of the contract, on purpose: 500 (a bug), 502 and 504 from API Gateway (a function that died or timed out).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer

from ops.template import ROOT, TEMPLATE, _CfnLoader, load, load_module
from payments import api_models
from payments.api_schema import JSON, REF_TEMPLATE

OUT = ROOT / "docs" / "openapi.json"
TITLE = "Payments API"
VERSION = "1.0.0"
DESCRIPTION = (
    "The payments backend's HTTP API (API Gateway HTTP API, Lambda). Errors are application/problem+json "
    '(RFC 9457), except the answers API Gateway gives itself (`{"message": ...}` in application/json): its '
    "authorizer's 401 (403 from the Lambda authorizer of the hs256 and es256 modes), 404 when no route "
    'matches and 429 from its throttle. 503 means "not yet" (ours; Retry-After): send the same request again, '
    "with the same Idempotency-Key. No request answers another 5xx but 502 (the payment gateway refused, in "
    "words)."
)
SCHEMES = {
    "webAppJwt": HTTPBearer(bearerFormat="JWT", description="The web app's access token (a signed-in user)."),
    "adminToken": HTTPBearer(description="An admin token, one of the named ones in ADMIN_TOKEN_SECRET_ARN."),
}
_GATEWAY = {"schema": {"$ref": "#/components/schemas/GatewayMessage"}}


def build() -> dict[str, Any]:
    """One document for the whole HTTP API: every function's routes, merged, with API Gateway's answers."""
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Payments")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")
    document: dict[str, Any] = {}
    template = load()
    for name in sorted(template.functions):
        app = load_module(template.functions[name]).app
        schema = json.loads(
            app.get_openapi_json_schema(title=TITLE, version=VERSION, description=DESCRIPTION, security_schemes=SCHEMES)
        )
        if not document:
            document = schema
            continue
        document.setdefault("paths", {}).update(schema.get("paths", {}))
        for kind, items in schema.get("components", {}).items():
            document.setdefault("components", {}).setdefault(kind, {}).update(items)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    secured = {(r.method.lower(), r.path) for r in template.routes if r.authorizer}
    throttled = _throttled({(r.method.lower(), r.path) for r in template.routes})
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if (method, path) in secured:
                # Which routes need the web app's token is the template's business (API Gateway's authorizer).
                operation["security"] = [{"webAppJwt": []}]
                _gateway_answer(responses, "401", "API Gateway's authorizer: no token, or not a valid one.")
                _gateway_answer(responses, "403", "API Gateway's Lambda authorizer (JwtMode hs256, es256) refused it.")
            if "{" in path:
                _gateway_answer(responses, "404", "API Gateway: no route matches (an empty path parameter).")
            if (method, path) in throttled:
                _gateway_answer(responses, "429", "API Gateway's throttle (the route's settings in template.yaml).")
                for header in responses["429"].get("headers", {}).values():
                    header["required"] = False  # API Gateway's own 429 carries none
                    header["description"] += " Always in the function's answer (problem+json), not in API Gateway's."
            for answer in responses.values():
                if answer.get("content") == {}:
                    del answer["content"]  # a redirect: no body, no media type
            _merge_reads(operation, schemas)
    _add_named_models(document, schemas)
    _drop_unused(document)
    return document


def _add_named_models(document: dict[str, Any], schemas: dict[str, Any]) -> None:
    """The models routes name (`payments.api_schema.model_ref`) and `_GATEWAY`, from `payments.api_models`, with
    the models they refer to in turn."""
    while True:
        text = json.dumps(document)
        named = {n for n in vars(api_models) if f'"{REF_TEMPLATE.format(model=n)}"' in text} - set(schemas)
        if not named:
            return
        for name in sorted(named):
            schema = getattr(api_models, name).model_json_schema(ref_template=REF_TEMPLATE)
            schemas.update(schema.pop("$defs", {}))
            schemas[name] = schema


def _throttled(routes: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The routes API Gateway throttles (429): all with DefaultRouteSettings, else those RouteSettings name."""
    doc = yaml.load(TEMPLATE.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    for resource in doc["Resources"].values():
        if resource["Type"] != "AWS::Serverless::HttpApi":
            continue
        properties = resource.get("Properties") or {}
        if any(key.startswith("Throttling") for key in properties.get("DefaultRouteSettings") or {}):
            return routes
        named = {tuple(key.split(" ", 1)) for key in properties.get("RouteSettings") or {}}
        return {(method, path) for method, path in routes if (method.upper(), path) in named}
    return set()


def _gateway_answer(responses: dict[str, Any], status: str, description: str) -> None:
    """API Gateway's own `{"message": ...}` beside what the function answers with that status, if anything."""
    answer = responses.setdefault(status, {"description": description, "content": {}})
    if answer["description"] != description:
        answer["description"] += f" Or: {description}"
    answer.setdefault("content", {})[JSON] = _GATEWAY


def _merge_reads(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    """A route that reads its request itself declares it under `x-reads` (`payments.api_schema.reads_itself`):
    its parameters join the signature's (a path parameter; one it names too is its own), its body's model `$defs`
    go to the components."""
    reads = operation.pop("x-reads", {})
    if reads.get("parameters"):
        declared = {(p["name"], p["in"]) for p in reads["parameters"]}
        signature = [p for p in operation.get("parameters", []) if (p["name"], p["in"]) not in declared]
        operation["parameters"] = [*signature, *reads["parameters"]]
    if "requestBody" in reads:
        operation["requestBody"] = reads["requestBody"]
        for content in reads["requestBody"]["content"].values():
            schemas.update(content["schema"].pop("$defs", {}))


def _drop_unused(document: dict[str, Any]) -> None:
    """Powertools adds its validation-error schemas to every document; keep only schemas something refers to."""
    schemas = document["components"]["schemas"]
    while True:
        text = json.dumps({k: v for k, v in document.items() if k != "components"}) + json.dumps(
            {name: schema for name, schema in schemas.items()}
        )
        unused = [name for name in schemas if f'"#/components/schemas/{name}"' not in text]
        if not unused:
            return
        for name in unused:
            del schemas[name]


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
