"""A Secrets Manager read given up after TOTAL_SECONDS is left to end in its thread, and Powertools caches
whatever it returns, whenever it returns: a later read that had cached a newer value (a secret rotated meanwhile) was
overwritten by the older one, which every read then took for max_age. A value is now kept only if its read began after
the one kept did."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from payments.adapters import secrets
from payments.errors import GatewayUnavailable

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:payments/hyp-late-AbCdEf"


def test_a_read_given_up_never_overwrites_a_newer_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setattr(secrets, "TOTAL_SECONDS", 0.3)
    secrets._secrets.cache_clear()
    provider = secrets._secrets().provider
    answers = iter([(0.6, {"PassP": "old"}), (0.0, {"PassP": "new"})])
    done = threading.Event()

    def slow_get(name: str, **_: Any) -> str:
        delay, value = next(answers)
        time.sleep(delay)
        if delay:
            done.set()
        return json.dumps(value)

    monkeypatch.setattr(provider, "_get", slow_get)
    try:
        # Given a read Secrets Manager answers late (asked before a rotation): given up, "not yet"
        with pytest.raises(GatewayUnavailable):
            secrets.read_secret(ARN, what="Hypay", unavailable=GatewayUnavailable)
        # When the next request reads the rotated value, and then the late answer arrives
        assert secrets.read_secret(ARN, what="Hypay", unavailable=GatewayUnavailable) == {"PassP": "new"}
        assert done.wait(2)
        time.sleep(0.05)
        # Then the function keeps the newer value
        assert secrets.read_secret(ARN, what="Hypay", unavailable=GatewayUnavailable) == {"PassP": "new"}
    finally:
        secrets._secrets.cache_clear()
