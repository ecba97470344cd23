"""The production pg8000 connection (GuardedConnection), counting its round trips: for tests and the benchmark."""

from __future__ import annotations

from typing import Any

from payments.adapters.db import GuardedConnection


class CountingConnection(GuardedConnection):
    """Each wait for the server's ReadyForQuery is one round trip; counted on the class."""

    round_trips = 0

    def handle_messages(self, context: Any) -> Any:
        type(self).round_trips += 1
        return super().handle_messages(context)


def counting_class() -> type[CountingConnection]:
    """A fresh subclass, so each user counts only its own connections."""
    return type("Counting", (CountingConnection,), {"round_trips": 0})


class RecordingConnection(CountingConnection):
    """Also keeps every statement it runs, in order, as (sql, params): on the class, like the count."""

    statements: list[tuple[str, dict[str, Any]]] = []

    def run(self, sql: str, stream: Any = None, types: Any = None, **params: Any) -> Any:
        type(self).statements.append((sql, params))
        return super().run(sql, stream=stream, types=types, **params)


def recording_class() -> type[RecordingConnection]:
    """A fresh subclass with its own count and its own list of statements."""
    return type("Recording", (RecordingConnection,), {"round_trips": 0, "statements": []})
