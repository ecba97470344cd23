"""`make run`'s stack for the proof suite: `python -m ops.run` as a subprocess on free ports.

The stack's database is a private embedded PostgreSQL started here and handed to `make run` as DATABASE_URL,
so that the proof keeps the superuser's URL (to terminate the functions' connections and to read the tables)
while `make run` runs exactly as a developer starts it. Its data folder, the simulator's state and the local
signing keys live in a temporary folder removed at the end.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ops.embedded import embedded_server
from ops.hypay_simulator import APPROVING_CARD
from ops.local_auth import LocalAuth, mode_from
from ops.run import LOCAL_ADMIN_TOKEN
from payments.adapters.db import Database, bind
from payments.settings import DatabaseSettings
from tests.support.make_run import MakeRun


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def http(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> Reply:
    """One request, redirects not followed; any status is an answer (a refused connection raises)."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


@dataclass
class Stack:
    """A running `make run`: `base` (the local API), `simulator` (Hyp's endpoint), `database_url` (superuser)."""

    run: MakeRun
    database_url: str
    auth: LocalAuth
    folder: Path
    admin_token: str = LOCAL_ADMIN_TOKEN
    users: list[str] = field(default_factory=list)
    _db: Database | None = None

    @property
    def base(self) -> str:
        return self.run.base

    @property
    def simulator(self) -> str:
        return f"http://127.0.0.1:{self.run.sim_port}/p/"

    @property
    def pid(self) -> int:
        assert self.run.process is not None
        return self.run.process.pid

    def token(self, user: str) -> str:
        return self.auth.token(user)

    def new_user(self) -> str:
        """A signed-up user of the web app (a profile with no credits)."""
        user = str(uuid.uuid4())
        self.sql(
            "INSERT INTO public.profiles (id, email, credits) VALUES (:id, :email, 0)",
            id=user,
            email=f"{user[:8]}@example.com",
        )
        self.users.append(user)
        return user

    def sql(self, statement: str, **params: Any) -> list[list[Any]]:
        """One statement as the database's superuser (the proof's own view of the tables); `:name` binds."""
        if self._db is None:
            self._db = Database.from_settings(DatabaseSettings(DATABASE_URL=self.database_url))
        return list(self._db.run(bind(statement, **params)))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def pay(self, payment_url: str, *, cvv: str = "125", card: str = APPROVING_CARD) -> tuple[str | None, str]:
        """The customer's browser on the simulator's payment page: (the signed redirect's query, "") when the
        page sends the browser back, else (None, what went wrong)."""
        page = http(payment_url)
        hidden = re.search(r'name="page" value="([^"]*)"', page.body.decode("utf-8", "replace"))
        if page.status != 200 or hidden is None:
            return None, f"the payment page answered {page.status} without a form"
        form = {
            "action": "simpay",
            "page": html.unescape(hidden.group(1)),
            "CC": card,
            "Tmonth": "12",
            "Tyear": "2030",
            "cvv": cvv,
            "UserId": "890108566",
        }
        form_type = {"Content-Type": "application/x-www-form-urlencoded"}
        submitted = http(self.simulator, "POST", urlencode(form).encode(), form_type)
        location = submitted.headers.get("location", "")
        if submitted.status != 302 or "?" not in location:
            return None, f"paying on the page answered {submitted.status} without a redirect"
        return location.split("?", 1)[1], ""

    def alive(self) -> bool:
        return self.run.process is not None and self.run.process.poll() is None


@contextlib.contextmanager
def stack(settings: Mapping[str, str] | None = None, *, auth_mode: str = "rs256") -> Iterator[Stack]:
    """Start the database and `make run` (with `settings` as a developer gives them: NAME=value make run)."""
    folder = Path(tempfile.mkdtemp(prefix="prove-"))
    os.chmod(folder, 0o755)  # the embedded server's own user must reach its data folder
    try:
        with embedded_server(folder / "pgdata", keep=False) as url:
            env = {
                "DATABASE_URL": url,
                "LOCAL_DATA_DIR": str(folder / "pgdata"),  # the simulator keeps its state beside it
                "LOCAL_AUTH_DIR": str(folder / "auth"),
                "AUTH_MODE": auth_mode,
                **(settings or {}),
            }
            run = MakeRun(env).start().drain()  # its output read on: a full pipe would block the workers
            try:
                if run.process is None or run.process.poll() is not None:
                    raise RuntimeError("make run did not start:\n" + run.output)
                auth = LocalAuth.for_mode(mode_from(auth_mode), keys_dir=folder / "auth")
                running = Stack(run=run, database_url=url, auth=auth, folder=folder)
                try:
                    yield running
                finally:
                    running.close()
            finally:
                if run.process is not None and run.process.poll() is None:
                    run.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
