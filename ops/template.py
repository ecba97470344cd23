"""What `make run` and the tests need to know of template.yaml: functions, routes, schedules, authorizers."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Ref, !Sub, ...) as {"Fn": value} instead of failing."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {suffix: value}


_CfnLoader.add_multi_constructor("!", _tag)


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # as in the template: /payments/{payment_id}
    function: str
    authorizer: str | None = None

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path}"

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """Path parameters when `method path` is this route, else None."""
        if method.upper() != self.method:
            return None
        pattern = "^" + re.sub(r"\\\{([A-Za-z_][A-Za-z0-9_]*)\\\}", r"(?P<\1>[^/]+)", re.escape(self.path)) + "$"
        found = re.match(pattern, path)
        return found.groupdict() if found else None


@dataclass(frozen=True)
class Function:
    name: str
    code_uri: Path
    handler: str
    timeout: float
    environment: dict[str, str] = field(default_factory=dict)
    schedules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Authorizer:
    """An HTTP API authorizer as the template declares it for one set of parameter values."""

    name: str
    kind: Literal["jwt", "lambda"]
    identity_header: str  # lower-case: the header API Gateway requires (401 without it) and caches by
    function: str | None = None  # lambda: the authorizer function's logical id
    ttl_seconds: int = 0  # lambda: how long API Gateway keeps an answer for the same identity
    simple_responses: bool = False
    payload_format_version: str = "2.0"
    issuer: Any = None  # jwt: as the template has them (resolved to parameter values when given)
    audience: Any = None


@dataclass(frozen=True)
class Template:
    functions: dict[str, Function]
    routes: list[Route]
    # Functions API Gateway calls as authorizers, not routes: kept apart from `functions` (no resolver).
    authorizer_functions: dict[str, Function] = field(default_factory=dict)
    security_schemes: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    conditions: dict[str, Any] = field(default_factory=dict)

    def find_route(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self.routes:
            params = route.match(method, path)
            if params is not None:
                return route, params
        return None

    def parameter_values(self, given: Mapping[str, str] | None = None) -> dict[str, str]:
        """Every parameter's value: `given`, else its default."""
        values = {name: str(p["Default"]) for name, p in self.parameters.items() if "Default" in p}
        return values | dict(given or {})

    def condition(self, name: str, parameters: Mapping[str, str]) -> bool:
        return bool(resolve({"Condition": name}, self.parameter_values(parameters), self.conditions))

    def authorizer(self, name: str, parameters: Mapping[str, str]) -> Authorizer:
        """The authorizer `name` as deployed with these parameter values (JwtMode decides its kind)."""
        values = self.parameter_values(parameters)
        scheme = resolve(self.security_schemes[name], values, self.conditions)
        config = scheme["x-amazon-apigateway-authorizer"]
        source = str(config["identitySource"])
        header = source.removeprefix("$request.header.").lower()
        if config["type"] == "jwt":
            jwt_config = config["jwtConfiguration"]
            return Authorizer(name, "jwt", header, issuer=jwt_config.get("issuer"), audience=jwt_config.get("audience"))
        uri = config["authorizerUri"]
        found = _ARN_REF.search(json.dumps(uri))
        return Authorizer(
            name,
            "lambda",
            header,
            function=found.group(1) if found else None,
            ttl_seconds=int(config.get("authorizerResultTtlInSeconds", 0)),
            simple_responses=bool(config.get("enableSimpleResponses", False)),
            payload_format_version=str(config.get("authorizerPayloadFormatVersion")),
        )


_ARN_REF = re.compile(r"\$\{([A-Za-z0-9]+)\.Arn\}")


