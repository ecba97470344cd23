"""`make deploy`: `sam deploy` of the built stack that publishes new function versions when only parameters changed.

The API and the schedule invoke each function's alias `live`. SAM publishes a new version (and moves the alias)
when the template it reads changes, not when a parameter's value does (aws/serverless-application-model#1640):
a deploy that changes only `--parameter-overrides` (a web app URL, a secret's ARN, `SnapStart=on`) would update
the unpublished `$LATEST` and leave the alias on the old settings. So before `sam deploy` this command writes a
digest of the parameters given into the built template's `CONFIG_REVISION` (a literal every function carries,
read by nothing): other parameters, other literal, new versions; the same parameters, the same template, nothing
published. The template in the repository is not touched.

The parameters are the command line's `--parameter-overrides`, else those of the `samconfig.toml` environment
(`--config-env`, default `default`), read by SAM CLI's own parser, as `sam deploy` itself takes them.

`python -m ops.deploy [sam deploy's arguments]`, e.g. `--config-env prod --parameter-overrides Stage=prod ...`.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ops import bytecode

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / ".aws-sam" / "build" / "template.yaml"
SAMCONFIG = ROOT / "samconfig.toml"
_REVISION = re.compile(r"""^(?P<head>\s*CONFIG_REVISION:\s*)(?P<quote>['"]?)(?P<value>[^'"\s#]*)(?P=quote)\s*$""", re.M)


class DeployError(Exception):
    pass


def parameters(args: Sequence[str], samconfig: Path = SAMCONFIG) -> list[str]:
    """The parameter overrides this deploy passes, each `Name=Value`, sorted, read as `sam deploy` reads them: by SAM
    CLI's own option parser and samconfig reader (the command line's `--parameter-overrides` in any spelling, else
    those of the `--config-env` environment of the samconfig file, a string or a TOML list). A hand-written reading
    missed `--parameter-overrides=...` and `--config-env=prod`: the digest then stayed the same and no version of
    the new parameters was published. `DeployError` when they cannot be read: no deploy without knowing them."""
    import click
    from samcli.commands.deploy.command import cli

    given = list(args)
    if not any(arg == "--config-file" or arg.startswith("--config-file=") for arg in given):
        given = ["--config-file", str(samconfig), *given]
    try:
        context = cli.make_context("deploy", given)  # strict: what sam deploy would refuse is refused here
    except (click.ClickException, click.exceptions.Exit, OSError, ValueError) as exc:
        raise DeployError(f"cannot read this deploy's parameters as sam deploy would: {exc}") from None
    overrides = context.params.get("parameter_overrides") or {}
    if not isinstance(overrides, dict):
        raise DeployError(f"cannot read this deploy's parameters as sam deploy would: {overrides!r}")
    return sorted(f"{name}={value}" for name, value in overrides.items())


def digest(values: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(sorted(values)).encode()).hexdigest()[:12]


def with_revision(template: str, values: Sequence[str]) -> str:
    """The built template with the parameters' digest in CONFIG_REVISION (appended to the template's own)."""
    found = list(_REVISION.finditer(template))
    if len(found) != 1:
        raise DeployError(f"the built template has {len(found)} CONFIG_REVISION lines, not 1: run `make build`")
    own = found[0]["value"].split("-p", 1)[0]  # a template patched before keeps one digest, the newest
    revision = f"{own}-p{digest(values)}"
    return _REVISION.sub(lambda m: f'{m["head"]}"{revision}"', template, count=1)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        values = parameters(args)
        if not BUILT.exists():
            raise DeployError(f"{BUILT.relative_to(ROOT)} is missing: run `make build` first")
        # What `make build` did already, but a bare `sam build` before this command did not: without bytecode in the
        # package every cold start compiles every module it imports (ops/bytecode.py).
        bytecode.compile_artifacts(BUILT.parent)
        BUILT.write_text(with_revision(BUILT.read_text(encoding="utf-8"), values), encoding="utf-8")
    except (DeployError, bytecode.BytecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"CONFIG_REVISION of this deploy's parameters: {digest(values)}", file=sys.stderr)
    return subprocess.call([str(Path(sys.executable).parent / "sam"), "deploy", *args], cwd=ROOT)


if __name__ == "__main__":
    raise SystemExit(main())
