"""What the functions customers wait on load at a cold start: nothing pydantic's model machinery, Powertools'
OpenAPI validation, the documentation's models or a refund's time zone database need (#14, `make bench`).

A request is then served as well: the settings, the request body and the OpenAPI-free routes are read without
any of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOT_AT_A_COLD_START = (
    "pydantic.main",  # any BaseModel class loads it: about as much as the whole target's margin
    "pydantic.fields",
    "aws_lambda_powertools.event_handler.openapi.params",  # Powertools' request validation, and pydantic with it
    "aws_lambda_powertools.event_handler.middlewares.openapi_validation",
    "payments.api_models",  # the OpenAPI document's models: ops/openapi.py only
    "zoneinfo",  # a refund's cancel-or-refund day
)
PROBE = """
import json, sys
sys.path[:0] = [{fn!r}]
import app
watched = {watched!r} + {only_here!r}
loaded = sorted(m for m in watched if m in sys.modules)
import payments.settings as s
for read in (s.database_settings, s.idempotency_settings, s.hypay_settings, s.auth_settings, {settings}):
    read()
{after}
import gc
print(json.dumps([loaded, sorted(m for m in {watched!r} if m in sys.modules), gc.get_freeze_count()]))
"""
BODY = (
    "from payments.domain.payment import CreatePaymentRequest\n"
    "CreatePaymentRequest.model_validate({'credit_pack_id': 'aaaaaaaa-0000-4000-8000-000000000001'})\n"
)


# A page request of create_payment needs neither: its first saved-card charge loads them.
SAVED_CARD_ONLY = ("payments.services.settle", "payments.adapters.journal")


@pytest.mark.parametrize(
    ("function", "settings", "after", "only_here"),
    [
        ("create_payment", "s.api_settings", BODY, SAVED_CARD_ONLY),
        ("hypay_callback", "s.callback_settings", "", ()),
    ],
)
def test_a_cold_start_and_its_first_request_load_none_of_it(
    function: str, settings: str, after: str, only_here: tuple[str, ...]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POWERTOOLS_", "HYPAY_", "DB_", "JWT_"))}
    env |= {
        "PYTHONPATH": f"{ROOT / 'layers' / 'shared'}",
        "POWERTOOLS_METRICS_NAMESPACE": "Probe",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "DATABASE_URL": "postgresql://probe@/probe?host=/nonexistent",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    probe = PROBE.format(
        fn=str(ROOT / "functions" / function),
        watched=NOT_AT_A_COLD_START,
        only_here=only_here,
        settings=settings,
        after=after,
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    at_import, after_reading, frozen = json.loads(out.stdout.strip().splitlines()[-1])
    assert at_import == [] and after_reading == [], (at_import, after_reading)
    assert frozen > 10_000  # the dependencies imported before the package (payments/__init__.py)
