"""Secrets Manager that cannot answer in time: one that accepts a connection and never answers, or trickles its answer
a byte at a time (a VPC endpoint whose security group drops HTTPS, a regional degradation). Reading a secret gives up
within seconds, as "not yet", never outlasting the function (boto3's defaults wait 60 s for each read, and retry:
Lambda ended every invocation before its answer and its metrics, outside reviews found). A healthy Secrets Manager
whose pooled connection a NAT dropped while idle is still read (the second attempt connects again)."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from payments.adapters import secrets
from payments.errors import DatabaseUnavailable
from tests.unit.test_hypay_whole_answer import _read_request

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:payments/test/database-AbCdEf"
BODY = json.dumps({"ARN": ARN, "Name": "n", "SecretString": json.dumps({"username": "u"}), "VersionId": "v"}).encode()
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nConnection: keep-alive\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY)
) + BODY


def _silent(conn: socket.socket, state: dict) -> None:
    _read_request(conn)
    time.sleep(30)


def _trickling(conn: socket.socket, state: dict) -> None:
    _read_request(conn)
    for i in range(len(ANSWER)):  # a byte every 1.5 s: each wait is shorter than botocore's read timeout
        conn.sendall(ANSWER[i : i + 1])
        time.sleep(1.5)


def _healthy(conn: socket.socket, state: dict) -> None:
    while _read_request(conn):
        if state.pop("drop_idle", False):  # the pooled connection is gone at the NAT: reset on its next use
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            break
        conn.sendall(ANSWER)
    conn.close()


@pytest.fixture
def secrets_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable], dict]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    state: dict = {"connections": 0}

    def serving(behaviour: Callable) -> dict:
        def run(conn: socket.socket) -> None:
            state["connections"] += 1
            with contextlib.suppress(OSError):
                behaviour(conn, state)

        def accept() -> None:
            while True:
                try:
                    conn = listener.accept()[0]
                except OSError:
                    return
                threading.Thread(target=run, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return state

    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    secrets._secrets.cache_clear()  # a client of its own, for this endpoint
    yield serving
    secrets._secrets.cache_clear()
    listener.close()


@pytest.mark.parametrize("behaviour", [_silent, _trickling], ids=["silent", "trickling"])
def test_a_secrets_manager_that_cannot_answer_is_not_yet_within_seconds(
    secrets_manager: Callable[[Callable], dict], behaviour: Callable
) -> None:
    state = secrets_manager(behaviour)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        secrets.read_secret(ARN, what="database", unavailable=DatabaseUnavailable)
    took = time.monotonic() - started
    assert state["connections"], "the endpoint was not asked"
    assert took < secrets.TOTAL_SECONDS + 0.5, f"reading the secret took {took:.1f} s (the authorizer has 5 s in all)"


def test_a_pooled_connection_dropped_while_idle_is_read_again(secrets_manager: Callable[[Callable], dict]) -> None:
    state = secrets_manager(_healthy)
    assert secrets.read_secret(ARN, what="database", unavailable=DatabaseUnavailable) == {"username": "u"}
    state["drop_idle"] = True  # the environment sat idle: its pooled connection is dead at the NAT
    # Read again (a login failure's refresh, or the cache expired): Secrets Manager itself is fine
    assert secrets.read_secret(ARN, what="database", unavailable=DatabaseUnavailable, refresh=True) == {"username": "u"}
    assert state["connections"] == 2


def _degrading(conn: socket.socket, state: dict) -> None:
    """Healthy until `state["trickle"]`; then every answer a byte every 1.4 s."""
    while _read_request(conn):
        state["requests"] = state.get("requests", 0) + 1
        if state.get("trickle"):
            for i in range(len(ANSWER)):
                conn.sendall(ANSWER[i : i + 1])
                time.sleep(1.4)
        conn.sendall(ANSWER)


def test_a_read_near_the_caches_end_leaves_no_later_read_without_a_limit(
    secrets_manager: Callable[[Callable], dict],
) -> None:
    """A read going to Secrets Manager always fetches: one answered from a cache about to expire made the bookkeeping
    of what is cached outlive Powertools' copy, and a later read then waited on Secrets Manager with no limit (an
    outside review)."""
    state = secrets_manager(_degrading)
    max_age = 3

    def read() -> object:
        return secrets.read_secret(ARN, what="database", unavailable=DatabaseUnavailable, max_age=max_age)

    assert read() == {"username": "u"}
    fetched = time.monotonic()
    [asked] = secrets._secrets().asked.values()
    time.sleep(max(0.0, asked + 2.1 - time.monotonic()))  # in the cache's last second
    assert read() == {"username": "u"}
    state["trickle"] = True  # Secrets Manager degrades
    time.sleep(max(0.0, fetched + 3.2 - time.monotonic()))
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(_outcome(read)), daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(8)
    took = time.monotonic() - started
    assert not worker.is_alive() and took < secrets.TOTAL_SECONDS + 0.5, f"still reading after {took:.1f} s"


def _outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except DatabaseUnavailable as exc:
        return exc
