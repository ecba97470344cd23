"""The house layering, checked on the source: SQL lives in adapters/, settings in settings.py."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "layers" / "shared" / "payments"
SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+|DELETE FROM)\b.*\b(FROM|SET|VALUES|WHERE)\b")


def test_services_hold_no_sql() -> None:
    for path in (PACKAGE / "services").glob("*.py"):
        text = path.read_text()
        assert "bind(" not in text and "import pg8000" not in text, path.name
        for number, line in enumerate(text.splitlines(), 1):
            assert not SQL.search(line), f"{path.name}:{number} holds SQL: {line.strip()}"


def test_settings_are_read_from_the_environment_only_in_settings_py() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name == "settings.py":
            continue
        text = path.read_text()
        assert "os.environ" not in text and "os.getenv" not in text, path
        assert not re.search(r'alias="[A-Z_]+"', text), f"{path} declares an environment setting"
