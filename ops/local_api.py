"""A local stand-in for API Gateway (HTTP API, payload 2.0) and Lambda, for `make run` and tests.

Every HTTP route of template.yaml is served: a request becomes a payload 2.0 event and is handed
to its function. Like Lambda, a function runs in a few execution environments (worker processes),
each handling one invocation at a time with its own module state, so concurrent requests run
concurrently and never share a database connection. Unknown routes answer 404 as API Gateway does.
Scheduled functions run on their `rate(...)`; `POST /_local/schedules/<FunctionName>` runs one now.
`GET /_local/workers` lists each function's live worker processes (the proof suite kills them at random).

Secured routes get the authorizer the template gives them in the chosen JWT mode (`LocalAuth`, rs256 by
default), as API Gateway runs it: no Authorization header is a 401 either way. rs256 is the JWT authorizer
(a bad token is a 401; claims in `requestContext.authorizer.jwt`), verified against the local JWKS this
server publishes; hs256 and es256 invoke the real authorizer function (payload 2.0, simple responses) in
its own execution environments: a denial is a 403, a failure a 500, an answer is kept for the template's
TTL per Authorization header, and its context reaches the function as `requestContext.authorizer.lambda`.
"""

from __future__ import annotations

import base64
import copy
import json
import multiprocessing
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

from ops.lambda_context import LocalLambdaContext
from ops.local_auth import (
    DEFAULT_MODE,
    JWKS_PATH,
    LOCAL_JWT_AUDIENCE,
    LOCAL_JWT_ISSUER,
    LOCAL_JWT_SECRET,
    OPENID_CONFIGURATION_PATH,
    LocalAuth,
)
from ops.template import (
    TEMPLATE,
    Authorizer,
    Function,
    Template,
    _CfnLoader,
    load_handler,
    rate_seconds,
    resolve,
)
from payments.adapters.jwks import JwksKeys
from payments.services.authorize import TokenPolicy, TokenRejected, TokenVerifier, bearer_token, context_claims

Site = Callable[[str, str, Mapping[str, str]], tuple[int, dict[str, str], bytes] | None]
"""Extra local pages (the demo web app): (method, path, request headers with lower-case names) -> (status,
headers, body), or None."""

__all__ = [
    "LOCAL_JWT_AUDIENCE",
    "LOCAL_JWT_ISSUER",
    "LOCAL_JWT_SECRET",
    "Cors",
    "LocalApi",
    "build_event",
    "load_cors",
    "local_token",
]

SCHEDULE_TRIGGER_PREFIX = "/_local/schedules/"
WORKERS_PATH = "/_local/workers"  # GET: each function's live worker processes {"Name": [pid, ...]}
REGION, ACCOUNT = "eu-west-1", "123456789012"


@cache
def default_auth() -> LocalAuth:
    """The local issuer a LocalApi uses unless given another: the default mode with its kept key."""
    return LocalAuth.for_mode(DEFAULT_MODE)


def local_token(sub: str, *, email: str | None = None, ttl_seconds: int = 7 * 24 * 3600) -> str:
    """A Supabase-shaped access token a LocalApi in its default mode accepts."""
    return default_auth().token(sub, email=email, ttl_seconds=ttl_seconds)


# -- the execution environments --------------------------------------------------------------

_handler: Any = None
_function: Function | None = None


def _init_worker(function: Function, environment: Mapping[str, str]) -> None:
    """Runs once in each worker process: its environment, then the cold start (import)."""
    global _handler, _function
    # Ctrl-C in a terminal reaches the whole process group: the parent stops the workers, they must not
    # each print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(environment)
    _function = function
    _handler = load_handler(function)


def _invoke(event: dict) -> Any:
    assert _function is not None
    context = LocalLambdaContext(function_name=_function.name, timeout_seconds=_function.timeout)
    return _handler(event, context)


def _pid() -> int:
    return os.getpid()


class EnvironmentDied(Exception):
    """A worker process died during the invocation (killed, crashed, os._exit): API Gateway answers 502."""


