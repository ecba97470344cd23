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


def test_every_alarm_of_the_template_is_named_in_the_deploy_docs() -> None:
    """By its name in docs/deploy.md's table: the name an alarm's e-mail gives (a runbook's heading in operations.md
    names the metric, which the reader would have to guess from the alarm's name)."""
    alarms = _ALARM.findall((ROOT / "template.yaml").read_text(encoding="utf-8"))
    deploy = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    named = {alarm for match in _NAMED.findall(deploy) for alarm in _expanded(match)}
    assert len(alarms) > 20
    assert sorted(name for name, _ in alarms if name not in named) == []


def test_the_secrets_table_names_every_function_that_reads_each_secret() -> None:
    """docs/integration.md's secrets table says which functions may read the Hyp secret and the database's (their IAM
    policies): what a review of who holds the KEY (a rotation, PCI scope) goes by."""
    import yaml

    from ops.template import TEMPLATE, _CfnLoader

    doc = yaml.load(TEMPLATE.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    functions = {k: r["Properties"] for k, r in doc["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}

    def readers(secret: str) -> list[str]:
        return sorted(
            str(properties["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"])
            for properties in functions.values()
            if f"'Ref': '{secret}'" in str(properties.get("Policies"))
        )

    rows = {
        line.split("|")[1].strip(): line
        for line in (ROOT / "docs" / "integration.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| ")
    }
    hyp = next(line for name, line in rows.items() if name.startswith("`Masof`, `KEY`, `PassP`"))
    assert readers("HypaySecretArn") == ["admin", "create_payment", "hypay_callback"]
    assert all(f"`{reader}`" in hyp for reader in readers("HypaySecretArn")), hyp
    assert len(readers("DbSecretArn")) == len(functions) - 1  # all but the authorizer
    assert "every function but the authorizer" in rows["database credentials"]
