"""The receiving end of a recording: analyses each capture and writes the run, in a process of its own.

`core.Recorder` sends plain messages (numpy arrays and dicts); `RunSink` turns them into store files. By
default the sink runs in a child process (`python -m core.capture.sink`, fed pickled frames on stdin), so the numpy
analysis never competes with training for the GIL. A frame carries its arrays' memory out of band (pickle protocol 5):
written straight from the arrays and read straight into the arrays, so a capture of every layer's outputs is never
copied into a pickle on either side. If the parent dies, even by SIGKILL, the child still
finishes every capture it has received, then exits at end of input. This module is numpy-only.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import time
import warnings

import numpy as np

from core.analysis import measures
from core.capture.snapshot import RawCapture, SnapshotBuilder
from core.store import RunWriter

FRAME_HEADER = struct.Struct("<QI")  # byte length of the pickled message that follows, count of its buffers
BUFFER_LENGTH = struct.Struct("<Q")  # byte length of each out-of-band buffer, after the header
CPU_REPORT = struct.Struct("<d")  # written back after each message: this process's CPU seconds so far


class RunSink:
    """Applies recorder messages, in order, to one run. Messages are `(kind, payload)` tuples."""

    def __init__(self, strict: bool = False):
        self.writer: RunWriter | None = None
        self.builder: SnapshotBuilder | None = None
        self.strict = strict  # raise instead of warning (a recovery, where no training goes on)
        self._warned = False

    @property
    def _writer(self) -> RunWriter:
        """The run's writer; a message before `attach` fails with AttributeError (and warns, unless strict)."""
        if self.writer is None:
            raise AttributeError("no run attached: the recorder sends `attach` first")
        return self.writer

    @property
    def _builder(self) -> SnapshotBuilder:
        """The snapshot builder; a message before `attach` fails with AttributeError (and warns, unless strict)."""
        if self.builder is None:
            raise AttributeError("no run attached: the recorder sends `attach` first")
        return self.builder

    def handle(self, message: tuple) -> None:
        kind, payload = message
        try:
            getattr(self, f"_on_{kind}")(**payload)
        except Exception as error:  # a logging problem must never end the user's training
            if self.strict:
                raise
            self._warn(kind, error)

    def _warn(self, kind: str, error: Exception) -> None:
        if self._warned:
            return
        self._warned = True
        warnings.warn(
            f"Strata could not record ({kind}: {type(error).__name__}: {error}). Training continues; "
            "Strata keeps trying, and what was already written stays intact.",
            RuntimeWarning,
            stacklevel=2,
        )

    def _on_attach(self, root: str, run_id: str, builder: dict) -> None:
        self.builder = SnapshotBuilder(**builder)
        self.writer = RunWriter.attach(root, run_id)  # the recorder created it when its fit began

    def _on_probe(self, arrays: dict, x: np.ndarray, components: int, seed: int) -> None:
        flat = x.reshape(len(x), -1).astype(np.float32)
        baseline = measures.pca(flat, k=components, seed=seed)
        self._writer.write_probe({**arrays, "input/pca": baseline.coords.astype(np.float32)})
        summary = {"explained_variance_ratio": np.asarray(baseline.explained_variance_ratio).tolist()}
        labels = self._builder.labels
        if labels is not None:
            summary["linear_probe"] = measures.linear_probe_accuracy(flat, labels, seed=seed)
            summary["separation"] = measures.class_separation(baseline.coords, labels, seed=seed)
        outputs = {k: ids for k, ids in enumerate(self._builder.output_labels or []) if ids is not None}
        if outputs:  # several outputs: the same baseline for each output of classes
            summary["linear_probes"] = {
                str(k): measures.linear_probe_accuracy(flat, ids, seed=seed) for k, ids in outputs.items()
            }
            summary["separations"] = {
                str(k): measures.class_separation(baseline.coords, ids, seed=seed) for k, ids in outputs.items()
            }
        self._writer.update_meta(input=summary)

    def _on_snapshot(self, seq: int, raw: RawCapture) -> None:
        meta, arrays = self._builder.build(raw)
        self._writer.write_snapshot(seq, meta, arrays)
        self._writer.update_meta(snapshots=seq + 1)

    def _on_batch_gradients(self, epoch: int, steps: np.ndarray, norms: np.ndarray) -> None:
        self._writer.write_batch_gradients(epoch, steps, norms)

    def _on_epoch(self, epoch: int, history: dict, nan_epoch: int | None) -> None:
        self._writer.write_history(history)
        self._writer.update_meta(epochs_done=epoch, nan_epoch=nan_epoch)

    def _on_end(self, status: str, fields: dict) -> None:
        self._writer.set_status(status, **fields)


def write_frame(stream, message: tuple) -> None:
    """One frame: the header, each buffer's length, the pickled message, then the buffers (numpy arrays' memory)."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    views = [buffer.raw() for buffer in buffers]
    stream.write(FRAME_HEADER.pack(len(data), len(views)))
    stream.write(b"".join(BUFFER_LENGTH.pack(view.nbytes) for view in views))
    stream.write(data)
    for view in views:
        stream.write(view)
    stream.flush()


def read_frames(stream):
    """Messages from `stream` until end of input; a truncated last frame (writer killed) ends it quietly."""
    while True:
        header = stream.read(FRAME_HEADER.size)
        if len(header) < FRAME_HEADER.size:
            return
        size, count = FRAME_HEADER.unpack(header)
        lengths = stream.read(BUFFER_LENGTH.size * count)
        data = stream.read(size)
        if len(lengths) < BUFFER_LENGTH.size * count or len(data) < size:
            return
        buffers = []
        for (length,) in BUFFER_LENGTH.iter_unpack(lengths):
            buffer = bytearray(length)  # the array's own memory: numpy takes it over without a copy
            if not _read_into(stream, buffer):
                return
            buffers.append(buffer)
        yield pickle.loads(data, buffers=buffers)


def _read_into(stream, buffer: bytearray) -> bool:
    """Fill `buffer` from `stream`; False at end of input first."""
    view, filled = memoryview(buffer), 0
    while filled < len(buffer):
        count = stream.readinto(view[filled:])
        if not count:
            return False
        filled += count
    return True


def main() -> int:
    try:
        os.nice(10)  # training comes first: the analysis takes the CPU time training leaves idle
    except OSError:
        pass
    sink = RunSink()
    reports = sys.stdout.buffer if "--report-cpu" in sys.argv[1:] else None
    for message in read_frames(sys.stdin.buffer):
        sink.handle(message)
        if reports is not None:
            try:  # the recorder paces its work by this; a parent that is gone (even SIGKILLed) reads nothing
                reports.write(CPU_REPORT.pack(time.process_time()))
                reports.flush()
            except (BrokenPipeError, OSError, ValueError):
                reports = None
    return 0


if __name__ == "__main__":
    status = main()
    # Every file is already synced and renamed into place; skipping the interpreter's teardown (~15 ms with
    # numpy loaded) shortens the wait at the end of the user's `fit`, which lasts until this process exits.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
