"""A fork server for the tests' TensorFlow scripts: one process per test worker imports TensorFlow and Keras once,
then forks a child for each script, which runs it as `python -c script args…` would.

Importing TensorFlow and Keras costs about 6 s of CPU, and the suite runs dozens of scripts that each train a tiny
model in a few seconds: on a 2-core machine that import was a quarter of the suite's CPU. A forked child starts
with the import done. Nothing else is shared: the server never builds a model or runs an op, so every child
creates TensorFlow's runtime (its thread pools, its devices) for itself, as a fresh process does. The child runs
in its own process, so a crash, a SIGKILL or an exit code is the script's, exactly as with a subprocess, and
Python's normal shutdown (atexit, non-daemon threads) ends it.

Only what is decided at import time cannot differ from a fresh process: the Keras backend, PYTHONPATH (the path
Python computed at start) and the XLA flags. `run` forks only for an environment that agrees with the server's on
these, and starts a real subprocess for any other.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What a child cannot change after the server's imports.
START_TIMEOUT = 180  # seconds for the server's imports, on a loaded machine

IMPORT_TIME = ("KERAS_BACKEND", "PYTHONPATH", "XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL")

_SERVER = r"""
import json, os, socket, struct, sys, types

path = sys.argv[1]
import tensorflow, keras  # the import each script would otherwise pay
import core.capture.recorder, core.training.trainer  # and the project's own modules that load them
assert keras.backend.backend() == "tensorflow"

listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
listener.listen()
print("ready", flush=True)

def send(connection, value):
    connection.sendall(struct.pack("!q", value))

while True:
    connection, _ = listener.accept()
    with connection.makefile("rb") as stream:
        request = json.loads(stream.readline())
    pid = os.fork()
    if pid == 0:
        listener.close()
        connection.close()
        break
    send(connection, pid)
    _, status = os.waitpid(pid, 0)
    send(connection, os.waitstatus_to_exitcode(status))
    connection.close()

# The child: become `python -c script args…`, in the request's folder and environment.
os.chdir(request["cwd"])
os.environ.clear()
os.environ.update(request["env"])
sys.stdout.flush()
sys.stderr.flush()
for fd, name in ((0, os.devnull), (1, request["stdout"]), (2, request["stderr"])):
    opened = os.open(name, os.O_RDONLY if fd == 0 else os.O_WRONLY)
    os.dup2(opened, fd)
    os.close(opened)
import numpy
numpy.random.seed()  # a fresh process draws its own seed; a forked one would share the server's
sys.argv = ["-c", *request["args"]]
main = types.ModuleType("__main__")
main.__dict__["__builtins__"] = __builtins__
sys.modules["__main__"] = main
del json, socket, struct, types, listener, connection, stream, pid, path, send
exec(compile(request["script"], "<string>", "exec"), main.__dict__)
"""


class ForkServer:
    """The fork server of this test process, started at its first use and stopped when the process exits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._folder = Path(tempfile.mkdtemp(prefix="strata-fork-"))
        self._env: dict[str, str] = {}

    def agrees(self, env: dict[str, str]) -> bool:
        """Whether a child of the server would see `env` as a fresh process would."""
        base = self._env or self._start_env()
        return all(env.get(name) == base.get(name) for name in IMPORT_TIME) and env.get("KERAS_BACKEND") in (
            None,
            "tensorflow",
        )

    def run(
        self, script: str, args: tuple[str, ...], env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess:
        """`subprocess.run([python, "-c", script, *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=timeout)`, forked from the server."""
        with self._lock:
            self._ensure_started()
            out, err = (self._folder / "stdout", self._folder / "stderr")
            out.write_bytes(b"")
            err.write_bytes(b"")
            request = {"script": script, "args": list(args), "cwd": str(REPO), "env": env}
            request.update(stdout=str(out), stderr=str(err))
            deadline = time.monotonic() + timeout
            with socket.socket(socket.AF_UNIX) as connection:
                connection.settimeout(60)
                connection.connect(str(self._folder / "socket"))
                connection.sendall(json.dumps(request).encode() + b"\n")
                pid = _read_int(connection)
                connection.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    code = _read_int(connection)
                except TimeoutError:
                    os.kill(pid, signal.SIGKILL)
                    connection.settimeout(60)
                    _read_int(connection)
                    command = ["python", "-c", "…"]
                    raise subprocess.TimeoutExpired(command, timeout, out.read_text(), err.read_text()) from None
            return subprocess.CompletedProcess(["python", "-c", script, *args], code, out.read_text(), err.read_text())

    def _start_env(self) -> dict[str, str]:
        return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self._env = self._start_env()
        (self._folder / "socket").unlink(missing_ok=True)
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(self._folder / "socket")],
            cwd=REPO,
            env=self._env,
            stdout=subprocess.PIPE,
            stderr=open(self._folder / "server.log", "wb"),  # noqa: SIM115 (the server's own, for the process's life)
            text=True,
        )
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], START_TIMEOUT)  # ready, or it has died
        line = self._process.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.stop()
            log = (self._folder / "server.log").read_text()
            raise AssertionError(f"the fork server did not start within {START_TIMEOUT} s:\n{log[-3000:]}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(30)
        self._process = None


def _read_int(connection: socket.socket) -> int:
    data = b""
    while len(data) < 8:
        chunk = connection.recv(8 - len(data))
        if not chunk:
            raise ConnectionError("the fork server closed the connection")
        data += chunk
    return int.from_bytes(data, "big", signed=True)


SERVER = ForkServer()
atexit.register(SERVER.stop)
atexit.register(shutil.rmtree, SERVER._folder, ignore_errors=True)
