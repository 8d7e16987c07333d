"""Reading a run: `Run` (run.json, history, probe, lost snapshots) and its `Snapshot`s, every file validated as it is
read (`run_format`). Numpy-only: the dashboard and the CLI's read commands use this and never import TensorFlow."""

from __future__ import annotations

import io
import json
import math
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.store import run_format
from core.store.files import (
    BATCH_GRADIENTS_DIR,
    BATCH_GRADIENTS_NAME,
    FORMAT_VERSION,
    META_KEY,
    READ_ERRORS,
    SNAPSHOT_NAME,
    DamagedRun,
    Files,
    RunNotFound,
    StoreError,
    checked_run_id,
    reason,
    snapshot_name,
)
from core.store.journal import capture_key, pending_captures
from core.store.run_format import FormatProblem
from core.store.run_info import RunInfo, layer_key

# ----------------------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class Probe:
    """The fixed probe set every snapshot was computed on."""

    y: np.ndarray | None  # (n,) int labels, or None when the run was recorded without labels
    indices: np.ndarray  # (n,) positions of the probe samples in the user's data
    x: np.ndarray | None  # (n, ...) inputs, stored when small enough (thumbnails, feature values)
    plane: dict[str, np.ndarray] = field(default_factory=dict)  # input-plane grid for 2-D data sets
    input_pca: np.ndarray | None = None  # (n, k) PCA of the raw inputs: the baseline every layer is compared with
    # Per model output with targets, its truth: (n,) class ids, (n,) a regression's value or (n, c) its values of
    # several columns, or (n,) a multi-label row's number of labels (what each is: `RunInfo.outputs`). Empty for runs
    # written before December 2026.
    targets: dict[int, np.ndarray] = field(default_factory=dict)
    # Of a model with several inputs, each other stored input by its position in `model.inputs` (from 1; `x` is the
    # first). Read them all with `inputs`.
    other_inputs: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.indices.shape[0])

    @property
    def inputs(self) -> dict[int, np.ndarray]:
        """Every stored input by its position in `model.inputs`: {0: x, 1: ..., ...}; an input too large to store
        (`x` above 64 MB, or the others beyond it) is absent."""
        first = {} if self.x is None else {0: self.x}
        return {**first, **dict(sorted(self.other_inputs.items()))}


@dataclass(frozen=True)
class Projection:
    """One layer's points on its principal components at one snapshot: column j is PC j+1, the (j+1)-th
    largest-variance direction of that snapshot, and `variance_ratio[j]` its share of the layer's variance."""

    coords: np.ndarray  # (n, k)
    variance_ratio: np.ndarray | None  # (k,) float64, descending; NaN where the recorder could not tell


def variance_ratios(record: dict) -> np.ndarray | None:
    """A layer record's explained-variance ratios by rank, largest first (see `Snapshot.projection`); None if absent."""
    return _ranked(record, None)[0]


