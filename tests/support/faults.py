"""Fault injection at the two choke points of every money flow: each pg8000 statement, each Hyp call.

`Injector.install(monkeypatch)` interposes on `pg8000.native.Connection.run` (every statement the
functions' `Database` sends goes through it) and on `HypayClient._send` (every call to Hyp, each
attempt of a retried one). Inside `with injector.invocation():` each of them is a point, recorded in
order in `injector.trace`; outside it nothing is touched, so the test's own queries, the cleanup and
the simulator's customers are never counted or faulted. With `invocation(at=i, fault=...)` the
i-th point fails:

- `drop_before`: the connection is gone before the statement is sent. The server side is terminated
  (`pg_terminate_backend`, waiting for the backend to exit, so an open transaction is rolled back), then
  the statement is sent on the dead connection and pg8000 fails as it would. For Hyp: the connection
  resets before the request leaves (`ConnectionResetError` from the opener), so Hyp sees nothing.
- `drop_after`: the statement ran on the server (an autocommit one stays committed; inside
  BEGIN..COMMIT the session dies with its transaction), then the answer is lost: the backend is
  terminated and pg8000's `InterfaceError("network error")` raised. For Hyp: Hyp processed the request,
  then the answer timed out (`TimeoutError`).
- `killed`: the statement or call ran, then the invocation was killed or timed out before it read the
  answer: `Killed` (a BaseException, so no `except Exception` runs and Powertools leaves the idempotency
  record in progress); the process is gone, so its connection is terminated and any later statement or
  call of the same invocation raises `Killed` again (nothing more reaches the server or Hyp). A kill
  before point i is the same as a kill after point i-1, so this covers every position.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import pg8000.native
import pytest
from pg8000.exceptions import InterfaceError

from payments.adapters.hypay import HypayClient
from tests.support.pg import connect

FAULTS = ("drop_before", "drop_after", "killed")


class Killed(BaseException):
    """The Lambda runtime killing (or timing out) the invocation: no `except Exception` runs."""


@dataclass(frozen=True)
class Point:
    kind: str  # "db" or "hyp"
    label: str  # what the statement touches (never a value) or Hyp's action

    def __str__(self) -> str:
        return f"{self.kind}: {self.label}"


_WRITE = re.compile(r"\b(?<!FOR )(?<!DO )(INSERT INTO|UPDATE|DELETE FROM)\s+(\"?[A-Za-z_][\w.\"]*)", re.IGNORECASE)
_CTE = re.compile(r"\b(\w+) AS \(", re.IGNORECASE)
_READ = re.compile(r"\b(FROM|JOIN)\s+(\"?[A-Za-z_][\w.\"]*)", re.IGNORECASE)


def _table(name: str) -> str:
    return name.replace('"', "").removeprefix("public.")


def sql_label(sql: str) -> str:
    """`insert payments`, `update payments, insert credit_transactions, ...`, `select saved_cards`, `BEGIN`."""
    text = " ".join(sql.split())
    if text.startswith(("BEGIN;", "BEGIN ISOLATION LEVEL")):
        return "BEGIN"  # with its isolation level and SET LOCAL timeouts
    writes: list[str] = []
    for verb, table in _WRITE.findall(text):
        item = f"{verb.split()[0].lower()} {_table(table)}"
        if item not in writes:
            writes.append(item)
    if writes:
        return ", ".join(writes)
    ctes = set(_CTE.findall(text))
    reads: list[str] = []
    for _, table in _READ.findall(text):
        if _table(table) not in reads and table not in ctes:
            reads.append(_table(table))
    if reads:
        return "select " + ", ".join(reads)
    return text.split("'", 1)[0][:40]  # BEGIN, COMMIT, ...


def hyp_label(request: Any) -> str:
    fields = parse_qs((request.data or b"").decode("ascii", "replace"))
    action = fields.get("action", ["?"])[0]
    return fields.get("What", [action])[0] if action == "APISign" else action


class Injector:
    def __init__(self, admin: pg8000.native.Connection) -> None:
        self._admin = admin  # kills backends; used with the real `run`, never counted
        self._real_run: Callable[..., Any] = pg8000.native.Connection.run
        self.armed = False
        self.trace: list[Point] = []
        self.at: int | None = None
        self.fault: str | None = None
        self.fired: Point | None = None
        self.dead = False
        self.problems: list[str] = []  # the injection itself did not behave as intended

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_run = self._real_run
        real_send = HypayClient._send
        injector = self

        def run(conn: pg8000.native.Connection, sql: str, stream: Any = None, types: Any = None, **params: Any) -> Any:
            return injector._statement(conn, sql, lambda: real_run(conn, sql, stream=stream, types=types, **params))

        def send(client: HypayClient, request: Any, timeout: float) -> bytes:
            return injector._hyp(client, request, lambda: real_send(client, request, timeout))

        monkeypatch.setattr(pg8000.native.Connection, "run", run)
        monkeypatch.setattr(HypayClient, "_send", send)

    def admin_run(self, sql: str, **params: Any) -> Any:
        return self._real_run(self._admin, sql, **params)

    @contextmanager
    def invocation(self, at: int | None = None, fault: str | None = None) -> Iterator[None]:
        """One invocation of a function: its points are recorded; the `at`-th one fails with `fault`."""
        self.trace, self.at, self.fault, self.fired, self.dead = [], at, fault, None, False
        self.armed = True
        try:
            yield
        finally:
            self.armed = False

    # -- the choke points --------------------------------------------------------------------------

    def _point(self, point: Point) -> bool:
        """Record the point; True when it is the one to fail."""
        if self.dead:
            raise Killed("the invocation is dead: nothing more runs")
        index = len(self.trace)
        self.trace.append(point)
        if index != self.at:
            return False
        self.fired = point
        return True

    def _statement(self, conn: pg8000.native.Connection, sql: str, run: Callable[[], Any]) -> Any:
        if not self.armed or not self._point(Point("db", sql_label(sql))):
            return run()
        if self.fault == "drop_before":
            self._sever(conn)
            rows = run()  # raises: the connection is dead
            self.problems.append(f"{sql_label(sql)} ran on a connection severed before it was sent")
            return rows
        rows = run()
        self._sever(conn)
        if self.fault == "drop_after":
            raise InterfaceError("network error")
        self.dead = True
        raise Killed("killed after the statement ran, before its answer was read")

    def _hyp(self, client: HypayClient, request: Any, send: Callable[[], bytes]) -> bytes:
        if not self.armed or not self._point(Point("hyp", hyp_label(request))):
            return send()
        real_open = client._open
        fault = self.fault

        def faulty(req: Any, timeout: float) -> bytes:
            if fault == "drop_before":
                raise ConnectionResetError("the connection to Hyp reset before the request was sent")
            real_open(req, timeout)  # Hyp processes it; its answer never arrives
            if fault == "drop_after":
                raise TimeoutError("timed out")
            self.dead = True
            raise Killed("killed while Hyp answered")

        client._open = faulty  # type: ignore[method-assign]
        try:
            return send()
        finally:
            client._open = real_open  # type: ignore[method-assign]

    def _sever(self, conn: pg8000.native.Connection) -> None:
        """Terminate the connection's server process and wait until it is gone (its transaction rolled back)."""
        key = getattr(conn, "_backend_key_data", None)
        if not key:
            self.problems.append("no backend pid on the connection: could not sever it")
            return
        pid = struct.unpack("!i", key[:4])[0]
        [[done]] = self.admin_run("SELECT pg_terminate_backend(:pid, 5000)", pid=pid)
        if not done:
            self.problems.append(f"backend {pid} did not exit")


