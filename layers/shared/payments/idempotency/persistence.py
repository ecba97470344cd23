"""A PostgreSQL persistence layer for the Powertools idempotency utility.

Records live in the web app's existing `idempotency_keys` table (`key` is the primary key):
`status` is `pending` while in progress and `completed` when done, `request_hash` holds the
payload hash, `response_data` the stored response, and `expiry_timestamp` /
`in_progress_expiry_timestamp` (added by migration, Unix seconds / milliseconds on the Lambda's
clock, as in the DynamoDB layer) mark the rows this layer owns. Rows without an expiry were written
by the web app: they are never taken over, completed or deleted here.

Cost: claiming is one statement that either inserts (or takes over an expired record) or returns
the existing record, so a replay is one round trip and a first call two (claim, complete).
Every statement is safe to send twice (the claim carries its own id, stored in the table's `id`
column), which is what lets the connection reconnect and resend after a drop.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import warnings
import weakref
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.idempotency.config import IdempotencyConfig
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyPersistenceConnectionError,
    IdempotencyPersistenceConsistencyError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer, _IdempotencyKeyEncoder
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import STATUS_CONSTANTS, DataRecord

from payments.adapters.db import Database, Rows, bind, default_database, form_of, literal, quote_table
from payments.errors import DatabaseUnavailable

# A child of the functions' Powertools Logger (same service, same keys); importing payments.observability
# here would fix the metrics namespace before a test's environment is set.
logger = Logger(child=True)
_STD_LOGGER: logging.Logger = getattr(logger, "_logger", None) or logging.getLogger(logger.name)

_TO_DB = {STATUS_CONSTANTS["INPROGRESS"]: "pending", STATUS_CONSTANTS["COMPLETED"]: "completed"}
_FROM_DB = {db: pt for pt, db in _TO_DB.items()}
_STATUSES = tuple(STATUS_CONSTANTS.values())  # compared by equality, as Powertools compares (any value)
_EXPIRED = STATUS_CONSTANTS["EXPIRED"]
# A JMESPath expression that is one plain identifier selects that key of an object, and nothing of anything else.
_PLAIN_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
# Powertools hashes `json.dumps(value, cls=_IdempotencyKeyEncoder, sort_keys=True)`: the same encoder, built once.
_HASH_ENCODER = _IdempotencyKeyEncoder(sort_keys=True)
# What that encoder writes for exactly a str (ensure_ascii) or exactly an int, without building its iterator.
_ENCODE_TEXT = json.encoder.encode_basestring_ascii

# Columns every read returns, in this order (see _row_to_record).
_RECORD_COLUMNS = (
    "'exists' AS outcome, t.id::text AS id, t.status, t.expiry_timestamp, t.in_progress_expiry_timestamp,"
    " t.request_hash, COALESCE(t.response_text, t.response_data::text) AS response_data"
)


def _as_jsonb(text: str | None) -> str | None:
    """`text` when jsonb can hold it (the web app's column); None when it cannot: NaN or Infinity (not JSON), a
    NUL character (jsonb refuses \\u0000) or a lone surrogate (\\ud800 with no pair: not a character), no JSON at
    all, or JSON nested deeper than Python reads. The exact text is kept in response_text anyway."""
    if not text:
        return None

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        value = json.loads(text, parse_constant=refuse)
        # Either was written as an escape in the text (json.loads refuses a raw control character; a text of ours is
        # UTF-8, which holds no surrogate), and json.loads reads it into the value (a pair into its one character).
        return None if "\\u" in text and _unstorable(value) else text
    except (ValueError, RecursionError):  # not JSON, or nested too deep to read here: only the exact text is kept
        return None


_NOT_IN_JSONB = re.compile("[\x00\ud800-\udfff]")


def _unstorable(value: Any) -> bool:
    if isinstance(value, str):
        return _NOT_IN_JSONB.search(value) is not None
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unstorable(v) for v in value)
    return False


class _Record(DataRecord):
    """A record read from the table: Powertools' DataRecord, its expiry checked on the epoch clock directly."""

    @property
    def is_expired(self) -> bool:
        return bool(self.expiry_timestamp and int(time.time()) > self.expiry_timestamp)

    @property
    def status(self) -> str:
        """Powertools' status (read three times per replay), in one step: expired by the clock, else as stored."""
        if self.expiry_timestamp and int(time.time()) > self.expiry_timestamp:
            return _EXPIRED
        if self._status in _STATUSES:
            return self._status
        return super().status  # raises Powertools' IdempotencyInvalidStatusError


def _debugging() -> bool:
    """Whether a debug line would be written: asked of the logging.Logger under Powertools' Logger (which hands
    `isEnabledFor` on to it only after a failed attribute lookup, a microsecond a call)."""
    return bool(_STD_LOGGER.isEnabledFor(logging.DEBUG))


def _claim_id() -> str:
    """A random (version 4) UUID as text: `str(uuid.uuid4())` without building the UUID object."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _plain_field(expression: str | None) -> str | None:
    """The key a JMESPath expression selects when it is one plain identifier, else None."""
    return expression if expression and _PLAIN_FIELD.fullmatch(expression) else None


_LAYERS: weakref.WeakSet[PostgresPersistenceLayer] = weakref.WeakSet()


class PostgresPersistenceLayer(BasePersistenceLayer):
    """Idempotency records in PostgreSQL, for `@idempotent` and `@idempotent_function`."""

    def __init__(self, table_name: str = "idempotency_keys", database: Database | None = None) -> None:
        """
        Parameters
        ----------
        table_name:
            The table (optionally `schema.table`) with the `idempotency_keys` layout.
        database:
            The connection to use; by default the execution environment's (`DB_SECRET_ARN` or
            `DATABASE_URL`), opened on first use.
        """
        self._table = quote_table(table_name)
        super().__init__()
        self.table_name = table_name
        self._database = database
        # The id of each claim this environment holds, so completing or deleting touches only our own.
        _LAYERS.add(self)
        self._claims: dict[str, str] = {}
        self._lost: set[str] = set()  # keys whose claim another invocation took over before we completed
        self.last_claimed_key: str | None = None  # the key of the last record this store claimed (diagnostics)
        self._claims_lock = threading.Lock()
        self._sql = _Statements(self._table)
        # The payload the current call hashed last, with its hashes (see _get_hashed_idempotency_key).
        self._key_memo: tuple[Any, str, str | None] | None = None
        self._payload_memo: tuple[Any, str] | None = None
        # The key a plain-field key or payload expression selects (set by `configure`); None: ask JMESPath.
        self._key_field: str | None = None
        self._payload_field: str | None = None

    # -- the per-call work Powertools asks of every layer, without re-doing it ---------------------
    # Same results as the base class (records written before and after stay interchangeable): a key or payload
    # expression that is one plain field is read as `data.get(field)` (what JMESPath does), the hash encoder is
    # built once, and the hashes of the payload a call is working on are kept for that call's next step
    # (`save_inprogress`, then `save_success` or `delete_record`, get the same payload object).

    def configure(
        self, config: IdempotencyConfig, function_name: str | None = None, key_prefix: str | None = None
    ) -> None:
        first = not self.configured
        super().configure(config, function_name, key_prefix)
        if first:
            self._key_field = _plain_field(self.event_key_jmespath)
            self._payload_field = (
                _plain_field(config.payload_validation_jmespath) if self.payload_validation_enabled else None
            )

    def _get_hashed_idempotency_key(self, data: dict[str, Any]) -> str | None:
        memo = self._key_memo
        if memo is not None and memo[0] is data and memo[1] == self.function_name:
            return memo[2]
        field = self._key_field
        if field is None:
            key = super()._get_hashed_idempotency_key(data)
        else:
            value = data.get(field) if isinstance(data, dict) else None
            if self.is_missing_idempotency_key(data=value):
                return super()._get_hashed_idempotency_key(data)  # raises or warns, as configured
            key = f"{self.function_name}#{self._generate_hash(value)}"
        self._key_memo = (data, self.function_name, key)
        return key

    def _get_hashed_payload(self, data: dict[str, Any]) -> str:
        if not self.payload_validation_enabled:
            return ""
        memo = self._payload_memo
        if memo is not None and memo[0] is data:
            return memo[1]
        field = self._payload_field
        if field is None:
            hashed = super()._get_hashed_payload(data)
        else:
            hashed = self._generate_hash(data.get(field) if isinstance(data, dict) else None)
        self._payload_memo = (data, hashed)
        return hashed

    def _generate_hash(self, data: Any) -> str:
        kind = type(data)
        if kind is str:
            text = _ENCODE_TEXT(data)
        elif kind is int:
            text = int.__repr__(data)
        else:
            text = _HASH_ENCODER.encode(data)
        return self.hash_function(text.encode()).hexdigest()

    def _get_expiry_timestamp(self) -> int:
        return int(time.time()) + self.expires_after_seconds

    @classmethod
    def forget_all_claims(cls) -> None:
        """Drop every claim id any layer holds (SnapStart: a snapshot must not carry one into many environments)."""
        for layer in list(_LAYERS):
            with layer._claims_lock:
                layer._claims.clear()
                layer._lost.clear()

    @property
    def quoted_table(self) -> str:
        """The table as an SQL identifier (validated and quoted)."""
        return self._table

    @property
    def database(self) -> Database:
        if self._database is None:
            self._database = default_database()
        return self._database

    def save_inprogress(self, data: dict[str, Any], remaining_time_in_millis: int | None = None) -> None:
        """Powertools' steps for a new call (its key, an in-progress record expiring with the invocation, the local
        cache, the claim), on the epoch clock and without formatting a debug line nobody reads."""
        idempotency_key = self._get_hashed_idempotency_key(data=data)
        if idempotency_key is None:
            return None  # no key and not required: Powertools skips the store (it has warned)
        data_record = DataRecord(
            idempotency_key=idempotency_key,
            status=STATUS_CONSTANTS["INPROGRESS"],
            expiry_timestamp=self._get_expiry_timestamp(),
            payload_hash=self._get_hashed_payload(data=data),
        )
        # 0 is a time left too (Lambda about to end the invocation): only None means unknown.
        if remaining_time_in_millis is not None:
            data_record.in_progress_expiry_timestamp = int(time.time() * 1000 + remaining_time_in_millis)
        else:
            warnings.warn(
                "Couldn't determine the remaining time left. "
                "Did you call register_lambda_context on IdempotencyConfig?",
                stacklevel=2,
            )
        if _debugging():
            logger.debug("saving in progress record", extra={"idempotency_key": idempotency_key})
        if self._retrieve_from_cache(idempotency_key=idempotency_key):
            raise IdempotencyItemAlreadyExistsError
        self._put_record(data_record=data_record)

    # -- the four operations Powertools asks for ----------------------------------------------

    def _put_record(self, data_record: DataRecord) -> None:
        now = time.time()
        claim_id = _claim_id()
        sql = self._sql.render_claim(
            key=data_record.idempotency_key,
            claim=claim_id,
            expiry=data_record.expiry_timestamp,
            in_progress_expiry=data_record.in_progress_expiry_timestamp,
            payload_hash=data_record.payload_hash or None,
            now=now,
        )
        rows = self._send(sql)
        if rows and rows[0][0] == "claimed":
            self._remember_claim(data_record.idempotency_key, claim_id)
            self.last_claimed_key = data_record.idempotency_key
            return
        existing = self._row_to_record(data_record.idempotency_key, rows[0][1:]) if rows else None
        if existing is not None and rows[0][1] == claim_id:
            # Our own claim, committed by a first attempt whose answer the dropped connection lost.
            self._remember_claim(data_record.idempotency_key, claim_id)
            return
        if existing is None or self._claimable(existing, now):
            # The statement's snapshot predates the row that beat us (a concurrent claim) or shows
            # an older version of it: let Powertools read the current record.
            raise IdempotencyItemAlreadyExistsError()
        if _debugging():
            logger.debug("idempotency key already claimed", extra={"idempotency_key": data_record.idempotency_key})
        self._validate_payload(data_payload=data_record, stored_data_record=existing)
        self._save_to_cache(data_record=existing)
        raise IdempotencyItemAlreadyExistsError(old_data_record=existing)

    def _get_record(self, idempotency_key: str) -> DataRecord:
        rows = self._run(self._sql.get, key=idempotency_key)
        if not rows:
            raise IdempotencyItemNotFoundError
        record = self._row_to_record(idempotency_key, rows[0][1:])
        if record is None:  # pragma: no cover - _row_to_record raises for foreign rows
            raise IdempotencyItemNotFoundError
        return record

    def _update_record(self, data_record: DataRecord) -> None:
        key = data_record.idempotency_key
        sql = self._sql.render_complete(
            key=key,
            claim=self._claim_of(key),
            text=data_record.response_data or None,
            data=_as_jsonb(data_record.response_data),
            expiry=data_record.expiry_timestamp,
            payload_hash=data_record.payload_hash or None,
        )
        rows = self._send(sql)
        self._forget_claim(key)
        if not rows:
            # Only possible when this invocation outlived its in-progress expiry and another took over: the
            # table holds the other's record, so this environment must not cache its own (see _save_to_cache).
            logger.warning("idempotency record was taken over before completion", extra={"idempotency_key": key})
            with self._claims_lock:
                self._lost.add(key)

    def _save_to_cache(self, data_record: DataRecord) -> None:
        """Powertools caches a completed record right after `_update_record`; not one whose claim was taken
        over (the table holds the other invocation's record: the cache must never disagree with it)."""
        if not self.use_local_cache and not self._lost:
            return  # no cache, and no lost claim to forget
        with self._claims_lock:
            lost = data_record.idempotency_key in self._lost
            self._lost.discard(data_record.idempotency_key)
        if lost:
            self._delete_from_cache(idempotency_key=data_record.idempotency_key)
            return
        super()._save_to_cache(data_record)

    def delete_record(self, data: dict[str, Any], exception: Exception) -> None:
        """Powertools clears the in-progress record when the function raised; not when the error says an
        irreversible action may have happened without its outcome stored (`keep_in_progress`): then the
        record stays until its in-progress expiry, and a retry is answered 'in progress', never run."""
        if getattr(exception, "keep_in_progress", False):
            logger.warning("idempotency record kept in progress", extra={"reason": type(exception).__name__})
            return
        super().delete_record(data, exception)

    def _delete_record(self, data_record: DataRecord) -> None:
        key = data_record.idempotency_key
        self._run(self._sql.delete, key=key, claim=self._claim_of(key))
        self._forget_claim(key)

    def record_status(self, idempotency_key: str) -> str | None:
        """The table's own status of a record (`pending`, `completed`), or None: for diagnostics."""
        rows = self._run(self._sql.status, key=idempotency_key)
        return rows[0][0] if rows else None

    # -- helpers ------------------------------------------------------------------------------

    def _run(self, sql: str, **params: Any) -> Rows:
        return self._send(bind(sql, **params))

    def _send(self, sql: str) -> Rows:
        try:
            return self.database.run(sql)
        except DatabaseUnavailable as exc:
            raise IdempotencyPersistenceConnectionError("idempotency store unavailable", exc) from exc

    def _row_to_record(self, key: str, row: list[Any]) -> DataRecord | None:
        claim_id, status, expiry, in_progress_expiry, payload_hash, response_data = row
        if expiry is None or status not in _FROM_DB:
            raise IdempotencyPersistenceConsistencyError(
                "idempotency key is held by a record this layer did not write", key
            )
        return _Record(
            idempotency_key=key,
            status=_FROM_DB[status],
            expiry_timestamp=int(expiry),
            in_progress_expiry_timestamp=int(in_progress_expiry) if in_progress_expiry is not None else None,
            response_data=response_data or "",
            payload_hash=payload_hash or "",
        )

    @staticmethod
    def _claimable(record: DataRecord, now: float) -> bool:
        if record.expiry_timestamp is not None and record.expiry_timestamp < int(now):
            return True
        return (
            record.status == STATUS_CONSTANTS["INPROGRESS"]
            and record.in_progress_expiry_timestamp is not None
            and record.in_progress_expiry_timestamp < int(now * 1000)
        )

    def _remember_claim(self, key: str, claim_id: str) -> None:
        with self._claims_lock:
            self._claims[key] = claim_id

    def _claim_of(self, key: str) -> str | None:
        with self._claims_lock:
            return self._claims.get(key)

    def _forget_claim(self, key: str) -> None:
        with self._claims_lock:
            self._claims.pop(key, None)


class _Statements:
    """The layer's SQL, rendered once per table."""

    def __init__(self, table: str) -> None:
        # Read the key; insert when it is free, or take over a record of ours that expired (or whose
        # in-progress holder ran out of time); otherwise hand back the record that is there. One
        # statement, one round trip. A replay only reads: the INSERT is not even attempted, so no
        # row lock and no WAL. ON CONFLICT re-checks against the latest version, so a concurrent
        # claim committed after this statement's snapshot still wins exactly once.
        claimable = (
            "{r}.expiry_timestamp IS NOT NULL AND ({r}.expiry_timestamp < :now OR ({r}.status = 'pending'"
            " AND {r}.in_progress_expiry_timestamp IS NOT NULL AND {r}.in_progress_expiry_timestamp < :now_ms))"
        )
        self.claim = f"""
WITH existing AS (
    SELECT {_RECORD_COLUMNS}, {claimable.format(r="t")} AS claimable FROM {table} t WHERE t.key = :key
), claimed AS (
    INSERT INTO {table} AS t (key, id, status, expiry_timestamp, in_progress_expiry_timestamp,
                              request_hash, response_data, payment_id, created_at, updated_at)
    SELECT :key, :claim::uuid, 'pending', :expiry, :in_progress_expiry, :hash, NULL, NULL, now(), now()
     WHERE NOT EXISTS (SELECT 1 FROM existing WHERE NOT claimable)
    ON CONFLICT (key) DO UPDATE SET
        id = EXCLUDED.id, status = 'pending', expiry_timestamp = EXCLUDED.expiry_timestamp,
        in_progress_expiry_timestamp = EXCLUDED.in_progress_expiry_timestamp,
        request_hash = EXCLUDED.request_hash, response_data = NULL, response_text = NULL, payment_id = NULL,
        created_at = now(), updated_at = now()
    WHERE {claimable.format(r="t")}
    RETURNING 1
)
SELECT 'claimed', NULL, NULL, NULL, NULL, NULL, NULL FROM claimed
UNION ALL
SELECT outcome, id, status, expiry_timestamp, in_progress_expiry_timestamp, request_hash, response_data
  FROM existing WHERE NOT EXISTS (SELECT 1 FROM claimed)"""
        self._claim_form = form_of(self.claim)
        self.get = f"SELECT {_RECORD_COLUMNS} FROM {table} t WHERE t.key = :key"
        self.status = f"SELECT status FROM {table} WHERE key = :key"
        # Completion keeps the payload hash (validation on replay depends on it).
        self.complete = f"""
UPDATE {table} SET status = 'completed', response_text = :text, response_data = :data::jsonb,
       expiry_timestamp = :expiry,
       in_progress_expiry_timestamp = NULL, request_hash = COALESCE(:hash, request_hash), updated_at = now()
 WHERE key = :key AND expiry_timestamp IS NOT NULL AND (id = :claim::uuid OR :claim::uuid IS NULL)
RETURNING 1"""
        self._complete_form = form_of(self.complete)
        # Only our own in-progress claim: never a completed record, never the web app's rows.
        self.delete = f"""
DELETE FROM {table}
 WHERE key = :key AND status = 'pending' AND expiry_timestamp IS NOT NULL
   AND (id = :claim::uuid OR :claim::uuid IS NULL)"""

    # The two statements of every first call, rendered straight into their formats: the text `bind` gives for the
    # same values (tests/unit/test_fast_paths.py), without its per-name lookups.

    def render_claim(
        self, *, key: str, claim: str, expiry: Any, in_progress_expiry: Any, payload_hash: str | None, now: float
    ) -> str:
        """bind(self.claim, ...), with `now` the epoch seconds the statement compares (as `now` and `now_ms`)."""
        return self._claim_form % {
            "key": literal(key),
            "claim": literal(claim),
            "expiry": literal(expiry),
            "in_progress_expiry": literal(in_progress_expiry),
            "hash": literal(payload_hash),
            "now": f"({int(now)})",
            "now_ms": f"({int(now * 1000)})",
        }

    def render_complete(
        self,
        *,
        key: str,
        claim: str | None,
        text: str | None,
        data: str | None,
        expiry: Any,
        payload_hash: str | None,
    ) -> str:
        """bind(self.complete, ...)."""
        return self._complete_form % {
            "key": literal(key),
            "claim": literal(claim),
            "text": literal(text),
            "data": literal(data),
            "expiry": literal(expiry),
            "hash": literal(payload_hash),
        }
