"""Hyp charged the saved card at the last moment the invocation allowed, and the function's cached database
connection broke meanwhile (an RDS failover, a proxy's idle cut). Storing the answer reconnects: a connect was given
DB_CONNECT_TIMEOUT (5 s) whatever the invocation had left, twice, and a statement's answer DB_QUERY_TIMEOUT (10 s). A
database that takes the TCP connection but does not answer yet (RDS Proxy waiting to borrow a connection, a new primary
still starting), or a partition, kept the invocation about 8 s past the moment Lambda ends it: Hyp's Id was then stored
nowhere and logged nowhere."""

from __future__ import annotations

import contextlib
import time

import pytest

from payments.adapters import db as db_module
from payments.adapters.db import parse_database_url
from payments.settings import database_settings
from tests.integration.test_charge_near_deadline import timed_purchase
from tests.support.api import TEMPLATE, load_handler, reset_function_state
from tests.support.payments import CREATE, Env
from tests.support.pg import with_user
from tests.support.tcp_proxy import TcpProxy

TIMEOUT = 3.1  # as tests/integration/test_charge_near_deadline.py: HYPAY_TIMEOUT 1 s + the 2 s reserve + a little


@pytest.mark.parametrize("breaks", ["cut-then-slow-connect", "partitioned"])
def test_storing_hyps_charge_does_not_outlive_the_invocation(
    env: Env, saved_card: str, backend_login: str, monkeypatch: pytest.MonkeyPatch, breaks: str
) -> None:
    """`cut-then-slow-connect`: the cached connection is cut and the database takes new connections without answering
    yet (connect: DB_CONNECT_TIMEOUT, 5 s, twice). `partitioned`: the cached connection stops carrying packets, new
    ones work (the statement's answer is waited for DB_QUERY_TIMEOUT, 10 s, the socket's timeout; the server's
    statement_timeout cannot end a wait for packets that never come)."""
    params = parse_database_url(env.url)
    if params.unix_sock is None:
        pytest.skip("the TCP proxy fronts the embedded server's Unix socket")
    proxy = TcpProxy(params.unix_sock)
    try:
        monkeypatch.setenv(
            "DATABASE_URL", with_user(f"postgresql://postgres@127.0.0.1:{proxy.port}/{params.database}", backend_login)
        )
        monkeypatch.setenv("HYPAY_TIMEOUT", "1")
        from payments.settings import hypay_settings

        hypay_settings.cache_clear()
        database_settings.cache_clear()
        db_module.reset_default_database()
        reset_function_state(CREATE)
        handler = load_handler(TEMPLATE.functions[CREATE])

        def charge(key: str, timeout: float) -> tuple[dict, float]:
            return timed_purchase(handler, key, timeout)

        warm, _ = charge("warm-up", 20)  # a warm execution environment, its connection through the proxy
        assert warm["statusCode"] == 201, warm

        take = env.sim.faults.take

        def hyp_charges_while_the_connection_breaks(action: str) -> object:
            if action == "soft":
                if breaks == "partitioned":
                    proxy.freeze_all()
                else:
                    proxy.silent = True  # the database takes connections, and does not answer them yet
                    proxy.cut_all()  # the function's cached connection is gone
                time.sleep(0.9)  # Hyp answers just within its timeout (1 s)
            return take(action)

        monkeypatch.setattr(env.sim.faults, "take", hyp_charges_while_the_connection_breaks)
        result, took = charge("late", TIMEOUT)
    finally:
        proxy.thaw()
        with contextlib.suppress(Exception):
            proxy.close()
    assert env.sim.calls.count("soft") == 2  # Hyp charged the card
    assert took <= TIMEOUT, (
        f"answered {result['statusCode']} after {took:.2f} s: Lambda ends the invocation at {TIMEOUT} s, before the "
        "'answered but not stored' line naming Hyp's transaction is logged or any answer given"
    )
