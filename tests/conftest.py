"""Shared fixtures: tiny real runs recorded once per test session by the real recorder.

The runs are trained in a subprocess (through `core.training.trainer.train`), so the test process itself never imports
TensorFlow: dashboard tests can then check that viewing does not import it either.

    spiral_run_dir -> (root, run_id)   spiral, hidden (8, 8), 3 epochs: 2-D input, plane grids
    digits_run_dir -> (root, run_id)   digits, hidden (16,), 2 epochs: image data with thumbnails
    runs_copy      -> root             a private copy of both, for tests that rename or delete
    recorded       -> recorded(script) the folder a recording script wrote, recorded once per session
    killed_runs    -> root             a fit recorded live ("live") and SIGKILLed with snapshots held back ("killed")

Under pytest-xdist each worker is a session of its own; `made_once` lets the workers share what one of them made
(these recordings are read-only to the tests), instead of each training the same runs again.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import forkserver
import pytest

os.environ.setdefault("STRATA_EXIT_WAIT", "120")  # a test process never waits long at exit
# Where PYTHONDONTWRITEBYTECODE is set (this machine sets it), each of the suite's ~100 subprocesses compiled the
# project's modules from source again: ~0.7 s of CPU in each that imports the recorder. Bytecode cached under
# __pycache__ (ignored by git) is written once and read by the rest; the test processes write it too.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
# The tests' JAX models are tiny, so compiling them costs more than running them: without LLVM's optimisations XLA
# compiles the JAX recordings in about 60% of the CPU time (the same operations; the tests compare within float
# tolerance). Every subprocess inherits it. TensorFlow on the CPU does not compile through XLA, so it is unaffected.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")


def _scan_installed_components_once() -> None:
    """Every AppTest run scans the metadata of every installed distribution for Streamlit components (a server does
    it once, at start): about a second per AppTest here, with ~500 distributions installed. What is installed does
    not change during the test session, so the scan's result is kept after the first."""
    import functools

    from streamlit.components.v2 import manifest_scanner

    manifest_scanner.scan_component_manifests = functools.cache(manifest_scanner.scan_component_manifests)


