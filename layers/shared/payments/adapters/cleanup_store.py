"""SQL of the housekeeping steps (see `payments.services.cleanup` for the policy and the loop).

Every step deletes or updates one bounded batch of rows it locks with `FOR UPDATE SKIP LOCKED`, and
re-checks its conditions on the locked rows. Parameters: `:now` (Unix seconds, the Lambda's clock),
`:batch`, `:web_retention`, `:pending_age`, `:rate_retention` (seconds).

The steps that change payments send one batch per statement and commit it durably (`run_step`); the
service paces them. The steps that only delete what is already dead (expired records, the web app's old
rows, old rate-limit windows) run on the server, batch after batch, for about a second per statement
(`run_paced`, a `DO` block):
- each batch commits on its own with `synchronous_commit = off` (`SET LOCAL`): it does not wait for its
  own WAL flush, so a purge of many records does not compete with the requests' commits for the flush.
  A crash may lose the last fraction of a second of such batches: the rows come back, still expired
  (claims treat them as absent), and the next run purges them again. The next durable commit on the
  server (any request's) flushes them as well;
- after a full batch the server pauses (`pg_sleep`) for what the batches so far are owed in proportion to
  their time, once that is about a millisecond (PAUSE_FLOOR_SECONDS): a purge is many short bursts of the
  server's CPU with the requests' statements in between, where batches sent one per round trip had to be ten
  times larger to cost as little per row, and each of those bursts delayed every request that came during
  it. No round trip and no planning per batch: plpgsql keeps the statement's plan.
"""

from __future__ import annotations

import uuid
from typing import Any

from payments.adapters.db import Database, QueryError, Transaction, bind
from payments.errors import PaymentError
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
    durable: bool = True  # False: it only purges: paced batches on the server, committed without waiting for the WAL
    # What the batch did, counted again, for one whose first sending's answer was lost (sent again on a new connection):
    # a batch it committed is no longer found by the second. At least what it did (`:window` seconds back).
    recount: str | None = None
    # The batch's rows, locked first (a statement returning their ids), in a READ COMMITTED transaction with `sql`
    # (which then names them as `:ids`, comma-separated): `sql` runs with a snapshot taken once they are locked, so it
    # sees what a transaction holding one of them committed meanwhile (a statement's own snapshot is older than its
    # row locks, and a condition on other tables is not checked again when a row it locks has changed).
    lock: str | None = None


