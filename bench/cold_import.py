"""The cold import of each function against importing its bare dependencies alone.

Each sample is a fresh interpreter (`python -c`) that imports either a function's handler module (its
code folder and the shared layer on the path, as in Lambda) or only the libraries every function
stands on: Powertools (Logger, Metrics, Tracer, the event handler, idempotency), pydantic, pg8000 and
boto3. The import is timed inside the interpreter (its startup, the same for both, is left out), in CPU
time (user + system: what the import costs, whatever else the machine runs; with the files in the page
cache it is what an idle machine's wall clock shows) and in wall time; the whole process, start to exit,
is timed too. Within a run the samples are interleaved in rounds, each round every function and the
baseline once in a shuffled order.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Loads, Section, Server, Spread, runs, size
from ops import bytecode
from ops.template import Function, load

TARGET = 1.08
BASELINE = "dependencies alone"
BARE_DEPENDENCIES = (
    "from aws_lambda_powertools import Logger, Metrics, Tracer\n"
    "from aws_lambda_powertools.event_handler import APIGatewayHttpResolver\n"
    "import aws_lambda_powertools.utilities.idempotency\n"
    "import pydantic\n"
    "import pg8000.native\n"
    "import boto3\n"
)
# A reference, not a function: the baseline plus one one-field pydantic model. The baseline's `import pydantic` is
# lazy (it loads none of the model machinery); the first model class loads it, which alone is more than the
# target's 8 %: the floor of any function that validates with pydantic when imported.
REFERENCE = "dependencies + one pydantic model"
ONE_MODEL = BARE_DEPENDENCIES + "class _One(pydantic.BaseModel):\n    x: int\n"
TIMED = (
    "import time\n_wall, _cpu = time.perf_counter(), time.process_time()\n{imports}"
    "print(time.process_time() - _cpu, time.perf_counter() - _wall)\n"
)
# What `make run` gives every function (ops/run.py), so settings read at import see what they would.
LOCAL = {
    "STAGE": "local",
    "DATABASE_URL": "postgresql://bench@/bench?host=/nonexistent&port=5432",  # never connected at import
    "HYPAY_URL": "http://127.0.0.1:9/p/",
    "POWERTOOLS_METRICS_NAMESPACE": "PaymentsBench",
    "POWERTOOLS_TRACE_DISABLED": "1",
    "POWERTOOLS_DEV": "false",
    "LOG_LEVEL": "INFO",
}


def functions() -> list[Function]:
    template = load()
    found = {**template.functions, **template.authorizer_functions}
    return [found[name] for name in sorted(found)]


def _environment(path: list[str], extra: dict[str, str]) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POWERTOOLS_", "HYPAY_", "WEB_APP_", "DB_", "LOG_", "AWS_LAMBDA_", "JWT_", "PYTHON"))
    }
    return {**base, **LOCAL, **extra, "PYTHONPATH": os.pathsep.join(path)}


def sample(imports: str, env: dict[str, str], flags: tuple[str, ...] = ()) -> tuple[float, float, float]:
    """(CPU seconds importing, wall seconds importing, wall seconds of the whole process) of one fresh
    interpreter."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *flags, "-c", TIMED.format(imports=imports)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    whole = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"the import failed ({done.returncode}):\n{done.stderr[-2000:]}")
    cpu, wall = done.stdout.strip().splitlines()[-1].split()
    return float(cpu), float(wall), whole


FIGURES = ("cpu", "wall", "process")  # the three numbers of a sample, in order

# The functions customers wait on, imported from what `make build` packages, as Lambda runs it: only the function's
# code and the layer on the path (-I -S: no site-packages), nothing written (-B: Lambda's code is read-only), every
# file dated 1980 (sam deploy's zip), once as `sam build` alone leaves it (sources only) and once with the build's
# bytecode (ops/bytecode.py).
PACKAGED = ("CreatePaymentFunction", "HypayCallbackFunction")
PACKAGED_FLAGS = ("-I", "-S", "-B")
ZIP_EPOCH = 315532800  # 1980-01-01