class FunctionPool:
    """A function's execution environments: `size` worker processes, each running one invocation at a time with
    its own module state (one-process executors, started on first use; the warmest idle one is taken first).

    A worker that dies is replaced alone, as Lambda replaces an execution environment: only the invocation it
    was running fails (EnvironmentDied); the function's other environments and the requests waiting for one go
    on. The next invocation in its place starts cold."""

    def __init__(self, function: Function, environment: Mapping[str, str], size: int) -> None:
        self.function = function
        self._size = size
        self._env = {**function.environment, **environment, "AWS_LAMBDA_FUNCTION_NAME": function.name}
        self._lock = threading.Lock()
        self._closed = False
        self._executors = [self._new_executor() for _ in range(size)]
        self._idle: queue.LifoQueue[int] = queue.LifoQueue()
        for slot in reversed(range(size)):
            self._idle.put(slot)

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.function, self._env),
        )

    def _replace(self, slot: int, broken: ProcessPoolExecutor) -> None:
        """A new environment in a dead one's place (once, whoever notices first)."""
        with self._lock:
            if self._executors[slot] is broken and not self._closed:
                print(f"[{self.function.name}] an execution environment died; starting a new one")
                self._executors[slot] = self._new_executor()
        broken.shutdown(wait=False, cancel_futures=True)

    def invoke(self, event: dict) -> Any:
        deadline = time.monotonic() + self.function.timeout + 5  # waiting for an environment counts too
        try:
            slot = self._idle.get(timeout=self.function.timeout + 5)
        except queue.Empty:
            raise TimeoutError(f"{self.function.name} timed out") from None
        executor = self._executors[slot]
        try:
            try:
                future: Future[Any] = executor.submit(_invoke, event)
            except BrokenProcessPool:  # died since its last invocation: this one runs in a new environment
                self._replace(slot, executor)
                executor = self._executors[slot]
                future = executor.submit(_invoke, event)
        except BaseException:
            self._idle.put(slot)
            raise
        # The environment is busy until its invocation ends, even when the caller stopped waiting (a timeout).
        future.add_done_callback(lambda _: self._idle.put(slot))
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            raise TimeoutError(f"{self.function.name} timed out") from None
        except BrokenProcessPool:
            self._replace(slot, executor)
            raise EnvironmentDied(f"{self.function.name}: the execution environment died") from None

    def pids(self) -> list[int]:
        """The live worker processes (the proof suite kills them at random)."""
        alive = []
        for executor in list(self._executors):
            processes = getattr(executor, "_processes", None) or {}
            alive += [pid for pid, process in list(processes.items()) if process.is_alive()]
        return sorted(alive)

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
        for executor in self._executors:
            executor.shutdown(wait=True, cancel_futures=True)


# -- HTTP API emulation ----------------------------------------------------------------------

# Bodies API Gateway passes as text; any other (forms, binary, no content type) arrives base64-encoded
# with isBase64Encoded true, as the HTTP API does (the functions decode them).
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")


