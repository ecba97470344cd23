"""Housekeeping: expired idempotency records, the web app's old ones, stale payments, old rate-limit windows.

Every step deletes or updates in bounded batches of rows it locks with `FOR UPDATE SKIP LOCKED`:
a claim, a callback completing a payment, or another cleanup running at the same time holds its rows
and is simply skipped, never waited on for more than one batch. Conditions are re-checked on the
locked rows, so a record taken over or a payment completed in between is left alone. Running it
twice, or twice at once, does the work once.

A purge of many records runs next to live requests on the same server: its batches delete the locked
rows by their physical address (cheap for the server's CPU); the steps that only purge run on the server
in small batches, each committed without waiting for its WAL flush and followed by a pause, about a
second per statement (`payments.adapters.cleanup_store.run_paced`); the steps that change payments send
one batch per statement, commit durably and are paced here. When the server's notices do not reach us (a pooler
that drops them: the paced statements tell what they did in notices only), the purges go on as the other steps do,
one batch per statement, for the rest of the run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from payments.adapters.cleanup_store import NoticesLost, Step, cleanup_steps, run_paced, run_step
from payments.adapters.db import Database
from payments.errors import PaymentError
from payments.observability import logger
from payments.settings import DEFAULT_BATCH_SIZE, DEFAULT_DUTY_CYCLE_PERCENT, CleanupSettings

MAX_PAUSE_SECONDS = 1.0  # however slow one batch was
# How long one statement of a purge-only step runs its batches on the server (at most a quarter of the query timeout).
PACED_RUN_MS = 1_000


@dataclass
class CleanupReport:
    purged_idempotency_records: int = 0
    purged_web_app_records: int = 0
    expired_payments: int = 0
    payments_flagged_for_review: int = 0
    refunds_outcome_unknown: int = 0
    purged_rate_limit_windows: int = 0
    complete: bool = True  # False when the time budget ran out first (the next run goes on)
    # False when a purge's batches ran but could not all be counted (the server's notices did not reach us, or a paced
    # statement failed or lost its connection midway and was sent again): the counts are then lower bounds.
    counts_exact: bool = True

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)


@dataclass(frozen=True)
class CleanupPolicy:
    batch_size: int = DEFAULT_BATCH_SIZE
    web_app_retention_seconds: int = 0  # 0: the web app's own idempotency rows are never purged
    pending_payment_max_age_seconds: int = 2 * 3600
    rate_limit_retention_seconds: int = 24 * 3600
    table: str = "public.idempotency_keys"
    # The share of the run's time spent in batches (100: back to back). After a full batch (more work follows)
    # it pauses for the rest, in proportion to how long that batch took: a large purge leaves the server's
    # CPU and WAL to the requests most of the time (CLEANUP_DUTY_CYCLE_PERCENT; the same default).
    duty_cycle_percent: int = DEFAULT_DUTY_CYCLE_PERCENT

    @classmethod
    def from_settings(cls, settings: CleanupSettings, table: str) -> CleanupPolicy:
        """The cleanup function's policy: its settings, on `table` (a quoted identifier)."""
        return cls(
            batch_size=settings.batch_size,
            web_app_retention_seconds=settings.web_app_retention_seconds,
            pending_payment_max_age_seconds=settings.pending_payment_max_age_seconds,
            table=table,
            duty_cycle_percent=settings.duty_cycle_percent,
        )


def purge_expired_idempotency_records(
    db: Database, *, policy: CleanupPolicy = CleanupPolicy(), now: float | None = None
) -> int:
    """Only the first step, once: what the debug endpoint exercises."""
    step = cleanup_steps(policy.table)[0]
    return run_step(db, step, now=int(now if now is not None else time.time()), batch=policy.batch_size)


