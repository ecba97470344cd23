"""`make deploy`: `sam deploy` of the built stack that publishes new function versions when only parameters changed.

The API and the schedule invoke each function's alias `live`. SAM publishes a new version (and moves the alias)
when the template it reads changes, not when a parameter's value does (aws/serverless-application-model#1640):
a deploy that changes only `--parameter-overrides` (a web app URL, a secret's ARN, `SnapStart=on`) would update
the unpublished `$LATEST` and leave the alias on the old settings. So before `sam deploy` this command writes a
digest of the parameters given into the built template's `CONFIG_REVISION` (a literal every function carries,
read by nothing): other parameters, other literal, new versions; the same parameters, the same template, nothing
published. The template in the repository is not touched.

The parameters are the command line's `--parameter-overrides`, else those of the `samconfig.toml` environment
(`--config-env`, default `default`), as `sam deploy` itself takes them.

`python -m ops.deploy [sam deploy's arguments]`, e.g. `--config-env prod --parameter-overrides Stage=prod ...`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import sys
import tomllib
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
    """The parameter overrides this deploy passes, each `Name=Value`, sorted: the command line's
    `--parameter-overrides`, else the samconfig environment's (`--config-env`, default `default`)."""
    given: list[str] | None = None
    for i, arg in enumerate(args):
        if arg == "--parameter-overrides":
            given = []
            for value in args[i + 1 :]:
                if value.startswith("--"):
                    break
                given += shlex.split(value)
    if given is None:
        env = "default"
        for i, arg in enumerate(args):
            if arg == "--config-env" and i + 1 < len(args):
                env = args[i + 1]
        config = tomllib.loads(samconfig.read_text(encoding="utf-8")) if samconfig.exists() else {}
        deploy = config.get(env, {}).get("deploy", {}).get("parameters", {})
        given = shlex.split(deploy.get("parameter_overrides", ""))
    return sorted(given)


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
