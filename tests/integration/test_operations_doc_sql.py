"""The SQL docs/operations.md prints runs on the schema, and its "rows that need a human" are the queue's: an outside
review found that query listing transactions the runbooks had settled (one closed, a second charge refunded), which
`GET /admin/review` no longer lists: an on-call engineer working from it would take settled money for open."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_callback_attacks import unpaid_claim, use_mode
from tests.integration.test_close_transaction import close
from tests.integration.test_hypay_callback import buy, forge, notify, pay
from tests.integration.test_refunds import _refund_row, paid
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.integration.test_review import every_item
from tests.support.payments import Env

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def doc_sql() -> list[str]:
    """Every statement of every ```sql block of docs/operations.md, as printed (its comments kept, but for a comment
    line before a statement or alone)."""
    blocks = re.findall(r"```sql\n(.*?)```", OPERATIONS.read_text(encoding="utf-8"), re.S)
    statements = (re.sub(r"\A(?:\s*--[^\n]*\n)*", "", s).strip() for b in blocks for s in b.split(";"))
    return [s for s in statements if s and not s.startswith("--")]


def test_every_statement_the_runbooks_print_runs_on_the_schema(admin: Env) -> None:
    statements = doc_sql()
    assert len(statements) >= 4
    for sql in statements:
        admin.rows(sql)


def test_the_rows_that_need_a_human_are_the_queues(admin: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    use_mode(monkeypatch, "hmac")
    # An unmatched transaction, and another refunded in Hyp's portal and closed as the UnmatchedTransaction runbook says
    open_one, closed = "77700018", "77700019"
    for hyp_id in (open_one, closed):
        assert notify(forge([(k, hyp_id if k == "Id" else v) for k, v in unpaid_claim(str(uuid.uuid4()))])).status
    assert close(closed).status == 200
    # A second charge refunded through the API as the SecondCharge runbook says
    twice = buy(admin, key=str(uuid.uuid4()))
    first, second = pay(admin, twice), pay(admin, twice)
    assert notify(first.redirect_query).status == 200 and notify(second.redirect_query).status == 200
    done = refund(twice["payment_id"], {"hypay_id": second.id, "reason": "paid twice"}, key=str(uuid.uuid4()))
    assert done.status == 201, done.body
    # Then the doc's query lists what the queue lists: the open one only
    queued = sorted(i for item in every_item() for i in item.get("hypay_ids") or [])
    listed = sorted(row[0] for row in admin.rows(doc_sql()[0]))
    assert listed == queued == [open_one], (listed, queued)


def test_an_unmatched_items_next_step_leads_out_of_the_queue(admin: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its next step said only "refund in Hyp's portal": followed as written, the item stayed in the queue and the
    oldest-item alarm paged a day later. It names the close that takes it out."""
    use_mode(monkeypatch, "hmac")
    assert notify(forge([(k, "77700029" if k == "Id" else v) for k, v in unpaid_claim(str(uuid.uuid4()))])).status
    [item] = every_item("reason=unmatched")
    assert "POST /admin/transactions/{hypay_id}/close" in item["next_step"], item["next_step"]
    assert close("77700029").status == 200
    assert every_item("reason=unmatched") == []


def test_a_refund_whose_outcome_is_unknown_is_in_the_rows_that_need_a_human(admin: Env) -> None:
    """The queue lists a refund whose answer was lost (it may have moved money); the doc's queries did not (a review
    of the first form of the test above, which compared the journal's rows only)."""
    pid, txn = paid(admin)
    rid = _refund_row(admin, pid, txn.id, amount="49.90", status="unknown")
    assert [i["id"] for i in every_item() if i["reason"] == "refund_outcome_unknown"] == [f"r:{rid}"]
    refunds = next(sql for sql in doc_sql() if "FROM public.refunds" in sql.split("WHERE")[0])
    assert [(str(row[0]), str(row[1])) for row in admin.rows(refunds)] == [(rid, pid)]