def run_cleanup(
    db: Database,
    *,
    policy: CleanupPolicy = CleanupPolicy(),
    now: float | None = None,
    time_left_ms: Callable[[], int] = lambda: 60_000,
    reserve_ms: int = 5_000,
    sleep: Callable[[float], None] = time.sleep,
    report: CleanupReport | None = None,
) -> CleanupReport:
    """Run every step in batches until done or until only `reserve_ms` of the budget is left; between full
    batches, pause as `policy.duty_cycle_percent` says (never into the reserve). `report`, when given, is filled in
    as each statement commits: what a run that raises midway did is in it (its batches are committed)."""
    report = report if report is not None else CleanupReport()
    params: dict[str, Any] = {
        "run": os.urandom(8).hex(),  # what a step that names its run writes (a recount counts only this run's rows)
        "now": int(now if now is not None else time.time()),  # the Lambda's clock, as the store's expiry
        "batch": policy.batch_size,
        "web_retention": policy.web_app_retention_seconds,
        "pending_age": policy.pending_payment_max_age_seconds,
        "rate_retention": policy.rate_limit_retention_seconds,
    }
    run = _Run(db, policy, params, time_left_ms, reserve_ms, sleep, report)
    paced = True  # until the server's notices turn out not to reach us
    steps = cleanup_steps(policy.table)
    # The steps that change payments first (few rows, and they send charged payments to review): a purge of a large
    # backlog may use up the run's time, and must not keep them waiting for the next run.
    for step in [s for s in steps if s.durable] + [s for s in steps if not s.durable]:
        if not step.durable and paced:
            try:
                done = run.paced(step)
            except NoticesLost:
                # The batches of the statement that told nothing are done but uncounted; the step goes on below.
                paced = report.counts_exact = False
                logger.warning(
                    "the database's notices do not reach the cleanup (a pooler?): its purges go on one batch per "
                    "statement, and the batches of the statement that told nothing are not counted",
                    extra={"step": step.field},
                )
            else:
                if not done:
                    report.complete = False
                    return report
                continue
        if not run.batches(step):
            report.complete = False
            return report
    return report


@dataclass
class _Run:
    """One cleanup run: its database, policy, statements' values, time budget and report."""

    db: Database
    policy: CleanupPolicy
    params: dict[str, Any]
    time_left_ms: Callable[[], int]
    reserve_ms: int
    sleep: Callable[[float], None]
    report: CleanupReport

    def _count(self, step: Step, done: int) -> None:
        setattr(self.report, step.field, getattr(self.report, step.field) + done)

    def batches(self, step: Step) -> bool:
        """A step one batch per statement, paced here: False when the budget ran out before the step was done."""
        while True:
            if self.time_left_ms() < self.reserve_ms:
                return False
            started = time.monotonic()
            resent = self.db.resent
            try:
                done = run_step(self.db, step, counted=getattr(self.report, step.field), **self.params)
            finally:
                if self.db.resent != resent:
                    # Sent again on a new connection, the first sending's answer lost: it may have committed a batch
                    # this count misses (the flag step counts its own again: their alarm)
                    self.report.counts_exact = False
            self._count(step, done)
            if done < self.policy.batch_size:
                return True
            spare_ms = self.time_left_ms() - self.reserve_ms
            pause = _pause(time.monotonic() - started, self.policy.duty_cycle_percent, spare_ms)
            if pause > 0:
                self.sleep(pause)

    def paced(self, step: Step) -> bool:
        """A purge-only step, a statement of about PACED_RUN_MS at a time (never past the reserve, nor a quarter of
        the query timeout: room for a batch started just before its end): False when the budget ran out before the
        step was done. NoticesLost when a statement told nothing (its batches done, uncounted)."""
        while True:
            spare = self.time_left_ms() - self.reserve_ms
            if spare <= 0:
                return False
            run_ms = min(PACED_RUN_MS, spare, int(self.db.query_timeout * 250))
            told: list[int] = []
            try:
                done = run_paced(
                    self.db, step, run_ms=run_ms, duty_cycle_percent=self.policy.duty_cycle_percent,
                    max_pause_seconds=MAX_PAUSE_SECONDS, told=told, **self.params,
                )  # fmt: skip
            except PaymentError:
                # Failed midway (cancelled, a timeout, the connection gone): what it told it committed is counted,
                # and the batches after its last word are not
                self._count(step, sum(told))
                self.report.counts_exact = False
                raise
            self._count(step, done.handled)
            if not done.exact:
                self.report.counts_exact = False
            if not done.more:
                return True


def _pause(took: float, duty_cycle_percent: int, spare_ms: int) -> float:
    """Seconds to pause after a batch that took `took`, so that batches fill `duty_cycle_percent` of the time;
    at most MAX_PAUSE_SECONDS, and never more than the `spare_ms` left before the reserve."""
    if duty_cycle_percent >= 100:
        return 0.0
    pause = took * (100 - duty_cycle_percent) / duty_cycle_percent
    return max(0.0, min(pause, MAX_PAUSE_SECONDS, spare_ms / 1000))
