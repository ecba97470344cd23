"""Housekeeping: expired idempotency records, the web app's old ones, stale payments, old rate-limit windows.

Every step deletes or updates in bounded batches of rows it locks with `FOR UPDATE SKIP LOCKED`:
a claim, a callback completing a payment, or another cleanup running at the same time holds its rows
and is simply skipped, never waited on for more than one batch. Conditions are re-checked on the
locked rows, so a record taken over or a payment completed in between is left alone. Running it
twice, or twice at once, does the work once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from payments.adapters.cleanup_store import cleanup_steps, run_step
from payments.adapters.db import Database


@dataclass
class CleanupReport:
    purged_idempotency_records: int = 0
    purged_web_app_records: int = 0
    expired_payments: int = 0
    payments_flagged_for_review: int = 0
    purged_rate_limit_windows: int = 0
    complete: bool = True  # False when the time budget ran out first (the next run goes on)

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)


@dataclass(frozen=True)
class CleanupPolicy:
    batch_size: int = 500
    web_app_retention_seconds: int = 0  # 0: the web app's own idempotency rows are never purged
    pending_payment_max_age_seconds: int = 2 * 3600
    rate_limit_retention_seconds: int = 24 * 3600
    table: str = "public.idempotency_keys"


def purge_expired_idempotency_records(
    db: Database, *, policy: CleanupPolicy = CleanupPolicy(), now: float | None = None
) -> int:
    """Only the first step, once: what the debug endpoint exercises."""
    _, sql = cleanup_steps(policy.table)[0]
    return run_step(db, sql, now=int(now if now is not None else time.time()), batch=policy.batch_size)


def run_cleanup(
    db: Database,
    *,
    policy: CleanupPolicy = CleanupPolicy(),
    now: float | None = None,
    time_left_ms: Callable[[], int] = lambda: 60_000,
    reserve_ms: int = 5_000,
) -> CleanupReport:
    """Run every step in batches until done or until only `reserve_ms` of the budget is left."""
    report = CleanupReport()
    params = {
        "now": int(now if now is not None else time.time()),  # the Lambda's clock, as the store's expiry
        "batch": policy.batch_size,
        "web_retention": policy.web_app_retention_seconds,
        "pending_age": policy.pending_payment_max_age_seconds,
        "rate_retention": policy.rate_limit_retention_seconds,
    }
    for field, sql in cleanup_steps(policy.table):
        while True:
            if time_left_ms() < reserve_ms:
                report.complete = False
                return report
            done = run_step(db, sql, **params)
            setattr(report, field, getattr(report, field) + done)
            if done < policy.batch_size:
                break
    return report
