"""`make run`: the embedded Postgres, migrations, demo data and the local API, until Ctrl-C.

AUTH_MODE (hs256, rs256 or es256; default rs256) chooses how the web app's tokens are signed and verified,
as the template's JwtMode does when deployed: rs256 emulates API Gateway's JWT authorizer, hs256 and es256
run the real Lambda authorizer.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import yaml

import payments.settings
from ops.demo import DemoSite
from ops.embedded import LOCAL_DATA, database_url
from ops.hypay_simulator import (
    PUBLIC_TEST_TERMINAL_KEY,
    PUBLIC_TEST_TERMINAL_MASOF,
    PUBLIC_TEST_TERMINAL_PASSP,
    HypaySimulator,
    public_test_terminal,
)
from ops.local_api import LocalApi, load_cors
from ops.local_auth import MODES, LocalAuth, Mode, mode_from
from ops.migrate import EXIT_LEGACY_ROWS, LegacyRowsFound, MigrationError, migrate
from ops.seed import DEMO_USER_EMAIL, DEMO_USER_ID, seed
from ops.template import TEMPLATE, Route, Template, _CfnLoader, load
from payments.adapters.db import Database
from payments.errors import ConfigurationError, DatabaseUnavailable
from payments.settings import DatabaseSettings, EnvSettings

FUNCTION_TYPE = "AWS::Serverless::Function"
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
    "POST /admin/refunds/{refund_id}/outcome": "curl -i -X POST {base}/admin/refunds/<refund_id>/outcome "
    '-H "Authorization: Bearer $ADMIN" -H "Content-Type: application/json" '
    '-H "Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)" '
    '-d \'{{"outcome": "not_refunded", "reason": "no such refund in the Hyp portal"}}\'',
    "POST /admin/transactions/{hypay_id}/close": "curl -i -X POST {base}/admin/transactions/<hypay_id>/close "
    '-H "Authorization: Bearer $ADMIN" -H "Content-Type: application/json" '
    '-H "Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)" '
    '-d \'{{"outcome": "refunded_in_hyp", "reason": "refunded in the Hyp portal, ticket #42"}}\'',
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


def setting_names(template: Template) -> set[str]:
    """Every setting a function reads from its environment: the template's variables (`!Ref` ones too) and
    every field of payments.settings. `make run` passes these through from its own environment."""
    names = {name for settings in _settings_classes() for name in settings.variable_names()}
    doc = yaml.load(TEMPLATE.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    sections = [(doc.get("Globals") or {}).get("Function") or {}]
    sections += [r.get("Properties") or {} for r in doc["Resources"].values() if r["Type"] == FUNCTION_TYPE]
    for section in sections:
        names.update(((section.get("Environment") or {}).get("Variables") or {}).keys())
    names.update(name for fn in template.functions.values() for name in fn.environment)
    return names


def _settings_classes() -> list[type[EnvSettings]]:
    return [
        v
        for v in vars(payments.settings).values()
        if isinstance(v, type) and issubclass(v, EnvSettings) and v is not EnvSettings
    ]


# The authorizer's settings that name the issuer whose tokens it accepts: make run's own local issuer (it signs the
# tokens it prints, in the mode AUTH_MODE chooses), never taken from the environment. Taken, they were listed as such
# and then lost to the local issuer's: a token of the issuer given was refused while the local one passed.
LOCAL_ISSUER_SETTINGS = frozenset(
    {"JWT_MODE", "JWT_ISSUER", "JWT_AUDIENCE", "JWT_SECRET", "JWT_SECRET_ARN", "JWKS_URL"}
)


def from_environment(names: set[str]) -> dict[str, str]:
    """The settings given to `make run` (`HYPAY_VERIFY_MODE=hmac make run`): they win over its own values. The local
    issuer's (LOCAL_ISSUER_SETTINGS) are not among them (`not_taken`)."""
    return {name: os.environ[name] for name in sorted(names - LOCAL_ISSUER_SETTINGS) if name in os.environ}


def not_taken(names: set[str]) -> list[str]:
    """The settings given to `make run` that it does not take: the local issuer's own."""
    return sorted(name for name in names & LOCAL_ISSUER_SETTINGS if name in os.environ)


def port_from(variable: str, default: int) -> int:
    value = os.environ.get(variable) or str(default)
    if not value.isdigit() or int(value) > 65535:
        raise ValueError(f"make run: {variable}={value} is not a port number (0 picks a free one)")
    return int(value)


class PortInUse(Exception):
    """One line for the terminal: which port, what wanted it, how to choose another."""


def check_port(port: int, what: str, variable: str) -> None:
    """Raises PortInUse when the port cannot be bound (as the servers bind it: SO_REUSEADDR)."""
    if port == 0:
        return
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
            raise PortInUse(
                f"make run: port {port} ({what}) {why}; choose another with {variable}=<port> make run"
            ) from None


