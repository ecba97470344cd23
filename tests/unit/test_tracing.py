"""X-Ray costs a cold start only when tracing is on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import sys; sys.path[:0] = [{fn!r}]; import app; from payments.tracing import tracer; "
    "print(type(tracer).__name__, 'aws_xray_sdk.core' in sys.modules)"
)


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({"POWERTOOLS_TRACE_DISABLED": "true", "LAMBDA_TASK_ROOT": "/var/task"}, "_NoTracer False"),
        ({}, "_NoTracer False"),  # outside Lambda, as Powertools' own rule
        ({"LAMBDA_TASK_ROOT": "/var/task"}, "Tracer True"),  # in Lambda with Tracing: Active
    ],
    ids=["disabled", "outside-lambda", "lambda"],
)
def test_the_x_ray_sdk_is_imported_only_when_tracing_is_on(environment: dict[str, str], expected: str) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("POWERTOOLS_TRACE_DISABLED", "LAMBDA_TASK_ROOT", "AWS_SAM_LOCAL")
    }
    env |= {
        "PYTHONPATH": f"{ROOT / 'layers' / 'shared'}:{ROOT}",
        "POWERTOOLS_METRICS_NAMESPACE": "Probe",
        "AWS_DEFAULT_REGION": "eu-west-1",
        **environment,
    }
    fn = str(ROOT / "functions" / "hypay_callback")
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(fn=fn)], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == expected, out.stderr[-2000:]