# Why the cleanup sends a stale pending payment with a charge attempt to review (when it has no reason yet).
FLAGGED_REASON = "saved-card charge attempted, outcome never stored"
# A refund still `attempted` this long after it was last written (the admin function asking Hyp ends after 29 s) asked
# Hyp from an invocation that ended before its answer was stored: it may have moved money. The cleanup marks it
# `unknown` (what a retry with its key does), this message (and the run's id) added to what it said, and counts it: the
# alarm of a refund whose outcome is unknown.
STALE_REFUND_SECONDS = 600
STALE_REFUND_MESSAGE = "the invocation asking Hyp ended before its answer was stored (found by the cleanup)"

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
            f"""
            UPDATE public.payments p SET status = 'needs_review', updated_at = now(),
                   review_reason = COALESCE(p.review_reason, '{FLAGGED_REASON}')
             WHERE id IN (
                SELECT id FROM public.payments
                 WHERE status = 'pending' AND (review_reason IS NOT NULL OR charge_attempt_id IS NOT NULL)
                   AND GREATEST(created_at, charge_attempted_at) < now() - make_interval(secs => :pending_age)
                 LIMIT :batch FOR UPDATE SKIP LOCKED)""",
            # The payments this step sent to review lately, by the reason it writes (only the cleanup writes it; one
            # that had a reason before keeps it, and is not found here)
            recount=f"""
            SELECT count(*) FROM public.payments
             WHERE status = 'needs_review' AND review_reason = '{FLAGGED_REASON}'
               AND updated_at > now() - make_interval(secs => :window)""",
        ),
        # Every refund outcome is written holding its payment's lock: the batch locks the payments first (one being
        # settled right now, by a retry with its key or an operator, is skipped), then marks its refunds. A refund
        # whose answer was noted in words (it could not be stored: RefundOutcomeUnknown counted then) is marked and
        # counted too: it is not settled either. The row stays the same refund, its amount still counted against what
        # can be refunded; an operator settles it (POST /admin/refunds/{id}/outcome).
        Step(
            "refunds_outcome_unknown",
            f"""
            UPDATE public.refunds
               SET status = 'unknown', updated_at = now(),
                   message = concat_ws('; ', message, '{STALE_REFUND_MESSAGE} (run ' || :run || ')')
             WHERE id = ANY(string_to_array(:ids, ',')::uuid[])
               AND status = 'attempted' AND updated_at < now() - make_interval(secs => {STALE_REFUND_SECONDS})""",
            lock=f"""
            SELECT r.id::text FROM public.refunds r JOIN public.payments p ON p.id = r.payment_id
             WHERE r.status = 'attempted' AND r.updated_at < now() - make_interval(secs => {STALE_REFUND_SECONDS})
             LIMIT :batch FOR UPDATE OF p, r SKIP LOCKED""",
            # The refunds this run of the step marked, by the words it adds (only the cleanup writes them, naming its
            # run: a refund an earlier run marked is never counted again)
            recount=f"""
            SELECT count(*) FROM public.refunds
             WHERE status = 'unknown' AND message LIKE '%{STALE_REFUND_MESSAGE} (run ' || :run || ')'
               AND updated_at > now() - make_interval(secs => :window)""",
        ),
        # Hyp's page gave up long ago; a callback completing one right now holds its row and is skipped. One
        # with a callback on record that we could not verify yet stays pending: it may be paid, and completes
        # when Hyp sends the callback again (the journal's unverified row and the alarm bring a human).
        # The callback kept meanwhile: a keep locks its payment first (Journal.record_unverified), so a payment being
        # kept is skipped, and one kept before the lock is seen by the UPDATE's later snapshot.
        Step(
            "expired_payments",
            f"""
            UPDATE public.payments q SET status = 'expired', updated_at = now()
             WHERE id = ANY(string_to_array(:ids, ',')::uuid[])
               AND status = 'pending' AND review_reason IS NULL AND charge_attempt_id IS NULL
               AND NOT {_UNVERIFIED_CALLBACK}""",
            lock=f"""
            SELECT id::text FROM public.payments q
             WHERE status = 'pending' AND review_reason IS NULL AND charge_attempt_id IS NULL
               AND NOT {_UNVERIFIED_CALLBACK}
               AND created_at < now() - make_interval(secs => :pending_age)
             LIMIT :batch FOR UPDATE SKIP LOCKED""",
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


def run_step(db: Database, step: Step, *, counted: int = 0, **params: Any) -> int:
    """One batch of one step, committed on its own; how many rows it handled (one row back, not one a row). Sent again
    on a new connection (the first sending's answer lost), the step's `recount`, less the `counted` rows the run's
    earlier batches of the step handled, when that is more (never an error of its own: the batch's count stands)."""
    if step.lock is not None:
        return _locked_first(db, step, params, counted)
    sql = bind(f"WITH done AS ({step.sql} RETURNING 1) SELECT count(*) FROM done", **params)
    resent = db.resent
    [[count]] = db.run(sql if step.durable else _LAZY_COMMIT + sql)
    return _recounted(db, step, int(count), counted, params) if db.resent != resent else int(count)


def _locked_first(db: Database, step: Step, params: dict[str, Any], counted: int = 0) -> int:
    """A step whose batch is locked first (`Step.lock`): both statements in one READ COMMITTED transaction. Run again on
    a new connection (the COMMIT's answer lost: it may have committed), the step's `recount`, as for any step."""
    update = f"WITH done AS ({step.sql} RETURNING 1) SELECT count(*) FROM done"
    resent = db.resent

    def batch(tx: Transaction) -> int:
        # Two statements where a batch is one: each may take half of a statement's time, so that the batch fits in
        # what the run keeps back for one (near the invocation's end each takes what is then left, `Transaction.run`).
        tx.run(f"SET LOCAL statement_timeout = {max(1, db.statement_timeout_ms // 2)}")
        ids = [row[0] for row in tx.run(bind(step.lock or "", **params))]
        if not ids:
            return 0
        [[count]] = tx.run(bind(update, **params, ids=",".join(ids)))
        return int(count)

    count = db.atomic(batch, read_committed=True)
    return _recounted(db, step, count, counted, params) if db.resent != resent else count


def _recounted(db: Database, step: Step, count: int, counted: int, params: dict[str, Any]) -> int:
    """A batch sent again (the first sending's answer lost): its `recount`, less the `counted` rows the run's earlier
    batches of the step handled, when that is more than `count` (never an error of its own: `count` stands)."""
    if step.recount is None:
        return count
    # Both sendings (and the reconnect between them) took less than this: the first's batch, if committed, is in it
    window = int(3 * db.query_timeout) + 1
    try:
        [[recounted]] = db.run(bind(step.recount, **{**params, "window": window}))
    except PaymentError:
        return count
    return max(count, int(recounted) - counted)


# The shortest pause after a full batch: less owed is added to the next batch's. pg_sleep wakes on whole milliseconds,
# rounding up (a pause asked for 0.2 ms or 1 ms lasts about 1 or 2): the block asks for half a millisecond less than
# the pause it means, so that a pause lasts the whole number of milliseconds nearest to it, at least one; the next
# pause makes up the difference. (A pause cut short by the statement's end is asked for whole: it must not end
# before it.)
PAUSE_FLOOR_SECONDS = 0.001
_SLEEP_ROUNDING_SECONDS = 0.0005

# How often at most the block tells what it committed while it runs. Each notice is a message sent and a wake-up of
# the client: told after every batch of a purge (a batch of 50 takes about 0.1 ms), the notices cost the requests
# running meanwhile more than the batches themselves (docs/benchmarks.md). A batch that takes this long or longer is
# still told on its own.
TELL_EVERY_MS = 10

# The server's loop. Each batch is a transaction of its own (a DO block sent alone, outside any transaction block,
# may COMMIT). After a batch's commit, when TELL_EVERY_MS have passed since it last told, and always at its end, the
# block tells the rows committed so far in a notice (a block returns no rows): nothing is kept in the session, so a
# transaction-mode pooler or RDS Proxy may hand the connection on after it (docs/architecture.md), and a statement
# that fails or whose connection breaks midway has told what its batches committed, but for those of its last
# TELL_EVERY_MS (committed, not counted: the count is a report, the rows are gone either way). The notice is sent
# whatever the role's client_min_messages, and not logged (NOTICE is below log_min_messages).
_PACED = """DO $paced$
DECLARE
  began CONSTANT timestamptz := clock_timestamp();
  -- The session's statement_timeout (ms, 0: none) would cancel the block: it ends well before.
  timeout_ms CONSTANT bigint := (SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout');
  ends CONSTANT timestamptz := began + interval '1 millisecond'
                               * CASE WHEN timeout_ms > 0 THEN least({run_ms}, timeout_ms / 2) ELSE {run_ms} END;
  batch_began timestamptz;
  seen timestamptz := began;  -- the clock's last reading
  paced_from timestamptz;
  busy double precision := 0;
  owed double precision;
  handled bigint := 0;
  n bigint := {batch};  -- ended before its first batch (the clock stepped back): more may be left
  told_at timestamptz := began;
BEGIN
  -- Every batch READ COMMITTED, whatever the database's default (as every transaction of ours): under REPEATABLE READ a
  -- claim taking an expired row over while a batch waited for it failed the whole statement (40001), which was then
  -- sent again with its last batches uncounted. The block's own first transaction ends here; the chain keeps the level.
  COMMIT;
  SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
  paced_from := clock_timestamp();
  LOOP
    batch_began := clock_timestamp();
    -- The server's clock stepped back (a correction): its end and its pacing would be measured on a clock gone wrong
    -- (batches past the end, or none paced): the statement ends here, the next starts over.
    EXIT WHEN batch_began < seen;
    PERFORM set_config('synchronous_commit', 'off', true);
    {statement};
    GET DIAGNOSTICS n = ROW_COUNT;
    handled := handled + n;
    COMMIT AND CHAIN;
    seen := clock_timestamp();
    EXIT WHEN n < {batch} OR seen >= ends OR seen < batch_began;
    IF clock_timestamp() >= told_at + interval '{tell_every_ms} milliseconds' THEN
      PERFORM set_config('client_min_messages', 'notice', true);
      RAISE NOTICE '{told}% 1 so far', handled;
      told_at := clock_timestamp();
    END IF;{pause}
  END LOOP;
  PERFORM set_config('client_min_messages', 'notice', true);
  RAISE NOTICE '{told}% % in all', handled, (n >= {batch})::int;
END
$paced$"""
# After a full batch: the pause the batches so far are owed (their time × total, less the time since the first began),
# when it is at least the floor (a shorter one is added to the next's), at most max_pause, never past the statement's
# end (nor a batch started after it). Owed, not each batch's own: a pause lasts whole milliseconds (asking for 1 ms
# sleeps 2), so a pause of its own after each batch rounded the batches' share of the time down, to about 16 % where 25
# was asked at the default batch size; what a pause sleeps over or under is taken from or added to the next.
_PAUSE = """
    busy := busy + extract(epoch FROM seen - batch_began);
    owed := busy * {total} - extract(epoch FROM seen - paced_from);
    IF owed >= {floor} THEN
      PERFORM pg_sleep(least(owed - {rounding}, {max_pause}, extract(epoch FROM ends - clock_timestamp())));
    END IF;
    EXIT WHEN clock_timestamp() >= ends;"""
_TOLD = "paced batches"


class NoticesLost(QueryError):
    """A paced statement ended without a word: its batches ran (and committed), but none of its notices reached us.
    Something between us and the server (a pooler, a proxy) does not pass notices on: how many rows it handled, and
    whether more are left, is not known here."""

    code = "notices_lost"

    def __init__(self) -> None:
        super().__init__("the paced batches told nothing of what they did (their notices did not reach us)", None)


class Paced(Record):
    """What one `run_paced` statement did: rows handled (committed), and whether its last batch was full (more may
    be left). Not `exact` when it was sent more than once and a sending before the last ended without telling its
    count in all (it failed, or its connection broke): the batches of its last TELL_EVERY_MS may be uncounted."""

    handled: int
    more: bool
    exact: bool = True


def run_paced(
    db: Database,
    step: Step,
    *,
    run_ms: int,
    duty_cycle_percent: int,
    max_pause_seconds: float,
    told: list[int] | None = None,
    **params: Any,
) -> Paced:
    """Batches of a purge-only step (not `durable`), one after another on the server for about `run_ms`, or half
    the session's statement_timeout if less (the last batch started before then runs to its end), paced so that
    batches fill `duty_cycle_percent` of the time: after a full batch, the pause the batches so far are owed (their
    time × (100 - duty) / duty, less the pauses taken), when at least PAUSE_FLOOR_SECONDS (none at 100 %), at most
    `max_pause_seconds`, never past the end. One round trip.
    `told`, when given, gets the rows each sending told it committed, also when the statement fails (cancelled, a
    lock or statement timeout: its batches before were committed)."""
    if step.durable:
        raise ValueError(f"{step.field} changes payments: its batches commit durably, one per statement (run_step)")
    statement = bind(step.sql, **params)
    run_ms = max(1, int(run_ms))
    pause = ""  # back to back at 100 %
    if duty_cycle_percent < 100:
        pause = _PAUSE.format(
            total=repr(100 / duty_cycle_percent),
            floor=repr(PAUSE_FLOOR_SECONDS),
            rounding=repr(_SLEEP_ROUNDING_SECONDS),
            max_pause=repr(float(max_pause_seconds)),
        )
    # The statement's own token: only its notices count (a trigger on the table may raise notices of its own).
    token = f"{_TOLD} {uuid.uuid4().hex}: "
    sql = _PACED.format(
        statement=statement,
        told=token,
        batch=int(params["batch"]),
        run_ms=run_ms,
        pause=pause,
        tell_every_ms=TELL_EVERY_MS,
    )
    if sql.count("$paced$") != 2:  # a bound value can never end the block early (only numbers are bound here)
        raise ValueError("a value bound into a paced step holds the block's quote")
    # The statement is sent again on a new connection when the first one broke, and again after a conflict
    # (Database.run_noticed): the batches each sending told of were all committed. (Those a sending committed after
    # its last notice, and those a server process whose client broke away still runs, are not counted.)
    heard: list[list[str]] = []
    try:
        db.run_noticed(sql, heard)
    finally:
        sendings = [_last_told(notices, token) for notices in heard]
        if told is not None:
            told.extend(t.handled for t in sendings if t is not None)
    last = sendings[-1]
    if last is None:
        raise NoticesLost()
    handled = sum(t.handled for t in sendings if t is not None)
    return Paced(handled, last.more, all(t is not None and t.exact for t in sendings))


def _last_told(notices: list[str], told: str) -> Paced | None:
    """A sending's last notice: its count so far (not `exact`), or in all."""
    for notice in reversed(notices):
        if notice.startswith(told):
            handled, more, *said = notice.removeprefix(told).split()
            return Paced(int(handled), more == "1", said == ["in", "all"])
    return None
