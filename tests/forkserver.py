"""A fork server for the tests' TensorFlow scripts: one process per test worker imports TensorFlow and Keras once,
then forks a child for each script, which runs it as `python -c script args…` would.

Importing TensorFlow and Keras costs about 6 s of CPU, and the suite runs dozens of scripts that each train a tiny
model in a few seconds: on a 2-core machine that import was a quarter of the suite's CPU. A forked child starts
with the import done. Nothing else is shared: the server never builds a model or runs an op, so every child
creates TensorFlow's runtime (its thread pools, its devices) for itself, as a fresh process does. The child runs
in its own process, so a crash, a SIGKILL or an exit code is the script's, exactly as with a subprocess, and
Python's normal shutdown (atexit, non-daemon threads) ends it.

Only what is decided at import time cannot differ from a fresh process: the Keras backend, PYTHONPATH (the path
Python computed at start), the XLA flags and TensorFlow's log level. `run_python` and `python_process`
(tests/conftest.py) fork only for an environment that agrees with the server's on these (`agrees`), and start a
real subprocess for any other.
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

START_TIMEOUT = 180  # seconds for the server's imports, on a loaded machine

# What a child cannot change after the server's imports.
IMPORT_TIME = ("KERAS_BACKEND", "PYTHONPATH", "XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL")

_SERVER = r"""
import json, os, signal, socket, struct, sys, types

path = sys.argv[1]
import tensorflow, keras  # the import each script would otherwise pay
import core.capture.recorder, core.training.trainer  # and the project's own modules that load them
assert keras.backend.backend() == "tensorflow"

listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
listener.listen(16)
print("ready", flush=True)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the monitors below are reaped as they exit

def send(connection, value):
    connection.sendall(struct.pack("!q", value))

parent = os.getppid()
listener.settimeout(2)
while True:
    try:
        connection, _ = listener.accept()
    except TimeoutError:
        if os.getppid() != parent:  # the test process is gone (killed): so is the need for the server
            sys.exit(0)
        continue
    connection.settimeout(None)
    _, fds, _, _ = socket.recv_fds(connection, 1, 3)  # the child's stdin, stdout and stderr
    with connection.makefile("rb") as stream:
        request = json.loads(stream.readline())
    if os.fork() == 0:  # a monitor, so that the server serves the next request at once
        listener.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        pid = os.fork()
        if pid == 0:
            connection.close()
            break
        for fd in fds:
            os.close(fd)
        send(connection, pid)
        _, status = os.waitpid(pid, 0)
        send(connection, os.waitstatus_to_exitcode(status))
        os._exit(0)
    for fd in fds:
        os.close(fd)
    connection.close()

# The child: become `python -c script args…`, in the request's folder and environment.
os.chdir(request["cwd"])
os.environ.clear()
os.environ.update(request["env"])
sys.stdout.flush()
sys.stderr.flush()
for target, fd in enumerate(fds):
    os.dup2(fd, target)
    os.close(fd)
import numpy
numpy.random.seed()  # a fresh process draws its own seed; a forked one would share the server's
sys.argv = ["-c", *request["args"]]
main = types.ModuleType("__main__")
main.__dict__["__builtins__"] = __builtins__
sys.modules["__main__"] = main
del json, signal, socket, struct, types, listener, connection, stream, fds, fd, target, pid, path, parent, send
exec(compile(request["script"], "<string>", "exec"), main.__dict__)
"""


class Forked:
    """A script forked from the server, with the part of `subprocess.Popen`'s interface that the tests use: pid,
    stdout, stderr, poll, wait, communicate, send_signal, kill, terminate and returncode. `stdout` and `stderr` are
    as Popen takes them: PIPE (a text stream), DEVNULL, None (this process's own) or an open file."""

    def __init__(self, address: str, script: str, args: tuple[str, ...], env: dict[str, str], stdout, stderr) -> None:
        self.args = ["python", "-c", script, *args]
        self.returncode: int | None = None
        ends, mine = [os.open(os.devnull, os.O_RDONLY)], []
        for given, own in ((stdout, 1), (stderr, 2)):
            if given == subprocess.PIPE:
                read, write = os.pipe()
                mine.append(open(read, encoding="utf-8", errors="replace"))  # noqa: SIM115 (closed with the process)
                ends.append(write)
            elif given == subprocess.DEVNULL:
                mine.append(None)
                ends.append(os.open(os.devnull, os.O_WRONLY))
            else:  # this process's own, or an open file
                mine.append(None)
                ends.append(os.dup(own if given is None else given.fileno()))
        self.stdout, self.stderr = mine
        self._connection = socket.socket(socket.AF_UNIX)
        try:
            self._connection.settimeout(60)
            self._connection.connect(address)
            socket.send_fds(self._connection, [b"\0"], ends)
            self._connection.sendall(
                json.dumps({"script": script, "args": list(args), "cwd": str(REPO), "env": env}).encode() + b"\n"
            )
        finally:
            for fd in ends:
                os.close(fd)
        self.pid = _read_int(self._connection)

    def poll(self) -> int | None:
        if self.returncode is None:
            ready, _, _ = select.select([self._connection], [], [], 0)
            if ready:
                self._finish()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            ready, _, _ = select.select([self._connection], [], [], timeout)
            if not ready:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self._finish()
        assert self.returncode is not None
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
        """Read the piped outputs to their end, then wait: (stdout, stderr), None for one not piped."""
        read: dict[int, str] = {}
        readers = [
            threading.Thread(target=lambda i=i, stream=stream: read.__setitem__(i, stream.read()), daemon=True)
            for i, stream in enumerate((self.stdout, self.stderr))
            if stream is not None
        ]
        deadline = None if timeout is None else time.monotonic() + timeout

        def remaining() -> float | None:
            return None if deadline is None else max(deadline - time.monotonic(), 0)

        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(remaining())
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        self.wait(remaining())
        return read.get(0), read.get(1)

    def send_signal(self, number: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, number)
            except ProcessLookupError:  # it has just exited (its monitor reaps it at once)
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def _finish(self) -> None:
        self._connection.settimeout(60)
        self.returncode = _read_int(self._connection)
        self._connection.close()


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
        same = all(env.get(name) == base.get(name) for name in IMPORT_TIME)
        return same and env.get("KERAS_BACKEND") in (None, "tensorflow")

    def popen(self, script: str, args: tuple[str, ...], env: dict[str, str], stdout=None, stderr=None) -> Forked:
        """`subprocess.Popen([python, "-c", script, *args], cwd=REPO, env=env, stdout=stdout, stderr=stderr)`,
        forked from the server."""
        with self._lock:
            self._ensure_started()
        return Forked(str(self._folder / "socket"), script, args, env, stdout, stderr)

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
