"""Real PostgreSQL for the tests: the embedded cluster, or the server DATABASE_URL names."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import pg8000.native

from ops.pgcount import CountingConnection, counting_class  # noqa: F401 - re-exported for tests
from payments.adapters.db import Database, GuardedConnection, ParamsProvider, connect_kwargs, parse_database_url


def with_database(url: str, name: str) -> str:
    """The same server, another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def connect(url: str, connection_class: type[pg8000.native.Connection] = GuardedConnection):
    p = parse_database_url(url)
    return connection_class(p.user, **connect_kwargs(p))


def database(url: str, connection_class: type[pg8000.native.Connection] = GuardedConnection) -> Database:
    parsed = parse_database_url(url)
    provider: ParamsProvider = lambda refresh: parsed  # noqa: E731
    return Database(provider, connect=connection_class)


class Server:
    """Creates and drops throwaway databases on one server."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._admin = connect(url)

    def create(self, template: str = "template0") -> str:
        name = f"pt_{uuid.uuid4().hex[:12]}"
        self._admin.run(
            f"CREATE DATABASE {pg8000.native.identifier(name)} TEMPLATE {pg8000.native.identifier(template)}"
        )
        return name

    def drop(self, name: str) -> None:
        self._admin.run(f"DROP DATABASE IF EXISTS {pg8000.native.identifier(name)} WITH (FORCE)")

    def close(self) -> None:
        self._admin.close()


def with_user(url: str, user: str) -> str:
    """The same server and database, another role (no password: the test cluster trusts local logins)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))
