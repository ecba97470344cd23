"""The local API's execution environments die one at a time, as Lambda's do.

Killing one environment (a worker process) fails only the invocation it was running: API Gateway's 502 for
that request alone. The function's other environments go on with their invocations, warm, and requests waiting
for an environment are served. (The chaos part of the proof kills workers at random under load and counts
the 502s: each must be a request whose own environment died.)
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ops.local_api import LocalApi
from ops.template import load

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "local_api" / "template.yaml"


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - the local API
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, {}


def test_killing_one_environment_fails_only_its_own_invocation() -> None:
    # Given a function with three execution environments, each busy with a slow invocation, and two more
    # requests waiting for an environment
    api = LocalApi(load(FIXTURE), {}, port=0, workers=3, run_schedules=False)
    api.start()
    try:
        answers: dict[int, tuple[int, dict[str, Any]]] = {}

        def slow(n: int, seconds: float) -> None:
            answers[n] = _get(f"{api.url}/sleep/{seconds}")

        busy = [threading.Thread(target=slow, args=(n, 3)) for n in range(3)]
        for t in busy:
            t.start()
        deadline = time.monotonic() + 20
        while len(api.pools[next(iter(api.pools))].pids()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the three are running their invocations now
        waiting = [threading.Thread(target=slow, args=(n, 0)) for n in (3, 4)]
        for t in waiting:
            t.start()
        pids = api.pools[next(iter(api.pools))].pids()
        assert len(pids) == 3, pids

        # When one environment's process is killed
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        for t in busy + waiting:
            t.join(30)

        # Then only the invocation it was running gets API Gateway's 502
        statuses = sorted(status for status, _ in answers.values())
        assert statuses == [200, 200, 200, 200, 502], answers
        # And the other two finished in their own (warm, unchanged) environments, and the waiting requests were
        # served, none by the dead one
        served = {body["pid"] for status, body in answers.values() if status == 200}
        assert victim not in served
        assert set(pids[1:]) <= served | set(api.pools[next(iter(api.pools))].pids())
        assert set(pids[1:]) <= set(api.pools[next(iter(api.pools))].pids())
    finally:
        api.stop()
