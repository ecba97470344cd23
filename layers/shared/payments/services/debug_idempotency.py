"""What GET /debug/test-idempotency runs: the real persistence layer, exercised end to end."""

from __future__ import annotations

import time
import uuid
from typing import Any

from payments.adapters.db import Database
from payments.errors import DatabaseUnavailable, InvalidRequest
from payments.services.cleanup import CleanupPolicy, purge_expired_idempotency_records

KINDS = ("basic", "duplicate", "cleanup")


def exercise(kind: str, db: Database, *, table: str = "idempotency_keys") -> dict[str, Any]:
    """Run one scenario on a fresh key and say what happened."""
    # Imported when a scenario runs, not with the cleanup function (Powertools' idempotency utility imports boto3).
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
    from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyPersistenceLayerError

    from payments.idempotency import PostgresPersistenceLayer

    if kind not in KINDS:
        raise InvalidRequest(f"type must be one of {', '.join(KINDS)}")
    key = f"debug-{uuid.uuid4()}"
    runs: list[int] = []
    store = PostgresPersistenceLayer(table, database=db)
    config = IdempotencyConfig(event_key_jmespath="key", expires_after_seconds=1 if kind == "cleanup" else 60)

    @idempotent_function(data_keyword_argument="request", config=config, persistence_store=store, key_prefix="debug")
    def work(request: dict) -> dict:
        runs.append(1)
        return {"key": request["key"], "computed_at": time.time()}

    def record() -> str | None:
        return store.record_status(store.last_claimed_key or "")

    def call() -> dict:
        """`work` once; the store's failures as the other routes answer them (ours: 503, never a 500)."""
        try:
            return work(request={"key": key})
        except IdempotencyPersistenceLayerError as exc:  # Powertools' wrapping of the store's DatabaseUnavailable
            raise DatabaseUnavailable("the idempotency store is unavailable; try again later") from exc

    first = call()
    report: dict[str, Any] = {"type": kind, "record_after_first_call": record()}
    if kind == "duplicate":
        second = call()
        report |= {"replay_equals_first": second == first}
    if kind == "cleanup":
        time.sleep(2.05)  # past the one-second expiry, in whole seconds as the store counts them
        purged = purge_expired_idempotency_records(db, policy=CleanupPolicy(table=store.quoted_table))
        report |= {"purged": purged, "record_after_cleanup": record()}
    report["function_ran"] = len(runs)
    report["ok"] = {
        "basic": report["record_after_first_call"] == "completed" and len(runs) == 1,
        "duplicate": report.get("replay_equals_first") is True and len(runs) == 1,
        "cleanup": report.get("record_after_cleanup") is None and report.get("purged", 0) >= 1,
    }[kind]
    return report
