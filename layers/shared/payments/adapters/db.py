"""PostgreSQL access for the Lambdas (pg8000), the only module that talks to the driver.

One connection per execution environment, opened lazily and reused across warm invocations.
Statements go over the simple query protocol with values rendered by `literal()` as escape strings and
parenthesised numbers, whose meaning no session setting can change: one round trip per statement
and no prepared statements, so nothing lives in the session outside a transaction and RDS Proxy
or a transaction-mode pooler (Supabase's) can hand the connection around between statements.

Connecting: a deployed function (a Secrets Manager secret) verifies the server (`verify-full`, against the
Amazon RDS bundle shipped in the layer unless given a CA), and `GuardedConnection` answers a request for the
password in cleartext or as MD5 only over such a verified connection.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from uuid import UUID

import pg8000.native
from pg8000 import converters
from pg8000.exceptions import DatabaseError, InterfaceError

from payments import deadline
from payments.adapters.secrets import error_code, read_secret
from payments.domain.money import Currency, Money
from payments.errors import ConfigurationError, DatabaseUnavailable, InvalidRequest, PaymentError
from payments.records import Record
from payments.settings import DatabaseSettings, SslMode, database_settings

RDS_CA_BUNDLE = Path(os.path.abspath(__file__)).parent.parent / "certs" / "rds-ca-bundle.pem"  # no syscall
"""Amazon RDS's certificate authorities and RDS Proxy's roots, shipped in the layer: verify-full's default CAs."""
SYSTEM_CAS = "system"
"""`sslrootcert=system` / `DB_SSLROOTCERT=system`: the operating system's trust store (as libpq 16 reads it)."""

# SQLSTATEs after which the session is gone: the connection is discarded.
_SESSION_GONE = ("57P01", "57P02", "57P03", "08000", "08003", "08006")
# A write refused by a server that is read-only (25006): after a failover, a connection kept from before may be one to
# the demoted writer or a standby, for as long as it lives. Nothing was written; the connection is dropped like a
# broken one, so that the statement (or the next request) connects anew, to the server the name now resolves to.
_READ_ONLY_SERVER = "25006"
_AUTH_FAILED = ("28P01", "28000")
# Serialization failure and deadlock: the server rolled the statement (or transaction) back, so
# running it again is always safe. Retried a few times with jittered backoff.
RETRYABLE_CONFLICTS = ("40001", "40P01")
# Under SERIALIZABLE, a hot row (a user's rate-limit window, a payment) can lose several times in a
# row: ten attempts, backoff capped at 200 ms, about 1.2 s at the very worst.
CONFLICT_ATTEMPTS = 10
# What a transaction's statements leave of the invocation near its end (Database._begin): for the caller's fallback and
# the answer. The shortest lock wait and statement time a transaction is then given, in milliseconds.
ROOM_SECONDS = 0.5
_SHORTEST_MS = 50
# The shortest wait on the client's side for a connect near the end; with less left, no connect.
_SHORTEST_WAIT_SECONDS = 0.05
# The shortest wait for a statement's answer: longer than the least time a statement is given on the server (a lock
# wait of _SHORTEST_MS and as much again, `_limits`), by a round trip's margin, so that the server's own limit (55P03,
# 57014: the connection intact) always ends a slow statement before the client gives up on it (the connection broken).
_SHORTEST_ANSWER_WAIT_SECONDS = 2 * _SHORTEST_MS / 1000 + 0.1

Rows = list[list[Any]]


_PASSING_CLASSES = ("08", "53", "55", "57", "58")


def _client_wait(seconds: float) -> float | None:
    """How long the client may wait for the server (`seconds`, a connect's or a statement's answer's): less near the
    invocation's end, ending halfway through the room left for the caller's fallback (ROOM_SECONDS: a statement's
    own limits end it earlier, on the server); None when not even the shortest wait is left."""
    left = deadline.until_the_end()
    if left is None or left - ROOM_SECONDS > seconds:
        return seconds
    allowed = left - ROOM_SECONDS / 2
    return min(seconds, allowed) if allowed >= _SHORTEST_WAIT_SECONDS else None


class QueryError(PaymentError):
    """The database rejected a statement (constraint, syntax, ...). `sqlstate` says which."""

    code = "query_error"

    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        # A conflict that outlasted its retries, a statement cancelled by its timeout, or a lock not granted within a
        # transaction's lock timeout (another session holds it: the web app's transaction left open): try again later.
        self.retryable = sqlstate in (*RETRYABLE_CONFLICTS, "57014", "55P03")

    @property
    def refused_for_good(self) -> bool:
        """The statement was refused for a reason that will not pass by itself (a constraint, a trigger, bad data, a
        bug in the statement): not a conflict or a timeout (`retryable`), nor a SQLSTATE class of failures that
        pass: connection (08), resources (53), an object in use or a lock timeout (55), an operator's
        intervention (57), a system error (58)."""
        return not self.retryable and (self.sqlstate or "")[:2] not in _PASSING_CLASSES

    @property
    def bad_data(self) -> bool:
        """The values were refused (class 22: a value out of range, malformed; class 23: a constraint; P0: a trigger's
        own refusal, RAISE): the same values sent again are refused again. Not a permission, a missing table or
        column, a read-only server after a failover (42, 25: a configuration or an outage of ours, fixed without the
        data changing)."""
        return (self.sqlstate or "")[:2] in ("22", "23", "P0")