def resolve(value: Any, parameters: Mapping[str, str], conditions: Mapping[str, Any]) -> Any:
    """`value` with If / Condition / Equals / Not / And / Or / Ref-to-parameter worked out (as CloudFormation
    would for these parameter values); other intrinsics are left as they are."""
    if isinstance(value, list):
        return [resolve(v, parameters, conditions) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, arg),) = value.items()
        fn = key.removeprefix("Fn::")
        if fn == "If":
            name, yes, no = arg
            chosen = yes if resolve({"Condition": name}, parameters, conditions) else no
            return resolve(chosen, parameters, conditions)
        if fn == "Condition" and isinstance(arg, str):
            return bool(resolve(conditions[arg], parameters, conditions))
        if fn == "Equals":
            a, b = (resolve(v, parameters, conditions) for v in arg)
            return str(a) == str(b)
        if fn == "Not":
            return not resolve(arg[0], parameters, conditions)
        if fn == "And":
            return all(resolve(v, parameters, conditions) for v in arg)
        if fn == "Or":
            return any(resolve(v, parameters, conditions) for v in arg)
        if key == "Ref" and isinstance(arg, str) and arg in parameters:
            return parameters[arg]
    return {k: resolve(v, parameters, conditions) for k, v in value.items()}


def load(path: Path = TEMPLATE) -> Template:
    doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    globals_ = doc.get("Globals", {}).get("Function", {})
    functions: dict[str, Function] = {}
    routes: list[Route] = []
    body = _http_api_body(doc)
    schemes: dict[str, Any] = (body.get("components") or {}).get("securitySchemes") or {}
    authorizer_ids = {found for scheme in schemes.values() for found in _ARN_REF.findall(json.dumps(scheme))}
    for name, resource in doc["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        props = resource["Properties"]
        env = {
            k: v
            for k, v in {
                **globals_.get("Environment", {}).get("Variables", {}),
                **props.get("Environment", {}).get("Variables", {}),
            }.items()
            if isinstance(v, str)  # intrinsic values (!Ref ...) are the deployer's; locally they come from .env
        }
        schedules = []
        for event in props.get("Events", {}).values():
            if event["Type"] == "HttpApi":
                p = event["Properties"]
                authorizer = (p.get("Auth") or {}).get("Authorizer") or _body_authorizer(body, p["Path"], p["Method"])
                routes.append(Route(p["Method"].upper(), p["Path"], name, None if authorizer == "NONE" else authorizer))
            elif event["Type"] == "Schedule":
                schedules.append(event["Properties"]["Schedule"])
        functions[name] = Function(
            name=name,
            code_uri=path.parent / props["CodeUri"],
            handler=props.get("Handler", globals_.get("Handler", "app.lambda_handler")),
            timeout=float(props.get("Timeout", globals_.get("Timeout", 3))),
            environment=env,
            schedules=tuple(schedules),
        )
    authorizer_functions = {name: functions.pop(name) for name in sorted(authorizer_ids) if name in functions}
    return Template(
        functions,
        routes,
        authorizer_functions=authorizer_functions,
        security_schemes=schemes,
        parameters=doc.get("Parameters", {}),
        conditions=doc.get("Conditions", {}),
    )


def _http_api_body(doc: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document of the template's HTTP API (DefinitionBody), {} without one."""
    for resource in doc["Resources"].values():
        if resource["Type"] == "AWS::Serverless::HttpApi":
            body = resource.get("Properties", {}).get("DefinitionBody")
            if isinstance(body, dict):
                return body
    return {}


def _body_authorizer(body: dict[str, Any], path: str, method: str) -> str | None:
    """The security scheme the OpenAPI document puts on this route, if any."""
    operation = ((body.get("paths") or {}).get(path) or {}).get(method.lower()) or {}
    for requirement in operation.get("security") or []:
        for name in requirement:
            return str(name)
    return None


def load_module(function: Function) -> ModuleType:
    """Import a function's handler module from its code folder under a module name of its own."""
    module_name = function.handler.rsplit(".", 1)[0]
    unique = f"_lambda_{function.name}_{module_name}"
    if unique in sys.modules:
        return sys.modules[unique]
    spec = importlib.util.spec_from_file_location(unique, function.code_uri / f"{module_name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    spec.loader.exec_module(module)
    return module


def load_handler(function: Function) -> Callable[[dict, Any], Any]:
    return getattr(load_module(function), function.handler.rsplit(".", 1)[1])


_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")


def rate_seconds(expression: str) -> int:
    """Seconds between runs of an EventBridge `rate(...)` expression (cron is not emulated locally)."""
    found = _RATE.match(expression)
    if not found:
        raise ValueError(f"unsupported schedule expression locally: {expression}")
    unit = found.group(2).rstrip("s")
    return int(found.group(1)) * {"minute": 60, "hour": 3600, "day": 86400}[unit]
