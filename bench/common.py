"""What the measurements of `make bench` share: sizes from the environment, the server, spreads across runs."""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pg8000.native

from ops.migrate import migrate
from payments.adapters.db import Database, GuardedConnection, connect_kwargs, parse_database_url

ROOT = Path(__file__).resolve().parent.parent
QUICK = os.environ.get("BENCH_QUICK", "") == "1"  # tiny sizes, one run: proves the benchmark still works


def size(name: str, default: int, quick: int) -> int:
    """An integer setting: the environment's `name`, else `quick` in quick mode, else `default`."""
    value = os.environ.get(name)
    return int(value) if value else (quick if QUICK else default)


def runs(default: int) -> int:
    """How many runs a measurement makes: BENCH_RUNS for all, else its own default (1 in quick mode)."""
    return size("BENCH_RUNS", default, 1)


def load() -> float:
    """The machine's 1-minute load average."""
    return os.getloadavg()[0]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@dataclass
class Spread:
    """One figure measured once per run: every run's value, their min and median."""

    values: list[float] = field(default_factory=list)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def each(self, fmt: str = "{:.2f}") -> str:
        return " · ".join(fmt.format(v) for v in self.values)


@dataclass
class Loads:
    """The 1-minute load average before and after each run of a measurement."""

    pairs: list[tuple[float, float]] = field(default_factory=list)

    @contextmanager
    def around(self) -> Iterator[None]:
        before = load()
        yield
        self.pairs.append((before, load()))

    def text(self) -> str:
        return " · ".join(f"{a:.2f}→{b:.2f}" for a, b in self.pairs)


@dataclass(frozen=True)
class Section:
    """A measurement's part of docs/benchmarks.md, and its targets (name, met)."""

    lines: list[str]
    targets: list[tuple[str, bool]]


class Server:
    """The PostgreSQL server the benchmark runs on; throwaway databases on it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._admin = self.connect(url)
        self._template: str | None = None

    @staticmethod
    def connect(url: str) -> pg8000.native.Connection:
        params = parse_database_url(url)
        return GuardedConnection(params.user, **connect_kwargs(params))

    def url_of(self, name: str) -> str:
        return urlunsplit(urlsplit(self.url)._replace(path="/" + name))

    def create(self, template: str = "template0") -> str:
        name = f"bench_{uuid.uuid4().hex[:12]}"
        self._admin.run(
            f"CREATE DATABASE {pg8000.native.identifier(name)} TEMPLATE {pg8000.native.identifier(template)}"
        )
        return name

    def drop(self, name: str) -> None:
        self._admin.run(f"DROP DATABASE IF EXISTS {pg8000.native.identifier(name)} WITH (FORCE)")

    def migrated(self) -> str:
        """A database with every migration applied, to copy (`create(template=...)`); made once."""
        if self._template is None:
            name = self.create()
            db = database(self.url_of(name))
            migrate(db)
            db.close()
            self._template = name
        return self._template

    def close(self) -> None:
        if self._template is not None:
            self.drop(self._template)
        self._admin.close()


def database(url: str, connect: type[pg8000.native.Connection] = GuardedConnection) -> Database:
    """The production Database (lazy connection, reconnect-once) on `url`, with this connection class."""
    params = parse_database_url(url)
    return Database(lambda refresh: params, connect=connect)


def execute(url: str, *statements: str) -> list[list]:
    """Runs set-up statements on a connection of their own, with no query timeout (the Database's is 10 s);
    the last one's rows."""
    conn = Server.connect(url)
    try:
        rows: list[list] = []
        for sql in statements:
            rows = conn.run(sql) or []
        return rows
    finally:
        conn.close()


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """`with stopwatch() as took: ...`; then `took[0]` is the seconds it took."""
    took: list[float] = []
    start = time.perf_counter()
    try:
        yield took
    finally:
        took.append(time.perf_counter() - start)
