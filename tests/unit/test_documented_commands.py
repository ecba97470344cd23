"""The shell commands the docs give work when pasted: each `curl ... -d '<json>'` body is one shell word."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _shell_blocks(path: Path) -> list[str]:
    return re.findall(r"```(?:sh|bash)\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def test_every_documented_curl_body_is_one_shell_word() -> None:
    # Given every `curl ... -d '<json>'` in the README and docs/*.md, as a reader pastes it into bash
    bad = []
    checked = 0
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in _shell_blocks(doc):
            for command in re.split(r"(?<!\\)\n", block):
                if "curl" not in command or " -d " not in command:
                    continue
                checked += 1
                # When bash splits it into words (printf shows each on its own line; nothing is run)
                words = subprocess.run(
                    ["bash", "-c", "printf '%s\\n' " + command.split(" -d ", 1)[1]],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout.splitlines()
                # Then the body is one JSON argument, and nothing follows it
                if len(words) != 1 or not words[0].rstrip().endswith("}"):
                    bad.append(f"{doc.name}: {command.strip()[:120]} -> {words}")
    assert checked, "no documented curl with a body found: the pattern no longer matches the docs"
    assert not bad, bad


def test_the_printed_ops_commands_find_the_shared_package_without_pythonpath() -> None:
    # Given `.venv/bin/python -m ops.token ... --profile` as the README and make run's banner print it
    printed = (ROOT / "README.md").read_text(encoding="utf-8") + (ROOT / "ops" / "run.py").read_text(encoding="utf-8")
    assert re.search(r"\.venv/bin/python -m ops\.token --mode \S+ --user <uuid> --profile", printed)
    # When a terminal without the Makefile's PYTHONPATH runs it, --profile imports ops.seed (the payments package)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", "import ops.seed, payments.settings"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    # Then it is found (it failed with "No module named 'payments'")
    assert done.returncode == 0, done.stderr[-400:]


def test_the_supabase_commands_name_the_ca_where_the_deploy_doc_commits_it() -> None:
    deploy = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    committed = re.search(r"`(layers/shared/payments/certs/supabase-ca\.crt)`", deploy)
    assert committed, "the doc says where the Supabase CA is committed"
    named = re.findall(r"sslrootcert=([^&'\"\s`]+)", deploy)
    assert named
    # make migrate and psql run from the repository's root: a relative path is read from there
    assert set(named) == {committed[1]}, named
