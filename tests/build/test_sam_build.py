"""`sam build` output imports and answers, with only the built function + layer (and the runtime's
own boto3) on the path, as Lambda loads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ops import bytecode
from ops.hypay_simulator import (
    PUBLIC_TEST_TERMINAL_KEY,
    PUBLIC_TEST_TERMINAL_MASOF,
    PUBLIC_TEST_TERMINAL_PASSP,
    HypaySimulator,
    public_test_terminal,
)
from ops.seed import seed
from ops.template import _CfnLoader
from tests.support.pg import database, with_database

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUNTIME_DIR = ROOT / ".local" / "lambda-runtime"  # stands in for the python3.13 runtime's boto3

pytestmark = pytest.mark.build

RUNNER = r"""
import importlib._bootstrap_external as external, json, sys
compiled = []  # modules compiled from source: importlib compiles only when no bytecode is usable
_source_to_code = external.SourceLoader.source_to_code
def source_to_code(self, data, path, **kwargs):
    compiled.append(path)
    return _source_to_code(self, data, path, **kwargs)
external.SourceLoader.source_to_code = source_to_code
function_dir, layer_dir, runtime_dir, handler, event_file = sys.argv[1:6]
sys.path[:0] = [function_dir, layer_dir, runtime_dir]
class Context:
    function_name = "built"; memory_limit_in_mb = 256; aws_request_id = "req-1"
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:built"
    def get_remaining_time_in_millis(self): return 10000
module_name, attr = handler.rsplit(".", 1)
module = __import__(module_name)
answer = getattr(module, attr)(json.load(open(event_file)), Context())
import payments
print(json.dumps({"answer": answer, "payments": payments.__file__,
                  "site": [p for p in sys.path if "site-packages" in p],
                  "compiled": [p for p in compiled if not p.startswith(runtime_dir)]}))
"""

EVENTS = {
    "CreatePaymentFunction": "create_payment_post.json",
    "HypayCallbackFunction": "hypay_callback_return_connection_test.json",
    "CleanupFunction": "cleanup_schedule.json",
}


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sam") / "build"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "SAM_CLI_TELEMETRY": "0"}
    result = subprocess.run(
        [
            str(BIN / "sam"),
            "build",
            "--no-cached",
            "--template-file",
            str(ROOT / "template.yaml"),
            "--build-dir",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    bytecode.compile_artifacts(out)  # the rest of `make build`
    # As Lambda unpacks what sam deploy zipped: every file dated 1980-01-01 (and read-only: nothing is written back).
    for path in out.rglob("*"):
        os.utime(path, (315532800, 315532800))
    return out


@pytest.fixture(scope="module")
def runtime_dir() -> Path:
    if not (RUNTIME_DIR / "boto3").is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
                str(RUNTIME_DIR),
                "boto3",
            ],
            check=True,
            timeout=600,
        )
    return RUNTIME_DIR


def test_layer_package_sits_under_python(build_dir: Path) -> None:
    # The SAM trap: BuildMethod copies ContentUri into python/, so payments/ must land right there.
    assert (build_dir / "SharedLayer" / "python" / "payments" / "__init__.py").is_file()
    assert not (build_dir / "SharedLayer" / "python" / "python").exists()


@pytest.fixture(scope="module")
def backends(pg_server, migrated_template) -> Iterator[dict[str, str]]:  # noqa: ANN001 - conftest fixtures
    """A seeded database (with the events' user) and a Hypay simulator for the built functions."""
    name = pg_server.create(template=migrated_template)
    url = with_database(pg_server.url, name)
    db = database(url)
    seed(db)
    db.run(
        "INSERT INTO profiles (id, email, full_name) VALUES "
        "('11111111-1111-4111-8111-111111111111', 'dana@example.co.il', 'דנה לוי')"
    )
    db.close()
    sim = HypaySimulator([public_test_terminal()]).start()
    yield {
        "DATABASE_URL": url,
        "HYPAY_URL": sim.url,
        "HYPAY_MASOF": PUBLIC_TEST_TERMINAL_MASOF,
        "HYPAY_KEY": PUBLIC_TEST_TERMINAL_KEY,
        "HYPAY_PASSP": PUBLIC_TEST_TERMINAL_PASSP,
    }
    sim.stop()
    pg_server.drop(name)


@pytest.mark.parametrize("function", sorted(EVENTS))
def test_built_function_imports_and_answers(
    build_dir: Path, runtime_dir: Path, backends: dict[str, str], function: str
) -> None:
    built = yaml.load((build_dir / "template.yaml").read_text(), Loader=_CfnLoader)  # noqa: S506
    handler = built["Resources"][function]["Properties"].get("Handler", "app.lambda_handler")
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "POWERTOOLS_METRICS_NAMESPACE": "BuildTest",
        "POWERTOOLS_SERVICE_NAME": function,
        "POWERTOOLS_TRACE_DISABLED": "1",
        **backends,
    }
    # -S: no site-packages at all, only what sam build produced plus the runtime's boto3; -B: nothing written
    result = subprocess.run(
        [
            sys.executable,
            "-S",
            "-I",
            "-B",
            "-c",
            RUNNER,
            str(build_dir / function),
            str(build_dir / "SharedLayer" / "python"),
            str(runtime_dir),
            handler,
            str(ROOT / "events" / EVENTS[function]),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["payments"].startswith(str(build_dir / "SharedLayer" / "python"))
    assert report["site"] == []
    # The build's bytecode served every import: a cold start compiles nothing (ops/bytecode.py).
    assert report["compiled"] == []
    answer = report["answer"]
    if function == "CleanupFunction":
        assert "purged_idempotency_records" in answer
    elif function == "HypayCallbackFunction":
        assert answer["statusCode"] == 200
    else:  # a real payment: pg8000, pydantic and Powertools from the layer, the simulator as Hyp
        assert answer["statusCode"] == 201, answer
        assert json.loads(answer["body"])["status"] == "pending"