@contextmanager
def answer_lost(url: str, monkeypatch: pytest.MonkeyPatch, lost: Callable[[str], bool]) -> Iterator[list[str]]:
    """The first statement `lost(sql)` picks commits on the server, then its connection breaks before the answer
    reaches us (a NAT, a failover): its server process is terminated and pg8000 raises its network error. Yields the
    statements it fired on (one at most), for the caller to assert that it did."""
    killer = connect(url)
    injector = Injector(killer)
    real_run = pg8000.native.Connection.run
    fired: list[str] = []

    def run(conn: pg8000.native.Connection, sql: str, stream: Any = None, types: Any = None, **params: Any) -> Any:
        rows = real_run(conn, sql, stream=stream, types=types, **params)
        if not fired and lost(sql):
            fired.append(sql)
            injector._sever(conn)
            raise InterfaceError("network error")
        return rows

    monkeypatch.setattr(pg8000.native.Connection, "run", run)
    try:
        yield fired
    finally:
        monkeypatch.setattr(pg8000.native.Connection, "run", real_run)
        killer.close()


class DatabaseFaults(Injector):
    """An injector whose faults are the database's own (its `_statement`): Hyp's calls are points of the trace, sent
    as they are."""

    def _hyp(self, client: HypayClient, request: Any, send: Callable[[], bytes]) -> bytes:
        if self.armed:
            self._point(Point("hyp", hyp_label(request)))
        return send()