def stored_money(amount: Any, currency: Any = "ILS") -> Money:
    """A money column as the database holds it. One no Money can be (numeric holds 'NaN'; a column of the web app's
    may hold more decimals) is bad data of ours, never the caller's bad request: a QueryError refused for good
    (SQLSTATE 22000), which a caller treats as the database refusing a statement (a callback is kept and alarmed,
    a request answered "not yet")."""
    try:
        return Money.of(Decimal(amount), Currency(currency))
    except (InvalidRequest, ArithmeticError, ValueError):
        raise QueryError("a stored amount is not an amount of money (NaN, or more than 2 decimals)", "22000") from None


class ConnectionParams(Record):
    """Everything needed to open a connection. The password never shows in a repr.

    `ssl_root_cert` is the PEM file of the CAs trusted under verify-full (`system`: the OS's store);
    None means the Amazon RDS bundle shipped in the layer (`RDS_CA_BUNDLE`).
    """

    _hidden = frozenset({"password"})
    user: str
    database: str
    password: str | None = None
    host: str | None = "localhost"
    port: int = 5432
    unix_sock: str | None = None
    ssl_mode: SslMode = "disable"
    ssl_root_cert: str | None = None


def parse_database_url(url: str, ssl_mode: SslMode | None = None, ssl_root_cert: str | None = None) -> ConnectionParams:
    """`postgresql://user:pass@host:port/db?sslmode=verify-full&sslrootcert=/ca.pem`; `?host=/dir`: a Unix socket.

    `ssl_mode` and `ssl_root_cert` (the settings) win over the URL's `sslmode` and `sslrootcert`.
    """
    try:
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        port = parts.port or int(query.get("port", 5432))
    except ValueError:
        # Never the parser's own words: for a password holding a raw `#`, `/` or `?` they quote part of it (as the
        # "port"). From None: not chained either.
        raise ConfigurationError(
            "DATABASE_URL is malformed (percent-encode the user name and password, e.g. # as %23)"
        ) from None
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigurationError("DATABASE_URL must start with postgresql://")
    socket_dir = query.get("host") if query.get("host", "").startswith("/") else None
    host = parts.hostname or "localhost"
    local = bool(socket_dir) or host in ("localhost", "127.0.0.1", "::1")
    # No sslmode: a Unix socket or this machine is plain (nothing to intercept); any other host is verified,
    # never a silent plain connection (libpq would try TLS first; pg8000 cannot fall back).
    mode = ssl_mode or query.get("sslmode") or ("disable" if local else "verify-full")
    if mode == "prefer":  # libpq's default; pg8000 cannot fall back, so take the safe reading
        mode = "disable" if socket_dir else "require"
    if mode not in ("disable", "require", "verify-full"):
        raise ConfigurationError("sslmode must be disable, require or verify-full")
    if socket_dir and mode != "disable":
        raise ConfigurationError("PostgreSQL has no TLS on a Unix socket: use sslmode=disable there")
    return ConnectionParams(
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password) if parts.password else None,
        host=None if socket_dir else host,
        port=port,
        database=unquote(parts.path.lstrip("/")) or "postgres",
        unix_sock=f"{socket_dir}/.s.PGSQL.{port}" if socket_dir else None,
        ssl_mode=mode,  # type: ignore[arg-type]
        ssl_root_cert=ssl_root_cert or query.get("sslrootcert") or None,
    )


def params_from_rds_secret(
    secret: dict[str, Any], ssl_mode: SslMode | None = None, ssl_root_cert: str | None = None
) -> ConnectionParams:
    """A Secrets Manager secret in the RDS format: username, password, host, port, dbname.

    A deployed function: verify-full unless told otherwise, against the shipped RDS bundle unless given a CA.
    """
    if secret.get("placeholder"):
        raise ConfigurationError(
            "the database secret still holds the stack's placeholder: put the RDS-format login of a member of"
            " payments_backend in it (docs/deploy.md)"
        )
    try:
        return ConnectionParams(
            user=str(secret["username"]),
            password=str(secret["password"]),
            host=str(secret["host"]),
            port=int(secret.get("port", 5432)),
            database=str(secret.get("dbname") or secret.get("dbInstanceIdentifier") or "postgres"),
            ssl_mode=ssl_mode or "verify-full",
            ssl_root_cert=ssl_root_cert,
        )
    except KeyError as exc:
        raise ConfigurationError(f"database secret is not in the RDS format (missing {exc})") from None
    except (TypeError, ValueError):  # their text would repeat the value
        raise ConfigurationError("database secret is not in the RDS format (port is not a number)") from None


