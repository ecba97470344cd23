"""PostgresPersistenceLayer against real PostgreSQL, through Powertools' own decorators."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent, idempotent_function
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)

from ops.lambda_context import LocalLambdaContext
from payments.adapters.db import Database
from payments.idempotency import PostgresPersistenceLayer
from tests.support.pg import connect, database, with_user


def make_function(
    store: PostgresPersistenceLayer,
    body: Callable[[dict], Any] | None = None,
    *,
    context: LocalLambdaContext | None = None,
    key_prefix: str | None = None,
    **config: Any,
) -> tuple[Callable[..., Any], list[dict]]:
    """An idempotent function keyed on `order_id`, validated on `amount`; returns it and its call log."""
    calls: list[dict] = []
    cfg = IdempotencyConfig(event_key_jmespath="order_id", payload_validation_jmespath="amount", **config)
    if context is not None:
        cfg.register_lambda_context(context)

    @idempotent_function(data_keyword_argument="order", config=cfg, persistence_store=store, key_prefix=key_prefix)
    def charge(order: dict) -> dict:
        calls.append(order)
        if body is not None:
            return body(order)
        return {"charged": order["amount"], "order_id": order["order_id"]}

    return charge, calls


def rows(
    url: str, sql: str = "SELECT key, status, request_hash, response_data, expiry_timestamp FROM idempotency_keys"
):
    conn = connect(url)
    try:
        return conn.run(sql)
    finally:
        conn.close()


def warm(db: Database, counting) -> None:
    """Open the connection and zero the round-trip counter (connecting has its own round trips)."""
    db.run("SELECT 1")
    counting.round_trips = 0


def test_first_call_runs_and_stores_in_two_round_trips(db: Database, counting, database_url: str) -> None:
    # Given a fresh store
    store = PostgresPersistenceLayer(database=db)
    charge, calls = make_function(store, key_prefix="test")
    warm(db, counting)

    # When the function is called for the first time
    result = charge(order={"order_id": "o-1", "amount": 4990})

    # Then it ran once, the record is completed with response and payload hash, in 2 round trips
    assert result == {"charged": 4990, "order_id": "o-1"}
    assert len(calls) == 1
    assert counting.round_trips == 2
    [(key, status, request_hash, response, expiry)] = rows(database_url)
    assert key.startswith("test#")
    assert status == "completed"
    assert request_hash and len(request_hash) == 32  # md5 of the validated part
    assert response == {"charged": 4990, "order_id": "o-1"}
    assert abs(expiry - (time.time() + 3600)) < 10  # Powertools' default expires_after_seconds


def test_replay_returns_stored_result_without_running_in_one_round_trip(db: Database, counting) -> None:
    # Given a completed call
    store = PostgresPersistenceLayer(database=db)
    charge, calls = make_function(store)
    first = charge(order={"order_id": "o-2", "amount": 100})
    counting.round_trips = 0

    # When the same payload comes again
    again = charge(order={"order_id": "o-2", "amount": 100})

    # Then the stored result comes back, the function did not run, and it took one statement
    assert again == first
    assert len(calls) == 1
    assert counting.round_trips == 1


def test_replay_in_another_environment_is_validated_too(database_url: str) -> None:
    # Given a record completed by one execution environment
    db_a, db_b = database(database_url), database(database_url)
    charge_a, _ = make_function(PostgresPersistenceLayer(database=db_a))
    charge_b, calls_b = make_function(PostgresPersistenceLayer(database=db_b))
    charge_a(order={"order_id": "o-3", "amount": 100})

    # When another environment sees the same key with another amount
    # Then payload validation fails there (the stored hash survived completion)
    with pytest.raises(IdempotencyValidationError):
        charge_b(order={"order_id": "o-3", "amount": 999})
    assert calls_b == []
    db_a.close()
    db_b.close()


def test_different_payload_under_same_key_is_a_validation_error(db: Database) -> None:
    store = PostgresPersistenceLayer(database=db)
    charge, calls = make_function(store)
    charge(order={"order_id": "o-4", "amount": 100})
    with pytest.raises(IdempotencyValidationError):
        charge(order={"order_id": "o-4", "amount": 101})
    assert len(calls) == 1


def test_exception_deletes_the_record_so_a_retry_runs(db: Database, database_url: str) -> None:
    # Given a function that fails the first time
    attempts = {"n": 0}

    def flaky(order: dict) -> dict:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise RuntimeError("gateway timeout")
        return {"ok": True}

    charge, calls = make_function(PostgresPersistenceLayer(database=db), flaky)
    with pytest.raises(RuntimeError):
        charge(order={"order_id": "o-5", "amount": 1})
    # Then no record is left, and the retry runs
    assert rows(database_url) == []
    assert charge(order={"order_id": "o-5", "amount": 1}) == {"ok": True}
    assert len(calls) == 2


def test_expired_record_runs_again(db: Database, database_url: str) -> None:
    # Given a completed record whose expiry has passed
    charge, calls = make_function(PostgresPersistenceLayer(database=db))
    charge(order={"order_id": "o-6", "amount": 1})
    conn = connect(database_url)
    conn.run("UPDATE idempotency_keys SET expiry_timestamp = extract(epoch FROM now())::bigint - 5")
    conn.close()
    # When called again / Then it runs again and the record is fresh
    charge(order={"order_id": "o-6", "amount": 1})
    assert len(calls) == 2
    [(_, status, _, _, expiry)] = rows(database_url)
    assert status == "completed" and expiry > time.time()


def test_expires_after_seconds_and_local_cache(db: Database, counting, database_url: str) -> None:
    # Given a store with a local cache and a 5-minute expiry
    charge, calls = make_function(
        PostgresPersistenceLayer(database=db), use_local_cache=True, expires_after_seconds=300
    )
    charge(order={"order_id": "o-7", "amount": 1})
    counting.round_trips = 0
    # When replayed in the same environment / Then the cache answers: no round trip at all
    charge(order={"order_id": "o-7", "amount": 1})
    assert counting.round_trips == 0 and len(calls) == 1
    # And the cache still validates the payload
    with pytest.raises(IdempotencyValidationError):
        charge(order={"order_id": "o-7", "amount": 2})
    [(_, _, _, _, expiry)] = rows(database_url)
    assert abs(expiry - (time.time() + 300)) < 10


def _run_blocked(charge: Callable[..., Any], order: dict, release: threading.Event, started: threading.Event):
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = charge(order=order)
        except Exception as exc:  # recorded for the test to assert on
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    assert started.wait(5)
    return thread, outcome


def test_in_progress_with_time_left_is_already_in_progress(database_url: str) -> None:
    # Given a first invocation still running with plenty of time left
    release, started = threading.Event(), threading.Event()

    def slow(order: dict) -> dict:
        started.set()
        release.wait(5)
        return {"ok": 1}

    db_a, db_b = database(database_url), database(database_url)
    first, _ = make_function(
        PostgresPersistenceLayer(database=db_a), slow, context=LocalLambdaContext(timeout_seconds=60)
    )
    second, calls_b = make_function(PostgresPersistenceLayer(database=db_b), context=LocalLambdaContext())
    thread, outcome = _run_blocked(first, {"order_id": "o-8", "amount": 1}, release, started)

    # When a second invocation arrives / Then it is told the first is in progress
    with pytest.raises(IdempotencyAlreadyInProgressError):
        second(order={"order_id": "o-8", "amount": 1})
    release.set()
    thread.join(5)
    assert outcome == {"result": {"ok": 1}} and calls_b == []
    db_a.close()
    db_b.close()


@dataclass
class Takeover:
    """A first invocation stuck past its Lambda deadline (released by `release`), and a second environment."""

    first: Callable[..., Any]
    first_calls: list[dict]
    second: Callable[..., Any]
    second_calls: list[dict]
    release: threading.Event
    thread: threading.Thread
    databases: tuple[Database, Database]

    def finish(self) -> None:
        self.release.set()
        self.thread.join(5)

    def close(self) -> None:
        for db in self.databases:
            db.close()


def stuck_first(database_url: str, order: dict, **first_config: Any) -> Takeover:
    release, started = threading.Event(), threading.Event()

    def stuck(order: dict) -> dict:
        started.set()
        release.wait(5)
        return {"by": "first"}

    db_a, db_b = database(database_url), database(database_url)
    first, calls_a = make_function(
        PostgresPersistenceLayer(database=db_a), stuck, context=LocalLambdaContext(timeout_seconds=0.05), **first_config
    )
    second, calls_b = make_function(
        PostgresPersistenceLayer(database=db_b), lambda o: {"by": "second"}, context=LocalLambdaContext()
    )
    thread, _ = _run_blocked(first, order, release, started)
    time.sleep(0.1)
    return Takeover(first, calls_a, second, calls_b, release, thread, (db_a, db_b))


def test_in_progress_past_holders_deadline_is_taken_over(database_url: str) -> None:
    # Given a first invocation whose Lambda deadline (remaining time) has passed while it "runs"
    takeover = stuck_first(database_url, {"order_id": "o-9", "amount": 1})
    # When another invocation arrives / Then it takes the record over and runs
    assert takeover.second(order={"order_id": "o-9", "amount": 1}) == {"by": "second"}
    assert len(takeover.second_calls) == 1
    # And the late first holder cannot overwrite the new owner's result
    takeover.finish()
    [(_, status, _, response, _)] = rows(database_url)
    assert status == "completed" and response == {"by": "second"}
    takeover.close()


def test_32_concurrent_callers_run_the_function_exactly_once(database_url: str) -> None:
    # Given 32 execution environments, each with its own connection
    runs: list[int] = []
    lock = threading.Lock()

    def body(order: dict) -> dict:
        with lock:
            runs.append(1)
        time.sleep(0.2)  # long enough for every caller to arrive while it runs
        return {"ok": True}

    callers = []
    for _ in range(32):
        db = database(database_url)
        db.run("SELECT 1")  # connected before the race starts
        fn, _ = make_function(PostgresPersistenceLayer(database=db), body, context=LocalLambdaContext())
        callers.append((db, fn))
    barrier = threading.Barrier(32)
    outcomes: list[str] = []

    def call(fn: Callable[..., Any]) -> None:
        barrier.wait()
        try:
            fn(order={"order_id": "o-race", "amount": 1})
            outcomes.append("result")
        except IdempotencyAlreadyInProgressError:
            outcomes.append("in_progress")

    # When they all call at once with the same key
    threads = [threading.Thread(target=call, args=(fn,)) for _, fn in callers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    # Then the function ran exactly once; everyone else saw it in progress or its result
    assert len(runs) == 1
    assert len(outcomes) == 32 and outcomes.count("result") >= 1
    assert set(outcomes) <= {"result", "in_progress"}
    for db, _ in callers:
        db.close()


def test_dropped_connection_between_calls_reconnects_once(db: Database, database_url: str) -> None:
    # Given a warm environment whose connection the server has since dropped
    charge, calls = make_function(PostgresPersistenceLayer(database=db))
    charge(order={"order_id": "o-10", "amount": 1})
    pid = db.run("SELECT pg_backend_pid()")[0][0]
    admin = connect(database_url)
    admin.run("SELECT pg_terminate_backend(:pid)", pid=pid)
    admin.close()
    time.sleep(0.1)

    # When the next invocation comes / Then it reconnects (once) and works
    assert charge(order={"order_id": "o-11", "amount": 1})["order_id"] == "o-11"
    assert db.connects == 2
    assert len(calls) == 2


def test_connection_killed_mid_way_is_a_clear_error_then_recovers(database_url: str) -> None:
    # Given the layer logs in as its own role, and the function's work kills that connection
    # while the database refuses new logins (a failover in progress)
    admin = connect(database_url)
    admin.run("DROP ROLE IF EXISTS idem_app")
    admin.run("CREATE ROLE idem_app LOGIN")
    admin.run("GRANT ALL ON idempotency_keys TO idem_app")
    from tests.support.pg import with_user

    db = database(with_user(database_url, "idem_app"))

    def kill_own_connection(order: dict) -> dict:
        pid = db.run("SELECT pg_backend_pid()")[0][0]
        admin.run("ALTER ROLE idem_app NOLOGIN")
        admin.run("SELECT pg_terminate_backend(:pid)", pid=pid)
        time.sleep(0.1)
        return {"ok": True}

    charge, _ = make_function(PostgresPersistenceLayer(database=db), kill_own_connection)

    # When the layer then tries to store the result / Then a clear persistence error surfaces
    with pytest.raises(IdempotencyPersistenceLayerError) as caught:
        charge(order={"order_id": "o-12", "amount": 1})
    assert "unavailable" in repr(caught.value.__cause__ or caught.value)

    # And once logins work again, the next call reconnects and works
    admin.run("ALTER ROLE idem_app LOGIN")
    ok, calls = make_function(PostgresPersistenceLayer(database=db))
    assert ok(order={"order_id": "o-13", "amount": 1}) == {"charged": 1, "order_id": "o-13"}
    assert len(calls) == 1
    db.close()
    admin.run("REVOKE ALL ON idempotency_keys FROM idem_app")
    admin.close()


def test_unreachable_database_is_a_persistence_error_never_a_silent_pass(tmp_path) -> None:
    # Given a database URL where nothing listens
    db = database(f"postgresql://postgres@/postgres?host={tmp_path}&port=1")
    charge, calls = make_function(PostgresPersistenceLayer(database=db))
    # Then the call fails with Powertools' persistence error and the function never ran
    with pytest.raises(IdempotencyPersistenceLayerError):
        charge(order={"order_id": "o-14", "amount": 1})
    assert calls == []


def test_web_app_rows_are_never_taken_over(db: Database, database_url: str) -> None:
    # Given a row the web app wrote under the very key the layer will compute
    store = PostgresPersistenceLayer(database=db)
    charge, calls = make_function(store, key_prefix="collide")
    order = {"order_id": "o-15", "amount": 1}
    probe = PostgresPersistenceLayer(database=db)
    probe.configure(IdempotencyConfig(event_key_jmespath="order_id"), key_prefix="collide")
    key = probe._get_hashed_idempotency_key(order)
    conn = connect(database_url)
    conn.run(
        "INSERT INTO idempotency_keys (key, status, response_data, updated_at) "
        "VALUES (:k, 'pending', '{\"paymentUrl\": \"x\"}', now() - interval '30 days')",
        k=key,
    )
    before = conn.run("SELECT to_jsonb(t) FROM idempotency_keys t")
    conn.close()
    # When the layer meets it / Then it refuses (a persistence error), runs nothing, changes nothing
    with pytest.raises(IdempotencyPersistenceLayerError):
        charge(order=order)
    assert calls == []
    assert rows(database_url, "SELECT to_jsonb(t) FROM idempotency_keys t") == before


def test_idempotent_handler_with_context_and_configurable_table(database_url: str) -> None:
    # Given a copy of the table under another name, and a handler decorated with @idempotent
    admin = connect(database_url)
    admin.run("CREATE TABLE idem_copy (LIKE idempotency_keys INCLUDING ALL)")
    admin.close()
    db = database(database_url)
    store = PostgresPersistenceLayer(table_name="public.idem_copy", database=db)
    runs: list[int] = []

    @idempotent(config=IdempotencyConfig(event_key_jmespath="body"), persistence_store=store)
    def handler(event: dict, context: Any) -> dict:
        runs.append(1)
        return {"statusCode": 201, "body": event["body"]}

    event = {"body": '{"credit_pack_id": "p1"}'}
    # When invoked twice with a Lambda context
    assert handler(event, LocalLambdaContext()) == handler(event, LocalLambdaContext())
    # Then it ran once and the record went to the configured table, with an in-progress deadline cleared
    assert runs == [1]
    [(status, in_progress)] = rows(database_url, "SELECT status, in_progress_expiry_timestamp FROM idem_copy")
    assert status == "completed" and in_progress is None
    assert rows(database_url, "SELECT count(*) FROM idempotency_keys") == [[0]]
    db.close()


def test_invalid_table_name_is_refused() -> None:
    with pytest.raises(ValueError):
        PostgresPersistenceLayer(table_name="idempotency_keys; DROP TABLE payments")


def test_a_lost_takeover_is_never_cached(database_url: str) -> None:
    # Given a first invocation (with the local cache on) that outlives its deadline while another takes over
    takeover = stuck_first(database_url, {"order_id": "o-lost", "amount": 1}, use_local_cache=True)
    assert takeover.second(order={"order_id": "o-lost", "amount": 1}) == {"by": "second"}
    takeover.finish()
    # When the first environment is asked again
    again = takeover.first(order={"order_id": "o-lost", "amount": 1})
    # Then it answers what the table holds (the new owner's result), not the result it lost with
    assert again == {"by": "second"} and len(takeover.first_calls) == 1
    takeover.close()


@pytest.mark.parametrize(
    ("answer", "jsonb"),
    [
        ({"b": 1, "a": "x", "long_key": [3, 2]}, True),
        ({"text": "nul \x00 inside"}, False),  # jsonb refuses \u0000
        ({"ratio": float("nan"), "inf": float("inf")}, False),  # not JSON: jsonb refuses NaN
        ({"text": "a\ud800b", "\udfff": 1}, False),  # jsonb refuses a lone surrogate (JSON writes it \ud800)
        ({"text": "a\U0001f600b"}, True),  # a pair, one character: jsonb holds it
    ],
    ids=["key-order", "nul", "nan", "lone-surrogate", "surrogate-pair"],
)
def test_a_replay_is_the_stored_answer_byte_for_byte(
    db: Database, database_url: str, answer: dict, jsonb: bool
) -> None:
    import json

    # Given a function whose answer jsonb would reorder, or cannot hold at all (Powertools' own stores keep it)
    charge, calls = make_function(PostgresPersistenceLayer(database=db), lambda o: answer)
    first = charge(order={"order_id": "o-bytes", "amount": 1})
    # When it is replayed
    replay = charge(order={"order_id": "o-bytes", "amount": 1})
    # Then the stored text is the utility's own serialization, and the replay is exactly it (NUL and NaN kept)
    [(text, data)] = rows(database_url, "SELECT response_text, response_data FROM idempotency_keys")
    assert text == json.dumps(first, sort_keys=True)
    assert json.dumps(replay, sort_keys=True) == text and len(calls) == 1
    # And the web app's jsonb column holds it wherever jsonb can (NULL where it cannot)
    assert (data is not None) == jsonb


def test_a_web_app_row_under_a_service_key_is_a_conflict_not_an_outage(database_url: str) -> None:
    from payments.errors import Conflict
    from payments.services.keyed import Keyed

    # Given a row the web app wrote (no expiry) under the very key this service would use
    db = database(database_url)
    keyed = Keyed(
        lambda scope: {"status": 201, "body": {"ok": True}},
        persistence=PostgresPersistenceLayer(database=db),
        key="key",
        validate="key",
        prefix="probe",
        expires_after_seconds=60,
    )
    keyed(None, scope={"key": "k-1"})
    conn = connect(database_url)
    conn.run("UPDATE idempotency_keys SET expiry_timestamp = NULL, status = 'completed'")
    conn.close()
    # When a request with that key arrives / Then a 409 that says so (retrying can never help), not a 503
    with pytest.raises(Conflict, match="did not write"):
        keyed(None, scope={"key": "k-1"})
    db.close()


def test_a_record_a_release_before_009_took_over_replays_that_release_s_answer(
    db: Database, database_url: str, backend_login: str
) -> None:
    import json

    # Given a record this release completed (its exact text kept), which then expired
    charge, calls = make_function(PostgresPersistenceLayer(database=db), lambda o: {"run": len(calls)})
    assert charge(order={"order_id": "o-rolled", "amount": 1}) == {"run": 1}
    conn = connect(with_user(database_url, backend_login))  # as the backend's role, as a deployment runs
    try:
        conn.run("UPDATE idempotency_keys SET expiry_timestamp = 1")
        # When a release from before sql/009 (a rollback) takes the key over and completes it, as its statements did:
        # response_data alone, response_text unknown to it
        conn.run(
            "UPDATE idempotency_keys SET id = gen_random_uuid(), status = 'pending', expiry_timestamp = :expiry,"
            " in_progress_expiry_timestamp = NULL, response_data = NULL, payment_id = NULL, updated_at = now()",
            expiry=int(time.time()) + 3600,
        )
        conn.run(
            "UPDATE idempotency_keys SET status = 'completed', response_data = CAST(:data AS jsonb),"
            " updated_at = now()",
            data=json.dumps({"run": 2}),
        )
    finally:
        conn.close()
    # Then this release, deployed again, replays that release's answer: the record's own, not its earlier run's text
    assert charge(order={"order_id": "o-rolled", "amount": 1}) == {"run": 2} and len(calls) == 1
    assert rows(database_url, "SELECT response_text FROM idempotency_keys") == [[None]]
