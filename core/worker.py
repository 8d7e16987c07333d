"""A background thread that analyses captures and writes them to the store, so training never waits on numpy or disk.

Failures here never reach the user's `fit`: the first one is warned about, and later writes keep being tried
(a disk that was full may have room again). The queue is short, so a slow disk slows capture rather than
letting memory grow without bound.
"""

from __future__ import annotations

import queue
import threading
import warnings
from typing import Callable

QUEUE_DEPTH = 2  # raw captures waiting at most; a SIGKILL loses only these and the one in progress


class Worker:
    """Runs submitted jobs one at a time, in order, on a daemon thread."""

    def __init__(self, name: str = "strata-recorder"):
        self._jobs: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._warned = False
        self.failures = 0
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue `job`; blocks while the queue is full (back-pressure instead of unbounded memory)."""
        if self._thread.is_alive():
            self._jobs.put(job)

    def close(self, timeout: float | None = None) -> None:
        """Finish every queued job, then stop the thread."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception as error:  # a logging problem must never end the user's training
                self.failures += 1
                if not self._warned:
                    self._warned = True
                    warnings.warn(
                        f"Strata could not record a snapshot ({type(error).__name__}: {error}). "
                        "Training continues; Strata keeps trying and earlier snapshots are intact.",
                        RuntimeWarning,
                        stacklevel=1,
                    )
