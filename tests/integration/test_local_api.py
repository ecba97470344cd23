"""The local API: payload 2.0 events, worker processes, 404s, the authorizer, and `make run` itself."""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.hypay_simulator import PUBLIC_TEST_TERMINAL_KEY, PUBLIC_TEST_TERMINAL_MASOF, PUBLIC_TEST_TERMINAL_PASSP
from ops.local_api import LocalApi, local_token
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


def test_unknown_route_is_404_like_api_gateway(sleeper_api: LocalApi) -> None:
    assert http(f"{sleeper_api.url}/nothing-here")[0] == 404
    assert http(f"{sleeper_api.url}/echo", "GET")[0] == 404


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
