"""`python -m core recover RUN`: write the snapshots a killed training process left in its run's journal.

A `Recorder` with a budget holds snapshots back while training runs, as the weights of their moment, and its
worker journals each one in the run folder (`core.store.journal`). When the training process dies before they are
written (SIGKILL, the OOM killer, a power cut), this rebuilds the model from the journaled architecture and
compiled loss, runs the probe pass on each journaled state, and writes the snapshots as the recording
process would have, in order, with the epoch logs and the final status. Running it again after an
interruption goes on where it stopped. This imports Keras's backend (TensorFlow, or JAX with
`KERAS_BACKEND=jax`), so it runs as a process of its own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.store import Run, RunStore, StoreError
from core.store.journal import CAPTURE, JOURNAL_DIR, Entry, capture_key, read_journal
from core.store.reader import process_alive


@dataclass(frozen=True)
class Recovery:
    run_id: str
    written: int  # snapshots written now
    status: str  # the run's status afterwards


def recover(root: str, run_id: str, progress: Callable[[int, int, Entry], None] | None = None) -> Recovery:
    """Write what run `run_id` under `root` journaled but never wrote. Raises StoreError, naming the reason,
    when there is nothing to recover or it cannot be done."""
    store = RunStore(root)
    run = store.run(run_id)
    if run.meta.get("status", "running") == "running" and process_alive(run.meta):
        raise StoreError(
            f"Run {run.id!r} is still being written by process {run.meta.get('pid')} on "
            f"{run.meta.get('host')}. Recover it once that process has ended, on that machine."
        )
    setup, entries = read_journal(store.files, run.id)
    if setup is None:
        raise StoreError(
            f"Run {run.id!r} has nothing to recover: it has no journal. Only a Recorder with a budget "
            "(the default) journals its snapshots; every snapshot it wrote is already readable."
        )
    written = {capture_key(s.meta): s for s in run.snapshots()}
    pending = [e for e in entries if e.kind == CAPTURE and e.key not in written]
    seq = max((s.seq for s in written.values()), default=-1) + 1
    passes = _ProbePass(setup.payload) if pending else None  # first: a model that cannot be rebuilt changes nothing
    sink = _sink(root, run, setup.payload)
    end, done = None, 0
    try:
        if passes is not None and written:
            last = max(written.values(), key=lambda s: s.seq)
            _resume(sink.builder, last, passes, next((e for e in entries if e.key == capture_key(last.meta)), None))
        for entry in entries:
            if entry.kind == CAPTURE:
                if entry.key in written:  # its weights are never read
                    continue
                if progress is not None:
                    progress(done, len(pending), entry)
                assert passes is not None  # made whenever a capture is pending
                sink.handle(("snapshot", {"seq": seq + done, "raw": passes.run(entry.payload)}))
                done += 1
            elif entry.kind == "end":
                end = entry.payload
            elif entry.kind == "probe":
                if not store.files.exists(store.files.join(run.id, "probe.npz")):
                    sink.handle(("probe", entry.payload))
            elif entry.kind != "attach":  # the epoch logs, per-batch gradient norms
                sink.handle((entry.kind, entry.payload))
    except BaseException:  # Ctrl-C or a failure: what is written stays, and running this again goes on from there
        sink.writer.set_status("interrupted")
        raise
    if end is not None:
        status, fields = end["status"], end["fields"]
    else:  # the end a recording process already wrote stands (its journal outlived it); otherwise training was cut
        ended = run.meta.get("status")
        status, fields = (ended if ended in ("finished", "failed") else "interrupted"), {}
    sink.handle(("end", {"status": status, "fields": {**fields, "recovered_snapshots": len(pending)}}))
    store.files.remove_tree(store.files.join(run.id, JOURNAL_DIR))
    return Recovery(run.id, len(pending), status)


def _sink(root: str, run: Run, setup: dict):
    from core.capture.sink import RunSink

    sink = RunSink(strict=True)  # no training to protect here: a failure stops the recovery and says why
    sink.handle(("attach", {"root": root, "run_id": run.id, "builder": setup["builder"]}))
    writer = sink.writer
    assert writer is not None  # `attach` made it
    writer.set_status("running")  # written by this process now: readers follow it live until the end
    return sink


class _ProbePass:
    """The model rebuilt from the journal, and the recorder's compiled probe pass on it."""

    def __init__(self, setup: dict):
        if "error" in setup:
            raise StoreError(
                f"This run's model could not be saved for recovery when training began ({setup['error']}), "
                "so its held-back snapshots cannot be written."
            )
        import keras

        from core.capture import probe_pass, recorder
        from core.capture.graph import recorded_layers
        from core.capture.probe_pass import build_compiled_loss

        try:
            model = keras.models.model_from_json(setup["model"])
            if setup.get("compile"):
                model.compile_from_config(setup["compile"])
        except Exception as error:
            raise StoreError(
                f"The model cannot be rebuilt from its saved architecture ({type(error).__name__}: {error}). "
                "Custom layers, losses and models must be registered with "
                "@keras.saving.register_keras_serializable in a module that `--import MODULE` names."
            ) from None
        self.layers = recorded_layers(model)
        if setup.get("layer_paths") is not None:  # the layers the Recorder chose (`layers=`); older journals: all
            chosen = set(setup["layer_paths"])
            self.layers = [layer for layer in self.layers if layer.path in chosen]
        self.variables = probe_pass.model_variables(model)
        # A variable's path gains its model's name as a prefix when the model is built in a fit: compare the
        # layer's and the weight's names, and the shapes.
        variables = [[_tail(v.path), list(v.shape)] for v in self.variables]
        if len(self.layers) != setup["layers"] or variables != [
            [_tail(path), shape] for path, shape in setup["variables"]
        ]:
            raise StoreError(
                "The rebuilt model does not match the one that was trained (its layers or weights differ), "
                "so its held-back snapshots cannot be written."
            )
        y, grid = setup.get("y"), setup.get("grid")
        build_compiled_loss(model, setup["x"], y)  # as the Recorder does before its first pass
        self._recorder = recorder
        self._passes = probe_pass.backend_passes()
        self._fn = self._passes.ProbePass(
            model, self.layers, self.variables, with_loss=y is not None, plane=grid is not None
        )
        if setup.get("reduce") == "device":  # recorded with Recorder(reduce="device"): reduce the same way
            self._fn = recorder.reducing_pass(
                self._fn, self.layers, setup["builder"], probe_pass.sample_count(setup["x"])
            )
        self._inputs = tuple(self._passes.constants([setup["x"], y, grid]))
        self._positions = probe_pass.weight_positions(self.layers, self.variables)

    def run(self, capture: dict):
        state = self._passes.constants(capture["state"])
        fields = {key: capture[key] for key in ("kind", "epoch", "step", "batch", "logs")}
        return self._recorder.run_capture_pass(self._fn, self._inputs, self.layers, state, **fields)

    def layer_weights(self, state: list[np.ndarray]) -> list[dict]:
        return self._recorder.layer_weights(self.layers, [[state[i] for i in group] for group in self._positions])


def _tail(path: str) -> str:
    return "/".join(path.split("/")[-2:])


def _resume(builder, last, passes: _ProbePass, entry: Entry | None) -> None:
    """Carry on from the last written snapshot: its stored coordinates align the next one's axes, and its
    journaled weights (kept until the next capture was written) give the next one's update ratios."""
    coords = {}
    for index in range(len(last.meta.get("layers", []))):
        projection = last.projection(index)
        if projection is not None:
            coords[index] = projection.coords
    weights = passes.layer_weights(entry.payload["state"]) if entry is not None else None
    builder.resume(coords, weights)
    if hasattr(passes._fn, "resume"):  # a pass that reduces on the device keeps that state itself
        passes._fn.resume(coords, weights)


def main(root: str, run_id: str) -> int:
    def report(done: int, total: int, entry: Entry) -> None:
        what = f"epoch {entry.payload['epoch']}" + (
            f", batch {entry.payload['batch']}" if entry.payload.get("batch") else ""
        )
        print(f"recovering {run_id}: snapshot {done + 1} of {total} ({what})", file=sys.stderr, flush=True)

    result = recover(root, run_id, report)
    print(f"{result.run_id}: wrote {result.written} held-back snapshot(s); the run is {result.status}.")
    return 0
