"""What `make run` and the tests need to know of template.yaml: functions, routes, schedules."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

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
class Template:
    functions: dict[str, Function]
    routes: list[Route]

    def find_route(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self.routes:
            params = route.match(method, path)
            if params is not None:
                return route, params
        return None


def load(path: Path = TEMPLATE) -> Template:
    doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    globals_ = doc.get("Globals", {}).get("Function", {})
    functions: dict[str, Function] = {}
    routes: list[Route] = []
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
                authorizer = (p.get("Auth") or {}).get("Authorizer")
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
    return Template(functions, routes)


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