def packaged_builds(into: Path) -> tuple[Path, Path]:
    """(sources only, with bytecode): `sam build` of the template, once, and a compiled copy."""
    plain = into / "sam-build"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "sam"),
            "build",
            "--template-file",
            str(ROOT / "template.yaml"),
            "--build-dir",
            str(plain),
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "SAM_CLI_TELEMETRY": "0",
            "PIP_REQUIRE_HASHES": "1",
        },
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"sam build failed:\n{(done.stdout + done.stderr)[-2000:]}")
    compiled = into / "make-build"
    shutil.copytree(plain, compiled)
    bytecode.compile_artifacts(compiled)
    for path in [*plain.rglob("*"), *compiled.rglob("*")]:
        os.utime(path, (ZIP_EPOCH, ZIP_EPOCH))
    return plain, compiled


def _packaged(build: Path, function: Function) -> tuple[str, dict[str, str]]:
    path = [str(build / function.name), str(build / "SharedLayer" / "python")]
    module = function.handler.rsplit(".", 1)[0]
    env = {
        k: v
        for k, v in _environment([], {**function.environment, "AWS_LAMBDA_FUNCTION_NAME": function.name}).items()
        if k != "PYTHONPATH"
    }
    return f"import sys\nsys.path[:0] = {path!r}\nimport {module}\n", env


