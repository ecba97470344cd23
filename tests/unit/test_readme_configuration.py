"""The README's configuration table names every environment variable the functions' settings read."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_variable_the_settings_read_is_in_the_readme() -> None:
    settings = (ROOT / "layers" / "shared" / "payments" / "settings.py").read_text()
    read = set(re.findall(r'\benv\(\s*"([A-Z][A-Z0-9_]*)"', settings))
    assert len(read) > 20, "the settings' variables were not found: has env(...) changed?"
    readme = (ROOT / "README.md").read_text()
    table = "\n".join(line for line in readme.splitlines() if line.startswith("| `"))
    assert sorted(name for name in read if f"`{name}`" not in table) == []
