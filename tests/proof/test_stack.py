"""The proof suite's stack keeps answering however much the functions print."""

from __future__ import annotations

import time

from proof.stack import http, stack


def test_the_stack_answers_after_its_functions_printed_more_than_a_pipe_holds() -> None:
    # Given make run's stack, whose functions log a line for every refused callback
    with stack() as running:
        started = time.monotonic()
        # When they have printed far more than a pipe holds (64 KiB) and nobody looks at it
        statuses = [
            http(f"{running.base}/hypay/notify?Id=x{n}&CCode=0&Amount=1", timeout=10).status for n in range(600)
        ]
        # Then every request was still answered (not a worker blocked on a full pipe: 504s), and quickly
        assert set(statuses) == {400}, sorted(set(statuses))
        assert time.monotonic() - started < 60
        assert sum(len(line) for line in running.run.lines) > 64 * 1024