class ColdImportBench:
    """Each function's import ÷ the bare dependencies' import, per run (medians of its rounds)."""

    name = "cold_import"

    def __init__(self) -> None:
        self.runs = runs(3)
        self.rounds = size("BENCH_IMPORT_ROUNDS", 5, 1)
        self.loads = Loads()
        self.subjects: dict[str, tuple[str, dict[str, str]]] = {}
        self.ratios: dict[tuple[str, str], Spread] = {}  # (module, figure): each run's ratio to the baseline
        self.seconds: dict[tuple[str, str], list[float]] = {}  # (module, figure): every sample, all runs
        self.packaged: dict[str, tuple[str, dict[str, str]]] = {}  # "<function>, <build>": what Lambda imports
        self.packaged_cpu: dict[str, list[float]] = {}  # every sample's import CPU, all runs
        self.packaged_ratio: dict[str, Spread] = {}  # function: each run's sources-only ÷ with-bytecode CPU
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def setup(self, server: Server) -> None:
        layer = str(ROOT / "layers" / "shared")
        self.subjects[BASELINE] = (BARE_DEPENDENCIES, _environment([layer], {}))
        self.subjects[REFERENCE] = (ONE_MODEL, _environment([layer], {}))
        for f in functions():
            module = f.handler.rsplit(".", 1)[0]
            env = {**f.environment, "AWS_LAMBDA_FUNCTION_NAME": f.name}
            self.subjects[f.name] = (f"import {module}\n", _environment([str(f.code_uri), layer], env))
        for name in self.subjects:
            for figure in FIGURES:
                self.ratios[name, figure], self.seconds[name, figure] = Spread(), []
        for imports, env in self.subjects.values():  # bytecode written, files in the page cache: not measured
            sample(imports, env)
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-build-")
        plain, compiled = packaged_builds(Path(self._tmp.name))
        by_name = {f.name: f for f in functions()}
        for name in PACKAGED:
            for label, build in (("sam build only", plain), ("with bytecode", compiled)):
                key = f"{name}, {label}"
                self.packaged[key] = _packaged(build, by_name[name])
                self.packaged_cpu[key] = []
                sample(*self.packaged[key], flags=PACKAGED_FLAGS)  # files in the page cache: not measured
            self.packaged_ratio[name] = Spread()

    def run(self) -> None:
        run_index = len(self.loads.pairs)
        order = list(self.subjects)
        taken: dict[str, list[tuple[float, float, float]]] = {name: [] for name in order}
        with self.loads.around():
            for r in range(self.rounds):
                random.Random(run_index * 1000 + r).shuffle(order)
                for name in order:
                    taken[name].append(sample(*self.subjects[name]))
        for f, figure in enumerate(FIGURES):
            base = statistics.median(t[f] for t in taken[BASELINE])
            for name, samples in taken.items():
                self.seconds[name, figure] += [t[f] for t in samples]
                self.ratios[name, figure].values.append(statistics.median(t[f] for t in samples) / base)
        packaged: dict[str, list[float]] = {key: [] for key in self.packaged}
        keys = list(self.packaged)
        for r in range(self.rounds):
            random.Random(run_index * 1000 + 500 + r).shuffle(keys)
            for key in keys:
                packaged[key].append(sample(*self.packaged[key], flags=PACKAGED_FLAGS)[0])
        for key, cpu in packaged.items():
            self.packaged_cpu[key] += cpu
        for name in self.packaged_ratio:
            plain = statistics.median(packaged[f"{name}, sam build only"])
            self.packaged_ratio[name].values.append(plain / statistics.median(packaged[f"{name}, with bytecode"]))

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def section(self) -> Section:
        runs_done = len(self.loads.pairs)
        lines = [
            "## Cold import of each function vs its bare dependencies",
            "",
            f"{runs_done} runs of {self.rounds} rounds; each round starts one fresh interpreter per function and one",
            "for the baseline, in a shuffled order. **Baseline**: importing only Powertools (Logger, Metrics, Tracer,",
            "the event handler's `APIGatewayHttpResolver`, the idempotency utility), pydantic, `pg8000.native` and",
            "boto3. **Function**: `import app` with the function's code folder and the shared layer on the path and",
            "the function's settings in the environment (as `make run` gives them: tracing off). **import CPU**:",
            "user + system time of the interpreter around the import alone (what the target is judged on: it does",
            "not move with the rest of the machine's load; with the files in the page cache it is what an idle",
            "machine's wall clock shows); **import wall**: wall time around the same import; **process**: the whole",
            "`python -c`, start to exit (interpreter start-up and exit included). Ratios are each run's median over",
            "its rounds ÷ the baseline's median in the same run. **Dependencies + one pydantic model** (a reference,",
            "no target): the baseline plus one class with one `int` field. The baseline's `import pydantic` loads",
            "none of pydantic's model machinery; the first model class loads it: the floor of any function that",
            "creates a pydantic model when imported. CreatePayment and HypayCallback create none (their settings and",
            "CreatePayment's request are validated by pydantic-core schemas; the OpenAPI document's models are",
            "`payments.api_models`, which no function imports); the admin and cleanup functions do.",
            "",
            "| module | import CPU ms (median) | import CPU ÷ baseline, each run | min | **median** "
            "| import wall ms · ÷ baseline (medians) | process ms · ÷ baseline (medians) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in self.subjects:
            ratio = self.ratios[name, "cpu"]

            def ms(figure: str, name: str = name) -> str:
                seconds = statistics.median(self.seconds[name, figure])
                return f"{1000 * seconds:.0f} · {self.ratios[name, figure].median:.2f}×"

            lines.append(
                f"| {name} | {1000 * statistics.median(self.seconds[name, 'cpu']):.0f} | {ratio.each()} "
                f"| {ratio.min:.2f}× | **{ratio.median:.2f}×** | {ms('wall')} | {ms('process')} |"
            )
        lines += [
            "",
            f"Load (1 min) before→after each run: {self.loads.text()}.",
            "",
            "### As Lambda loads the built artifacts",
            "",
            "The functions customers wait on, imported from what the build packages, as Lambda runs it: the",
            "function's code and the layer alone on the path (no site-packages), nothing written back (Lambda's code",
            "is read-only), every file dated 1980-01-01 (as `sam deploy` zips it). **sam build only**: sources, as",
            "`sam build` leaves them: every cold start compiles every module it imports. **with bytecode**: after",
            "`make build`'s `ops/bytecode.py` (hash-checked `.pyc`, used whatever the files' dates). Same rounds and",
            "runs as above; no target (the table above is the target's measure).",
            "",
            "| function | import CPU ms, sam build only (median) | import CPU ms, with bytecode (median) "
            "| sam build only ÷ with bytecode, each run | **median** |",
            "|---|---|---|---|---|",
        ]
        for name, ratio in self.packaged_ratio.items():
            plain = statistics.median(self.packaged_cpu[f"{name}, sam build only"])
            compiled = statistics.median(self.packaged_cpu[f"{name}, with bytecode"])
            lines.append(
                f"| {name} | {1000 * plain:.0f} | {1000 * compiled:.0f} | {ratio.each()} | **{ratio.median:.2f}×** |"
            )
        lines.append("")
        targets = [
            (
                f"cold import, {name}: import CPU within {TARGET}× of the bare dependencies, median of {runs_done} "
                f"runs ({self.ratios[name, 'cpu'].median:.2f}×; wall {self.ratios[name, 'wall'].median:.2f}×)",
                self.ratios[name, "cpu"].median <= TARGET,
            )
            for name in self.subjects
            if name not in (BASELINE, REFERENCE)
        ]
        return Section(lines, targets)
