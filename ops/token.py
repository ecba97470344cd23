"""Mint a local access token for any user: `python -m ops.token --user <uuid> [--mode es256] [--email ...]`.

Signed as `make run` signs in the same mode (AUTH_MODE, or --mode), so it works against the running local
API: the mode's kept key in `.local/auth/`, or the local HS256 secret. Local runs only.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

from ops.local_auth import MODES, TOKEN_TTL_SECONDS, LocalAuth, mode_from


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.token", description=__doc__.splitlines()[0])
    parser.add_argument("--user", required=True, help="the user's id (the token's sub), a UUID")
    parser.add_argument("--mode", choices=MODES, default=None, help="default: AUTH_MODE, else rs256")
    parser.add_argument("--email", default=None)
    parser.add_argument("--role", default="authenticated", help="default: authenticated (a signed-in user)")
    parser.add_argument("--ttl", type=int, default=TOKEN_TTL_SECONDS, help="seconds until it expires")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also give the user a profile (0 credits) in make run's database, as the web app does at sign-up"
        " (DATABASE_URL, else .local/pgdata or LOCAL_DATA_DIR): without one, POST /payments answers 404",
    )
    args = parser.parse_args(argv)
    try:
        user = str(uuid.UUID(args.user))
    except ValueError:
        parser.error("--user must be a UUID (Supabase user ids are)")
    try:
        mode = mode_from(args.mode or os.environ.get("AUTH_MODE"))
    except ValueError as exc:
        parser.error(str(exc))
    if args.profile:
        _add_profile(user, args.email or f"{user}@example.com")
    print(LocalAuth.for_mode(mode).token(user, email=args.email, role=args.role, ttl_seconds=args.ttl))
    return 0


def _add_profile(user: str, email: str) -> None:
    from pathlib import Path

    from ops.embedded import LOCAL_DATA, database_url
    from ops.seed import add_user
    from payments.adapters.db import Database
    from payments.settings import DatabaseSettings

    with database_url(Path(os.environ.get("LOCAL_DATA_DIR") or LOCAL_DATA)) as url:
        db = Database.from_settings(DatabaseSettings(DATABASE_URL=url))
        try:
            add_user(db, user, email)
        finally:
            db.close()


if __name__ == "__main__":
    sys.exit(main())
