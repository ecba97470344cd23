"""docs/openapi.json is generated from the code; this fails when it is stale (fix: `make openapi`)."""

from __future__ import annotations

import json

from ops.openapi import OUT, build, render


def test_openapi_document_is_up_to_date() -> None:
    assert OUT.read_text(encoding="utf-8") == render(), "docs/openapi.json is stale: run `make openapi`"


def test_openapi_documents_the_payment_contract() -> None:
    document = build()
    create = document["paths"]["/payments"]["post"]
    assert create["security"] == [{"webAppJwt": []}]
    assert [p["name"] for p in create["parameters"]] == ["idempotency-key"]
    assert {"201", "400", "402", "409", "422", "429", "503"} <= set(create["responses"])
    body = json.dumps(create["requestBody"])
    assert "CreatePaymentRequest" in body
    assert "security" not in document["paths"]["/hypay/return"]["get"]  # Hyp's redirect carries no token