def _ranked(record: dict, width: int | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(ratios by rank, stored column of each rank or None when already in rank order) for a layer record.

    Runs written before the alignment kept columns in variance order stored them permuted to follow the
    previous snapshot, with `order` giving each column's rank; those are put back in rank order here. A
    malformed `order` (not a permutation of the stored columns) is ignored."""
    pca = record.get("pca") if isinstance(record, dict) else None
    pca = pca if isinstance(pca, dict) else {}
    raw = pca.get("explained_variance_ratio")
    ratios = None
    if isinstance(raw, list):
        ratios = np.asarray(
            [r if isinstance(r, (int, float)) and not isinstance(r, bool) else np.nan for r in raw], np.float64
        )
    width = width if width is not None else (len(ratios) if ratios is not None else None)
    order = pca.get("order")
    columns = None
    if (
        isinstance(order, list)
        and width is not None
        and len(order) == width
        and all(isinstance(r, int) and not isinstance(r, bool) for r in order)
        and sorted(order) == list(range(width))
    ):
        if order != sorted(order):
            columns = np.argsort(np.asarray(order, np.int64), kind="stable")
    if ratios is not None and columns is not None and len(ratios) == len(columns):
        ratios = ratios[columns]
    return ratios, columns


class Snapshot:
    """One immutable snapshot: `meta` holds the scalars, `array(key)` loads one array on demand.

    Only the JSON header is read up front; arrays are read from the file member by member when asked for and
    then kept, so a viewer's memory grows with what it shows, not with the size of the store.
    """

    def __init__(self, meta: dict, files: Files, path: str):
        self.meta = meta
        self._files = files
        self._path = path
        self._arrays: dict[str, np.ndarray] = {}
        self.unreadable: dict[str, str] = {}  # array key -> why it could not be read

    @property
    def seq(self) -> int:
        return int(self.meta["seq"])

    @property
    def epoch(self) -> float:
        return float(self.meta["epoch"])

    def keys(self) -> list[str]:
        try:
            with self._files.open(self._path) as handle, np.load(handle, allow_pickle=False) as npz:
                return [k for k in npz.files if k != META_KEY]
        except READ_ERRORS:
            return []

    def layer_array(self, index: int, name: str) -> np.ndarray | None:
        """Layer `index`'s array `name` ("pca", "unit_mean", "dead_units", ...): `array(layer_key(index, name))`."""
        return self.array(layer_key(index, name))

    def predictions(self, output: int | None = None) -> np.ndarray | None:
        """(n, C) predictions on the probe of model output `output` (None: the primary output, `pred/probs`), as
        probabilities for a classifier; a run of one output (or written before outputs were stored apart) has only
        `pred/probs`, whatever `output`."""
        if output is not None:
            own = self.array(f"pred/{int(output)}/probs")
            if own is not None:
                return own
        return self.array("pred/probs")

    def array(self, key: str) -> np.ndarray | None:
        """The array stored under `key`, or None when this snapshot has none or it cannot be read (a damaged
        member, or one that holds no numbers): `unreadable` then says why."""
        if key not in self._arrays:
            try:
                with self._files.open(self._path) as handle, np.load(handle, allow_pickle=False) as npz:
                    if key not in npz.files:
                        return None
                    array = npz[key]
            except READ_ERRORS as error:
                self.unreadable[key] = reason(error)
                return None
            if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
                self.unreadable[key] = f"holds {array.dtype}, not numbers"
                return None
            self._arrays[key] = array
        return self._arrays[key]

    def layer(self, index: int) -> dict:
        """The scalar record of layer `index` (see FORMAT.md), or {} when absent."""
        layers = self.meta.get("layers") or []
        return layers[index] if 0 <= index < len(layers) else {}

    def skipped(self) -> list[tuple[int | None, str, str]]:
        """(layer index, or None for the whole snapshot; piece; reason) for every piece of analysis the recorder
        could not compute at this snapshot, such as the projection of a layer whose output holds NaN."""
        found = []
        records = [(None, self.meta)] + [(index, layer) for index, layer in enumerate(self.meta.get("layers") or [])]
        for index, record in records:
            pieces = record.get("skipped") if isinstance(record, dict) else None
            if isinstance(pieces, dict):
                found += [(index, str(piece), str(reason)) for piece, reason in pieces.items()]
        return found

    def projection(self, index: int, points: str = "pca") -> Projection | None:
        """Layer `index`'s probe samples (`points="pca"`) or input-plane grid (`"plane_pca"`) on its principal
        components, PC1 first; None when this snapshot has none. Read PCA coordinates only through here: it
        also puts older runs' permuted columns back in variance order."""
        coords = self.layer_array(index, points)
        if coords is None or coords.ndim != 2:
            return None
        ratios, columns = _ranked(self.layer(index), coords.shape[1])
        if columns is not None:
            coords = coords[:, columns]
        if ratios is not None and len(ratios) != coords.shape[1]:
            ratios = None
        return Projection(coords, ratios)


def load_npz(handle):
    """np.load for a file that must be an npz archive: anything else (np.load would try it as a pickle or a .npy)
    raises FormatProblem."""
    if handle.read(4) != b"PK\x03\x04":
        raise FormatProblem("not an npz archive")
    handle.seek(0)
    return np.load(handle, allow_pickle=False)


def _read_snapshot(files: Files, path: str, seq: int) -> Snapshot:
    """The snapshot in file `path` (named for `seq`), its header checked. Raises one of READ_ERRORS."""
    with files.open(path) as handle, load_npz(handle) as npz:
        if META_KEY not in npz.files:
            raise FormatProblem("it has no header")
        meta = json.loads(str(npz[META_KEY]))
    return Snapshot(run_format.snapshot_meta(meta, seq), files, path)


class Run:
    """A reader of one run. Snapshots are immutable, so each is read once and kept."""

    def __init__(self, files: Files, run_id: str):
        self.files = files
        self.id = checked_run_id(run_id)
        self._snapshots: dict[int, Snapshot] = {}
        self._batch_gradients: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._damaged: dict[str, str] = {}  # file (relative to the run) -> why it cannot be read
        self._settled = False  # every snapshot has been listed: the run had ended when we last looked
        self._meta: dict | None = None
        self._probe_checked: tuple[Any, str | None] | None = None  # (probe.npz's stamp, what is wrong with it)
        self._info: tuple[dict, RunInfo] | None = None
        self._history: tuple[Any, dict[str, list]] | None = None  # (history.json's stamp, what it held)
        self.meta  # noqa: B018  # read now: fail early with RunNotFound

    @property
    def meta(self) -> dict:
        if self._meta is None:
            self._meta = self._read_meta()
        return self._meta

    def revalidate(self) -> None:
        """Read the run again if its run.json was replaced since: an ended run can change, when a recovery
        (`python -m core recover`) writes the snapshots its killed training held back, or when it is renamed."""
        if self._meta is not None and self.files.stamp(self.files.join(self.id, "run.json")) != self._stamp:
            self._meta, self._settled = None, False

    def _read_meta(self) -> dict:
        path = self.files.join(self.id, "run.json")
        self._stamp = self.files.stamp(path)  # before the read: a change in between shows at the next revalidate
        try:
            meta = run_format.run_meta(json.loads(self.files.read_bytes(path)))
        except FileNotFoundError:
            raise RunNotFound(f"No run {self.id!r} in this store.") from None
        except FormatProblem as error:
            raise DamagedRun(f"Run {self.id!r} is damaged: {error}.") from None
        except (ValueError, OSError) as error:
            raise DamagedRun(f"Run {self.id!r} has an unreadable run.json ({reason(error)}).") from None
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise StoreError(
                f"Run {self.id!r} was written by a newer Strata (format {meta['format_version']}); "
                f"this one reads format {FORMAT_VERSION}. Upgrade Strata to view it."
            )
        return meta

    def refresh(self) -> list[int]:
        """Re-read the metadata and return the sequence numbers of snapshots that are new since last time."""
        self._meta = self._read_meta()
        return self.poll()

    def poll(self) -> list[int]:
        """Sequence numbers of complete snapshots not seen before. Unfinished or damaged files are skipped."""
        status_before_listing = self.meta.get("status", "running")
        new = []
        for name in self.files.listdir(self.files.join(self.id, "snapshots")):
            match = SNAPSHOT_NAME.match(name)
            if not match or int(match.group(1)) in self._snapshots:
                continue
            try:
                snapshot = _read_snapshot(self.files, self.files.join(self.id, "snapshots", name), int(match.group(1)))
            except READ_ERRORS as error:
                # Writes are atomic, so a file under its final name that does not read is damaged, not unfinished;
                # it is tried again at the next poll all the same, in case a copy is still going on.
                self._damaged[f"snapshots/{name}"] = reason(error)
                continue
            self._damaged.pop(f"snapshots/{name}", None)
            self._snapshots[snapshot.seq] = snapshot
            new.append(snapshot.seq)
        # The writer sets the final status after its last snapshot: once seen, the listing is complete for good.
        self._settled = status_before_listing != "running"
        return sorted(new)

    @property
    def status(self) -> str:
        """The recorded status, except that a 'running' run whose process is gone reads as 'interrupted'."""
        status = self.meta.get("status", "running")
        if status == "running" and not process_alive(self.meta):
            return "interrupted"
        return status

    def unwritten_captures(self) -> int:
        """Snapshots this run's training captured but never wrote: held back for its budget when its process was
        killed. `python -m core recover RUN` writes them (`core.capture.recover`); 0 while the run is still
        recording."""
        if self.status == "running" or not self.files.isdir(self.files.join(self.id, "journal")):
            return 0
        return pending_captures(self.files, self.id, {capture_key(s.meta) for s in self.snapshots()})

    @property
    def name(self) -> str:
        return self.meta.get("name") or self.id

    @property
    def layers(self) -> list[dict]:
        return self.meta.get("layers") or []

    @property
    def info(self) -> RunInfo:
        """run.json as the typed read model (`core.store.run_info`): what pages and commands read, instead of `.get`
        chains on `meta`. Built again only when run.json changed."""
        meta = self.meta
        if self._info is None or self._info[0] is not meta:
            self._info = (meta, RunInfo.from_meta(meta, self.id))
        return self._info[1]

    def damaged_files(self) -> dict[str, str]:
        """{file, relative to the run: why it cannot be read} for every file the reader found damaged and skipped
        so far (snapshots once listed; probe.npz, history.json and batch gradients once read)."""
        self.snapshots()
        return dict(sorted(self._damaged.items()))

    def snapshots(self) -> list[Snapshot]:
        """All complete snapshots, ordered by sequence number."""
        if not self._settled:
            self.poll()
        return [self._snapshots[seq] for seq in sorted(self._snapshots)]

    def snapshot(self, seq: int) -> Snapshot:
        if seq not in self._snapshots:
            self.poll()
        if seq not in self._snapshots:
            raise StoreError(f"Run {self.id!r} has no snapshot {seq}.")
        return self._snapshots[seq]

    def epoch_snapshots(self) -> list[Snapshot]:
        """One snapshot per captured epoch (the end-of-epoch one), ordered by epoch."""
        by_epoch: dict[float, Snapshot] = {}
        for snapshot in self.snapshots():
            if snapshot.meta.get("kind", "epoch") == "epoch":
                by_epoch[snapshot.epoch] = snapshot
        return [by_epoch[e] for e in sorted(by_epoch)]

    def epochs(self) -> list[int]:
        return [int(s.epoch) for s in self.epoch_snapshots()]

    def planned_epochs(self) -> list[int]:
        """The epochs the recorder's schedule has captured by now: the first (before training), every `every`-th
        up to `epochs_done`, and the last one of a finished run (FORMAT.md). Compare with `epochs()`."""
        done, every = int(self.meta.get("epochs_done") or 0), int(self.meta.get("every") or 1)
        trained = self.history().get("epoch") or []
        first = (
            int(trained[0]) - 1 if trained and isinstance(trained[0], (int, float)) else min(self.epochs(), default=0)
        )
        planned = {first} | {epoch for epoch in range(first + 1, done + 1) if epoch % every == 0}
        if self.status == "finished" and done > first:
            planned.add(done)
        return sorted(planned)

    def lost_snapshots(self) -> LostSnapshots:
        """Snapshots this run captured that cannot be read, and why: damaged files, sequence numbers with no file,
        and epochs of the capture schedule with no snapshot. While the run is still written only damage is known."""
        self.snapshots()
        files = {name: f"damaged ({why})" for name, why in self._damaged.items() if name.startswith("snapshots/")}
        if self.status == "running":
            return LostSnapshots((), files)
        written = max(
            [
                int(self.meta.get("snapshots") or 0),
                *(seq + 1 for seq in self._snapshots),
                *(
                    int(match.group(1)) + 1
                    for name in files
                    if (match := SNAPSHOT_NAME.match(name.split("/")[1])) is not None
                ),
            ]
        )
        for seq in range(written):
            name = f"snapshots/{snapshot_name(seq)}"
            if seq not in self._snapshots and name not in files:
                files[name] = "missing (deleted, or never finished: a full disk or a killed writer)"
        readable = set(self.epochs())
        epochs = tuple(epoch for epoch in self.planned_epochs() if epoch not in readable)
        return LostSnapshots(epochs, dict(sorted(files.items())), self.unwritten_captures() if epochs or files else 0)

    def probe(self) -> Probe:
        """The probe set. StoreError when it is not written yet, or damaged (the reason is in `damaged_files`)."""
        if not hasattr(self, "_probe"):
            try:
                data = self.files.read_bytes(self.files.join(self.id, "probe.npz"))
            except FileNotFoundError:
                raise StoreError(f"Run {self.id!r} has no probe set yet.") from None
            try:
                with load_npz(io.BytesIO(data)) as npz:
                    arrays = {key: npz[key] for key in npz.files}
                run_format.probe_arrays(arrays)
            except READ_ERRORS as error:
                self._damaged["probe.npz"] = reason(error)
                raise StoreError(f"Run {self.id!r} has a damaged probe set (probe.npz: {reason(error)}).") from None
            plane = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("plane/")}
            self._probe = Probe(
                y=arrays.get("y"),
                indices=arrays["indices"],
                x=arrays.get("x"),
                plane=plane,
                input_pca=arrays.get("input/pca"),
                targets={int(k.split("/", 1)[1]): v for k, v in arrays.items() if k.startswith("targets/")},
                other_inputs={int(k.split("/", 1)[1]): v for k, v in arrays.items() if k.startswith("inputs/")},
            )
        return self._probe

    def history(self) -> dict[str, list]:
        """Keras logs per epoch: {'epoch': [1, 2, ...], 'loss': [...], 'val_accuracy': [...], ...}.

        Read and checked again only when history.json has been replaced since (its stamp): every page of every
        session asks for it. The dict is shared: read it, never change it."""
        path = self.files.join(self.id, "history.json")
        stamp = self.files.stamp(path)  # before the read: a change in between shows at the next call
        if stamp is not None and self._history is not None and self._history[0] == stamp:
            return self._history[1]
        try:
            history = run_format.history(json.loads(self.files.read_bytes(path)))
        except FileNotFoundError:
            return {"epoch": []}
        except READ_ERRORS as error:  # a half-written file from an old, non-atomic copy reads as empty too
            self._damaged["history.json"] = reason(error)
            return {"epoch": []}
        self._damaged.pop("history.json", None)
        self._history = (stamp, history)
        return history

    def batch_gradient_norms(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps (m,) int, norms (m, layers) float): each layer's gradient norm every `grad_every` batches.

        The norm is over all of a layer's trainable weights, on a fixed subset of the probe; NaN for layers
        without weights. Empty arrays when the run was recorded without `grad_every`.
        """
        directory = self.files.join(self.id, BATCH_GRADIENTS_DIR)
        for name in self.files.listdir(directory):
            if not BATCH_GRADIENTS_NAME.match(name) or name in self._batch_gradients:
                continue
            try:
                data = self.files.read_bytes(self.files.join(self.id, BATCH_GRADIENTS_DIR, name))
                with load_npz(io.BytesIO(data)) as npz:
                    steps, norms = npz["steps"], npz["norms"]
                run_format.batch_gradients(steps, norms, len(self.layers))
            except READ_ERRORS as error:
                self._damaged[f"{BATCH_GRADIENTS_DIR}/{name}"] = reason(error)
                continue  # tried again next time
            self._damaged.pop(f"{BATCH_GRADIENTS_DIR}/{name}", None)
            self._batch_gradients[name] = (steps, norms)
        parts = [self._batch_gradients[name] for name in sorted(self._batch_gradients)]
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, len(self.layers)), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def layer_series(self, *path, snapshots: list[Snapshot] | None = None) -> np.ndarray:
        """(snapshots, layers) float array of one scalar from each layer record, NaN where missing.

        Example: `run.layer_series("grad", "kernel", "norm")` is the kernel gradient norm of every layer at
        every captured epoch. A step of `path` may also be a function of the layer's architecture record that
        names the key for that layer, such as `main_weight`.
        """
        snapshots = self.epoch_snapshots() if snapshots is None else snapshots
        paths = [tuple(step(layer) if callable(step) else step for step in path) for layer in self.layers]
        values = np.full((len(snapshots), len(self.layers)), np.nan)
        for row, snapshot in enumerate(snapshots):
            for column, record in enumerate((snapshot.meta.get("layers") or [])[: len(self.layers)]):
                values[row, column] = _dig(record, paths[column])
        return values


@dataclass(frozen=True)
class LostSnapshots:
    """What a run captured and cannot show (`Run.lost_snapshots`): falsy when nothing is lost."""

    epochs: tuple[int, ...] = ()  # epochs of the capture schedule without a readable snapshot
    files: dict[str, str] = field(default_factory=dict)  # snapshot file (relative to the run) -> why it is not read
    unwritten: int = 0  # captures still in the journal: `python -m core recover` can write them

    def __bool__(self) -> bool:
        return bool(self.epochs or self.files)

    def lines(self) -> list[str]:
        """Plain-text sentences: how many, which, and why."""
        lines = []
        if self.epochs:
            shown = ", ".join(str(e) for e in self.epochs[:20]) + (", …" if len(self.epochs) > 20 else "")
            lines.append(f"{len(self.epochs)} captured epoch(s) have no readable snapshot: {shown}.")
        for name, why in list(self.files.items())[:20]:
            lines.append(f"{name} is {why}.")
        if len(self.files) > 20:
            lines.append(f"… and {len(self.files) - 20} more snapshot file(s).")
        if self.unwritten:
            lines.append(
                f"{self.unwritten} capture(s) were held back and never written: `python -m core recover` writes them."
            )
        return lines


MAIN_WEIGHTS = ("kernel", "depthwise_kernel", "embeddings")  # what stands for a layer where views say "kernel"


def main_weight(layer: dict) -> str | None:
    """The weight that stands for a layer in kernel charts and checks: its `kernel`, else the weight in that
    role (a depthwise kernel, an embedding table); None for layers with neither, such as normalisation."""
    weights = layer.get("weights") or []
    return next((name for name in MAIN_WEIGHTS if name in weights), None)


def _dig(record: dict, path: tuple[str | None, ...]) -> float:
    value: Any = record
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return math.nan
        value = value[key]
    return float(value) if isinstance(value, (int, float)) else math.nan


def process_alive(meta: dict) -> bool:
    """Whether the writing process still lives. Only checkable on the host that wrote the run."""
    if meta.get("host") != socket.gethostname():
        return True
    pid = meta.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _pid_is_not_zombie(pid)


def _pid_is_not_zombie(pid: int) -> bool:
    # A killed child that its parent has not reaped yet still answers kill(0); /proc tells the truth.
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().split(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return True
