"""`make run`'s program (`python -m ops.run`) as a subprocess on free ports, for tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MakeRun:
    """Started by `start()`; `lines` is what it printed up to "Ctrl-C stops everything."."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    sim_port: int = field(default_factory=free_port)
    lines: list[str] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None
    _own_data: str | None = None
    _reader: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def start(self) -> MakeRun:
        # Never the developer's own .local (the simulator keeps its transactions there): a folder of the run's
        # own unless the test names one.
        if "LOCAL_DATA_DIR" not in self.env:
            self._own_data = tempfile.mkdtemp(prefix="make-run-")
            os.chmod(self._own_data, 0o755)  # the embedded server's own user must reach it
            self.env = {**self.env, "LOCAL_DATA_DIR": self._own_data}
        env = {
            **os.environ,
            **self.env,
            "PORT": str(self.port),
            "HYPAY_SIM_PORT": str(self.sim_port),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": f"{ROOT / 'layers' / 'shared'}:{ROOT}",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ops.run"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if "Ctrl-C stops everything." in line:
                break
        return self

    def drain(self) -> MakeRun:
        """Keep reading what it prints (into `lines`) from now on. A pipe nobody reads fills up, and then every
        function worker that logs blocks in its write: under load, requests end in 504s."""
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout

        def read() -> None:
            for line in stdout:
                self.lines.append(line)

        self._reader = threading.Thread(target=read, name="make-run-output", daemon=True)
        self._reader.start()
        return self

    def stop(self) -> tuple[int, str]:
        """Ctrl-C; returns the exit code and what it printed while stopping."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        if self._reader is not None:
            printed = len(self.lines)
            self.process.wait(timeout=60)
            self._reader.join(timeout=10)
            rest = "".join(self.lines[printed:])
        else:
            rest, _ = self.process.communicate(timeout=60)
        if self._own_data is not None:
            shutil.rmtree(self._own_data, ignore_errors=True)
        return self.process.returncode, rest
