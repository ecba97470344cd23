"""SQL of the housekeeping steps (see `payments.services.cleanup` for the policy and the loop).

Every step deletes or updates one bounded batch of rows it locks with `FOR UPDATE SKIP LOCKED`, and
re-checks its conditions on the locked rows. Parameters: `:now` (Unix seconds, the Lambda's clock),
`:batch`, `:web_retention`, `:pending_age`, `:rate_retention` (seconds).

The steps that only delete what is already dead (expired records, the web app's old rows, old rate-limit
windows) commit each batch with `synchronous_commit = off` (`SET LOCAL`, in the same round trip): the
batch does not wait for its own WAL flush, so a purge of many records does not compete with the requests'
commits for the WAL flush nor wake up hundreds of times a second. A crash may lose the last fraction of a
second of such batches: the rows come back, still expired (claims treat them as absent), and the next run
purges them again. The steps that change payments keep durable commits. The next durable commit on the
server (any request's, or the audit row of an admin run) flushes them as well.
"""

from __future__ import annotations

from typing import Any

from payments.adapters.db import Database, bind
from payments.records import Record

# A callback naming the payment is on record, not verified yet, and the journal's row for its Hyp Id (its only row,
# shown in the review queue) is this payment's and not verified since. One a check found forged holds it too (a single
# check of a public text is no proof; an operator fails such a payment, docs/operations.md). A kept callback whose Id
# the journal gives to another payment holds nothing here: that Id is in the queue under the other payment.
_UNVERIFIED_CALLBACK = """EXISTS (
    SELECT 1 FROM public.hypay_unverified_callbacks u
      JOIN public.hypay_transactions j ON j.hypay_id = u.hypay_id
     WHERE u.payment_id = q.id AND j.payment_id = q.id AND NOT j.verified)"""


class Step(Record):
    field: str  # the report's field
    sql: str  # one bounded batch
    durable: bool = True  # False: the batch commits without waiting for its WAL flush (it only purges)


# Each batch commits on its own (an autocommit statement); for a step that is not durable, in one round trip:
# `SET LOCAL` lasts until that implicit transaction's commit, so the session's setting is untouched.
_LAZY_COMMIT = "SET LOCAL synchronous_commit = off; "


def cleanup_steps(table: str) -> list[Step]:
    """Each step, in order; each statement handles one bounded batch."""
    return [
        # The locked rows are deleted by their physical address (`ctid`), the very row versions locked and
        # re-checked: a TID scan, where a join back on the key (a hash of the keys, an index descent per row)
        # cost the server about 4 times the CPU per batch. A row updated after the statement began is not
        # deleted (its new version is not in the statement's snapshot): the next batch or run sees it again.
        Step(
            "purged_idempotency_records",
            f"""
            DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM {table}
                 WHERE expiry_timestamp IS NOT NULL AND expiry_timestamp < :now
                 LIMIT :batch FOR UPDATE SKIP LOCKED))""",
            durable=False,
        ),
        # The web app's own rows (no expiry), only when a retention is set (0, the default, keeps them all, as the
        # web app itself does): finished ('completed' or 'failed'; a NULL or 'pending' status may still be in use),
        # older than the retention, and naming no payment that is still open (pending or in review).
        Step(
            "purged_web_app_records",
            f"""
            DELETE FROM {table} WHERE key IN (
                SELECT k.key FROM {table} k
                 WHERE :web_retention > 0
                   AND k.expiry_timestamp IS NULL AND k.status IN ('completed', 'failed')
                   AND COALESCE(k.updated_at, k.created_at) < now() - make_interval(secs => :web_retention)
                   AND NOT EXISTS (SELECT 1 FROM public.payments p
                                    WHERE p.id = k.payment_id AND p.status IN ('pending', 'needs_review'))
                 LIMIT :batch FOR UPDATE OF k SKIP LOCKED)""",
            durable=False,
        ),
        # A stale pending payment that needs a human is never expired: a saved-card charge was attempted
        # and its outcome never stored (it may have charged). Stale counts from the attempt, not the payment:
        # a retry may reuse an old pending payment and be asking Hyp right now (no row lock is held meanwhile).
        Step(
            "payments_flagged_for_review",
            """
            UPDATE public.payments p SET status = 'needs_review', updated_at = now(),
                   review_reason = COALESCE(p.review_reason, 'saved-card charge attempted, outcome never stored')
             WHERE id IN (
                SELECT id FROM public.payments
                 WHERE status = 'pending' AND (review_reason IS NOT NULL OR charge_attempt_id IS NOT NULL)
                   AND GREATEST(created_at, charge_attempted_at) < now() - make_interval(secs => :pending_age)
                 LIMIT :batch FOR UPDATE SKIP LOCKED)""",
        ),
        # Hyp's page gave up long ago; a callback completing one right now holds its row and is skipped. One
        # with a callback on record that we could not verify yet stays pending: it may be paid, and completes
        # when Hyp sends the callback again (the journal's unverified row and the alarm bring a human).
        Step(
            "expired_payments",
            f"""
            UPDATE public.payments SET status = 'expired', updated_at = now() WHERE id IN (
                SELECT id FROM public.payments q
                 WHERE status = 'pending' AND review_reason IS NULL AND charge_attempt_id IS NULL
                   AND NOT {_UNVERIFIED_CALLBACK}
                   AND created_at < now() - make_interval(secs => :pending_age)
                 LIMIT :batch FOR UPDATE SKIP LOCKED)""",
        ),
        Step(
            "purged_rate_limit_windows",
            """
            DELETE FROM public.rate_limits WHERE (bucket, window_start) IN (
                SELECT bucket, window_start FROM public.rate_limits
                 WHERE window_start < now() - make_interval(secs => :rate_retention)
                 LIMIT :batch FOR UPDATE SKIP LOCKED)""",
            durable=False,
        ),
    ]


def run_step(db: Database, step: Step, **params: Any) -> int:
    """One batch of one step, committed on its own; how many rows it handled (one row back, not one a row)."""
    sql = bind(f"WITH done AS ({step.sql} RETURNING 1) SELECT count(*) FROM done", **params)
    [[count]] = db.run(sql if step.durable else _LAZY_COMMIT + sql)
    return int(count)
