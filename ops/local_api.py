"""A local stand-in for API Gateway (HTTP API, payload 2.0) and Lambda, for `make run` and tests.

Every HTTP route of template.yaml is served: a request becomes a payload 2.0 event and is handed
to its function. Like Lambda, a function runs in a few execution environments (worker processes),
each handling one invocation at a time with its own module state, so concurrent requests run
concurrently and never share a database connection. Unknown routes answer 404 as API Gateway does.
Scheduled functions run on their `rate(...)`; `POST /_local/schedules/<FunctionName>` runs one now.

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
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

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
from ops.template import Authorizer, Function, Template, load_handler, rate_seconds
from payments.adapters.jwks import JwksKeys
from payments.services.authorize import TokenPolicy, TokenRejected, TokenVerifier, bearer_token, context_claims

Site = Callable[[str, str, Mapping[str, str]], tuple[int, dict[str, str], bytes] | None]
"""Extra local pages (the demo web app): (method, path, request headers with lower-case names) -> (status,
headers, body), or None."""

__all__ = ["LOCAL_JWT_AUDIENCE", "LOCAL_JWT_ISSUER", "LOCAL_JWT_SECRET", "LocalApi", "build_event", "local_token"]

SCHEDULE_TRIGGER_PREFIX = "/_local/schedules/"
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
    os.environ.update(environment)
    _function = function
    _handler = load_handler(function)


def _invoke(event: dict) -> Any:
    assert _function is not None
    context = LocalLambdaContext(function_name=_function.name, timeout_seconds=_function.timeout)
    return _handler(event, context)


def _pid() -> int:
    return os.getpid()


class FunctionPool:
    """A function's execution environments: up to `size` worker processes, one invocation each."""

    def __init__(self, function: Function, environment: Mapping[str, str], size: int) -> None:
        self.function = function
        env = {**function.environment, **environment, "AWS_LAMBDA_FUNCTION_NAME": function.name}
        self._executor = ProcessPoolExecutor(
            max_workers=size,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(function, env),
        )

    def invoke(self, event: dict) -> Any:
        future: Future[Any] = self._executor.submit(_invoke, event)
        try:
            return future.result(timeout=self.function.timeout + 5)
        except FutureTimeout:
            raise TimeoutError(f"{self.function.name} timed out") from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


# -- HTTP API emulation ----------------------------------------------------------------------

_TEXT_TYPES = ("text/", "application/json", "application/x-www-form-urlencoded", "application/problem+json")


def build_event(
    *,
    method: str,
    target: str,
    headers: Mapping[str, str],
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
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        lowered[key] = f"{lowered[key]},{value}" if key in lowered else value
    now = datetime.now(UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": parts.path,
        "rawQueryString": parts.query,  # exactly as received: signatures are checked on it
        "headers": lowered,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": lowered.get("host", "127.0.0.1"),
            "domainPrefix": "local",
            "http": {
                "method": method,
                "path": parts.path,
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
    if "cookie" in lowered:
        event["cookies"] = [c.strip() for c in lowered.pop("cookie").split(";")]
    if parts.query:
        query: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            query[key] = f"{query[key]},{value}" if key in query else value
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = path_parameters
    if body:
        content_type = lowered.get("content-type", "")
        if content_type.startswith(_TEXT_TYPES):
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
        environment: Mapping[str, str],
        *,
        host: str = "127.0.0.1",
        port: int = 3000,
        workers: int = 3,
        run_schedules: bool = True,
        site: Site | None = None,
        auth: LocalAuth | None = None,
    ) -> None:
        self.template = template
        self._site = site
        self._run_schedules = run_schedules
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                return  # the functions log; request lines would only repeat them

            def _serve(self) -> None:
                api._handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _serve  # noqa: N815

        self.server = _Server((host, port), Handler)  # bound first: the JWKS URL names its port

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

        if self.auth is not None and method in ("GET", "HEAD") and path in (JWKS_PATH, OPENID_CONFIGURATION_PATH):
            document = (
                self.auth.jwks() if path == JWKS_PATH else {"issuer": self.auth.issuer, "jwks_uri": self.jwks_url}
            )
            return self._reply(request, 200, {"content-type": "application/json"}, json.dumps(document).encode())

        if self._site is not None:
            page = self._site(method, path, {k.lower(): v for k, v in request.headers.items()})
            if page is not None:
                return self._reply(request, *page)

        found = self.template.find_route(method, path)
        if found is None:
            return self._reply(request, 404, {"content-type": "application/json"}, b'{"message":"Not Found"}')
        route, path_parameters = found
        event = build_event(
            method=method,
            target=request.path,
            headers=dict(request.headers.items()),
            body=body,
            source_ip=request.client_address[0],
            route_key=route.route_key,
            path_parameters=path_parameters,
            claims=None,
        )
        if route.authorizer:
            refused, context = self._authorize(self.authorizers[route.authorizer], event)
            if refused is not None:
                return self._reply(request, *refused)
            event["requestContext"]["authorizer"] = context
        try:
            answer = self.pools[route.function].invoke(event)
        except TimeoutError:
            return self._reply(
                request, 504, {"content-type": "application/json"}, b'{"message":"Endpoint request timed out"}'
            )
        except Exception as exc:  # the function raised: API Gateway answers 500 and Lambda logs it
            print(f"[{route.function}] unhandled {type(exc).__name__}")
            return self._reply(
                request, 500, {"content-type": "application/json"}, b'{"message":"Internal Server Error"}'
            )
        self._reply_lambda(request, answer)

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

    def _reply_lambda(self, request: BaseHTTPRequestHandler, answer: Any) -> None:
        """Turn a Lambda answer into HTTP, as the HTTP API's payload 2.0 format does."""
        if not isinstance(answer, dict) or "statusCode" not in answer:
            return self._reply(request, 200, {"content-type": "application/json"}, json.dumps(answer).encode())
        headers = {k.lower(): str(v) for k, v in (answer.get("headers") or {}).items()}
        for k, values in (answer.get("multiValueHeaders") or {}).items():
            headers[k.lower()] = ",".join(map(str, values))
        body = answer.get("body") or ""
        raw = base64.b64decode(body) if answer.get("isBase64Encoded") else str(body).encode()
        self._reply(request, int(answer["statusCode"]), headers, raw, cookies=answer.get("cookies") or [])

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
