"""`make run` as a terminal sees it: a port in use, Ctrl-C, the chosen port, settings from the environment."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.make_run import ROOT, free_port
from tests.support.pg import Server, connect, with_database, with_user


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": f"{ROOT / 'layers' / 'shared'}:{ROOT}",
        **extra,
    }


def _status(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_a_port_in_use_is_one_clear_line(private_tmp: Path) -> None:
    # Given something already listening on the port make run wants
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # When make run starts on it
        done = subprocess.run(
            [sys.executable, "-m", "ops.run"],
            cwd=ROOT,
            env=_env({"PORT": str(port), "HYPAY_SIM_PORT": str(free_port()), "LOCAL_DATA_DIR": str(private_tmp)}),
            capture_output=True,
            text=True,
            timeout=60,
        )
    # Then it exits with one line naming the port and how to choose another, no traceback
    out = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, out
    assert out.count("\n") == 0 and "Traceback" not in out, out
    assert f"port {port}" in out and "PORT=" in out


def test_ctrl_c_stops_quietly_on_the_chosen_port_with_settings_from_the_environment(
    private_tmp: Path, request: pytest.FixtureRequest
) -> None:
    # Given make run on a port the system picks (PORT=0), with a function setting in its environment,
    # in its own process group as a terminal runs it
    env = {"PORT": "0", "HYPAY_SIM_PORT": "0", "LOCAL_DATA_DIR": str(private_tmp / "pgdata")}
    env["HYPAY_NOTIFY_ALLOWED_CIDRS"] = "10.99.0.0/16"
    env["ADMIN_API_TOKEN"] = "my-own-admin-token"  # make run's own value is local-admin-token
    if "DATABASE_URL" in os.environ:
        env["DATABASE_URL"] = request.getfixturevalue("empty_database_url")
    process = subprocess.Popen(
        [sys.executable, "-m", "ops.run"],
        cwd=ROOT,
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C stops everything." in line:
                break
        out = "".join(lines)
        # Then every URL of the banner names the bound port, never 0 or the default
        # (but the JWT issuer: a fixed name every local token carries, ops.token's too, not an address)
        served = "".join(line for line in lines if "JWT issuer" not in line)
        ports = set(re.findall(r"http://127\.0\.0\.1:(\d+)", served))
        assert "0" not in ports and "3000" not in ports and "3100" not in ports, ports
        assert len(ports) == 2, ports  # the local API's and the simulator's
        api = next(line.split()[2] for line in lines if line.strip().startswith("local API"))
        assert _status(f"{api}/hypay/return") == 200
        # And the setting reached the functions (the banner says so, and the callback applies it)
        assert "from the environment: ADMIN_API_TOKEN, HYPAY_NOTIFY_ALLOWED_CIDRS" in out
        assert _status(f"{api}/admin/review", headers={"Authorization": "Bearer my-own-admin-token"}) == 200
        assert _status(f"{api}/admin/review", headers={"Authorization": "Bearer local-admin-token"}) in (401, 403)
    finally:
        # When Ctrl-C reaches the whole process group
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    # Then it stops cleanly, with no traceback from it or its workers
    assert process.returncode == 0, rest
    assert "stopped." in rest and "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest


@pytest.fixture
def may_not_create(pg_server: Server, empty_database_url: str) -> Iterator[str]:
    """A database whose login may connect but not create anything (a read-only or an application's role)."""
    name = f"ro_{uuid.uuid4().hex[:8]}"
    admin = connect(pg_server.url)
    admin.run(f"CREATE ROLE {name} LOGIN")
    owner = connect(empty_database_url)
    owner.run(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {name}")
    owner.close()
    yield with_user(empty_database_url, name)
    admin.run(f"DROP OWNED BY {name}")
    admin.run(f"DROP ROLE {name}")
    admin.close()


@pytest.mark.parametrize("case", ["unreachable", "malformed", "no such database", "no such role", "may not create"])
def test_an_external_database_it_cannot_use_is_one_clear_line(
    case: str, pg_server: Server, request: pytest.FixtureRequest
) -> None:
    # Given make run pointed at an external database it cannot use
    url = {
        "unreachable": "postgresql://someone:a-secret-pw@127.0.0.1:1/postgres",  # nothing listens there
        "malformed": "postgresql://someone:a-secret-pw@127.0.0.1:notaport/postgres",
        "no such database": with_database(pg_server.url, f"no_such_db_{uuid.uuid4().hex[:8]}"),
        "no such role": with_user(pg_server.url, f"no_such_role_{uuid.uuid4().hex[:8]}"),
        "may not create": request.getfixturevalue("may_not_create") if case == "may not create" else "",
    }[case]
    done = subprocess.run(
        [sys.executable, "-m", "ops.run"],
        cwd=ROOT,
        env=_env({"DATABASE_URL": url, "PORT": "0", "HYPAY_SIM_PORT": "0"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it exits saying so on one line of its own (the function's JSON log line aside), no traceback (not even of
    # a socket left open), no password
    out = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, out
    assert "Traceback" not in out and "Exception ignored" not in out and "a-secret-pw" not in out, out
    said = [line for line in out.splitlines() if not line.startswith("{")]
    assert len(said) == 1 and said[0].startswith("make run: "), out


@pytest.mark.skipif("DATABASE_URL" in os.environ, reason="the embedded server is what is tested")
def test_ctrl_c_stops_the_database_even_after_an_earlier_run_was_killed(private_tmp: Path) -> None:
    import psutil

    from tests.support.make_run import MakeRun

    data = private_tmp / "pgdata"

    def postmasters() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if cmdline and cmdline[0].endswith("/postgres") and str(data) in cmdline:
                found.append(proc)
        return found

    try:
        # Given a make run killed hard (kill -9, a closed terminal, an OOM kill): its database is left running
        crashed = MakeRun({"LOCAL_DATA_DIR": str(data)}).start()
        assert crashed.process is not None
        crashed.process.kill()
        crashed.process.wait(timeout=30)
        # When make run is started again, and stopped with Ctrl-C as the README says ("Ctrl-C stops everything")
        again = MakeRun({"LOCAL_DATA_DIR": str(data)}).start()
        code, _ = again.stop()
        assert code == 0
        # Then no database server is left running on the folder (the killed run's pid, left in the library's
        # count of the cluster's users, is no user any more)
        left = postmasters()
        assert not left, [p.pid for p in left]
    finally:
        for proc in postmasters():
            proc.terminate()


@pytest.mark.skipif("DATABASE_URL" in os.environ, reason="the embedded server is what is tested")
def test_make_run_starts_in_a_folder_whose_path_has_a_space(private_tmp: Path) -> None:
    from tests.support.make_run import MakeRun

    # Given a clone under a folder with a space in its name ("~/My Projects/payments"): make run's data folder
    # .local/pgdata under it
    data = private_tmp / "My Projects" / "payments" / ".local" / "pgdata"
    data.parent.mkdir(parents=True)
    for folder in (data.parent, data.parent.parent, data.parent.parent.parent):
        os.chmod(folder, 0o755)
    run = MakeRun({"LOCAL_DATA_DIR": str(data)})
    try:
        # When make run starts, then is stopped
        run.start()
        started = run.output
        code, _ = run.stop()
    finally:
        if data.is_symlink():  # the cluster, kept in the user's data folder: not left there by a test
            shutil.rmtree(data.resolve(), ignore_errors=True)
    # Then it started and stopped (the server is given a folder without the space: pg_ctl passes it unquoted)
    assert "Ctrl-C stops everything." in started, started[-3000:]
    assert code == 0


def test_a_token_minted_for_another_user_can_buy_credits(private_tmp: Path) -> None:
    # Given make run, and the README's command that mints a token for another user (with its profile)
    import json
    import urllib.error
    import urllib.request
    import uuid

    from tests.support.make_run import MakeRun

    run = MakeRun({"LOCAL_DATA_DIR": str(private_tmp / "pgdata"), "LOCAL_AUTH_DIR": str(private_tmp / "auth")}).start()
    try:
        run.drain()
        user = str(uuid.uuid4())
        token = subprocess.run(
            [sys.executable, "-m", "ops.token", "--mode", "rs256", "--user", user, "--profile"],
            cwd=ROOT,
            env={
                **_env({}),
                "LOCAL_AUTH_DIR": str(private_tmp / "auth"),
                "LOCAL_DATA_DIR": str(private_tmp / "pgdata"),
            },
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        # When that user buys a pack as the README's curl does
        req = urllib.request.Request(
            f"{run.base}/payments",
            method="POST",
            data=json.dumps({"credit_pack_id": "aaaaaaaa-0000-4000-8000-000000000001"}).encode(),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Idempotency-Key": str(uuid.uuid4()),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, body = resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            status, body = err.code, err.read().decode()
    finally:
        run.stop()
    # Then it buys (without --profile: 404, the signed-in user has no profile)
    assert status == 201, body
