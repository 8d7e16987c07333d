"""The store's file layer: run ids, errors, and file access under one root (a local folder or any fsspec URL),
with atomic writes. Every other store module reads and writes through `Files`. Numpy-only."""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
import time
import uuid
import zipfile
from typing import Any

import numpy as np

from core.store.run_format import FormatProblem

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


class Files:
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
                ignore_errors(self.fs.rm, temp)
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
            ignore_errors(os.unlink, temp)
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


def ignore_errors(function, *args) -> None:
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


def json_bytes(value: dict) -> bytes:
    return json.dumps(to_json_safe(value), indent=1, allow_nan=False).encode()


def snapshot_name(seq: int) -> str:
    return f"s{seq:06d}.npz"


def batch_gradients_name(epoch: int) -> str:
    return f"e{epoch:06d}.npz"
