"""sql/014 (one journal row per Hyp transaction number) over a journal that holds one number in two spellings (Hyp's
callbacks were journaled as sent): the preflight lists the later row, the run stops with that report, and adopting
keeps every row, the later ones left out of the index (an outside review found the migration failing the whole
deploy with a bare unique violation, the preflight silent)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ops.migrate import SQL_DIR, LegacyRowsFound, check, migrate, review
from tests.support.pg import database

_ROW = """INSERT INTO public.hypay_transactions (hypay_id, order_ref, ccode, source, verified, decision, first_seen)
VALUES ('{}', 'not-ours', 0, 'notify', true, 'unmatched', now() - interval '{} minutes')"""


def _at_012(url: str, tmp: Path):  # noqa: ANN202
    old = tmp / "sql"
    old.mkdir()
    for f in sorted(SQL_DIR.glob("*.sql")):
        if f.name < "013":
            shutil.copy(f, old / f.name)
    db = database(url)
    migrate(db, old)
    return db


def test_a_number_held_in_two_spellings_is_reported_then_adopted(empty_database_url: str, tmp_path: Path) -> None:
    db = _at_012(empty_database_url, tmp_path)
    db.run(_ROW.format("77700042", 10))
    db.run(_ROW.format("077700042", 5))
    db.run(_ROW.format("12345", 1))
    findings = check(db).findings
    assert [(f.rule.name, f.row_id, f.detail) for f in findings] == [
        ("hypay_transactions_number_key", "077700042", "the same Hyp transaction number as 77700042 (kept)")
    ]
    with pytest.raises(LegacyRowsFound):
        migrate(db)
    applied = migrate(db, adopt_legacy=True)
    assert "014_journal_one_row_per_number.sql" in applied
    assert [f.row_id for f in review(db)] == ["077700042"]
    # The index holds from here on: a third spelling of the kept number, or of a new one, is refused
    for hypay_id in ("0077700042", "012345"):
        with pytest.raises(Exception, match="hypay_transactions_number_key"):
            db.run(_ROW.format(hypay_id, 0))
    db.close()
