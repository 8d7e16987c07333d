"""A run's recovery journal: what the recorder has handed over but the recording process has not written yet.

While a `Recorder(budget=...)` holds snapshots back, their weights live in the training process's memory, and
a SIGKILL or the OOM killer would take them along. So the worker also writes every message and every capture
(the weights of its moment) to `journal/` in the run folder as it receives them, and deletes each entry once
the recording process has written what it stands for. The run's setup (the model's architecture and compiled
loss, the probe set) is written once, first. `python -m core recover RUN` runs what a killed training process
left there (`core.capture.recover`). The last written capture's entry stays until the next one is written: a recovery
reads its weights, so the first recovered snapshot still has update ratios.

Entries are npz files with a JSON header, as snapshots are: nothing here ever needs pickle, so a run folder
from elsewhere can be recovered without trusting it with code. This module is numpy-only.
"""

from __future__ import annotations

import json
import re
import zipfile
from functools import cached_property

import numpy as np

from core.store.files import META_KEY, Files, npz_bytes

JOURNAL_DIR = "journal"
SETUP = "setup"
CAPTURE = "capture"
ENTRY_NAME = re.compile(r"^(\d{6})-([a-z_]+)(?:-([a-z]+)-(\d+)-(\d+))?\.npz$")  # capture: kind, epoch, step
_ARRAY = "__array__"


class Entry:
    """One journal entry, read back: a sink message `(kind, payload)` or a capture (`kind == "capture"`). Its
    name says what it is; the payload (a capture's weights) is read only when used."""

    def __init__(self, files: Files, run_id: str, name: str):
        self.files, self.path, self.name = files, files.join(run_id, JOURNAL_DIR, name), name
        match = ENTRY_NAME.match(name)
        self.kind = match.group(2) if match else SETUP
        self.key = (
            (match.group(3), int(match.group(4)), int(match.group(5))) if match and self.kind == CAPTURE else None
        )

    @cached_property
    def payload(self) -> dict:
        """Raises ValueError naming the file when it is unreadable: writes are atomic, so that means damage."""
        try:
            with self.files.open(self.path) as handle, np.load(handle, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files if key != META_KEY}
                header = json.loads(str(data[META_KEY]))
            return _decode(header["payload"], arrays)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
            reason = f"{type(error).__name__}: {error}"
            raise ValueError(f"The journal entry {self.name} is unreadable ({reason}).") from None


def capture_key(meta: dict) -> tuple:
    """What names one capture in a snapshot's metadata, as in its journal entry's name: (kind, epoch, step)."""
    return meta.get("kind", "epoch"), int(meta["epoch"]), int(meta["step"])


class Journal:
    """The writing side, owned by one worker thread. Every write is atomic; a failure raises OSError."""

    def __init__(self, root: str, run_id: str):
        self.root, self.run_id = root, run_id
        self.files = Files(root)
        self.dir = self.files.join(run_id, JOURNAL_DIR)
        self.files.makedirs(self.dir)
        self._next = 0
        self._kept: str | None = None  # the last written capture's entry (see the module docstring)

    def append(self, kind: str, payload: dict) -> str:
        """Write one entry; its name, for `done`. The setup has a fixed name and is never `done`."""
        if kind == SETUP:
            name = f"{SETUP}.npz"
        else:
            name = f"{self._next:06d}-{kind}"
            if kind == CAPTURE:
                name += f"-{payload['kind']}-{int(payload['epoch'])}-{int(payload['step'])}"
            name += ".npz"
            self._next += 1
        arrays: dict[str, np.ndarray] = {}
        data = npz_bytes(arrays, {"kind": kind, "payload": _encode(payload, arrays)})
        self.files.write_atomic(self._path(name), data)
        return name

    def done(self, name: str | None) -> None:
        """What entry `name` stands for is written: delete it (a capture's, once the next capture is written)."""
        match = ENTRY_NAME.match(name or "")
        if name is None or match is None:  # nothing, or the setup: it stays while the journal does
            return
        if match.group(2) == CAPTURE:
            name, self._kept = self._kept, name
            if name is None:
                return
        self.files.remove(self._path(name))

    def _path(self, name: str) -> str:
        # Joined from the root (`Files.join` takes names, never a path such as `self.dir`).
        return self.files.join(self.run_id, JOURNAL_DIR, name)

    def close(self) -> None:
        """The run is completely written: the journal goes."""
        self.files.remove_tree(self.dir)


def _encode(value, arrays: dict):
    """`value` with every numpy array moved into `arrays` (as a reference), the rest JSON."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:  # np.savez would pickle it, and entries are read without pickle
            raise TypeError(f"A journal entry holds arrays of numbers or text, not of Python objects ({value.dtype}).")
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {_ARRAY: key}
    if isinstance(value, dict):
        return {str(k): _encode(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value, arrays):
    if isinstance(value, dict):
        if set(value) == {_ARRAY}:
            return arrays[value[_ARRAY]]
        return {k: _decode(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    return value


def read_journal(files: Files, run_id: str) -> tuple[Entry | None, list[Entry]]:
    """(setup, the other entries in the order they were written); temporary files are skipped."""
    names = files.listdir(files.join(run_id, JOURNAL_DIR))
    setup = Entry(files, run_id, f"{SETUP}.npz") if f"{SETUP}.npz" in names else None
    return setup, [Entry(files, run_id, name) for name in names if ENTRY_NAME.match(name)]


def pending_captures(files: Files, run_id: str, written: set[tuple]) -> int:
    """How many captures the journal holds that are not among the `written` snapshots (`capture_key`s)."""
    return sum(e.kind == CAPTURE and e.key not in written for e in read_journal(files, run_id)[1])
