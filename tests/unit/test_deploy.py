"""`make deploy` publishes new function versions when only the parameters changed (SAM publishes by the template it
reads, not by parameter values), and nothing new when they did not."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ops.deploy import DeployError, parameters, with_revision
from ops.template import TEMPLATE


def _versions(template_text: str) -> dict[str, str]:
    """Each function's published version as SAM's translation names it (by a hash of what it publishes)."""
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    template: dict[str, Any] = json.loads(json.dumps(yaml_parse(template_text)))
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = f"s3://bucket/{name}"
        if resource["Type"] == "AWS::Serverless::LayerVersion":
            resource["Properties"]["ContentUri"] = "s3://bucket/layer"

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
    out = transform(template, {}, NoManagedPolicies())
    return {
        v["Properties"]["FunctionName"]["Ref"]: k
        for k, v in out["Resources"].items()
        if v["Type"] == "AWS::Lambda::Version"
    }


def _samconfig(folder: Path, **environments: str | list[str]) -> Path:
    """A samconfig.toml with one deploy environment per keyword: its stack and its parameter_overrides (a string or,
    as SAM also reads it, a TOML list)."""
    lines = ["version = 0.1"]
    for name, overrides in environments.items():
        lines += [f"[{name}.deploy.parameters]", f'stack_name = "payments-{name}"']
        lines.append(f"parameter_overrides = {json.dumps(overrides)}")
    path = folder / "samconfig.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_other_parameters_publish_new_versions_and_the_same_ones_nothing_new() -> None:
    source = TEMPLATE.read_text(encoding="utf-8")
    dev = ["Stage=dev", "WebAppSuccessUrl=https://a.example/ok"]
    first = _versions(with_revision(source, dev))
    assert len(first) == 6
    # Another value of one parameter: every function gets a new version
    changed = _versions(with_revision(source, ["Stage=dev", "WebAppSuccessUrl=https://b.example/ok"]))
    assert all(changed[f] != first[f] for f in first)
    # The same parameters (in any order, on a template patched before): the same versions, nothing published
    assert _versions(with_revision(with_revision(source, ["Stage=x"]), list(reversed(dev)))) == first


def test_the_parameters_are_the_command_lines_else_the_samconfig_environments(tmp_path: Path) -> None:
    samconfig = _samconfig(tmp_path, default="Stage=dev", prod="Stage=prod FunctionConcurrency=20")
    assert parameters([], samconfig) == ["Stage=dev"]
    assert parameters(["--config-env", "prod"], samconfig) == ["FunctionConcurrency=20", "Stage=prod"]
    given = [
        "--config-env",
        "prod",
        "--parameter-overrides",
        "Stage=prod",
        'WebAppOrigins="https://a b"',
        "--no-fail-on-empty-changeset",
    ]
    assert parameters(given, samconfig) == ["Stage=prod", "WebAppOrigins=https://a b"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # `--option=value`, as sam deploy (click) also takes it
        (
            ["--parameter-overrides=Stage=dev WebAppSuccessUrl=https://b.example/ok"],
            ["Stage=dev", "WebAppSuccessUrl=https://b.example/ok"],
        ),
        (["--config-env=prod"], ["FunctionConcurrency=20", "Stage=prod"]),
        (["--config-env", "list"], ["LogLevel=DEBUG", "Stage=list"]),  # a TOML list in samconfig, as SAM reads it
    ],
)
def test_the_parameters_are_read_in_every_spelling_sam_deploy_takes(
    tmp_path: Path, args: list[str], expected: list[str]
) -> None:
    # A hand-written reading took these for samconfig's default environment (the same digest: nothing published) or
    # crashed on the list
    samconfig = _samconfig(
        tmp_path, default="Stage=dev", prod="Stage=prod FunctionConcurrency=20", list=["Stage=list", "LogLevel=DEBUG"]
    )
    assert parameters(args, samconfig) == expected


@pytest.mark.parametrize(
    "args", [["--parameter-overrides", "Stage=prod", "Bad"], ["--no-such-option"], ["--config-env"]]
)
def test_parameters_sam_deploy_would_refuse_stop_the_deploy(tmp_path: Path, args: list[str]) -> None:
    # Read leniently, they were taken for none: the template patched with that digest, then sam deploy started
    samconfig = _samconfig(tmp_path, default="Stage=dev")
    with pytest.raises(DeployError, match="as sam deploy would"):
        parameters(args, samconfig)


def test_a_template_without_one_config_revision_is_refused() -> None:
    with pytest.raises(DeployError, match="CONFIG_REVISION"):
        with_revision("Resources: {}\n", ["Stage=dev"])


def test_the_command_patches_the_built_template_then_runs_sam_deploy_with_its_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ops import deploy

    built = tmp_path / "template.yaml"
    built.write_text(TEMPLATE.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(deploy, "BUILT", built)
    monkeypatch.setattr(deploy, "ROOT", tmp_path)
    ran: list[list[str]] = []
    monkeypatch.setattr(deploy.subprocess, "call", lambda command, cwd: ran.append(command) or 0)
    compiled: list[Path] = []
    monkeypatch.setattr(deploy.bytecode, "compile_artifacts", lambda build_dir: compiled.append(build_dir) or 0)
    args = ["--config-env", "prod", "--parameter-overrides", "Stage=prod", "WebAppOrigins=https://a.example"]
    assert deploy.main(args) == 0
    [command] = ran
    assert compiled == [tmp_path]  # the build's bytecode (ops/bytecode.py), even after a bare sam build
    assert command[0].endswith("/sam") and command[1:] == ["deploy", *args]
    expected = deploy.digest(["Stage=prod", "WebAppOrigins=https://a.example"])
    assert f'CONFIG_REVISION: "1-p{expected}"' in built.read_text(encoding="utf-8")
    # Without a build there is nothing to deploy: refused in one line
    built.unlink()
    assert deploy.main(args) == 2 and len(ran) == 1


def test_the_build_can_run_in_sams_container() -> None:
    # Off Linux x86_64 the layer's wheels must come from SAM's build container: `make deploy` builds first, so the
    # option reaches its build too (docs/deploy.md)
    root = Path(__file__).resolve().parents[2]
    for target in ("build", "deploy"):
        shown = subprocess.run(
            ["make", "-n", target, "SAM_BUILD_ARGS=--use-container"], cwd=root, capture_output=True, text=True
        ).stdout
        assert "sam build --template-file template.yaml --use-container" in shown, shown


@pytest.mark.parametrize("args", [[], ["--config-env", "prod"]])
def test_the_repositorys_samconfig_is_read_as_sam_deploy_reads_it(args: list[str]) -> None:
    values = parameters(args)
    assert any(value.startswith("Stage=") for value in values), values
