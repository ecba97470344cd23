"""`make run`: the embedded Postgres, migrations, demo data and the local API, until Ctrl-C.

AUTH_MODE (hs256, rs256 or es256; default rs256) chooses how the web app's tokens are signed and verified,
as the template's JwtMode does when deployed: rs256 emulates API Gateway's JWT authorizer, hs256 and es256
run the real Lambda authorizer.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from ops.demo import DemoSite
from ops.embedded import LOCAL_DATA, database_url
from ops.hypay_simulator import (
    PUBLIC_TEST_TERMINAL_KEY,
    PUBLIC_TEST_TERMINAL_MASOF,
    PUBLIC_TEST_TERMINAL_PASSP,
    HypaySimulator,
    public_test_terminal,
)
from ops.local_api import LocalApi
from ops.local_auth import MODES, LocalAuth, mode_from
from ops.migrate import migrate
from ops.seed import DEMO_USER_EMAIL, DEMO_USER_ID, seed
from ops.template import Route, load
from payments.adapters.db import Database
from payments.settings import DatabaseSettings

LOCAL_ADMIN_TOKEN = "local-admin-token"  # local runs only; deployed stacks read it from Secrets Manager


CURL = {
    "POST /payments": 'curl -i -X POST {base}/payments -H "Authorization: Bearer $TOKEN" '
    "-H 'Content-Type: application/json' -H \"Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)\" "
    '-d \'{{"credit_pack_id": "aaaaaaaa-0000-4000-8000-000000000001"}}\'',
    "GET /payments/{payment_id}": 'curl -i {base}/payments/<payment_id> -H "Authorization: Bearer $TOKEN"',
    "GET /hypay/return": "curl -i {base}/hypay/return    # Hyp's portal connection test",
    "GET /hypay/notify": "curl -i {base}/hypay/notify",
    "POST /hypay/notify": "curl -i -X POST {base}/hypay/notify",
    "POST /admin/cleanup-idempotency": "curl -i -X POST {base}/admin/cleanup-idempotency "
    '-H "Authorization: Bearer $ADMIN"',
    "GET /admin/review": 'curl -i "{base}/admin/review?limit=20" -H "Authorization: Bearer $ADMIN"',
    "POST /admin/payments/{payment_id}/resolve": "curl -i -X POST {base}/admin/payments/<payment_id>/resolve "
    '-H "Authorization: Bearer $ADMIN" -H "Content-Type: application/json" '
    '-H "Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)" '
    '-d \'{{"action": "fail", "reason": "checked in Hyp: not charged"}}\'',
    "POST /admin/payments/{payment_id}/refund": "curl -i -X POST {base}/admin/payments/<payment_id>/refund "
    '-H "Authorization: Bearer $ADMIN" -H "Content-Type: application/json" '
    '-H "Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)" '
    '-d \'{{"amount": "10.00", "reason": "customer asked"}}\'',
    "GET /debug/test-idempotency": 'curl -i "{base}/debug/test-idempotency?type=duplicate" '
    '-H "Authorization: Bearer $ADMIN"',
}


def curl_examples(base: str, routes: list[Route]) -> list[str]:
    """One ready curl command per route of the template."""
    return [CURL[r.route_key].format(base=base) for r in routes]


def auth_lines(api: LocalApi, auth: LocalAuth) -> list[str]:
    """What verifies the web app's tokens in this mode, as deployed with the same JwtMode."""
    others = "|".join(m for m in MODES if m != auth.mode)
    lines = []
    for authorizer in api.authorizers.values():
        if authorizer.kind == "jwt":
            how = "API Gateway's JWT authorizer (emulated), a bad token is a 401"
        else:
            how = (
                f"the Lambda authorizer {authorizer.function} (real), a bad token is a 403, "
                f"answers kept {authorizer.ttl_seconds} s"
            )
        lines.append(f"  auth          AUTH_MODE={auth.mode} (deployed: JwtMode={auth.mode}): {how}")
    lines.append(f"                other modes: AUTH_MODE={others} make run")
    if auth.mode == "hs256":
        lines.append(f"  jwt secret    {auth.secret}  (HS256, local only)")
    else:
        lines.append(f"  jwks          {api.jwks_url}  ({auth.algorithm}, kid {auth.kid}; key in .local/auth/)")
    return lines


