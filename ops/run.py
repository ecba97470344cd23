"""`make run`: the embedded Postgres, migrations, demo data and the local API, until Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from ops.embedded import LOCAL_DATA, database_url
from ops.hypay_simulator import (
    PUBLIC_TEST_TERMINAL_KEY,
    PUBLIC_TEST_TERMINAL_MASOF,
    PUBLIC_TEST_TERMINAL_PASSP,
    HypaySimulator,
    public_test_terminal,
)
from ops.local_api import LOCAL_JWT_ISSUER, LocalApi, local_token
from ops.migrate import migrate
from ops.seed import DEMO_USER_EMAIL, DEMO_USER_ID, seed
from ops.template import load
from payments.adapters.db import Database
from payments.settings import DatabaseSettings

LOCAL_ADMIN_TOKEN = "local-admin-token"  # local runs only; deployed stacks read it from Secrets Manager


def main() -> int:
    port = int(os.environ.get("PORT", "3000"))
    sim_port = int(os.environ.get("HYPAY_SIM_PORT", "3100"))
    data_dir = Path(os.environ.get("LOCAL_DATA_DIR", str(LOCAL_DATA)))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    with database_url(data_dir) as url:
        db = Database.from_settings(DatabaseSettings(DATABASE_URL=url))
        applied = migrate(db)
        seed(db)
        db.close()

        simulator = HypaySimulator([public_test_terminal()], port=sim_port).start()
        environment = {
            "DATABASE_URL": url,
            "HYPAY_URL": simulator.url,
            "HYPAY_MASOF": PUBLIC_TEST_TERMINAL_MASOF,
            "HYPAY_KEY": PUBLIC_TEST_TERMINAL_KEY,
            "HYPAY_PASSP": PUBLIC_TEST_TERMINAL_PASSP,
            "STAGE": "local",
            "ADMIN_API_TOKEN": LOCAL_ADMIN_TOKEN,
            "POWERTOOLS_METRICS_NAMESPACE": "PaymentsLocal",
            "POWERTOOLS_TRACE_DISABLED": "1",
            "POWERTOOLS_DEV": "false",
            "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "eu-west-1"),
        }
        template = load()
        api = LocalApi(template, environment, port=port)
        terminal = simulator.terminals[PUBLIC_TEST_TERMINAL_MASOF]
        terminal.success_url = terminal.failure_url = f"{api.url}/hypay/return"
        terminal.notify_url = f"{api.url}/hypay/notify"
        api.start()
        token = local_token(DEMO_USER_ID, email=DEMO_USER_EMAIL)
        where = "DATABASE_URL (external)" if "DATABASE_URL" in os.environ else f"embedded Postgres, data in {data_dir}"
        print(
            "\n".join(
                [
                    "payments backend running locally",
                    f"  database      {where}; migrations applied now: {', '.join(applied) or 'none (up to date)'}",
                    f"  local API     {api.url}  (API Gateway HTTP API emulation, 3 workers per function)",
                    *[f"    {r.method:5} {api.url}{r.path}  -> {r.function}" for r in template.routes],
                    *[
                        f"  schedule      {f.name}: {', '.join(f.schedules)}; run now: "
                        f"curl -X POST {api.url}/_local/schedules/{f.name}"
                        for f in template.functions.values()
                        if f.schedules
                    ],
                    f"  hypay         simulator {simulator.url} (public test terminal {PUBLIC_TEST_TERMINAL_MASOF},"
                    f" redirects to {terminal.success_url})",
                    "  test cards    listed on the simulator's payment page (one approves, one declines)",
                    f"  admin token   {LOCAL_ADMIN_TOKEN}  (curl -X POST -H 'Authorization: Bearer "
                    f"{LOCAL_ADMIN_TOKEN}' {api.url}/admin/cleanup-idempotency)",
                    f"  demo user     {DEMO_USER_ID} ({DEMO_USER_EMAIL}); JWT issuer {LOCAL_JWT_ISSUER}",
                    f"  demo token    {token}",
                    f"  try           curl -i {api.url}/hypay/return",
                    "Ctrl-C stops everything.",
                ]
            ),
            flush=True,
        )
        stop.wait()
        print("stopping...", flush=True)
        api.stop()
        simulator.stop()
    print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
