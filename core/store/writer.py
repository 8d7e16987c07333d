"""Writing a run: `RunWriter` creates one run and writes its files, each write atomic (`Files.write_atomic`)."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import numpy as np

from core.store.files import (
    BATCH_GRADIENTS_DIR,
    FORMAT_VERSION,
    STATUSES,
    Files,
    StoreError,
    batch_gradients_name,
    checked_run_id,
    json_bytes,
    npz_bytes,
    snapshot_name,
)

# ----------------------------------------------------------------------------------------------------------
# Writing


def run_exists(root: str, run_id: str) -> bool:
    """Whether `root` already holds a run with this id. An unreachable root holds none, as far as a writer can tell."""
    try:
        files = Files(root)
        return files.holds_run(checked_run_id(run_id))
    except OSError:
        return False


class RunWriter:
    """Creates one run and writes its files. Used by `core.Recorder`; every method is one atomic write."""

    def __init__(self, root: str, run_id: str, meta: dict):
        self.files = Files(root)
        self.run_id = checked_run_id(run_id)
        self.dir = self.files.join(self.run_id)
        if self.files.holds_run(self.run_id):
            raise StoreError(f"A run with id {run_id!r} already exists under {root}.")
        self.files.makedirs(self.files.join(self.run_id, "snapshots"))
        now = time.time()
        self.meta = {
            "format_version": FORMAT_VERSION,
            "id": self.run_id,
            "name": run_id,
            "status": "running",
            "created": now,
            "updated": now,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            **meta,
        }
        self._write_meta()

    @classmethod
    def attach(cls, root: str, run_id: str) -> RunWriter:
        """Go on writing a run another process created: the recording process takes the run over from the
        training process, and its own pid then tells readers whether the run is still being written."""
        writer = cls.__new__(cls)
        writer.files = Files(root)
        writer.run_id = checked_run_id(run_id)
        writer.dir = writer.files.join(writer.run_id)
        writer.meta = json.loads(writer.files.read_bytes(writer.files.join(writer.run_id, "run.json")))
        writer.update_meta(host=socket.gethostname(), pid=os.getpid())
        return writer

    def _write_meta(self) -> None:
        self.files.write_atomic(self.files.join(self.run_id, "run.json"), json_bytes(self.meta))

    def update_meta(self, **fields: Any) -> None:
        self.meta.update(fields, updated=time.time())
        self._write_meta()

    def set_status(self, status: str, **fields: Any) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}. Received: status={status!r}")
        self.update_meta(status=status, **fields)

    def write_probe(self, arrays: dict[str, np.ndarray]) -> None:
        self.files.write_atomic(self.files.join(self.run_id, "probe.npz"), npz_bytes(arrays))

    def write_history(self, history: dict[str, list]) -> None:
        self.files.write_atomic(self.files.join(self.run_id, "history.json"), json_bytes(history))

    def write_snapshot(self, seq: int, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        header = {"format_version": FORMAT_VERSION, "seq": seq, **meta}
        path = self.files.join(self.run_id, "snapshots", snapshot_name(seq))
        self.files.write_atomic(path, npz_bytes(arrays, header))

    def write_batch_gradients(self, epoch: int, steps: np.ndarray, norms: np.ndarray) -> None:
        """The per-batch gradient norms measured during `epoch` (1-based): steps (m,), norms (m, layers)."""
        directory = self.files.join(self.run_id, BATCH_GRADIENTS_DIR)
        self.files.makedirs(directory)
        arrays: dict[str, np.ndarray] = {"steps": np.asarray(steps, np.int64), "norms": np.asarray(norms, np.float32)}
        self.files.write_atomic(
            self.files.join(self.run_id, BATCH_GRADIENTS_DIR, batch_gradients_name(epoch)), npz_bytes(arrays)
        )