def _is_text(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith(_TEXT_TYPES) or media.endswith(("+json", "+xml"))


@dataclass(frozen=True)
class Cors:
    """The HTTP API's CorsConfiguration: API Gateway answers preflights itself and adds the headers."""

    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int | None = None
    allow_credentials: bool = False

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.allow_origins or origin in self.allow_origins

    def preflight(self, origin: str, method: str, request_headers: str) -> dict[str, str]:
        """The headers of API Gateway's 204 to a preflight: none when the origin, method or a header is not
        allowed (the browser then refuses the request)."""
        methods = {m.upper() for m in self.allow_methods}
        allowed_headers = {h.lower() for h in self.allow_headers}
        asked = [h.strip().lower() for h in request_headers.split(",") if h.strip()]
        if not self.origin_allowed(origin) or not ("*" in methods or method.upper() in methods):
            return {}
        if "*" not in allowed_headers and any(h not in allowed_headers for h in asked):
            return {}
        out = {
            "access-control-allow-origin": "*" if "*" in self.allow_origins and not self.allow_credentials else origin,
            "access-control-allow-methods": ",".join(self.allow_methods),
        }
        if self.allow_headers:
            out["access-control-allow-headers"] = ",".join(self.allow_headers).lower()
        if self.max_age is not None:
            out["access-control-max-age"] = str(self.max_age)
        if self.allow_credentials:
            out["access-control-allow-credentials"] = "true"
        return out

    def response_headers(self, origin: str) -> dict[str, str]:
        """What API Gateway adds to an actual response for a cross-origin request."""
        if not origin or not self.origin_allowed(origin):
            return {}
        out = {
            "access-control-allow-origin": "*" if "*" in self.allow_origins and not self.allow_credentials else origin
        }
        if self.expose_headers:
            out["access-control-expose-headers"] = ",".join(self.expose_headers).lower()
        if self.allow_credentials:
            out["access-control-allow-credentials"] = "true"
        return out


def load_cors(path: Path = TEMPLATE, parameters: Mapping[str, str] | None = None) -> Cors | None:
    """The CorsConfiguration of the template's HTTP API, for these parameter values (default: the defaults)."""
    doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    declared = doc.get("Parameters") or {}
    values = {name: str(spec.get("Default", "")) for name, spec in declared.items()}
    values.update(parameters or {})
    lists = {name for name, spec in declared.items() if str(spec.get("Type", "")).startswith("CommaDelimitedList")}
    for resource in doc["Resources"].values():
        if resource["Type"] != "AWS::Serverless::HttpApi":
            continue
        config = (resource.get("Properties") or {}).get("CorsConfiguration")
        if not config:
            return None

        def listed(key: str, config: dict[str, Any] = config) -> tuple[str, ...]:
            value = config.get(key) or []
            if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in values:
                text = values[value["Ref"]]
                return tuple(v.strip() for v in text.split(",") if v.strip()) if value["Ref"] in lists else (text,)
            value = resolve(value, values, doc.get("Conditions") or {})
            return tuple(str(v) for v in (value if isinstance(value, list) else [value]))

        max_age = resolve(config.get("MaxAge"), values, doc.get("Conditions") or {})
        return Cors(
            allow_origins=listed("AllowOrigins"),
            allow_methods=listed("AllowMethods"),
            allow_headers=listed("AllowHeaders"),
            expose_headers=listed("ExposeHeaders"),
            max_age=None if max_age is None else int(max_age),
            allow_credentials=bool(resolve(config.get("AllowCredentials", False), values, {})),
        )
    return None


def build_event(
    *,
    method: str,
    target: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    source_ip: str,
    route_key: str,
    path_parameters: dict[str, str],
    claims: dict[str, Any] | None,
    authorizer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An API Gateway HTTP API payload 2.0 event, as API Gateway would build it.

    `claims`: the JWT authorizer's (`requestContext.authorizer.jwt.claims`); `authorizer`: the whole
    `requestContext.authorizer` instead (e.g. `{"lambda": {...}}`, a Lambda authorizer's context).
    """
    parts = urlsplit(target)
    # The path and its parameters as API Gateway's HTTP API hands them over: percent-decoded (`/payments/%22` is
    # `/payments/"`); the query string is not (`rawQueryString` is exactly as received).
    path = unquote(parts.path, errors="replace")
    lowered: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers.items() if isinstance(headers, Mapping) else headers:
        key = name.lower()
        if key == "cookie":  # every Cookie header's cookies go to `cookies`, not to `headers`
            cookies += [c.strip() for c in value.split(";") if c.strip()]
            continue
        lowered[key] = f"{lowered[key]},{value}" if key in lowered else value  # repeated: joined with commas
    now = datetime.now(UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": parts.query,  # exactly as received: signatures are checked on it
        "headers": lowered,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": lowered.get("host", "127.0.0.1"),
            "domainPrefix": "local",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if parts.query:
        query: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            query[key] = f"{query[key]},{value}" if key in query else value
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = {name: unquote(value, errors="replace") for name, value in path_parameters.items()}
    if body:
        if _is_text(lowered.get("content-type", "")):
            event["body"] = body.decode("utf-8", errors="replace")
        else:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
    if claims is not None:
        event["requestContext"]["authorizer"] = {"jwt": {"claims": claims, "scopes": None}}
    if authorizer is not None:
        event["requestContext"]["authorizer"] = authorizer
    return event


def build_authorizer_event(event: dict[str, Any], identity_source: list[str]) -> dict[str, Any]:
    """The payload 2.0 REQUEST event API Gateway sends a Lambda authorizer for this request (no body)."""
    out = copy.deepcopy({k: v for k, v in event.items() if k not in ("body", "isBase64Encoded")})
    context = out["requestContext"]
    method, path = context["http"]["method"], out["rawPath"]
    out["type"] = "REQUEST"
    out["routeArn"] = f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{context['apiId']}/{context['stage']}/{method}{path}"
    out["identitySource"] = identity_source
    return out


def scheduled_event(function: Function) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "eu-west-1",
        "resources": [f"arn:aws:events:eu-west-1:123456789012:rule/local-{function.name}"],
        "detail": {},
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a burst of concurrent requests queues instead of being refused


class LocalApi:
    """The local HTTP API: routes from the template, functions in worker processes, schedules."""

    def __init__(
        self,
        template: Template,
        environment: Mapping[str, str] | Callable[[str], Mapping[str, str]],
        *,
        host: str = "127.0.0.1",
        port: int = 3000,
        workers: int = 3,
        run_schedules: bool = True,
        site: Site | None = None,
        auth: LocalAuth | None = None,
        cors: Cors | None = None,
    ) -> None:
        """`cors`: the HTTP API's CorsConfiguration (`load_cors()`), None for none."""
        self.template = template
        self.cors = cors
        self._site = site
        self._run_schedules = run_schedules
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # A kept-alive connection must not stall: with Nagle on, a response written in two sends waits
            # for the client's delayed ACK (~40 ms). TCP_NODELAY, and a buffered writer so that the head and
            # the body go out in one send (flushed after each request).
            disable_nagle_algorithm = True
            wbufsize = -1

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                return  # the functions log; request lines would only repeat them

            def _serve(self) -> None:
                api._handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _serve  # noqa: N815
            # No route has these methods: 404 as API Gateway answers, not http.server's 501.
            do_TRACE = do_QUERY = _serve  # noqa: N815

        self.server = _Server((host, port), Handler)  # bound first: the JWKS URL names its port
        if callable(environment):  # the functions' settings may name this server's URL (port 0: the bound one)
            environment = environment(self.url)

        secured = sorted({r.authorizer for r in template.routes if r.authorizer})
        self.auth = auth if auth is not None else (default_auth() if secured else None)
        self.authorizers: dict[str, Authorizer] = {}
        if self.auth is not None:
            parameters = self.auth.template_parameters()
            self.authorizers = {name: template.authorizer(name, parameters) for name in secured}
        self.pools = {name: FunctionPool(fn, environment, workers) for name, fn in template.functions.items()}
        self._jwt_verifiers: dict[str, TokenVerifier] = {}
        for authorizer in self.authorizers.values():
            assert self.auth is not None
            if authorizer.kind == "jwt":
                self._jwt_verifiers[authorizer.name] = self._jwt_authorizer(authorizer, self.auth)
                continue
            if not authorizer.simple_responses or authorizer.payload_format_version != "2.0":
                raise NotImplementedError(f"{authorizer.name}: only payload 2.0 simple responses are emulated")
            assert authorizer.function is not None
            if authorizer.function not in self.pools:
                env = {**environment, **self.auth.authorizer_environment(self.jwks_url)}
                fn = template.authorizer_functions[authorizer.function]
                self.pools[authorizer.function] = FunctionPool(fn, env, workers)
        self._answers: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._answers_lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def jwks_url(self) -> str:
        """Where this server publishes the local issuer's keys (Supabase's path under the project URL)."""
        return f"{self.url}{JWKS_PATH}"

    def _jwt_authorizer(self, authorizer: Authorizer, auth: LocalAuth) -> TokenVerifier:
        """API Gateway's JWT authorizer: RSA keys from the issuer's JWKS, iss, aud, exp/nbf; no role check."""
        audience = authorizer.audience[0] if isinstance(authorizer.audience, list) else authorizer.audience
        policy = TokenPolicy(
            algorithm="RS256", issuer=str(authorizer.issuer), audience=str(audience), required_role=None
        )
        return TokenVerifier(policy, JwksKeys(self.jwks_url, refresh_cooldown_seconds=0))

    # -- lifecycle --

    def start(self) -> None:
        serve = threading.Thread(target=self.server.serve_forever, name="local-api", daemon=True)
        serve.start()
        self._threads.append(serve)
        if self._run_schedules:
            for fn in self.template.functions.values():
                for expression in fn.schedules:
                    t = threading.Thread(target=self._schedule_loop, args=(fn, rate_seconds(expression)), daemon=True)
                    t.start()
                    self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        for pool in self.pools.values():
            pool.shutdown()

    def run_schedule_now(self, function_name: str) -> Any:
        fn = self.template.functions[function_name]
        return self.pools[function_name].invoke(scheduled_event(fn))

    def _schedule_loop(self, fn: Function, every: int) -> None:
        while not self._stop.wait(every):
            try:
                self.pools[fn.name].invoke(scheduled_event(fn))
            except Exception as exc:  # a failed run is reported and the schedule goes on, as EventBridge does
                print(f"[schedule] {fn.name} failed: {type(exc).__name__}")

    # -- requests --

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        method = request.command
        path = urlsplit(request.path).path

        if method == "POST" and path.startswith(SCHEDULE_TRIGGER_PREFIX):
            name = path[len(SCHEDULE_TRIGGER_PREFIX) :]
            if name not in self.template.functions or not self.template.functions[name].schedules:
                return self._reply(request, 404, {"content-type": "application/json"}, b'{"message":"Not Found"}')
            result = self.run_schedule_now(name)
            return self._reply(request, 200, {"content-type": "application/json"}, json.dumps(result).encode())

        if method == "GET" and path == WORKERS_PATH:
            workers = {name: pool.pids() for name, pool in self.pools.items()}
            return self._reply(request, 200, {"content-type": "application/json"}, json.dumps(workers).encode())

        if self.auth is not None and method in ("GET", "HEAD") and path in (JWKS_PATH, OPENID_CONFIGURATION_PATH):
            document = (
                self.auth.jwks() if path == JWKS_PATH else {"issuer": self.auth.issuer, "jwks_uri": self.jwks_url}
            )
            return self._reply(request, 200, {"content-type": "application/json"}, json.dumps(document).encode())

        if self._site is not None:
            page = self._site(method, path, {k.lower(): v for k, v in request.headers.items()})
            if page is not None:
                return self._reply(request, *page)

        origin = request.headers.get("Origin") or ""
        if (
            self.cors is not None
            and method == "OPTIONS"
            and origin
            and request.headers.get("Access-Control-Request-Method")
        ):
            # A CORS preflight: API Gateway answers it itself (204), no route, no function, no authorizer
            headers = self.cors.preflight(
                origin,
                request.headers.get("Access-Control-Request-Method", ""),
                request.headers.get("Access-Control-Request-Headers", ""),
            )
            return self._reply(request, 204, headers, b"")
        extra = self.cors.response_headers(origin) if self.cors is not None else {}
        self._handle_route(request, method, path, body, extra)

    def _handle_route(
        self, request: BaseHTTPRequestHandler, method: str, path: str, body: bytes, cors: Mapping[str, str]
    ) -> None:
        def reply(status: int, headers: Mapping[str, str], content: bytes, cookies: list[str] | None = None) -> None:
            self._reply(request, status, {**headers, **cors}, content, cookies)

        found = self.template.find_route(method, path)
        if found is None:
            return reply(404, {"content-type": "application/json"}, b'{"message":"Not Found"}')
        route, path_parameters = found
        event = build_event(
            method=method,
            target=request.path,
            headers=list(request.headers.items()),  # repeated headers too
            body=body,
            source_ip=request.client_address[0],
            route_key=route.route_key,
            path_parameters=path_parameters,
            claims=None,
        )
        if route.authorizer:
            refused, context = self._authorize(self.authorizers[route.authorizer], event)
            if refused is not None:
                return reply(*refused)
            event["requestContext"]["authorizer"] = context
        try:
            answer = self.pools[route.function].invoke(event)
        except TimeoutError:
            return reply(504, {"content-type": "application/json"}, b'{"message":"Endpoint request timed out"}')
        except EnvironmentDied as exc:  # the runtime exited mid-invocation: API Gateway's 502
            print(f"[{route.function}] {exc}")
            return reply(502, {"content-type": "application/json"}, b'{"message":"Internal Server Error"}')
        except Exception as exc:  # the function raised: API Gateway answers 500 and Lambda logs it
            print(f"[{route.function}] unhandled {type(exc).__name__}")
            return reply(500, {"content-type": "application/json"}, b'{"message":"Internal Server Error"}')
        self._reply_lambda(reply, answer)

    # -- authorizers --

    _UNAUTHORIZED = (401, {"content-type": "application/json"}, b'{"message":"Unauthorized"}')
    _FORBIDDEN = (403, {"content-type": "application/json"}, b'{"message":"Forbidden"}')
    _FAILED = (500, {"content-type": "application/json"}, b'{"message":"Internal Server Error"}')

    def _authorize(
        self, authorizer: Authorizer, event: dict[str, Any]
    ) -> tuple[tuple[int, dict[str, str], bytes] | None, dict[str, Any] | None]:
        """(the refusal API Gateway would answer, None) or (None, the event's `requestContext.authorizer`)."""
        identity = event["headers"].get(authorizer.identity_header, "")
        if not identity:
            return self._UNAUTHORIZED, None  # the identity source is missing: the authorizer is not called
        if authorizer.kind == "jwt":
            try:
                claims = self._jwt_verifiers[authorizer.name].verify(bearer_token(identity))
            except TokenRejected:
                return self._UNAUTHORIZED, None
            return None, {"jwt": {"claims": context_claims(claims), "scopes": None}}
        answer = self._lambda_answer(authorizer, event, identity)
        if answer is None:
            return self._FAILED, None
        if not answer["isAuthorized"]:
            return self._FORBIDDEN, None
        return None, {"lambda": answer.get("context") or {}}

    def _lambda_answer(self, authorizer: Authorizer, event: dict[str, Any], identity: str) -> dict[str, Any] | None:
        """The authorizer function's answer: kept for the TTL per identity, as API Gateway caches it (a
        failure is not kept). None when it failed or answered something API Gateway would refuse."""
        key = (authorizer.name, identity)
        with self._answers_lock:
            kept = self._answers.get(key)
        if kept is not None and kept[0] > time.monotonic():
            return kept[1]
        assert authorizer.function is not None
        try:
            answer = self.pools[authorizer.function].invoke(build_authorizer_event(event, [identity]))
        except Exception as exc:  # the authorizer raised or timed out: API Gateway answers 500
            print(f"[{authorizer.function}] failed: {type(exc).__name__}")
            return None
        if not isinstance(answer, dict) or not isinstance(answer.get("isAuthorized"), bool):
            print(f"[{authorizer.function}] answered no isAuthorized boolean")
            return None
        if authorizer.ttl_seconds > 0:
            with self._answers_lock:
                self._answers[key] = (time.monotonic() + authorizer.ttl_seconds, answer)
        return answer

    @staticmethod
    def _reply_lambda(reply: Callable[..., None], answer: Any) -> None:
        """Turn a Lambda answer into HTTP, as the HTTP API's payload 2.0 format does."""
        if not isinstance(answer, dict) or "statusCode" not in answer:
            return reply(200, {"content-type": "application/json"}, json.dumps(answer).encode())
        headers = {k.lower(): str(v) for k, v in (answer.get("headers") or {}).items()}
        for k, values in (answer.get("multiValueHeaders") or {}).items():
            headers[k.lower()] = ",".join(map(str, values))
        body = answer.get("body") or ""
        raw = base64.b64decode(body) if answer.get("isBase64Encoded") else str(body).encode()
        reply(int(answer["statusCode"]), headers, raw, answer.get("cookies") or [])

    @staticmethod
    def _reply(
        request: BaseHTTPRequestHandler,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        cookies: list[str] | None = None,
    ) -> None:
        request.send_response(status)
        for name, value in headers.items():
            if name not in ("content-length", "connection"):
                request.send_header(name, value)
        for cookie in cookies or []:
            request.send_header("set-cookie", cookie)
        request.send_header("content-length", str(len(body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)
