"""What X-Ray would receive: the suite's flows run with tracing on, as in Lambda, and every trace
document the X-Ray SDK sends is caught where the daemon would listen and searched for secrets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from tests.support.leaks import fail_on_leaks, find_leaks
from tests.support.payments import CVV, Env

ROOT = Path(__file__).resolve().parents[2]


class Daemon:
    """A UDP socket where the X-Ray daemon would be, keeping every trace document it is sent."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.documents: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()
        return f"{host}:{port}"

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            header, _, document = data.decode("utf-8").partition("\n")
            assert json.loads(header)["format"] == "json"
            self.documents.append(document)

    def close(self) -> list[str]:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.documents


XRAY_BOOKKEEPING = frozenset({"id", "parent_id", "trace_id", "start_time", "end_time"})


def without(value: object, keys: frozenset[str]) -> object:
    """`value` with those keys removed at every depth."""
    if isinstance(value, dict):
        return {k: without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without(v, keys) for v in value]
    return value


def walk(entity: dict) -> list[dict]:
    return [entity, *(e for child in entity.get("subsegments", []) for e in walk(child))]


def test_no_secret_or_card_data_reaches_xray(env: Env) -> None:
    daemon = Daemon()
    environment = {k: v for k, v in os.environ.items() if k != "POWERTOOLS_TRACE_DISABLED"} | {
        "LAMBDA_TASK_ROOT": str(ROOT),
        "AWS_LAMBDA_FUNCTION_NAME": "traced",
        "_X_AMZN_TRACE_ID": "Root=1-6745a1b2-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1",
        "AWS_XRAY_DAEMON_ADDRESS": daemon.address,
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "layers" / "shared"), str(ROOT)]),
    }
    run = subprocess.run(
        [sys.executable, "-m", "tests.support.traced_flows"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    documents = daemon.close()
    # No assertion message carries the program's output: it may hold what this test looks for.
    assert run.returncode == 0, "the traced flows failed (run python -m tests.support.traced_flows to see why)"
    entities = [e for d in documents for e in walk(json.loads(d))]
    names = {e.get("name") for e in entities}
    # Tracing was really on: the handlers and the calls to Hyp were traced
    assert "## lambda_handler" in names, sorted(n for n in names if n)[:20]
    assert {"## hypay SIGN", "## hypay VERIFY", "## hypay getToken", "## hypay soft"} <= names, sorted(names)
    declined = [e for e in entities if e["name"] == "## hypay soft" and e["annotations"]["hypay_ccode"] == "4"]
    assert declined and declined[0]["annotations"]["hypay_action"] == "soft"
    [[token]] = env.rows("SELECT token FROM saved_cards")
    # Everything but X-Ray's own ids and clock: a 16-hex id is all digits (a "card number") now and then
    everything = "\n".join(json.dumps(without(json.loads(d), XRAY_BOOKKEEPING)) for d in documents)
    leaked = find_leaks(everything, CVV, token) + (["cvv="] if "cvv=" in everything.lower() else [])
    fail_on_leaks(leaked, "a trace")
