"""The build's bytecode (ops/bytecode.py): what Lambda imports without compiling, from a read-only package whose files
`sam deploy` dated 1980-01-01."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ops import bytecode

TEMPLATE = """\
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python{version}
Resources:
  Shared:
    Type: AWS::Serverless::LayerVersion
    Properties:
      ContentUri: Shared
    Metadata:
      BuildMethod: python{version}
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: Fn
      Handler: app.handler
  Topic:
    Type: AWS::SNS::Topic
"""
VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
ZIP_EPOCH = 315532800  # 1980-01-01, the date sam deploy's zip gives every file

# Imports the function as Lambda would (its code, then the layer, on the path; nothing written) and reports every
# module compiled from source: importlib compiles through SourceLoader.source_to_code only when no bytecode is usable.
IMPORT = """
import importlib._bootstrap_external as external, json, sys
compiled = []
original = external.SourceLoader.source_to_code
def source_to_code(self, data, path, **kwargs):
    compiled.append(path)
    return original(self, data, path, **kwargs)
external.SourceLoader.source_to_code = source_to_code
sys.path[:0] = sys.argv[1:3]
import app
print(json.dumps({"compiled": compiled, "where": app.where()}))
"""


def _build(root: Path, version: str = VERSION) -> Path:
    build = root / "build"
    (build / "Fn").mkdir(parents=True)
    (build / "Shared" / "python" / "lib").mkdir(parents=True)
    (build / "template.yaml").write_text(TEMPLATE.format(version=version), encoding="utf-8")
    (build / "Fn" / "app.py").write_text(
        "import lib.inner\n\ndef where():\n    return [where.__code__.co_filename, lib.inner.where()]\n",
        encoding="utf-8",
    )
    (build / "Shared" / "python" / "lib" / "__init__.py").write_text("", encoding="utf-8")
    (build / "Shared" / "python" / "lib" / "inner.py").write_text(
        "FLAGS = frozenset({'a', 'b', 'c', 'd'})\n\ndef where():\n    return where.__code__.co_filename\n",
        encoding="utf-8",
    )
    return build


def _as_lambda_unpacks(build: Path) -> None:
    for path in build.rglob("*"):
        os.utime(path, (ZIP_EPOCH, ZIP_EPOCH))


def _import(build: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", IMPORT, str(build / "Fn"), str(build / "Shared" / "python")],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def test_the_built_code_imports_in_lambda_without_compiling(tmp_path: Path) -> None:
    build = _build(tmp_path)
    assert bytecode.compile_artifacts(build) == 2  # the function and the layer; the topic is no code
    _as_lambda_unpacks(build)
    report = _import(build)
    assert report["compiled"] == []
    # The loader names each code object by the file it was loaded for, whatever path the build compiled it at.
    assert report["where"] == [str(build / "Fn" / "app.py"), str(build / "Shared" / "python" / "lib" / "inner.py")]
    for source in build.rglob("*.py"):
        cached = Path(importlib.util.cache_from_source(str(source)))
        header = cached.read_bytes()[:16]
        assert header[:4] == importlib.util.MAGIC_NUMBER
        assert int.from_bytes(header[4:8], "little") == 0b11, source  # hash-based, checked
        assert header[8:16] == importlib.util.source_hash(source.read_bytes())


def test_timestamp_bytecode_would_be_compiled_again_in_lambda(tmp_path: Path) -> None:
    # What the hash-checked bytecode is for: the default (timestamp) .pyc records the source's date at the build,
    # and the package dates every file 1980, so Lambda would compile every module anyway.
    build = _build(tmp_path)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(build)], check=True)
    _as_lambda_unpacks(build)
    assert len(_import(build)["compiled"]) == 3


def test_a_source_changed_after_the_build_is_compiled_not_run_stale(tmp_path: Path) -> None:
    build = _build(tmp_path)
    bytecode.compile_artifacts(build)
    (build / "Shared" / "python" / "lib" / "inner.py").write_text(
        "def where():\n    return 'changed'\n", encoding="utf-8"
    )
    _as_lambda_unpacks(build)
    report = _import(build)
    assert report["where"][1] == "changed"
    assert [Path(p).name for p in report["compiled"]] == ["inner.py"]


def test_the_same_code_gives_the_same_bytes_wherever_it_is_built(tmp_path: Path) -> None:
    first = _build(tmp_path / "one")
    second = tmp_path / "elsewhere" / "build"
    shutil.copytree(first, second)
    bytecode.compile_artifacts(first)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # the build fixes its own seed whatever the caller's
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from ops import bytecode; bytecode.compile_artifacts(__import__('pathlib').Path(sys.argv[1]))",
            str(second),
        ],
        env={**env, "PYTHONPATH": str(Path(bytecode.__file__).resolve().parents[1])},
        check=True,
    )
    compiled = sorted(p.relative_to(first) for p in first.rglob("*.pyc"))
    assert len(compiled) == 3
    assert compiled == sorted(p.relative_to(second) for p in second.rglob("*.pyc"))
    for relative in compiled:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative


def test_another_python_or_no_build_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build = _build(tmp_path, version="3.12")
    with pytest.raises(bytecode.BytecodeError, match=r"runs on python3\.12, this build's Python is python3\.1"):
        bytecode.compile_artifacts(build)
    assert not list(build.rglob("*.pyc"))
    assert bytecode.main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "run `sam build` first" in err and err.count("\n") == 1
