"""The shell commands the docs give work when pasted: each `curl ... -d '<json>'` body is one shell word."""

from __future__ import annotations

import re
import subprocess
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