ParamsProvider = Callable[[bool], ConnectionParams]
"""Returns connection parameters; called with True to bypass any cache (after an auth failure)."""


class SecretParams:
    """Connection parameters from the RDS-format secret (a `ParamsProvider`), and `pending()`: those of the version a
    rotation is putting in place (AWSPENDING), None when there is none. Secrets Manager's single-user rotation changes
    the password (setSecret) before it makes the new version current (finishSecret): in between, only the pending
    password logs in."""

    def __init__(self, arn: str, settings: DatabaseSettings) -> None:
        self._arn = arn
        self._settings = settings

    def __call__(self, refresh: bool) -> ConnectionParams:
        return self._read(refresh, None)

    def pending(self) -> ConnectionParams | None:
        try:
            return self._read(True, "AWSPENDING")
        except DatabaseUnavailable as exc:
            if error_code(exc) == "ResourceNotFoundException":  # no version of that stage: no rotation under way
                return None
            raise

    def _read(self, refresh: bool, stage: str | None) -> ConnectionParams:
        secret = read_secret(
            self._arn,
            what="database",
            unavailable=DatabaseUnavailable,
            max_age=self._settings.secret_max_age_seconds,
            refresh=refresh,
            stage=stage,
        )
        return params_from_rds_secret(secret, self._settings.ssl_mode, self._settings.ssl_root_cert)


def params_provider(settings: DatabaseSettings) -> ParamsProvider:
    """The production provider: the Secrets Manager secret when configured, else DATABASE_URL."""
    if settings.secret_arn:
        return SecretParams(settings.secret_arn, settings)
    if settings.url:
        parsed = parse_database_url(settings.url, settings.ssl_mode, settings.ssl_root_cert)
        return lambda refresh: parsed
    raise ConfigurationError("set DB_SECRET_ARN or DATABASE_URL")


# What bind() reads in a statement, left to right: the parts where a `:name` is NOT a placeholder (string
# literals of every kind, quoted identifiers, comments, `::type` casts), then a placeholder.
_SQL_TOKENS = re.compile(
    r"""
      (?P<skip>
          (?<!\w)[Ee]'(?:[^'\\]|\\.|'')*'  # escape string: backslash escapes and doubled quotes
        | '(?:[^']|'')*'                     # standard string
        | "(?:[^"]|"")*"                     # quoted identifier
        | (?P<dollar>\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$).*?(?P=dollar)   # dollar-quoted string
        | --[^\n]*                          # line comment
        | /\*.*?\*/                          # block comment
        | ::                                 # a cast, never a placeholder
      )
    | (?<![\w:]):(?P<name>[a-z_][a-z0-9_]*)
    """,
    re.VERBOSE | re.DOTALL,
)


def _text_literal(value: str) -> str:
    if "\x00" in value:
        raise ValueError("a NUL character cannot be sent to PostgreSQL")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def literal(value: Any) -> str:
    """An SQL literal whose meaning cannot depend on the session's settings.

    Only the types the project binds: None, bool, int, Decimal, UUID, str and timezone-aware datetime. Text is
    an escape string (`E'...'`, backslashes and quotes doubled): read the same whether
    `standard_conforming_strings` is on or off. Numbers are parenthesised, so a negative one next to a
    minus sign can never become a `--` comment. NUL cannot be sent (it would end the query early).
    """
    render = _FAST_LITERALS.get(type(value))
    if render is not None:
        return render(value)
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return f"({value})"
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("a non-finite Decimal has no SQL literal here")
        return f"({value})"
    if isinstance(value, float):
        raise TypeError("floats are never bound: money and counts are Decimal or int")
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise ValueError("a naive datetime is ambiguous: bind an aware one (UTC)")
        return f"(E'{value.isoformat()}'::timestamptz)"
    if isinstance(value, UUID):
        value = str(value)
    if isinstance(value, str):
        return _text_literal(value)
    raise TypeError(f"no SQL literal for {type(value).__name__}")


@functools.lru_cache(maxsize=512)
def _template(sql: str) -> tuple[str, tuple[str, ...]]:
    """The statement split once (statements are constants): a %-format of its fixed text with a `%(name)s` slot
    per placeholder, and the names it binds (each once)."""
    parts: list[str] = []
    names: dict[str, None] = {}
    start = 0
    for match in _SQL_TOKENS.finditer(sql):
        name = match.group("name")
        if name is None:
            continue
        parts.append(sql[start : match.start()].replace("%", "%%"))
        parts.append(f"%({name})s")
        names[name] = None
        start = match.end()
    parts.append(sql[start:].replace("%", "%%"))
    return "".join(parts), tuple(names)


# The exact types bound on every request, rendered by `literal` without its checks (subclasses and every other
# type go through them: a bool is an int, a str subclass may override what is called here).
_FAST_LITERALS: dict[type, Callable[[Any], str]] = {
    str: _text_literal,
    int: lambda value: f"({value})",
    type(None): lambda value: "NULL",
    UUID: lambda value: f"E'{value}'",
}


