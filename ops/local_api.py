"""A local stand-in for API Gateway (HTTP API, payload 2.0) and Lambda, for `make run` and tests.

Every HTTP route of template.yaml is served: a request becomes a payload 2.0 event and is handed
to its function. Like Lambda, a function runs in a few execution environments (worker processes),
each handling one invocation at a time with its own module state, so concurrent requests run
concurrently and never share a database connection. Unknown routes answer 404 as API Gateway does.
Routes with the JWT authorizer get API Gateway's 401 unless the bearer token verifies against
the local development key. Scheduled functions run on their `rate(...)`; `POST /_local/schedules/
<FunctionName>` runs one now.
"""

from __future__ import annotations

import base64
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt

from ops.lambda_context import LocalLambdaContext
from ops.template import Function, Template, load_handler, rate_seconds

Site = Callable[[str, str], tuple[int, dict[str, str], bytes] | None]
"""Extra local pages (the demo web app): (method, path) -> (status, headers, body), or None."""

LOCAL_JWT_SECRET = "local-development-jwt-secret-not-for-production"  # noqa: S105 - local only, printed at start
LOCAL_JWT_ISSUER = "http://127.0.0.1:3000/auth/v1"
LOCAL_JWT_AUDIENCE = "authenticated"
SCHEDULE_TRIGGER_PREFIX = "/_local/schedules/"


def local_token(sub: str, *, email: str | None = None, ttl_seconds: int = 7 * 24 * 3600) -> str:
    """A Supabase-shaped access token signed with the local development key."""
    now = int(time.time())
    claims = {
        "sub": sub,
        "aud": LOCAL_JWT_AUDIENCE,
        "iss": LOCAL_JWT_ISSUER,
        "role": "authenticated",
        "iat": now,
        "exp": now + ttl_seconds,
    }
    if email:
        claims["email"] = email
    return jwt.encode(claims, LOCAL_JWT_SECRET, algorithm="HS256")


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
) -> dict[str, Any]:
    """An API Gateway HTTP API payload 2.0 event, as API Gateway would build it."""
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
    return event


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
    ) -> None:
        self.template = template
        self._site = site
        self.pools = {name: FunctionPool(fn, environment, workers) for name, fn in template.functions.items()}
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

        self.server = _Server((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

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

        if self._site is not None:
            page = self._site(method, path)
            if page is not None:
                return self._reply(request, *page)

        found = self.template.find_route(method, path)
        if found is None:
            return self._reply(request, 404, {"content-type": "application/json"}, b'{"message":"Not Found"}')
        route, path_parameters = found
        claims = None
        if route.authorizer:
            claims = self._verify_jwt(request.headers.get("Authorization", ""))
            if claims is None:
                return self._reply(request, 401, {"content-type": "application/json"}, b'{"message":"Unauthorized"}')
        event = build_event(
            method=method,
            target=request.path,
            headers=dict(request.headers.items()),
            body=body,
            source_ip=request.client_address[0],
            route_key=route.route_key,
            path_parameters=path_parameters,
            claims=claims,
        )
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

    @staticmethod
    def _verify_jwt(authorization: str) -> dict[str, Any] | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        try:
            claims = jwt.decode(
                token, LOCAL_JWT_SECRET, algorithms=["HS256"], audience=LOCAL_JWT_AUDIENCE, issuer=LOCAL_JWT_ISSUER
            )
        except jwt.PyJWTError:
            return None
        return {k: str(v) for k, v in claims.items()}  # API Gateway hands claims over as strings

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
