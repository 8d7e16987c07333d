"""The run store: the on-disk contract between the training core (writer) and the dashboard (reader).

Layout of one run, under a root that is a local folder or any fsspec URL::

    <root>/<run_id>/run.json              metadata: config, architecture, status (rewritten atomically)
    <root>/<run_id>/probe.npz             the probe set: labels, sample indices, inputs when small enough
    <root>/<run_id>/history.json          Keras logs per epoch (rewritten atomically)
    <root>/<run_id>/snapshots/s000000.npz one immutable file per snapshot
    <root>/<run_id>/batch_gradients/e000001.npz  per-batch gradient norms of one epoch (optional, immutable)

Every write goes to a temporary name first and is then renamed into place (with fsync on local disks), so a
reader never sees a partial file and a killed writer loses at most the file in progress. Snapshot files hold
their scalars in a JSON header (`__meta__`) and their arrays as npz members, which numpy loads lazily, so a
series over many snapshots reads only headers. This module is numpy-only: it never imports TensorFlow.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import socket
import stat
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core import run_format
from core.run_format import FormatProblem
from core.run_info import RunInfo, layer_key

FORMAT_VERSION = 1
STATUSES = ("running", "finished", "failed", "interrupted")
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SNAPSHOT_NAME = re.compile(r"^s(\d{6})\.npz$")
BATCH_GRADIENTS_DIR = "batch_gradients"
BATCH_GRADIENTS_NAME = re.compile(r"^e(\d{6})\.npz$")
META_KEY = "__meta__"
TEMP_PREFIX = ".tmp-"


class StoreError(Exception):
    """A problem with the run store that the caller should show to the user as a message."""


class RunNotFound(StoreError):
    pass


class DamagedRun(StoreError):
    """A run whose run.json cannot be read or does not hold what FORMAT.md says; the message gives the reason.
    The store lists such a run as damaged, and every other run reads as before."""


# What a reader catches from a file that is not what it should be: a torn or garbage npz, bad JSON, a bad field.
READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def reason(error: BaseException) -> str:
    """Why a file could not be read, in words that never hold a server path (an OSError's filename is left out)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, FormatProblem):
        return str(error)
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:200] if text else type(error).__name__


def is_valid_run_id(run_id: object) -> bool:
    """True when `run_id` is safe to use as one path component (no separators, no `..`, bounded length)."""
    return isinstance(run_id, str) and bool(RUN_ID_PATTERN.match(run_id)) and ".." not in run_id


def checked_run_id(run_id: object) -> str:
    if not is_valid_run_id(run_id):
        raise StoreError(f"Invalid run id {run_id!r}: ids use letters, digits, '.', '_' and '-' only (at most 128).")
    return str(run_id)


def new_run_id(name: str | None = None, now: float | None = None) -> str:
    """A sortable, collision-resistant id such as `20261127-031502-digits-3fa29c1e`.

    Eight random hex digits: runs of one name started in the same second (a sweep launched in parallel) must
    never share a folder. With four, 50 ids made in one second shared one about 2% of the time (CI hit it).
    """
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now or time.time()))
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name or "run").strip("-").lower()[:40] or "run"
    return f"{stamp}-{slug}-{uuid.uuid4().hex[:8]}"


