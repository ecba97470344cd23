"""The local API: payload 2.0 events, worker processes, 404s, the authorizer, and `make run` itself."""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import pytest

from ops.hypay_simulator import PUBLIC_TEST_TERMINAL_KEY, PUBLIC_TEST_TERMINAL_MASOF, PUBLIC_TEST_TERMINAL_PASSP
from ops.local_api import LocalApi, load_cors, local_token
from ops.template import load
from tests.support.make_run import MakeRun

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "local_api" / "template.yaml"


def http(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


@pytest.fixture
def sleeper_api() -> Iterator[LocalApi]:
    api = LocalApi(load(FIXTURE), {}, port=0, workers=3, run_schedules=False)
    api.start()
    yield api
    api.stop()


def test_requests_become_payload_v2_events(sleeper_api: LocalApi) -> None:
    # When a request with a raw query string and a JSON body arrives
    status, _, body = http(
        f"{sleeper_api.url}/echo?b=2&a=%20x&a=y",
        "POST",
        b'{"k": "v"}',
        {"Content-Type": "application/json", "X-Forwarded-For": "6.6.6.6"},
    )
    # Then the function sees a payload 2.0 event as API Gateway builds it
    assert status == 200
    answer = json.loads(body)
    event = answer["event"]
    assert event["version"] == "2.0" and event["routeKey"] == "POST /echo"
    assert event["rawQueryString"] == "b=2&a=%20x&a=y"  # exactly as received
    assert event["queryStringParameters"] == {"b": "2", "a": " x,y"}
    assert event["body"] == '{"k": "v"}' and event["isBase64Encoded"] is False
    assert event["requestContext"]["http"]["sourceIp"] == "127.0.0.1"  # never X-Forwarded-For
    assert answer["greeting"] == "hello" and answer["function"] == "SleeperFunction"
    assert 0 < answer["remaining_ms"] <= 10_000


def _raw(api: LocalApi, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""):
    """One request with exactly these header lines (repeats included): (status, headers, body)."""
    conn = HTTPConnection("127.0.0.1", api.server.server_address[1], timeout=30)
    try:
        conn.putrequest(method, path)
        for name, value in [*headers, ("Content-Length", str(len(body)))]:
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def test_bodies_headers_and_cookies_arrive_as_api_gateway_sends_them(sleeper_api: LocalApi) -> None:
    def event(content_type: str, body: bytes, extra: list[tuple[str, str]] | None = None) -> dict:
        status, _, answer = _raw(sleeper_api, "POST", "/echo", [("Content-Type", content_type), *(extra or [])], body)
        assert status == 200, answer
        return json.loads(answer)["event"]

    # A form body is base64-encoded, as API Gateway sends it (the functions decode it)
    form = event("application/x-www-form-urlencoded", b"Id=1&Order=a%20b")
    assert form["isBase64Encoded"] is True and base64.b64decode(form["body"]) == b"Id=1&Order=a%20b"
    # So is a binary one
    binary = event("application/octet-stream", b"\x00\xff\x10")
    assert binary["isBase64Encoded"] is True and base64.b64decode(binary["body"]) == b"\x00\xff\x10"
    # JSON and text stay text
    for content_type in ("application/json; charset=utf-8", "text/plain", "application/problem+json"):
        text = event(content_type, b'{"k": "\xc3\xa9"}')
        assert text["isBase64Encoded"] is False and text["body"] == '{"k": "\u00e9"}', content_type
    # Repeated headers are joined with commas; every Cookie header's cookies go to `cookies`, not `headers`
    headers = event(
        "application/json",
        b"{}",
        [("X-Multi", "a"), ("X-Multi", "b"), ("Cookie", "one=1; two=2"), ("Cookie", "three=3")],
    )
    assert headers["headers"]["x-multi"] == "a,b"
    assert headers["cookies"] == ["one=1", "two=2", "three=3"] and "cookie" not in headers["headers"]
    assert all(name == name.lower() for name in headers["headers"])
    # And the request context has the documented shape, the stage included
    context = headers["requestContext"]
    assert set(context) >= {
        "accountId", "apiId", "domainName", "domainPrefix", "http", "requestId", "routeKey", "stage", "time",
        "timeEpoch",
    }  # fmt: skip
    assert context["stage"] == "$default" and context["routeKey"] == "POST /echo"
    assert set(context["http"]) == {"method", "path", "protocol", "sourceIp", "userAgent"}


def test_cors_preflight_is_answered_as_the_template_configures() -> None:
    # Given the local API with the template's CorsConfiguration (its default origin: the web app's)
    cors = load_cors()
    assert cors is not None and cors.allow_origins == ("http://localhost:3001",) and cors.max_age == 600
    api = LocalApi(load(FIXTURE), {}, port=0, workers=1, run_schedules=False, cors=cors)
    api.start()
    try:
        # When the browser sends a preflight from an allowed origin
        preflight = [
            ("Origin", "http://localhost:3001"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type,idempotency-key,authorization"),
        ]
        status, headers, body = _raw(api, "OPTIONS", "/echo", preflight)
        # Then API Gateway answers it itself (no route has OPTIONS, no function runs): 204 with the configuration
        assert status == 204 and body == b""
        assert headers["Access-Control-Allow-Origin"] == "http://localhost:3001"
        assert headers["Access-Control-Allow-Methods"] == "GET,POST,OPTIONS"
        assert headers["Access-Control-Allow-Headers"] == "authorization,content-type,idempotency-key"
        assert headers["Access-Control-Max-Age"] == "600"
        # A preflight from another origin, or for a method not allowed, gets no CORS headers
        other = [("Origin", "https://evil.example"), *preflight[1:]]
        status, headers, _ = _raw(api, "OPTIONS", "/echo", other)
        assert status == 204 and "Access-Control-Allow-Origin" not in headers
        status, headers, _ = _raw(api, "OPTIONS", "/echo", [preflight[0], ("Access-Control-Request-Method", "DELETE")])
        assert status == 204 and "Access-Control-Allow-Origin" not in headers
        # And the actual request from the allowed origin carries the origin and the exposed headers
        status, headers, _ = _raw(
            api, "POST", "/echo", [("Origin", "http://localhost:3001"), ("Content-Type", "application/json")], b"{}"
        )
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://localhost:3001"
        assert headers["Access-Control-Expose-Headers"] == "idempotent-replayed,retry-after"
        # An OPTIONS that is not a preflight is routed as any request (none here: 404)
        assert _raw(api, "OPTIONS", "/echo", [])[0] == 404
    finally:
        api.stop()


def test_unknown_route_is_404_like_api_gateway(sleeper_api: LocalApi) -> None:
    assert http(f"{sleeper_api.url}/nothing-here")[0] == 404
    assert http(f"{sleeper_api.url}/echo", "GET")[0] == 404


@pytest.mark.parametrize("method", ["TRACE", "QUERY"])
def test_a_method_no_route_has_is_404_like_api_gateway(sleeper_api: LocalApi, method: str) -> None:
    # Given a path the template routes (POST /echo), asked with a method no route has (http.server's own
    # answer to such a method is a 501 HTML page: a 5xx outside the contract)
    status, headers, body = http(f"{sleeper_api.url}/echo", method)
    # Then API Gateway's own 404
    assert (status, headers["content-type"], json.loads(body)) == (404, "application/json", {"message": "Not Found"})


def test_concurrent_requests_run_in_separate_execution_environments(sleeper_api: LocalApi) -> None:
    # When three slow requests arrive together
    results: list[dict] = []

    def call() -> None:
        results.append(json.loads(http(f"{sleeper_api.url}/sleep/1")[2]))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Then each ran in its own process, and they ran at the same time (their intervals overlap)
    assert len({r["pid"] for r in results}) == 3
    assert max(r["started"] for r in results) < min(r["ended"] for r in results)
    # And an environment keeps its module state across warm invocations
    again = [json.loads(http(f"{sleeper_api.url}/sleep/0")[2]) for _ in range(4)]
    assert max(r["invocations"] for r in again) >= 2


def test_a_kept_alive_connection_does_not_stall(sleeper_api: LocalApi) -> None:
    # Given one kept-alive connection (warm: the first request pays the cold start)
    conn = HTTPConnection("127.0.0.1", sleeper_api.server.server_address[1], timeout=30)

    def call() -> None:
        conn.request("POST", "/echo", b'{"k": "v"}', {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200 and not response.will_close

    try:
        call()
        # When 50 requests follow on it one after another
        start = time.perf_counter()
        for _ in range(50):
            call()
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    # Then none waits for a delayed ACK (~40 ms each with Nagle: 2 s; here well under 1 s)
    assert elapsed < 1.0, f"50 kept-alive requests took {elapsed:.2f} s"


def test_a_killed_execution_environment_is_replaced() -> None:
    # Given a function with one execution environment, warm
    api = LocalApi(load(FIXTURE), {}, port=0, workers=1, run_schedules=False)
    api.start()
    try:
        status, _, body = http(f"{api.url}/sleep/0")
        assert status == 200
        pid = json.loads(body)["pid"]
        # (listed where the proof suite looks for workers to kill)
        status, _, listed = http(f"{api.url}/_local/workers")
        assert status == 200 and pid in json.loads(listed)[next(iter(api.pools))]
        # When its worker process is killed during a slow request
        slow: list[tuple] = []
        t = threading.Thread(target=lambda: slow.append(http(f"{api.url}/sleep/5")))
        started = time.monotonic()
        t.start()
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        t.join(30)
        # Then the request in flight gets API Gateway's 502, at once (not after the 5 s)
        assert slow and slow[0][0] == 502, slow
        assert time.monotonic() - started < 4.5
        # And the next requests are served by a new environment (a cold start), as Lambda replaces one
        for _ in range(3):
            status, _, body = http(f"{api.url}/sleep/0")
            assert status == 200 and json.loads(body)["pid"] != pid
    finally:
        api.stop()


def test_make_run_serves_the_template_and_stops_cleanly(private_tmp: Path, request: pytest.FixtureRequest) -> None:
    # Given `make run`'s program on a free port with its own data folder (or, with an external
    # server, its own database there: never the server's maintenance database)
    env = {"LOCAL_DATA_DIR": str(private_tmp / "pgdata")}
    if "DATABASE_URL" in os.environ:
        env["DATABASE_URL"] = request.getfixturevalue("empty_database_url")
    run = MakeRun(env)
    port, sim_port = run.port, run.sim_port
    try:
        run.start()
        lines = run.lines
        out = run.output
        assert f"http://127.0.0.1:{port}" in out, out
        token = next(line.split()[-1] for line in lines if "demo token" in line)
        base = f"http://127.0.0.1:{port}"

        # Then every template route is served, with the authorizer emulated
        assert http(f"{base}/hypay/return")[0] == 200  # Hyp's portal connection test
        assert http(f"{base}/no/such/route")[0] == 404
        assert http(f"{base}/payments", "POST", b"{}")[0] == 401
        assert http(f"{base}/payments", "POST", b"{}", {"Authorization": f"Bearer {local_token('x')}x"})[0] == 401
        status, headers, _ = http(
            f"{base}/payments", "POST", b"{}", {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        )
        assert status != 401 and headers["Cache-Control"] == "no-store"
        # And the Hypay simulator runs on its own port with the public test terminal, redirecting here
        assert f"simulator http://127.0.0.1:{sim_port}/p/" in out and f"{base}/hypay/return" in out
        sign = (
            f"action=APISign&What=SIGN&Masof={PUBLIC_TEST_TERMINAL_MASOF}&KEY={PUBLIC_TEST_TERMINAL_KEY}"
            f"&PassP={PUBLIC_TEST_TERMINAL_PASSP}&Amount=10.00&Coin=1&Order=x&Sign=True&UTF8=True&UTF8out=True"
        )
        status, _, body = http(f"http://127.0.0.1:{sim_port}/p/", "POST", sign.encode())
        assert status == 200 and b"signature=" in body
        # And the demo web app, and a ready curl command for every route
        assert f"{base}/demo/" in out and "export TOKEN=" in out
        for route in load().routes:
            assert any(route.path.split("{")[0] in line and "curl" in line for line in lines), route.route_key
        status, headers, page = http(f"{base}/demo/")
        assert status == 200 and b"demo-token" in page
        status, _, state = http(f"{base}/demo/api/state")
        assert status == 200 and len(json.loads(state)["packs"]) == 3  # the active ones
        # And a scheduled function can be run now
        status, _, body = http(f"{base}/_local/schedules/CleanupFunction", "POST")
        assert status == 200 and "purged_idempotency_records" in json.loads(body)
    finally:
        # When Ctrl-C arrives / Then everything stops cleanly
        code, rest = run.stop()
    assert code == 0, rest
    assert "stopped." in rest
    if "DATABASE_URL" not in os.environ:
        postmaster = private_tmp / "pgdata" / "postmaster.pid"
        assert not postmaster.exists(), "embedded Postgres left running"
