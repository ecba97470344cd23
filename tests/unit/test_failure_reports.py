"""A failing test's report repeats no secret or card number (outside reviews: pytest printed an assertion's operands,
and the captured output and logs, in full, with the terminal's KEY, the CVV and the card token in them; then a card
number followed by a full stop, in its groups, or glued to a word or to its expiry)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.leaks import FORBIDDEN, find_leaks, masked

ROOT = Path(__file__).resolve().parents[2]


def test_a_failure_holding_secrets_is_reported_without_them() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", "--showlocals",
         "tests/support/failing_with_secrets.py"],
        cwd=ROOT,
        env={**os.environ, "FAIL_WITH_SECRETS": "1", "PYTHONPATH": f"{ROOT / 'layers' / 'shared'}:{ROOT}"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 1 and "5 failed" in output, masked(output[-2000:])
    assert "[secret]" in output and "[card]" in output  # what was there is named, masked
    leaked = find_leaks(output, "4580000000000000")
    assert not leaked, f"{len(leaked)} secret(s) in the report, starting {[s[:4] + '...' for s in leaked]}"
    assert all(value not in output for value in FORBIDDEN if len(value) > 8)
    # The card number however it was written (a full stop after it, in its groups, glued to a word or to its expiry)
    shown = {m.group(0)[4:] for m in _THE_CARD.finditer(output)}
    assert not shown, f"the card number is in the report {len(shown)} ways, ending {sorted(shown)}"


_THE_CARD = re.compile(r"5326\D{0,3}1053\D{0,3}0098\D{0,3}5614")