def to_json_safe(value: Any) -> Any:
    """Numpy scalars and arrays to plain Python; NaN and infinities to None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json_safe(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    return value


# ----------------------------------------------------------------------------------------------------------
# File system access


def _filesystem(root: str):
    """(fs, path) for a local folder or an fsspec URL; fs is None for local disk, a `file://` URL included, which
    then gets the local writes (fsync, rename) and link checks. fsspec is imported lazily: local use needs none."""
    if "://" not in root:
        return None, os.path.abspath(root)
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, path = fsspec.core.url_to_fs(root)
    if isinstance(fs, LocalFileSystem):
        return None, os.path.abspath(path)
    return fs, path.rstrip("/")


# Object stores whose upload of one object is atomic (a reader sees the old object or the new one, never a part):
# a file is written in place, without a temporary object to copy and delete.
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs"})


class _Files:
    """The handful of file operations the store needs, on local disk (with fsync) or through fsspec."""

    def __init__(self, root: str):
        self.url = root
        self.fs, self.root = _filesystem(root)
        protocols = self.fs.protocol if self.fs else ()
        self.atomic_put = bool(ATOMIC_PUT_PROTOCOLS & ({protocols} if isinstance(protocols, str) else set(protocols)))

    def join(self, *parts: str) -> str:
        """The path of `parts` under the root: each part is one name (a run id, a folder or file name), never a
        path. A path passed again would be joined under the root a second time on an object store (the journal's
        entries once landed at `<root>/<root>/<run>/journal/`), while on local disk it silently replaced the root."""
        for part in parts:
            if not isinstance(part, str) or not part or part in (".", "..") or "/" in part or "\\" in part:
                raise ValueError(f"A store path is joined from single names, not paths. Received: {parts!r}")
        return "/".join([self.root, *parts]) if self.fs else os.path.join(self.root, *parts)

    def _fresh(self, path: str) -> None:
        """Forget fsspec's cached listing of `path` and its parents: another process (the recording one, a
        recovery) may have written since, and a reader must see it (s3fs caches listings for good)."""
        self.fs.invalidate_cache(path)

    def exists(self, path: str) -> bool:
        if self.fs:
            self._fresh(path)
            return self.fs.exists(path)
        return os.path.exists(path)

    def holds_run(self, run_id: str) -> bool:
        """Whether a run with this id is here: a folder is a run once its run.json is written."""
        return self.exists(self.join(run_id, "run.json"))

    def isdir(self, path: str) -> bool:
        if self.fs:
            self._fresh(path)
            return self.fs.isdir(path)
        return os.path.isdir(path)

    def makedirs(self, path: str) -> None:
        if self.fs:
            self.fs.makedirs(path, exist_ok=True)
        else:
            os.makedirs(path, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        """Names (not paths) of the entries in `path`; empty when it does not exist."""
        try:
            if self.fs:
                self._fresh(path)
                return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False))
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def open(self, path: str):
        """A binary file object; np.load reads single npz members from it without reading the whole file."""
        return self.fs.open(path, "rb") if self.fs else open(path, "rb")

    def stamp(self, path: str):
        """Something that changes whenever the file at `path` is replaced (None when unknown or missing)."""
        try:
            if self.fs:
                self._fresh(path)
                info = self.fs.info(path)  # an object store's time has whole seconds: its ETag tells rewrites apart
                when = info.get("mtime") or info.get("LastModified") or info.get("created")
                return when, info.get("ETag"), info.get("size")
            stat = os.stat(path)
            return stat.st_mtime_ns, stat.st_ino
        except (OSError, ValueError):
            return None

    def read_bytes(self, path: str) -> bytes:
        if self.fs:
            return self.fs.cat_file(path)
        with open(path, "rb") as handle:
            return handle.read()

    def write_atomic(self, path: str, data: bytes) -> None:
        """Write `data` to a temporary sibling, fsync it, then rename it over `path`."""
        directory = path.rsplit("/", 1)[0] if self.fs else os.path.dirname(path)
        if self.atomic_put:
            self.fs.pipe_file(path, data)
            return
        if self.fs:
            temp = f"{directory}/{TEMP_PREFIX}{uuid.uuid4().hex}"
            try:
                self.fs.pipe_file(temp, data)
                self.fs.mv(temp, path)
            except BaseException:
                _ignore_errors(self.fs.rm, temp)
                raise
            return
        handle, temp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX)
        try:
            os.fchmod(handle, 0o644)  # mkstemp makes 0600; runs are meant to be read by a dashboard process
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            _ignore_errors(os.unlink, temp)
            raise
        _fsync_directory(directory)

    def write_from(self, path: str, chunks) -> None:
        """Write a new file at `path` from an iterable of byte strings, without holding it whole. Not atomic: for
        files in a folder that no reader looks at yet (an import's temporary folder)."""
        if self.fs:
            with self.fs.open(path, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
            return
        with open(path, "xb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())

    def remove(self, path: str) -> None:
        """Delete one file; a file that is already gone is fine."""
        try:
            self.fs.rm(path) if self.fs else os.unlink(path)
        except FileNotFoundError:
            pass

    def remove_tree(self, path: str) -> None:
        if self.fs:
            self.fs.rm(path, recursive=True)
        else:
            import shutil

            shutil.rmtree(path)

    def rename(self, source: str, target: str) -> None:
        """Move a folder to a new name (atomic on local disk). An object store has no folders: each file moves on
        its own (s3fs's recursive move also tries to copy the folders' own names, which are no objects)."""
        if not self.fs:
            os.replace(source, target)
            return
        self._fresh(source)
        for path in self.fs.find(source):
            self.fs.mv(path, target + path[len(source) :])
        if self.fs.exists(source):  # a file system with folders of its own (memory://) keeps the empty one
            self.remove_tree(source)


def _ignore_errors(function, *args) -> None:
    try:
        function(*args)
    except Exception:
        pass


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; not supported on every platform, and not fatal where it is not.
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def npz_bytes(arrays: dict[str, np.ndarray], meta: dict | None = None) -> bytes:
    """Serialise arrays (and an optional JSON header) to npz bytes; nothing here ever needs pickle."""
    payload = {key: np.asarray(value) for key, value in arrays.items()}
    if meta is not None:
        payload[META_KEY] = np.array(json.dumps(to_json_safe(meta), allow_nan=False))
    buffer = io.BytesIO()
    np.savez(buffer, **payload)  # type: ignore[arg-type]  # numpy's stub reads **payload as allow_pickle
    return buffer.getvalue()


def _json_bytes(value: dict) -> bytes:
    return json.dumps(to_json_safe(value), indent=1, allow_nan=False).encode()


def snapshot_name(seq: int) -> str:
    return f"s{seq:06d}.npz"


def batch_gradients_name(epoch: int) -> str:
    return f"e{epoch:06d}.npz"


# ----------------------------------------------------------------------------------------------------------
# Writing


def run_exists(root: str, run_id: str) -> bool:
    """Whether `root` already holds a run with this id. An unreachable root holds none, as far as a writer can tell."""
    try:
        files = _Files(root)
        return files.holds_run(checked_run_id(run_id))
    except OSError:
        return False


class RunWriter:
    """Creates one run and writes its files. Used by `core.Recorder`; every method is one atomic write."""

    def __init__(self, root: str, run_id: str, meta: dict):
        self.files = _Files(root)
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
        writer.files = _Files(root)
        writer.run_id = checked_run_id(run_id)
        writer.dir = writer.files.join(writer.run_id)
        writer.meta = json.loads(writer.files.read_bytes(writer.files.join(writer.run_id, "run.json")))
        writer.update_meta(host=socket.gethostname(), pid=os.getpid())
        return writer

    def _write_meta(self) -> None:
        self.files.write_atomic(self.files.join(self.run_id, "run.json"), _json_bytes(self.meta))

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
        self.files.write_atomic(self.files.join(self.run_id, "history.json"), _json_bytes(history))

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
    # Per model output with targets, (n,) its truth: class ids, a regression's value, or a multi-label row's number
    # of labels (what each is: `RunInfo.outputs`). Empty for runs written before December 2026.
    targets: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.indices.shape[0])


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

    def __init__(self, meta: dict, files: _Files, path: str):
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


def _load_npz(handle):
    """np.load for a file that must be an npz archive: anything else (np.load would try it as a pickle or a .npy)
    raises FormatProblem."""
    if handle.read(4) != b"PK\x03\x04":
        raise FormatProblem("not an npz archive")
    handle.seek(0)
    return np.load(handle, allow_pickle=False)


def _read_snapshot(files: _Files, path: str, seq: int) -> Snapshot:
    """The snapshot in file `path` (named for `seq`), its header checked. Raises one of READ_ERRORS."""
    with files.open(path) as handle, _load_npz(handle) as npz:
        if META_KEY not in npz.files:
            raise FormatProblem("it has no header")
        meta = json.loads(str(npz[META_KEY]))
    return Snapshot(run_format.snapshot_meta(meta, seq), files, path)


class Run:
    """A reader of one run. Snapshots are immutable, so each is read once and kept."""

    def __init__(self, files: _Files, run_id: str):
        self.files = files
        self.id = checked_run_id(run_id)
        self._snapshots: dict[int, Snapshot] = {}
        self._batch_gradients: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._damaged: dict[str, str] = {}  # file (relative to the run) -> why it cannot be read
        self._settled = False  # every snapshot has been listed: the run had ended when we last looked
        self._meta: dict | None = None
        self._probe_checked: tuple[Any, str | None] | None = None  # (probe.npz's stamp, what is wrong with it)
        self._info: tuple[dict, RunInfo] | None = None
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
        if status == "running" and not _process_alive(self.meta):
            return "interrupted"
        return status

    def unwritten_captures(self) -> int:
        """Snapshots this run's training captured but never wrote: held back for its budget when its process was
        killed. `python -m core recover RUN` writes them (`core.recover`); 0 while the run is still recording."""
        from core.journal import capture_key, pending_captures  # it reads the journal with this module's helpers

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
        """run.json as the typed read model (`core.run_info`): what pages and commands read, instead of `.get`
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
                with _load_npz(io.BytesIO(data)) as npz:
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
            )
        return self._probe

    def history(self) -> dict[str, list]:
        """Keras logs per epoch: {'epoch': [1, 2, ...], 'loss': [...], 'val_accuracy': [...], ...}."""
        try:
            history = run_format.history(json.loads(self.files.read_bytes(self.files.join(self.id, "history.json"))))
        except FileNotFoundError:
            return {"epoch": []}
        except READ_ERRORS as error:  # a half-written file from an old, non-atomic copy reads as empty too
            self._damaged["history.json"] = reason(error)
            return {"epoch": []}
        self._damaged.pop("history.json", None)
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
                with _load_npz(io.BytesIO(data)) as npz:
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


def _process_alive(meta: dict) -> bool:
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


@dataclass(frozen=True)
class RunSummary:
    """One row of the run list."""

    id: str
    name: str
    status: str
    dataset: str
    epochs_done: int
    epochs_planned: int
    created: float
    error: str | None = None
    unwritten: int = 0  # snapshots held back when training was killed: `python -m core recover` writes them
    damaged: str | None = None  # why the run cannot be read (its status is then "damaged"); None for a readable run


class RunStore:
    """The reader's entry point: list, open, rename, delete and export runs under one root."""

    def __init__(self, root: str = "runs"):
        self.files = _Files(str(root))
        self.url = str(root)
        self._runs: dict[str, Run] = {}
        self._damaged_runs: dict[str, tuple[Any, RunSummary]] = {}  # run id -> (run.json's stamp, its row)

    def run_ids(self) -> list[str]:
        return [
            name for name in self.files.listdir(self.files.root) if is_valid_run_id(name) and self.files.holds_run(name)
        ]

    def run(self, run_id: str) -> Run:
        """The reader for `run_id` (cached). Raises StoreError for an invalid id, RunNotFound if absent."""
        checked_run_id(run_id)
        if run_id not in self._runs:
            self._runs[run_id] = Run(self.files, run_id)
        else:
            self._runs[run_id].revalidate()
        return self._runs[run_id]

    def list_runs(self) -> list[RunSummary]:
        """Summaries of every run, newest first. A run that cannot be read is listed as "damaged", with the reason
        in `damaged`; it never stops the others from being listed.

        Listing again is cheap: a run's run.json is read again only when its stamp (mtime, or an object store's
        ETag) changed, and a damaged one's reason is kept until its file changes. A 100 MB run.json costs its
        parse once, not at every refresh of the run list."""
        summaries = []
        for run_id in self.run_ids():
            stamp = self.files.stamp(self.files.join(run_id, "run.json"))
            known = self._damaged_runs.get(run_id)
            if known is not None and stamp is not None and known[0] == stamp:
                summaries.append(known[1])
                continue
            try:
                summaries.append(summarize(self.run(run_id)))
                self._damaged_runs.pop(run_id, None)
            except RunNotFound:
                self._runs.pop(run_id, None)
                continue  # deleted since the folder was listed
            except Exception as error:  # one run's files, whatever is wrong with them, never hide the other runs
                self._runs.pop(run_id, None)
                why = (
                    str(error) if isinstance(error, StoreError) else f"Run {run_id!r} cannot be read ({reason(error)})."
                )
                summary = RunSummary(
                    id=run_id,
                    name=run_id,
                    status="damaged",
                    dataset="",
                    epochs_done=0,
                    epochs_planned=0,
                    created=self._folder_time(run_id),
                    damaged=why,
                )
                self._damaged_runs[run_id] = (stamp, summary)
                summaries.append(summary)
        return sorted(summaries, key=lambda s: s.created, reverse=True)

    def _folder_time(self, run_id: str) -> float:
        stamp = self.files.stamp(self.files.join(run_id, "run.json"))
        when = stamp[0] if isinstance(stamp, tuple) else None
        if isinstance(when, (int, float)):
            return when / 1e9 if not self.files.fs else float(when)
        timestamp = getattr(when, "timestamp", None)  # S3's LastModified is a datetime
        return float(timestamp()) if callable(timestamp) else 0.0

    def rename(self, run_id: str, name: str) -> None:
        """Change a run's display name (its id, and so every link to it, stays the same)."""
        run = self.run(run_id)
        meta = run._read_meta()
        meta["name"] = str(name).strip()[:200] or run_id
        self.files.write_atomic(self.files.join(run_id, "run.json"), _json_bytes(meta))
        run._meta = None

    def delete(self, run_id: str) -> None:
        self.run(run_id)
        self.files.remove_tree(self.files.join(run_id))
        self._runs.pop(run_id, None)

    def zip_file(self, run_id: str) -> io.RawIOBase:
        """The run folder as a zip archive in an unnamed temporary file, read from its start; the caller closes it.

        Files are copied into it one piece at a time, so neither the run nor the archive is ever held in memory.
        Only the run's own regular files go in: symbolic links (to a file or folder anywhere) are skipped, and a run
        folder that is itself a link, or resolves outside the store, is refused.
        """
        self.check_download(run_id)
        with tempfile.TemporaryFile() as spool:
            with zipfile.ZipFile(spool, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for relative in self._walk(run_id):
                    try:
                        source = self._open_regular(self.files.join(run_id, *relative.split("/")))
                    except OSError:
                        continue  # replaced by a link, or deleted, since the folder was listed
                    with source, archive.open(f"{run_id}/{relative}", "w", force_zip64=True) as target:
                        while chunk := source.read(1 << 20):
                            target.write(chunk)
            spool.flush()
            archive_file = os.fdopen(os.dup(spool.fileno()), "rb", buffering=0)  # outlives `spool`: a raw FileIO
        archive_file.seek(0)
        return archive_file

    def import_zip(self, archive, name: str | None = None, limits=None) -> str:
        """Unpack a run zip (a seekable binary file, such as `zip_file` serves) into this store under a new run id,
        and return the id. StoreError, leaving nothing behind, for an archive that is not a valid run or could harm
        the store (paths out of the run, links, zip bombs, files that are not the run format's): see `core.archive`."""
        from core.archive import ImportLimits, import_run

        return import_run(self.files, archive, name, limits or ImportLimits())

    def zip_bytes(self, run_id: str) -> bytes:
        """The whole run folder as a zip archive (see `zip_file`, which does not hold it in memory)."""
        with self.zip_file(run_id) as archive:
            return archive.read()

    def check_download(self, run_id: str) -> None:
        """StoreError when `zip_file` would refuse the run: one that cannot be opened, or a run folder that is a link
        or resolves outside the store (a link planted in the store must not serve another folder)."""
        self.run(run_id)
        if self.files.fs:
            return  # object stores have no links
        folder = self.files.join(run_id)
        root = os.path.realpath(self.files.root)
        if os.path.islink(folder) or os.path.dirname(os.path.realpath(folder)) != root:
            raise StoreError(f"Run {run_id!r} is a link to a folder elsewhere, so it is not offered for download.")

    def _open_regular(self, path: str):
        """The file at `path` for reading, refusing a link or anything but a regular file (a FIFO would block)."""
        if self.files.fs:
            return self.files.open(path)
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            os.close(handle)
            raise OSError(f"{path} is not a regular file")
        return os.fdopen(handle, "rb")

    def _walk(self, run_id: str, prefix: str = "") -> Iterator[str]:
        """The run's files (relative paths), skipping temporary files, links and anything but files and folders."""
        directory = self.files.join(run_id, *prefix.split("/")) if prefix else self.files.join(run_id)
        for name in self.files.listdir(directory):
            if name.startswith(TEMP_PREFIX):
                continue
            relative = f"{prefix}/{name}" if prefix else name
            path = self.files.join(run_id, *relative.split("/"))
            if self.files.fs:
                kind = "directory" if self.files.isdir(path) else "file"
            else:
                try:
                    mode = os.lstat(path).st_mode
                except OSError:
                    continue
                kind = "directory" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"
            if kind == "directory":
                yield from self._walk(run_id, relative)
            elif kind == "file":
                yield relative


def summarize(run: Run) -> RunSummary:
    """The run's row in the run list. A probe.npz that is not a readable zip makes the row "damaged" (only its
    table of contents is read: a probe's inputs can be large)."""
    meta = run.meta
    return RunSummary(
        id=run.id,
        name=run.name,
        status=run.status,
        dataset=run.info.dataset.name or "custom",
        epochs_done=int(meta.get("epochs_done") or 0),
        epochs_planned=int(meta.get("epochs_planned") or 0),
        created=float(meta.get("created") or 0.0),
        error=meta.get("error"),
        unwritten=run.unwritten_captures(),
        damaged=_probe_problem(run),
    )


def _probe_problem(run: Run) -> str | None:
    path = run.files.join(run.id, "probe.npz")
    stamp = run.files.stamp(path)
    if stamp is not None and run._probe_checked is not None and run._probe_checked[0] == stamp:
        return run._probe_checked[1]  # the same file as last time: the same answer
    problem = _read_probe_problem(run, path)
    run._probe_checked = (stamp, problem)
    return problem


def _read_probe_problem(run: Run, path: str) -> str | None:
    try:
        with run.files.open(path) as handle, _load_npz(handle) as npz:
            if "indices" not in npz.files:
                raise FormatProblem("probe.npz has no `indices`")
    except FileNotFoundError:
        return None  # not written yet
    except READ_ERRORS as error:
        return f"Run {run.id!r} has a damaged probe set (probe.npz: {reason(error)})."
    return None