_scan_installed_components_once()

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _environment_restored():
    """Whatever a test sets in os.environ (open_app sets STRATA_RUNS for AppTest, which runs in this process) is
    undone after it, so no test sees another's store or settings."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


_TRAIN = """
import json, sys
from core.training.trainer import TrainingSpec, train
root = sys.argv[1]
ids = {
    "spiral": train(
        TrainingSpec(dataset="spiral", hidden=(8, 8), epochs=3, lr=0.01, runs=root, name="spiral 8-8 fixture")
    ),
    "digits": train(
        TrainingSpec(dataset="digits", hidden=(16,), epochs=2, probe_size=300, runs=root, name="digits 16 fixture")
    ),
}
print(json.dumps(ids))
"""


def run_python(
    script: str, *args: str, timeout: float = 240, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run Python source in a subprocess, in the repository, with TensorFlow's start-up logging off (or in `env`, a
    whole environment): how tests train a model, so that the test process itself never imports TensorFlow. With
    `check`, a non-zero exit fails the test and shows the end of the subprocess's stderr.

    For scripts that load TensorFlow anyway: the process is forked from one that has imported it (see
    tests/forkserver.py). A script that must show what a fresh process imports runs `subprocess` itself."""
    process = python_process(script, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check:
        assert result.returncode == 0, f"the subprocess failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
    return result


def python_process(script: str, *args: str, env: dict[str, str] | None = None, stdout=None, stderr=None):
    """`subprocess.Popen` of Python source, as `run_python` runs it, for a test that works beside the script: with
    `stdout` and `stderr` as Popen takes them, and text pipes. Forked (see tests/forkserver.py) where it can be."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"} if env is None else env
    if forkserver.SERVER.agrees(env):
        return forkserver.SERVER.popen(script, args, env, stdout, stderr)
    command = [sys.executable, "-c", script, *args]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr, text=True)


# `run_python(CORE, "train", …)` is `python -m core train …`, for the commands that load TensorFlow.
CORE = "import runpy; runpy.run_module('core', run_name='__main__', alter_sys=True)"


def last_line(result: subprocess.CompletedProcess) -> str:
    return (result.stdout.strip().splitlines() or [""])[-1]


def run_script(script: str, root: str) -> str:
    """Run `script` (Python source that records into the store at argv[1]) with `run_python`; its last output line."""
    return last_line(run_python(script, root))


def made_once(tmp_path_factory, name: str, make: Callable[[Path], str], timeout: float = 600) -> tuple[Path, str]:
    """(folder, what `make(folder)` returned): `make` fills the folder once for the whole test run, however many
    xdist workers ask for it. The first to ask makes it, holding a lock that the others wait on (at most `timeout`
    seconds), then read what it left. A failed `make` leaves nothing behind: the next to ask tries again, and fails
    its own test as it did."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's temp dir, above each worker's own
    folder, done = base / name, base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{name} was not made by another worker within {timeout} s"
                time.sleep(0.2)
        try:
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                done.write_text(make(folder))  # only once `make` returned
            return folder, done.read_text()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def recorded_runs(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """(root, {"spiral": id, "digits": id}): both runs in one store, trained once per test run."""
    root, ids = made_once(tmp_path_factory, "strata-runs", lambda folder: run_script(_TRAIN, str(folder)))
    return str(root), json.loads(ids)


@pytest.fixture(scope="session")
def recorded(tmp_path_factory):
    """recorded(script) -> the folder holding what `script` records (into the folder given as argv[1]), recorded
    once per test session."""
    roots: dict[str, Path] = {}

    def record(script: str) -> Path:
        if script not in roots:
            roots[script] = tmp_path_factory.mktemp("recorded")
            run_script(script, str(roots[script]))
        return roots[script]

    return record


@pytest.fixture(scope="session")
def spiral_run_dir(recorded_runs) -> tuple[str, str]:
    root, ids = recorded_runs
    return root, ids["spiral"]


@pytest.fixture(scope="session")
def digits_run_dir(recorded_runs) -> tuple[str, str]:
    root, ids = recorded_runs
    return root, ids["digits"]


@pytest.fixture
def runs_copy(recorded_runs, tmp_path) -> str:
    """A private copy of the recorded runs, for tests that change the store."""
    root, _ = recorded_runs
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    return str(copy)


KILLED_EPOCHS = 6

# One process records the fit twice, each from the same seed: live (run "live"), then with the budget holding its
# snapshots back, SIGKILLed as soon as `fit` returns (run "killed"). One TensorFlow import for both.
KILLED_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import keras, numpy as np, tensorflow as tf
    from core import Recorder

    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype("float32"); y = (x[:, 0] + x[:, 1] > 0).astype("int64") + (x[:, 2] > 1)
    for mode in ("live", "killed"):
        keras.backend.clear_session()  # the same layer names for both
        keras.utils.set_random_seed(0)  # the same weights and batches for both
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(8, activation="tanh"),
                                  keras.layers.Dense(3, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        recorder = Recorder(sys.argv[1], probe=(x, y), run_id=mode, budget=None if mode == "live" else 0.03)
        model.fit(x, y, epochs={epochs}, batch_size=32, callbacks=[recorder], verbose=0)
        if mode == "killed":
            os.kill(os.getpid(), signal.SIGKILL)  # the snapshots held back for the budget are not written yet
        assert recorder.wait(120), "the live run was not written within 120 s"
    """
).format(epochs=KILLED_EPOCHS)


def _record_killable(root: Path | str) -> None:
    """Record KILLED_SCRIPT's runs "live" and "killed" into the store at `root`, and wait until the killed run's
    recording process has exited."""
    # Nothing may run beside training (however idle the machine looks): every snapshot is held back at the kill.
    script = KILLED_SCRIPT.replace(
        "from core import Recorder",
        "from core import Recorder; from core.capture import worker; worker._idle_seconds = lambda: None",
    )
    result = run_python(script, str(root), check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    # The killed run's recording process outlives it, writing what it was handed, then exits on EOF.
    from core.store import RunStore

    deadline = time.monotonic() + 120
    while RunStore(str(root)).run("killed").status == "running":
        assert time.monotonic() < deadline, "the killed fit's recording process did not exit within 120 s"
        time.sleep(0.1)


@pytest.fixture(scope="session")
def killed_runs(tmp_path_factory) -> Path:
    """A store holding a deterministic fit recorded live ("live") and the same fit SIGKILLed as soon as `fit`
    returned, its snapshots still held back for the budget ("killed"). Recorded once per test run."""

    def record(root: Path) -> str:
        _record_killable(root)
        return ""

    return made_once(tmp_path_factory, "recover", record)[0]
