"""Secrets Manager that accepts a connection and never answers (a VPC endpoint whose security group drops HTTPS, a
regional degradation): reading a secret gives up within seconds, as "not yet", never outlasting the function (boto3's
defaults wait 60 s to read, and retry: Lambda ended every invocation before its answer and its metrics, an outside
review found)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from payments.adapters import secrets
from payments.errors import DatabaseUnavailable


@pytest.fixture
def silent_secrets_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[socket.socket]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    secrets._provider.cache_clear()  # a client of its own, for this endpoint
    yield accepted
    secrets._provider.cache_clear()
    listener.close()
    for conn in accepted:
        conn.close()


def test_a_secret_manager_that_never_answers_is_not_yet_within_seconds(
    silent_secrets_manager: list[socket.socket],
) -> None:
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:payments/test/database-AbCdEf"
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        secrets.read_secret(arn, what="database", unavailable=DatabaseUnavailable)
    took = time.monotonic() - started
    assert silent_secrets_manager, "the endpoint was not asked"
    limit = secrets.CONNECT_TIMEOUT_SECONDS + secrets.READ_TIMEOUT_SECONDS + 1.0
    assert took < limit, f"reading the secret took {took:.1f} s (the authorizer's whole timeout is 5 s)"
