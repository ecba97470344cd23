"""An id is a UUID only as the API's document writes one (8-4-4-4-12, `format: uuid`): Python's UUID() also takes
32 bare hex digits, braces, `urn:uuid:` and hyphens anywhere, so another spelling of a real payment's id read it, and
of a real pack's id created a payment, where the document says 404 / 400 (an outside review)."""

from __future__ import annotations

import uuid

import pytest

from ops.seed import DEMO_USER_ID
from tests.integration.test_refund_outcome import settle
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import resolve
from tests.support.api import invoke
from tests.support.payments import CREATE, STARTER, Env, post


def spellings(canonical: str) -> list[str]:
    bare = canonical.replace("-", "")
    return [bare, "{" + canonical + "}", "urn:uuid:" + canonical, bare[:4] + "-" + bare[4:12] + "-" + bare[12:]]


def test_a_payment_is_read_only_by_its_id_as_written(env: Env) -> None:
    created = post({"credit_pack_id": STARTER}, key=str(uuid.uuid4()))
    pid = created.json["payment_id"]
    assert invoke(CREATE, "GET", f"/payments/{pid}", user=DEMO_USER_ID).status == 200
    assert invoke(CREATE, "GET", f"/payments/{pid.upper()}", user=DEMO_USER_ID).status == 200  # either case
    for other in spellings(pid):
        assert invoke(CREATE, "GET", f"/payments/{other}", user=DEMO_USER_ID).status == 404, other


def test_a_pack_is_bought_only_by_its_id_as_written(env: Env) -> None:
    for other in spellings(STARTER):
        answer = post({"credit_pack_id": other}, key=str(uuid.uuid4()))
        assert answer.status == 400 and "8-4-4-4-12" in answer.body and other not in answer.body, (other, answer.body)
    assert env.payments() == []


@pytest.mark.usefixtures("admin")
def test_admin_actions_name_a_payment_or_refund_only_by_its_id_as_written(env: Env) -> None:
    created = post({"credit_pack_id": STARTER}, key=str(uuid.uuid4()))
    pid = created.json["payment_id"]
    for other in spellings(pid):
        answer = resolve(other, {"action": "fail", "reason": "x"}, key=str(uuid.uuid4()))
        assert answer.status == 404, (other, answer.body)
        assert settle(other, {"outcome": "not_refunded", "reason": "x"}).status == 404
    assert env.status(pid) == "pending"