def main() -> int:
    try:
        port = port_from("PORT", 3000)
        sim_port = port_from("HYPAY_SIM_PORT", 3100)
        mode = mode_from(os.environ.get("AUTH_MODE"))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    data_dir = Path(os.environ.get("LOCAL_DATA_DIR", str(LOCAL_DATA)))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        # The ports first: a port in use is one line, before the database starts.
        check_port(port, "the local API", "PORT")
        check_port(sim_port, "the Hypay simulator", "HYPAY_SIM_PORT")
        return serve(port, sim_port, mode, data_dir, stop)
    except PortInUse as exc:
        print(exc, file=sys.stderr, flush=True)
        return 1
    except LegacyRowsFound as exc:
        # An external database whose rows a migration would refuse: the report, as make migrate prints it.
        print(exc.preflight.report(), file=sys.stderr)
        print(
            "make run: nothing was applied; correct those rows, or adopt them: MIGRATE_ADOPT_LEGACY=1 make migrate",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_LEGACY_ROWS
    except (DatabaseUnavailable, ConfigurationError, MigrationError) as exc:
        # An external DATABASE_URL unreachable, refused or not ours to migrate (a role that may not create): one line
        # (its message never holds the password), as make migrate says it.
        print(f"make run: {exc}", file=sys.stderr, flush=True)
        return 1


def _bound[T](port: int, what: str, variable: str, make: Callable[[], T]) -> T:
    """`make()`, a server binding `port`; taken meanwhile (after check_port) is still one line."""
    try:
        return make()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise PortInUse(
            f"make run: port {port} ({what}) is already in use; choose another with {variable}=<port> make run"
        ) from None


def serve(port: int, sim_port: int, mode: Mode, data_dir: Path, stop: threading.Event) -> int:
    auth = LocalAuth.for_mode(mode)
    template = load()
    names = setting_names(template)
    overrides = from_environment(names)
    ignored = not_taken(names)

    # The simulator's transactions and saved cards, kept across runs beside the database's folder (so an old
    # return URL still verifies and a saved card can still be charged).
    simulator_state = data_dir.parent / "hypay-simulator.json"
    with database_url(data_dir) as url:
        db = Database.from_settings(DatabaseSettings(DATABASE_URL=url))
        applied = migrate(db)
        seed(db)
        db.close()

        simulator = _bound(
            sim_port,
            "the Hypay simulator",
            "HYPAY_SIM_PORT",
            lambda: HypaySimulator([public_test_terminal()], port=sim_port, state_file=simulator_state),
        )
        token = auth.token(DEMO_USER_ID, email=DEMO_USER_EMAIL)
        admin_token = overrides.get("ADMIN_API_TOKEN", LOCAL_ADMIN_TOKEN)
        demo = DemoSite(url, DEMO_USER_ID, token, admin_token=admin_token)

        def environment(base: str) -> dict[str, str]:
            """The functions' settings: the bound port's URLs, then whatever `make run` was given."""
            return {
                "DATABASE_URL": url,
                "HYPAY_URL": simulator.url,
                "HYPAY_MASOF": PUBLIC_TEST_TERMINAL_MASOF,
                "HYPAY_KEY": PUBLIC_TEST_TERMINAL_KEY,
                "HYPAY_PASSP": PUBLIC_TEST_TERMINAL_PASSP,
                "STAGE": "local",
                "WEB_APP_SUCCESS_URL": f"{base}/demo/result",
                "WEB_APP_FAILURE_URL": f"{base}/demo/result",
                "WEB_APP_PENDING_URL": f"{base}/demo/result",
                "ADMIN_API_TOKEN": admin_token,
                "POWERTOOLS_METRICS_NAMESPACE": "PaymentsLocal",
                "POWERTOOLS_TRACE_DISABLED": "1",
                "POWERTOOLS_DEV": "false",
                "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "eu-west-1"),
                **{k: v for k, v in overrides.items() if k != "DATABASE_URL"},  # DATABASE_URL: `url` already
            }

        try:
            api = _bound(
                port,
                "the local API",
                "PORT",
                lambda: LocalApi(template, environment, port=port, site=demo.handle, auth=auth, cors=load_cors()),
            )
        except BaseException:
            simulator.server.server_close()
            demo.close()
            raise
        simulator.start()
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
            f" redirects to {terminal.success_url}; {len(simulator.transactions)} transactions kept in"
            f" {simulator_state})",
            "  test cards    listed on the simulator's payment page (one approves, one declines)",
            *auth_lines(api, auth),
            f"  demo user     {DEMO_USER_ID} ({DEMO_USER_EMAIL}); JWT issuer {auth.issuer} (a fixed name, any port)",
            f"  demo token    {token}",
            f"  other user    .venv/bin/python -m ops.token --mode {mode} --user <uuid> --profile [--email <address>]",
            f"  admin token   {admin_token}",
            f"  settings      from the environment: {', '.join(overrides) or 'none'}"
            " (any function setting: NAME=value make run; ports: PORT, HYPAY_SIM_PORT)",
            *(
                [
                    f"  not taken     {', '.join(ignored)}: the authorizer accepts the local issuer's tokens"
                    " (its mode: AUTH_MODE)"
                ]
                if ignored
                else []
            ),
            "",
            "Try each route (paste the two exports first):",
            f"  export TOKEN={token}",
            f"  export ADMIN={admin_token}",
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
