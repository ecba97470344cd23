"""make run's cluster for a data folder whose path has a space (a clone under "My Projects"): it lives in the user's
data folder, the folder a link to it (ops/embedded._without_spaces)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ops.embedded import ROOT, embedded_server
from payments.adapters.db import Database
from payments.settings import DatabaseSettings

pytestmark = pytest.mark.skipif("DATABASE_URL" in os.environ, reason="the embedded server is what is tested")


def _spaced_data(root: Path, folder: str) -> Path:
    data = root / folder / "payments" / ".local" / "pgdata"
    data.parent.mkdir(parents=True)
    for p in (root / folder, root / folder / "payments", data.parent):
        p.chmod(0o755)
    return data


def _run(url: str, sql: str) -> list:
    db = Database.from_settings(DatabaseSettings(DATABASE_URL=url))
    try:
        return db.run(sql)
    finally:
        db.close()


def _clusters(xdg: Path) -> list[str]:
    return sorted(p.name for p in (xdg / "payments-backend").glob("pgdata-*"))


@pytest.fixture
def xdg(private_tmp: Path, monkeypatch: pytest.MonkeyPatch):
    home = private_tmp / "xdg"
    home.mkdir(mode=0o755)
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_a_renamed_clone_keeps_its_local_database(private_tmp: Path, xdg: Path) -> None:
    # Given make run's database in a clone under "My Projects", holding the developer's data
    data = _spaced_data(private_tmp, "My Projects")
    with embedded_server(data, keep=True) as url:
        _run(url, "CREATE TABLE my_work (x int); INSERT INTO my_work VALUES (42)")
    # When the developer renames the folder (the link .local/pgdata moves with it, still pointing at the cluster)
    (private_tmp / "My Projects").rename(private_tmp / "My Work")
    moved = private_tmp / "My Work" / "payments" / ".local" / "pgdata"
    assert moved.is_symlink()
    # Then make run there still finds the data (it is not replaced by an empty cluster, the old one orphaned)
    with embedded_server(moved, keep=True) as url:
        found = _run(url, "SELECT count(*) FROM pg_tables WHERE tablename = 'my_work'")
    assert found == [[1]], _clusters(xdg)


def test_make_clean_removes_the_local_database(private_tmp: Path, xdg: Path) -> None:
    # Given make run's database in a clone under "My Projects", holding data
    data = _spaced_data(private_tmp, "My Projects")
    with embedded_server(data, keep=True) as url:
        _run(url, "CREATE TABLE my_work (x int)")
    # When `make clean` runs ("remove build output and local state"), as the Makefile has it
    subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "clean"], cwd=data.parent.parent, check=True)
    data.parent.mkdir()
    # Then the next make run starts on a fresh database, as it does in a clone without a space
    with embedded_server(data, keep=True) as url:
        found = _run(url, "SELECT count(*) FROM pg_tables WHERE tablename = 'my_work'")
    assert found == [[0]], _clusters(xdg)
    assert len(_clusters(xdg)) == 1  # the old one removed with its link
