"""The house layering, checked on the source: SQL lives in adapters/, settings in settings.py."""

from __future__ import annotations

import ast
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


def test_every_transaction_of_the_service_pins_read_committed() -> None:
    """The transactions lock a payment (the migration runner: its advisory lock), then read what its holder committed:
    written (and tested) for READ COMMITTED, they say so in their BEGIN, whatever the database's default. Under
    REPEATABLE READ a snapshot taken before the lock wait missed a concurrent refund's attempt, and the refunds together
    exceeded what was paid (tests/integration/test_refunds.py)."""
    calls = []
    ops = PACKAGE.parents[2] / "ops"  # the migration runner locks, then reads what a runner before it committed
    for path in [*PACKAGE.rglob("*.py"), *ops.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = ast.unparse(node.func.value)
            # Database.atomic's own call of `self.transaction` aside; a callback's `transaction()` is its Hyp one
            if (node.func.attr == "atomic" and receiver != "self") or (
                node.func.attr == "transaction" and receiver in ("db", "self.db")
            ):
                pinned = any(
                    k.arg == "read_committed" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                calls.append((f"{path.name}:{node.lineno}", pinned))
    assert len(calls) >= 19, calls  # the scan finds them
    assert [where for where, pinned in calls if not pinned] == []
