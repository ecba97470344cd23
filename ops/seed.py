"""Demo data for `make run`: the credit packs and a demo user. Safe to run again."""

from __future__ import annotations

from payments.adapters.db import Database, bind

DEMO_USER_ID = "de000000-0000-4000-8000-000000000001"
DEMO_USER_EMAIL = "demo@example.co.il"

SEED_SQL = f"""
INSERT INTO public.profiles (id, email, full_name, credits)
VALUES ('{DEMO_USER_ID}', '{DEMO_USER_EMAIL}', 'משתמש הדגמה', 0)
ON CONFLICT (id) DO NOTHING;
INSERT INTO public.credit_packs (id, name, credits, price, is_active) VALUES
  ('aaaaaaaa-0000-4000-8000-000000000001', 'Starter', 100, 49.90, true),
  ('aaaaaaaa-0000-4000-8000-000000000002', 'Pro', 500, 199.00, true),
  ('aaaaaaaa-0000-4000-8000-000000000004', 'Trial', 10, 10.00, true),
  ('aaaaaaaa-0000-4000-8000-000000000003', 'Legacy', 50, 29.00, false)
ON CONFLICT (id) DO NOTHING;
"""


def seed(db: Database) -> None:
    with db.transaction(read_committed=True) as tx:
        tx.run(SEED_SQL)


def add_user(db: Database, user_id: str, email: str) -> None:
    """A profile for another user (0 credits), as the web app makes one at sign-up. Safe to run again."""
    db.run(
        bind(
            "INSERT INTO public.profiles (id, email, full_name, credits) VALUES (:id::uuid, :email, 'Local user', 0)"
            " ON CONFLICT (id) DO NOTHING",
            id=user_id,
            email=email,
        )
    )
