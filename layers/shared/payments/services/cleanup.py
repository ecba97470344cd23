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

from payments.adapters.db import Database, bind


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
    web_app_retention_seconds: int = 24 * 3600
    pending_payment_max_age_seconds: int = 2 * 3600
    rate_limit_retention_seconds: int = 24 * 3600
    table: str = "public.idempotency_keys"


_UNVERIFIED_CALLBACK = (
    "EXISTS (SELECT 1 FROM public.hypay_transactions j WHERE j.payment_id = q.id AND j.decision = 'unverified')"
)


def _steps(policy: CleanupPolicy) -> list[tuple[str, str]]:
    table = policy.table
    return [
        (
            "purged_idempotency_records",
            f"""
            DELETE FROM {table} WHERE key IN (
                SELECT key FROM {table}
                 WHERE expiry_timestamp IS NOT NULL AND expiry_timestamp < :now
                 LIMIT :batch FOR UPDATE SKIP LOCKED)""",
        ),
        # The web app's own rows have no expiry: old enough and finished.
        (
            "purged_web_app_records",
            f"""
            DELETE FROM {table} WHERE key IN (
                SELECT key FROM {table}
                 WHERE expiry_timestamp IS NULL AND status IS DISTINCT FROM 'pending'
                   AND COALESCE(updated_at, created_at) < now() - make_interval(secs => :web_retention)
                 LIMIT :batch FOR UPDATE SKIP LOCKED)""",
        ),
        # A stale pending payment that needs a human is never expired: a saved-card charge was attempted
        # and its outcome never stored (it may have charged).
        (
            "payments_flagged_for_review",
            """
            UPDATE public.payments p SET status = 'needs_review', updated_at = now(),
                   review_reason = COALESCE(p.review_reason, 'saved-card charge attempted, outcome never stored')
             WHERE id IN (
                SELECT id FROM public.payments
                 WHERE status = 'pending' AND (review_reason IS NOT NULL OR charge_attempt_id IS NOT NULL)
                   AND created_at < now() - make_interval(secs => :pending_age)
                 LIMIT :batch FOR UPDATE SKIP LOCKED)""",
        ),
        # Hyp's page gave up long ago; a callback completing one right now holds its row and is skipped. One
        # with a callback on record that we could not verify yet stays pending: it may be paid, and completes
        # when Hyp sends the callback again (the journal's unverified row and the alarm bring a human).
        (
            "expired_payments",
            f"""
            UPDATE public.payments SET status = 'expired', updated_at = now() WHERE id IN (
                SELECT id FROM public.payments q
                 WHERE status = 'pending' AND review_reason IS NULL AND charge_attempt_id IS NULL
                   AND NOT {_UNVERIFIED_CALLBACK}
                   AND created_at < now() - make_interval(secs => :pending_age)
                 LIMIT :batch FOR UPDATE SKIP LOCKED)""",
        ),
        (
            "purged_rate_limit_windows",
            """
            DELETE FROM public.rate_limits WHERE (bucket, window_start) IN (
                SELECT bucket, window_start FROM public.rate_limits
                 WHERE window_start < now() - make_interval(secs => :rate_retention)
                 LIMIT :batch FOR UPDATE SKIP LOCKED)""",
        ),
    ]


def purge_expired_idempotency_records(
    db: Database, *, policy: CleanupPolicy = CleanupPolicy(), now: float | None = None
) -> int:
    """Only the first step, once: what the debug endpoint exercises."""
    field, sql = _steps(policy)[0]
    return len(
        db.run(bind(sql + " RETURNING 1", now=int(now if now is not None else time.time()), batch=policy.batch_size))
    )


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
    for field, sql in _steps(policy):
        statement = bind(sql + " RETURNING 1", **params)
        while True:
            if time_left_ms() < reserve_ms:
                report.complete = False
                return report
            done = len(db.run(statement))
            setattr(report, field, getattr(report, field) + done)
            if done < policy.batch_size:
                break
    return report
