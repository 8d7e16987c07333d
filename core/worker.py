"""Carries recorder messages to a `RunSink` off the training thread: in a child process, or in a thread.

Both transports take messages in order through a short queue, so a slow disk or slow analysis slows capture
rather than letting memory grow without bound. A message may also be a function that builds it: the worker's
thread calls it in turn, which is how the recorder's compiled probe pass runs off the training thread. Neither
transport ever raises into the user's `fit`.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable

import core
from core.sink import RunSink, write_frame

QUEUE_DEPTH = 4  # messages waiting at most in the training process


class _QueuedWorker:
    """A daemon thread that drains a bounded queue into `self._deliver`."""

    def __init__(self, name: str):
        self._messages: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, message: tuple | Callable[[], tuple | None]) -> None:
        """Queue `message`, or a function returning one (or None, for nothing to send), called on this
        worker's thread after everything queued before it."""
        if self._thread.is_alive():
            self._messages.put(message)

    def close(self, timeout: float | None = None) -> None:
        """Deliver everything queued, then stop."""
        if self._thread.is_alive():
            self._messages.put(None)
            self._thread.join(timeout)
        self._stop()

    def _loop(self) -> None:
        while (message := self._messages.get()) is not None:
            if callable(message):
                message = message()
            if message is not None:
                self._deliver(message)

    def _deliver(self, message: tuple) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        pass


class ThreadWorker(_QueuedWorker):
    """Runs the sink in this process. Needed for in-memory fsspec roots, which a child process cannot see."""

    def __init__(self):
        self.sink = RunSink()
        super().__init__("strata-sink")

    def _deliver(self, message: tuple) -> None:
        self.sink.handle(message)


class ProcessWorker(_QueuedWorker):
    """Feeds a `python -m core.sink` child over a pipe; the child does the numpy analysis and the writes."""

    def __init__(self):
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(core.__file__)))
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
            # One BLAS thread: the matrices are small, and training needs the other core.
            OPENBLAS_NUM_THREADS="1",
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
        )
        self._process = subprocess.Popen([sys.executable, "-m", "core.sink"], stdin=subprocess.PIPE, env=env)
        self._broken = False
        super().__init__("strata-sink-feeder")

    def _deliver(self, message: tuple) -> None:
        if self._broken:
            return
        try:
            write_frame(self._process.stdin, message)
        except (BrokenPipeError, OSError) as error:
            self._broken = True
            warnings.warn(f"Strata's recording process stopped ({error}); the rest of this run is not recorded.", RuntimeWarning, stacklevel=1)

    def _stop(self) -> None:
        try:
            self._process.stdin.close()
        except OSError:
            pass
        self._process.wait()


def start_worker(root: str, mode: str = "auto"):
    """A ProcessWorker, except for in-memory roots or `mode="thread"`; falls back to a thread if spawning fails."""
    if mode == "thread" or root.startswith("memory://"):
        return ThreadWorker()
    try:
        return ProcessWorker()
    except OSError as error:
        warnings.warn(f"Strata could not start its recording process ({error}); recording in a thread instead.", RuntimeWarning, stacklevel=2)
        return ThreadWorker()