def main() -> int:
    port = int(os.environ.get("PORT", "3000"))
    sim_port = int(os.environ.get("HYPAY_SIM_PORT", "3100"))
    data_dir = Path(os.environ.get("LOCAL_DATA_DIR", str(LOCAL_DATA)))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    try:
        mode = mode_from(os.environ.get("AUTH_MODE"))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    auth = LocalAuth.for_mode(mode)

    with database_url(data_dir) as url:
        db = Database.from_settings(DatabaseSettings(DATABASE_URL=url))
        applied = migrate(db)
        seed(db)
        db.close()

        simulator = HypaySimulator([public_test_terminal()], port=sim_port).start()
        base = f"http://127.0.0.1:{port}"
        token = auth.token(DEMO_USER_ID, email=DEMO_USER_EMAIL)
        demo = DemoSite(url, DEMO_USER_ID, token, admin_token=LOCAL_ADMIN_TOKEN)
        environment = {
            "DATABASE_URL": url,
            "HYPAY_URL": simulator.url,
            "HYPAY_MASOF": PUBLIC_TEST_TERMINAL_MASOF,
            "HYPAY_KEY": PUBLIC_TEST_TERMINAL_KEY,
            "HYPAY_PASSP": PUBLIC_TEST_TERMINAL_PASSP,
            "STAGE": "local",
            "WEB_APP_SUCCESS_URL": f"{base}/demo/result",
            "WEB_APP_FAILURE_URL": f"{base}/demo/result",
            "WEB_APP_PENDING_URL": f"{base}/demo/result",
            "ADMIN_API_TOKEN": LOCAL_ADMIN_TOKEN,
            "POWERTOOLS_METRICS_NAMESPACE": "PaymentsLocal",
            "POWERTOOLS_TRACE_DISABLED": "1",
            "POWERTOOLS_DEV": "false",
            "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "eu-west-1"),
        }
        template = load()
        api = LocalApi(template, environment, port=port, site=demo.handle, auth=auth)
        terminal = simulator.terminals[PUBLIC_TEST_TERMINAL_MASOF]
        terminal.success_url = terminal.failure_url = f"{api.url}/hypay/return"
        terminal.notify_url = f"{api.url}/hypay/notify"
        api.start()
        where = "DATABASE_URL (external)" if "DATABASE_URL" in os.environ else f"embedded Postgres, data in {data_dir}"
        lines = [
            "payments backend running locally",
            f"  demo web app  {api.url}/demo/  (buy credits with the simulator's test cards)",
            f"  operator      {api.url}/demo/operator  (review queue: resolve, refund; asks for the admin token)",
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
            *auth_lines(api, auth),
            f"  demo user     {DEMO_USER_ID} ({DEMO_USER_EMAIL}); JWT issuer {auth.issuer}",
            f"  demo token    {token}",
            f"  other user    .venv/bin/python -m ops.token --mode {mode} --user <uuid> [--email <address>]",
            f"  admin token   {LOCAL_ADMIN_TOKEN}",
            "",
            "Try each route (paste the two exports first):",
            f"  export TOKEN={token}",
            f"  export ADMIN={LOCAL_ADMIN_TOKEN}",
            *[f"  {command}" for command in curl_examples(api.url, template.routes)],
            "",
            "Ctrl-C stops everything.",
        ]
        print("\n".join(lines), flush=True)
        stop.wait()
        print("stopping...", flush=True)
        api.stop()
        simulator.stop()
        demo.close()
    print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
