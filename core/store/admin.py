"""The store's entry point: `RunStore` lists, opens, renames, deletes, exports and imports the runs under one root."""

from __future__ import annotations

import io
import os
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from core.store.archive import ImportLimits, import_run
from core.store.files import (
    READ_ERRORS,
    TEMP_PREFIX,
    Files,
    RunNotFound,
    StoreError,
    checked_run_id,
    is_valid_run_id,
    json_bytes,
    reason,
)
from core.store.reader import Run, load_npz
from core.store.run_format import FormatProblem

ZIP_CHUNK = 1 << 20  # bytes a streamed archive is cut into, and read from a file at once


class _Pieces:
    """Where `zip_chunks` has `zipfile` write: collects what was written until it is taken. It has no `tell` or
    `seek`, so `zipfile` writes each entry's sizes after its data instead of seeking back to its header."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self.size = 0

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def write(self, data: bytes, /) -> int:
        self._pieces.append(bytes(data))
        self.size += len(data)
        return len(data)

    def take(self) -> bytes:
        """Everything written since the last `take`."""
        taken, self._pieces, self.size = b"".join(self._pieces), [], 0
        return taken


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
        self.files = Files(str(root))
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
        self.files.write_atomic(self.files.join(run_id, "run.json"), json_bytes(meta))
        run._meta = None

    def delete(self, run_id: str) -> None:
        self.run(run_id)
        self.files.remove_tree(self.files.join(run_id))
        self._runs.pop(run_id, None)

    def zip_chunks(self, run_id: str, chunk_bytes: int = ZIP_CHUNK) -> Iterator[bytes]:
        """The run folder as a zip archive, written as it is read: pieces of about `chunk_bytes` each.

        The archive is never whole, in memory or on disk: each file is copied in pieces of at most `chunk_bytes`
        into an entry stored as is (ZIP_STORED, zip64) whose sizes and checksum follow its data (a data
        descriptor), so nothing already sent is ever revisited; the directory of entries comes last. Only the run's
        own regular files go in: symbolic links (to a file or folder anywhere) are skipped, and a run folder that is
        itself a link, or resolves outside the store, is refused with a StoreError before anything is written.
        Close the generator to stop early: the file being read is closed with it.
        """
        self.check_download(run_id)
        return self._zip_chunks(run_id, chunk_bytes)

    def _zip_chunks(self, run_id: str, chunk_bytes: int) -> Iterator[bytes]:
        out = _Pieces()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:  # not seekable: descriptors
            for relative in self._walk(run_id):
                try:
                    source = self._open_regular(self.files.join(run_id, *relative.split("/")))
                except OSError:
                    continue  # replaced by a link, or deleted, since the folder was listed
                with source, archive.open(f"{run_id}/{relative}", "w", force_zip64=True) as target:
                    while chunk := source.read(chunk_bytes):
                        target.write(chunk)
                        if out.size >= chunk_bytes:
                            yield out.take()
                if out.size >= chunk_bytes:
                    yield out.take()
        if out.size:
            yield out.take()

    def zip_file(self, run_id: str) -> io.RawIOBase:
        """The run's zip archive (`zip_chunks`) in an unnamed temporary file, read from its start; the caller closes
        it. For a seekable copy (`import_zip` takes one); the dashboard streams `zip_chunks` instead."""
        chunks = self.zip_chunks(run_id)
        with tempfile.TemporaryFile() as spool:
            for chunk in chunks:
                spool.write(chunk)
            spool.flush()
            archive_file = os.fdopen(os.dup(spool.fileno()), "rb", buffering=0)  # outlives `spool`: a raw FileIO
        archive_file.seek(0)
        return archive_file

    def import_zip(self, archive, name: str | None = None, limits=None) -> str:
        """Unpack a run zip (a seekable binary file, such as `zip_file` serves) into this store under a new run id,
        and return the id. StoreError, leaving nothing behind, for an archive that is not a valid run or could harm
        the store (paths out of the run, links, zip bombs, files that are not the run format's): see
        `core.store.archive`."""

        return import_run(self.files, archive, name, limits or ImportLimits())

    def zip_bytes(self, run_id: str) -> bytes:
        """The whole run folder as a zip archive, in memory (for small runs and tests; see `zip_chunks`)."""
        return b"".join(self.zip_chunks(run_id))

    def check_download(self, run_id: str) -> None:
        """StoreError when `zip_chunks` would refuse the run: one that cannot be opened, or a run folder that is a link
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
        with run.files.open(path) as handle, load_npz(handle) as npz:
            if "indices" not in npz.files:
                raise FormatProblem("probe.npz has no `indices`")
    except FileNotFoundError:
        return None  # not written yet
    except READ_ERRORS as error:
        return f"Run {run.id!r} has a damaged probe set (probe.npz: {reason(error)})."
    return None
