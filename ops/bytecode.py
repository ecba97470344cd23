"""Compile the built functions and layer to bytecode, as Lambda will run them (`make build` runs it after `sam build`).

`sam build` ships sources only: it copies code without `__pycache__` and unpacks the layer's wheels without compiling
them. Lambda's code directories are read-only, so without bytecode in the package every cold start compiles every
module it imports (Powertools, pydantic, boto3, ours) and throws the result away: about a second of CPU before the
first request (docs/benchmarks.md, "as Lambda loads the built artifacts").

The bytecode is hash-checked (PEP 552): `sam deploy` zips every file dated 1980-01-01, so a timestamp `.pyc` would not
match its source in Lambda and be ignored; a checked-hash one is used when the source's hash matches, whatever its
date, and a source changed after the build is compiled afresh rather than run stale. The file names recorded are the
paths Lambda runs them from (`/var/task`, `/opt/python`), not the build machine's, and the hash seed is fixed: a
rebuild of the same code, anywhere, packages the same bytes.

`python -m ops.bytecode [build dir]` (default `.aws-sam/build`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from ops.template import _CfnLoader

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / ".aws-sam" / "build"
TASK_ROOT = "/var/task"  # where Lambda puts a function's code
LAYER_ROOT = "/opt/python"  # where a layer's python/ lands


class BytecodeError(Exception):
    pass


def artifacts(build_dir: Path) -> list[tuple[Path, str, str]]:
    """(directory, the path Lambda runs it from, its runtime) of every Python function and layer the built template
    packages from `build_dir`."""
    template_file = build_dir / "template.yaml"
    if not template_file.is_file():
        raise BytecodeError(f"{template_file} is missing: run `sam build` first")
    template = yaml.load(template_file.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506 - safe subclass
    default_runtime = template.get("Globals", {}).get("Function", {}).get("Runtime")
    found = []
    for name, resource in template.get("Resources", {}).items():
        kind, properties = resource.get("Type"), resource.get("Properties", {})
        if kind == "AWS::Serverless::Function" and isinstance(properties.get("CodeUri"), str):
            runtime = properties.get("Runtime", default_runtime)
            found.append((build_dir / properties["CodeUri"], TASK_ROOT, runtime))
        elif kind == "AWS::Serverless::LayerVersion" and isinstance(properties.get("ContentUri"), str):
            runtime = resource.get("Metadata", {}).get("BuildMethod")
            found.append((build_dir / properties["ContentUri"] / "python", LAYER_ROOT, runtime))
        else:
            continue
        if not isinstance(runtime, str) or not runtime.startswith("python"):
            raise BytecodeError(f"{name}: not a Python runtime ({runtime!r})")
    return found


def compile_artifacts(build_dir: Path = BUILD_DIR) -> int:
    """Compile every built function and layer; the number of directories compiled."""
    ours = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = artifacts(build_dir)
    for directory, runtime_root, runtime in found:
        if runtime != ours:
            # Bytecode is specific to a Python minor version: another one would be ignored in Lambda, and cost its
            # read at every import.
            raise BytecodeError(f"{directory.name} runs on {runtime}, this build's Python is {ours}")
        if not directory.is_dir():
            raise BytecodeError(f"{directory} is missing: run `sam build` first")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "compileall",
                "-q",
                "-j",
                "0",
                "--invalidation-mode",
                "checked-hash",
                "-s",
                str(directory),
                "-p",
                runtime_root,
                str(directory),
            ],
            env={**os.environ, "PYTHONHASHSEED": "0"},
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise BytecodeError(f"compiling {directory}: {(done.stdout + done.stderr).strip()[-2000:]}")
    return len(found)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    build_dir = Path(args[0]) if args else BUILD_DIR
    try:
        count = compile_artifacts(build_dir)
    except BytecodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"bytecode: {count} functions and layers compiled (hash-checked) in {build_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
