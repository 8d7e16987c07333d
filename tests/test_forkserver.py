"""The fork server (tests/forkserver.py) runs a script as `python -c script args…` would: the same exit code, output,
arguments, folder and environment, each child in a process of its own. Checked against the fresh subprocess it
stands in for, on scripts that do not need TensorFlow (the server has imported it all the same)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from subprocess import PIPE

import pytest
from conftest import REPO, python_process, run_python
from forkserver import SERVER

SCRIPT = """
import json, os, sys
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "name": __name__, "marker": os.environ.get("MARKER")}))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def fresh(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_forked_script_sees_and_returns_what_a_fresh_process_does():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MARKER": "given"}
    assert SERVER.agrees(env)
    for code in ("0", "3"):
        forked = run_python(SCRIPT, code, "second argument", env=env, check=False)
        expected = fresh(SCRIPT, code, "second argument", env=env)
        assert (forked.returncode, forked.stdout, forked.stderr) == (int(code), expected.stdout, expected.stderr)
    assert '"marker": "given"' in forked.stdout and '"name": "__main__"' in forked.stdout


def test_a_traceback_a_kill_and_a_timeout_are_the_scripts_own():
    failed = run_python("raise ValueError('bad')", check=False)
    assert failed.returncode == 1 and failed.stderr.rstrip().endswith("ValueError: bad")
    killed = run_python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", check=False)
    assert killed.returncode == -signal.SIGKILL
    with pytest.raises(subprocess.TimeoutExpired):
        run_python("import time; print('started', flush=True); time.sleep(60)", timeout=1)
    assert run_python("print('next')").stdout == "next\n"  # the server serves on


def test_scripts_run_side_by_side_with_pipes():
    sleeper = python_process("import time; time.sleep(60)", stdout=subprocess.DEVNULL)
    reader = python_process("import sys; print('out'); print('err', file=sys.stderr)", stdout=PIPE, stderr=PIPE)
    assert reader.communicate(timeout=120) == ("out\n", "err\n")
    assert reader.pid != sleeper.pid and sleeper.poll() is None  # the first still runs beside the second
    sleeper.kill()
    assert sleeper.wait(30) == -signal.SIGKILL and reader.returncode == 0


def test_an_environment_set_at_import_gets_a_fresh_process():
    """Another Keras backend, a PYTHONPATH or other XLA flags would be ignored by a forked child: it gets a real
    subprocess instead, whose imports are its own."""
    script = "import sys; print('tensorflow' in sys.modules)"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    assert not SERVER.agrees({**env, "KERAS_BACKEND": "jax"}) and not SERVER.agrees({**env, "XLA_FLAGS": "--x"})
    assert run_python(script, env={**env, "PYTHONPATH": str(REPO)}).stdout == "False\n"  # fresh
    assert run_python(script, env=env).stdout == "True\n"  # forked: the server's import is done