def form_of(sql: str) -> str:
    """`sql` as a %-format with a `%(name)s` slot per placeholder, to fill by name with `literal`s: what `bind`
    renders, for a caller that renders one constant statement on every request and knows its names."""
    return _template(sql)[0]


def bind(sql: str, **params: Any) -> str:
    """Render `:name` placeholders as SQL literals (`literal`). Never inside a string literal, a quoted identifier,
    a comment or a `::type` cast."""
    form, names = _template(sql)
    if not names:
        return sql
    rendered: dict[str, str] = {}
    for name in names:
        try:
            rendered[name] = literal(params[name])
        except KeyError:
            raise KeyError(f"no value for :{name}") from None
    return form % rendered


_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")


def quote_table(table_name: str) -> str:
    """`schema.table` or `table`, validated and quoted as an SQL identifier."""
    if not _TABLE_NAME.match(table_name):
        raise ValueError(f"invalid table name: {table_name!r}")
    return ".".join(pg8000.native.identifier(part) for part in table_name.split("."))


def _ssl_context(params: ConnectionParams) -> ssl.SSLContext | bool:
    """False for plain TCP; else a TLS context: `require` encrypts only, `verify-full` checks chain and host name."""
    if params.ssl_mode == "disable":
        return False  # pg8000 reads None as "try TLS, fall back to plain": disable means plain
    if params.ssl_mode == "require":  # encrypted, not authenticated (libpq's meaning of `require`)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cafile = params.ssl_root_cert or str(RDS_CA_BUNDLE)
    try:
        context = ssl.create_default_context(cafile=None if cafile == SYSTEM_CAS else cafile)  # None: the OS's
    except (OSError, ValueError) as exc:  # missing or unreadable file, or no certificate in it
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or "no certificates"
        raise ConfigurationError(f"cannot load the database CA bundle {cafile}: {reason}") from None
    # CERT_REQUIRED and check_hostname come with the default context. Python 3.13's extra RFC 5280 strictness
    # is dropped so that certificates libpq accepts (the reference for RDS and Supabase) are accepted here too.
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


def connect_kwargs(params: ConnectionParams) -> dict[str, Any]:
    """pg8000 `Connection(user, **connect_kwargs(params))` arguments for these parameters."""
    return {
        "password": params.password,
        "host": params.host if params.unix_sock is None else None,
        "port": params.port,
        "database": params.database,
        "unix_sock": params.unix_sock,
        "ssl_context": _ssl_context(params),
    }


class InsecureAuthentication(DatabaseUnavailable):
    """The server asked for the password in cleartext or as MD5 over a connection not TLS-verified: refused."""

    code = "database_insecure_authentication"


_AUTH_CLEARTEXT, _AUTH_MD5, _AUTH_SASL = 3, 5, 10


def _tls_verified(sock: Any) -> bool:
    """TLS whose certificate chain and host name were checked (verify-full): nobody else can read it."""
    return (
        isinstance(sock, ssl.SSLSocket)
        and sock.context.verify_mode == ssl.CERT_REQUIRED
        and sock.context.check_hostname
    )


class GuardedConnection(pg8000.native.Connection):
    """pg8000's connection, except that it never hands out the password where an impostor could read it.

    pg8000 answers any authentication request: cleartext (3) with the password itself, MD5 (5) with a salted hash
    that can be guessed offline and relayed. Both are answered here only over verify-full TLS, where the server
    is known; otherwise the connection fails before a byte of it is sent. SCRAM-SHA-256 (10, what RDS and Supabase
    ask for) never sends the password, so it is answered on any connection (with TLS channel binding when offered).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._descriptions: dict[tuple[bytes, str], tuple[Any, Any]] = {}
        super().__init__(*args, **kwargs)
        # A timestamp Python cannot hold ('infinity', '-infinity', a year past 9999: the web app's columns may hold
        # them) is read as the latest or earliest datetime, never as the text pg8000 hands over in its place (code
        # formatting or comparing it would fail: a 500 for a row, not for a request).
        self.register_in_adapter(_TIMESTAMPTZ_OID, _bounded(converters.timestamptz_in, aware=True))
        self.register_in_adapter(_TIMESTAMP_OID, _bounded(converters.timestamp_in, aware=False))

    def close(self) -> None:
        """pg8000's close, and its buffered socket closed too: when its goodbye cannot be sent (the server refused the
        login, or went away), pg8000 drops the buffered socket with the goodbye still in it, and the collector's flush
        of it later printed a BrokenPipeError's traceback."""
        buffered = getattr(self, "_sock", None)
        try:
            super().close()
        finally:
            if buffered is not None:
                with contextlib.suppress(Exception):
                    buffered.close()

    def register_in_adapter(self, oid: int, in_func: Callable[[str], Any]) -> None:
        super().register_in_adapter(oid, in_func)
        self._descriptions.clear()  # a kept description's readers may be the replaced ones

    def handle_ROW_DESCRIPTION(self, data: bytes, context: Any) -> None:
        """pg8000's reading of a statement's columns, kept for the next statement that gets the same description: the
        project sends the same few statements again and again, and reading a description anew (a dict per column, its
        name decoded, its reader looked up) cost about as much Python as the rest of a replay's statement. The kept
        result is the same (the same bytes, the same encoding, the same readers: registering one drops what is kept)
        and is only read."""
        key = (data, self._client_encoding)
        known = self._descriptions.get(key)
        if known is None:
            super().handle_ROW_DESCRIPTION(data, context)
            if len(self._descriptions) >= _DESCRIPTIONS_KEPT:
                self._descriptions.clear()  # ad hoc statements (an operator's session): start over
            self._descriptions[key] = (context.columns, context.input_funcs)
            return
        context.columns, context.input_funcs = known
        if context.rows is None:
            context.rows = []

    def handle_AUTHENTICATION_REQUEST(self, data: bytes, context: Any) -> None:
        method = int.from_bytes(data[:4], "big")
        if method in (_AUTH_CLEARTEXT, _AUTH_MD5) and not _tls_verified(self._usock):
            asked = "in cleartext" if method == _AUTH_CLEARTEXT else "as an MD5 hash"
            raise InsecureAuthentication(
                f"the database server asked for the password {asked} over a connection that is not TLS-verified: "
                "refused, nothing was sent (connect with sslmode=verify-full, or use scram-sha-256 on the server)"
            )
        if method in (_AUTH_CLEARTEXT, _AUTH_MD5, _AUTH_SASL) and self.password is None:
            raise DatabaseUnavailable("the database server asks for a password and none is configured")
        super().handle_AUTHENTICATION_REQUEST(data, context)


