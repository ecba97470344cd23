"""Every alarm the stack creates is named in the docs, with what it means (docs/deploy.md's table, or a runbook of
docs/operations.md): an on-call engineer paged by it finds it (an outside review found the admin function's errors
alarm named nowhere)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# An alarm's name, and the metric it watches (the next MetricName of its resource).
_ALARM = re.compile(
    r"AlarmName: !Sub payments-\$\{Stage\}-([a-z0-9-]+)[^\n]*\n(?:(?!AlarmName:)[\s\S])*?MetricName: (\w+)"
)
_NAMED = re.compile(r"`\.\.\.-([a-z0-9{},-]+)`")


def _expanded(name: str) -> set[str]:
    """`{create-payment,admin}-errors` -> {"create-payment-errors", "admin-errors"}."""
    parts = re.split(r"\{([^}]*)\}", name)
    choices = [part.split(",") if i % 2 else [part] for i, part in enumerate(parts)]
    return {"".join(combination) for combination in itertools.product(*choices)}


def test_every_alarm_of_the_template_is_named_in_the_docs() -> None:
    """By its name in docs/deploy.md's table, or by the metric it watches in a runbook's heading of operations.md."""
    alarms = _ALARM.findall((ROOT / "template.yaml").read_text(encoding="utf-8"))
    deploy = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    named = {alarm for match in _NAMED.findall(deploy) for alarm in _expanded(match)}
    runbooks = set(re.findall(r"^### `(\w+)`", operations, re.M))
    assert len(alarms) > 20
    assert sorted(name for name, metric in alarms if name not in named and metric not in runbooks) == []