_DESCRIPTIONS_KEPT = 256  # distinct row descriptions a connection keeps (the project's statements have a few dozen)
_TIMESTAMP_OID = 1114
_TIMESTAMPTZ_OID = 1184


def _bounded(read: Callable[[str], Any], *, aware: bool) -> Callable[[str], Any]:
    """pg8000's reading of a timestamp, with what it leaves as text (infinities, years past 9999) as a datetime."""
    latest, earliest = datetime.max, datetime.min
    if aware:
        latest, earliest = latest.replace(tzinfo=UTC), earliest.replace(tzinfo=UTC)

    def bounded(data: str) -> Any:
        value = read(data)
        if isinstance(value, str):
            return earliest if value.startswith("-") or value.endswith(" BC") else latest
        return value

    return bounded


def _server_error(exc: BaseException) -> DatabaseError | None:
    """The server's own error (a DatabaseError carrying an SQLSTATE) in `exc`'s chain, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DatabaseError) and _sqlstate(current) is not None:
            return current
        current = current.__cause__ or current.__context__
    return None


def _sqlstate(exc: DatabaseError) -> str | None:
    detail = exc.args[0] if exc.args else None
    return detail.get("C") if isinstance(detail, dict) else None


def _notice_text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _message(exc: DatabaseError) -> str:
    detail = exc.args[0] if exc.args else None
    return str(detail.get("M", "database error")) if isinstance(detail, dict) else "database error"


Connect = Callable[..., pg8000.native.Connection]


_LIVE: weakref.WeakSet[Database] = weakref.WeakSet()


class Database:
    """A lazily opened, reused pg8000 connection with reconnect-once semantics.

    `run()` is for single autocommit statements that are safe to send twice: when the
    connection turns out to be dropped it reconnects and sends the statement once more.
    `transaction()` retries only its BEGIN; a break inside a transaction is an error
    (the server rolls the transaction back, so nothing partial is left).
    """

    def __init__(
        self,
        params: ParamsProvider,
        *,
        connect_timeout: float = 5.0,
        query_timeout: float = 10.0,
        connect: Connect = GuardedConnection,
    ) -> None:
        self._params = params
        self._connect_timeout = connect_timeout
        self._query_timeout = query_timeout
        # A transaction's statements wait for a lock at most a quarter of the query timeout, and run at most a second
        # less than it (`SET LOCAL`, with BEGIN in one round trip; nothing outlives the transaction, as poolers
        # need): a lock another session holds (the web app's transaction left open) or a slow statement is then
        # the server's own error (55P03, 57014: "not yet", the connection intact, the caller's fallbacks able to
        # run on it), never the client's socket timing out, which leaves the connection broken and the time gone.
        lock_ms = max(100, int(query_timeout * 250))
        statement_ms = max(lock_ms + 100, int(query_timeout * 1000) - 1000)
        self._lock_ms, self._statement_ms = lock_ms, statement_ms
        self._connect_fn = connect
        self._conn: pg8000.native.Connection | None = None
        self._waits = query_timeout  # the open connection's socket timeout (`_client_wait`)
        self._lock = threading.RLock()  # one invocation at a time; guards against accidental sharing
        self.connects = 0
        # Statements `run` sent again on a new connection after the first broke (the first sending's answer lost, or
        # never sent), and transactions `atomic` ran again so: it may have run twice, and a caller counting what it did
        # knows the count may miss the first's.
        self.resent = 0
        _LIVE.add(self)

    @property
    def query_timeout(self) -> float:
        """Seconds a statement's answer is waited for (the connection is then taken as broken)."""
        return self._query_timeout

    @property
    def statement_timeout_ms(self) -> int:
        """A transaction's statement_timeout far from the invocation's end (less near it: `_limits`)."""
        return self._statement_ms

    @classmethod
    def close_all(cls) -> int:
        """Close every Database's connection (each reconnects on its next statement); how many were open.
        The SnapStart hooks call it: a connection must never be shared by environments restored from one
        snapshot."""
        closed = 0
        for db in list(_LIVE):
            if db._conn is not None:
                closed += 1
            db.close()
        return closed

    @classmethod
    def from_settings(cls, settings: DatabaseSettings | None = None, *, connect: Connect | None = None) -> Database:
        settings = settings or database_settings()
        return cls(
            params_provider(settings),
            connect_timeout=settings.connect_timeout_seconds,
            query_timeout=settings.query_timeout_seconds,
            connect=connect or GuardedConnection,
        )

    # -- connection lifecycle ---------------------------------------------------------------

    def _open(self) -> pg8000.native.Connection:
        try:
            return self._connect()
        except (DatabaseUnavailable, ConfigurationError) as exc:
            _count_connect_failure(exc)
            raise

    def _connect(self) -> pg8000.native.Connection:
        refresh = False
        refused: DatabaseUnavailable | None = None  # the login refused with the current version
        for attempt in (1, 2, 3):
            if attempt < 3:
                params = self._params(refresh)
            else:
                # Refused twice with the current version: a rotation may have changed the password before making the
                # new version current. Its pending version, when there is one, is tried once.
                pending = getattr(self._params, "pending", None)
                found = pending() if pending is not None else None
                if found is None:
                    assert refused is not None
                    raise refused
                params = found
            wait = _client_wait(self._connect_timeout)
            if wait is None:
                # Near the end (Hyp answered, its answer still to be stored): a connect may not outlive the invocation,
                # or the caller's fallback naming Hyp's transaction never runs.
                raise DatabaseUnavailable("no time left in the invocation to connect to the database")
            try:
                conn = self._connect_fn(
                    params.user, **connect_kwargs(params), timeout=wait, application_name="payments"
                )
            except ssl.SSLCertVerificationError as exc:
                raise DatabaseUnavailable(
                    f"the database's TLS certificate was refused ({exc.verify_message}); check the host name and "
                    "the CA bundle (DB_SSLROOTCERT / sslrootcert)"
                ) from exc
            except (DatabaseError, InterfaceError, OSError) as exc:
                # pg8000 may raise InterfaceError("network error") from its close() while handling the server's
                # FATAL: the server's answer is then further down the chain, and decides as if raised itself.
                server = _server_error(exc)
                if server is not None and _sqlstate(server) in _AUTH_FAILED and attempt < 3:
                    # The secret may have been rotated: read it again, once; then its pending version (above)
                    refresh = True
                    refused = DatabaseUnavailable(f"could not connect to the database: {_message(server)}")
                    refused.__cause__ = exc
                    continue
                if server is not None:
                    raise DatabaseUnavailable(f"could not connect to the database: {_message(server)}") from exc
                raise DatabaseUnavailable("could not connect to the database") from exc
            if conn.parameter_statuses.get("standard_conforming_strings") != "on":
                conn.close()
                raise ConfigurationError("the database must run with standard_conforming_strings=on")
            sock = getattr(conn, "_usock", None)  # pg8000 has one timeout for both; queries get their own
            if sock is not None:
                sock.settimeout(self._query_timeout)
            self._waits = self._query_timeout
            self.connects += 1
            return conn
        raise AssertionError("unreachable")

    def _connection(self) -> pg8000.native.Connection:
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            buffered = getattr(conn, "_sock", None)
            with contextlib.suppress(Exception):  # the connection is already broken; closing is best effort
                conn.close()
            if buffered is not None:
                # pg8000 drops its buffered socket without closing it when the goodbye cannot be sent;
                # closed here, so no flush onto a dead descriptor is attempted later by the collector.
                with contextlib.suppress(Exception):
                    buffered.close()

    def close(self) -> None:
        with self._lock:
            self._discard()

    # -- statements -------------------------------------------------------------------------

    def _execute(self, conn: pg8000.native.Connection, sql: str, params: dict[str, Any] | None = None) -> Rows:
        # Near the invocation's end the answer is waited for only until just before it, never less than the server's
        # shortest limit and a round trip (the statement's own limits, `_limits`, end it on the server first; this
        # ends a wait for packets that never come: a partition)
        wait = max(_client_wait(self._query_timeout) or 0.0, _SHORTEST_ANSWER_WAIT_SECONDS)
        if wait != self._waits:
            sock = getattr(conn, "_usock", None)
            if sock is not None:
                sock.settimeout(wait)
            self._waits = wait
        try:
            return (conn.run(sql, **params) if params else conn.run(sql)) or []
        except DatabaseError as exc:
            state = _sqlstate(exc)
            if state in _SESSION_GONE or state == _READ_ONLY_SERVER:
                self._discard()
                raise _Broken(exc, "the server is read-only (25006)" if state == _READ_ONLY_SERVER else "") from exc
            raise QueryError(_message(exc), state) from exc
        except (InterfaceError, OSError) as exc:  # network error, timeout, closed socket
            self._discard()
            raise _Broken(exc) from exc

    def run(self, sql: str) -> Rows:
        """Run one autocommit statement (safe to repeat) and return its rows.

        A dropped connection is reopened and the statement sent once more; a serialization failure
        or deadlock (rolled back by the server) is retried with backoff.
        """
        return self._run(sql, None)

    def run_noticed(self, sql: str, heard: list[list[str]] | None = None) -> tuple[Rows, list[list[str]]]:
        """`run`, and the messages of the notices the server sent (`RAISE NOTICE`), one list for each sending of the
        statement: a broken connection's, a conflict's rolled-back attempt's, then the one that answered (the last
        hundred each). `heard`, when given, is that list: it holds what was heard also when the statement fails."""
        heard = [] if heard is None else heard
        return self._run(sql, heard), heard

    def _run(self, sql: str, heard: list[list[str]] | None) -> Rows:
        with self._lock:
            for attempt in range(1, CONFLICT_ATTEMPTS + 1):
                try:
                    return self._run_once(sql, heard)
                except QueryError as exc:
                    if exc.sqlstate not in RETRYABLE_CONFLICTS or attempt == CONFLICT_ATTEMPTS:
                        raise
                    _backoff(attempt)
            raise AssertionError("unreachable")

    def _run_once(self, sql: str, heard: list[list[str]] | None) -> Rows:
        try:
            return self._send(self._connection(), sql, heard)
        except _Broken:
            pass
        self.resent += 1
        try:
            return self._send(self._connection(), sql, heard)
        except _Broken as exc:
            raise DatabaseUnavailable(
                exc.said("the database connection broke; the statement may not have run")
            ) from exc

    def _send(self, conn: pg8000.native.Connection, sql: str, heard: list[list[str]] | None) -> Rows:
        """`_execute`, with the limits near the invocation's end (`_near_the_end`; not for a statement whose notices
        are heard: a paced block commits inside, which it may not do inside another statement's transaction); with
        `heard`, this sending's notices appended to it, whatever the outcome."""
        if heard is None:
            return self._execute(conn, self._near_the_end() + sql)
        conn.notices.clear()
        try:
            return self._execute(conn, sql)
        finally:
            heard.append([_notice_text(n.get(b"M", n.get("M", b""))) for n in conn.notices])
            conn.notices.clear()

    def atomic[T](
        self, work: Callable[[Transaction], T], *, retry_on: tuple[str, ...] = (), read_committed: bool = False
    ) -> T:
        """`work(tx)` inside one transaction, run again from the start when the server rolled it back.

        `read_committed`: the transaction is READ COMMITTED whatever the database's default isolation (each
        statement its own snapshot: one sent after a lock was granted sees what its holder committed), set by the
        BEGIN itself.

        `work` must be safe to re-run: it reads what it decides on inside the transaction, and finds
        its own effects when an earlier run did commit. Retried on serialization failures and deadlocks
        (and the SQLSTATEs in `retry_on`, e.g. a unique violation that a concurrent writer caused), with
        bounded jittered backoff; and once, on a fresh connection, when the connection broke (the
        server rolled the transaction back, or the break hit the COMMIT and it may have committed:
        either way running `work` again is right). A second break is DatabaseUnavailable.
        """
        states = RETRYABLE_CONFLICTS + retry_on
        reconnected = False
        attempt = 0
        while True:
            attempt += 1
            try:
                with self.transaction(read_committed=read_committed) as tx:
                    return work(tx)
            except QueryError as exc:
                if exc.sqlstate not in states or attempt >= CONFLICT_ATTEMPTS:
                    raise
                _backoff(attempt)
            except DatabaseUnavailable:
                if reconnected:
                    raise
                reconnected = True
                self.resent += 1

    def _limits(self, left: float | None) -> str:
        """A transaction's lock and statement timeouts, as `SET LOCAL`s: the configured ones, or less near the
        invocation's end (`left` seconds away), so that no statement outlives it: Lambda would end the invocation
        midway, with Hyp's answer unstored and the caller's fallback (review, naming Hyp's transaction) never run. A
        statement then leaves ROOM_SECONDS of the invocation for that fallback and the answer, and waits for a lock
        at most half of what it may take."""
        lock_ms, statement_ms = self._lock_ms, self._statement_ms
        if left is not None:
            budget_ms = int((left - ROOM_SECONDS) * 1000)
            lock_ms = max(_SHORTEST_MS, min(lock_ms, budget_ms // 2))
            statement_ms = max(lock_ms + _SHORTEST_MS, min(statement_ms, budget_ms))
        return f"SET LOCAL lock_timeout = {lock_ms}; SET LOCAL statement_timeout = {statement_ms}"

    def _begin(self, read_committed: bool) -> str:
        """BEGIN with the transaction's time limits (`_limits`), in one round trip."""
        begin = "BEGIN ISOLATION LEVEL READ COMMITTED;" if read_committed else "BEGIN;"
        return f"{begin} {self._limits(deadline.until_the_end())}"

    def _near_the_end(self) -> str:
        """What an autocommit statement (`run`) is sent after: nothing, unless its answer, waited for as long as the
        query timeout, could outlive the invocation. Then a transaction's limits near the end (`_limits`), set for
        the statement's own implicit transaction, in the same round trip (a lock the web app holds is then the
        server's 55P03 in time for the caller's fallback, not the invocation ended midway)."""
        left = deadline.until_the_end()
        if left is None or left - ROOM_SECONDS > self._query_timeout:
            return ""
        return f"{self._limits(left)}; "

    @contextmanager
    def transaction(self, *, read_committed: bool = False) -> Iterator[Transaction]:
        """BEGIN ... COMMIT on the reused connection; ROLLBACK on any error. `read_committed`: as `atomic`'s."""
        with self._lock:
            # The time limits are taken once connected (a reconnect may have spent some of the time left)
            try:
                conn = self._connection()
                self._execute(conn, self._begin(read_committed))
            except _Broken:
                try:
                    conn = self._connection()
                    self._execute(conn, self._begin(read_committed))
                except _Broken as exc:
                    raise DatabaseUnavailable(exc.said("could not start a database transaction")) from exc
            tx = Transaction(self, conn)
            committing = False
            try:
                yield tx
                committing = True
                self._execute(conn, "COMMIT")
            except _Broken as exc:
                raise DatabaseUnavailable(
                    exc.said(
                        "the database connection broke at the transaction's COMMIT; it may have committed"
                        if committing
                        else "the database connection broke inside a transaction; it was not committed"
                    )
                ) from exc
            except BaseException:
                if self._conn is conn:
                    try:
                        self._execute(conn, "ROLLBACK")
                    except (_Broken, QueryError):
                        self._discard()
                raise


class Transaction:
    """Statements inside one open transaction."""

    def __init__(self, db: Database, conn: pg8000.native.Connection) -> None:
        self._db = db
        self._conn = conn

    def run(self, sql: str) -> Rows:
        """`sql` in the transaction; near the invocation's end, with limits that fit the time then left (the BEGIN's
        were taken at its start: a transaction of several statements could spend them one after another)."""
        return self._db._execute(self._conn, self._db._near_the_end() + sql)

    def run_with_parameters(self, sql: str, **params: Any) -> Rows:
        """`sql` with `:name` placeholders, its values sent apart from its text (the extended protocol, an unnamed
        statement): for a value the server must never write to its log, as it does with the text of a statement
        that fails (`log_min_error_statement`, ERROR by default; the parameters are not logged with it unless
        `log_parameter_max_length_on_error` is set). Inside the transaction, which keeps a transaction-mode pooler
        on one server connection for the statement's round trips. Near the invocation's end, its limits are set
        first, in a round trip of their own (a statement with parameters is one statement)."""
        near = self._db._near_the_end()
        if near:
            self._db._execute(self._conn, near)
        return self._db._execute(self._conn, sql, params)


def _count_connect_failure(exc: PaymentError) -> None:
    """`DatabaseConnectFailed` (the stack's alarm fires at one). Imported here, not at the top: the metrics
    object reads its namespace from the environment when first imported."""
    from payments.observability import logger, metrics

    metrics.add_metric(name="DatabaseConnectFailed", unit="Count", value=1)
    logger.error("database connection failed", extra={"reason": exc.message})


def _backoff(attempt: int) -> None:
    """Full jitter: up to 10, 20, 40, 80, 160 ms, then 200 ms."""
    time.sleep(random.uniform(0, min(0.2, 0.01 * 2 ** (attempt - 1))))  # noqa: S311 - jitter, not a secret


class _Broken(Exception):
    """Internal: the connection is unusable (already discarded); `why`, when known beyond a broken connection."""

    def __init__(self, cause: BaseException, why: str = "") -> None:
        super().__init__(cause)
        self.why = why

    def said(self, message: str) -> str:
        """`message`, with why the connection was given up when it was not simply broken."""
        return f"{message}: {self.why}" if self.why else message


_default: Database | None = None
_default_lock = threading.Lock()


def default_database() -> Database:
    """The execution environment's database, built from the environment on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Database.from_settings()
        return _default


def reset_default_database() -> None:
    """Forget the cached database (tests; a changed environment)."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.close()
        _default = None
