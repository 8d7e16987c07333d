"""Importing a run from a zip archive, such as `RunStore.zip_file` serves, into a store, refusing hostile archives.

An archive can come from anyone (an upload on a hosted dashboard), so nothing in it is trusted. It is refused, with
a StoreError that says why, when it is larger than accepted, when its directory declares more entries than accepted,
when an entry's name could leave the run folder (`..`, an absolute path, a backslash, a drive letter), is a symbolic
link or anything but a file or folder, is encrypted, comes twice, or is not a file of the run format (FORMAT.md),
when its run.json does not validate (`core.store.run_format`), and when unpacking would produce more bytes than accepted
in all, or from one entry more than a set multiple of its packed size. Sizes are counted as the bytes are read,
never taken from the archive's headers.

The run is unpacked into a temporary folder in the store (which readers skip), that folder is renamed to a fresh run
id, and its run.json is written last: a reader never sees a partial run, and a refused archive leaves nothing behind.
"""

from __future__ import annotations

import json
import re
import struct
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from core.store import run_format
from core.store.files import (
    BATCH_GRADIENTS_DIR,
    BATCH_GRADIENTS_NAME,
    FORMAT_VERSION,
    SNAPSHOT_NAME,
    TEMP_PREFIX,
    Files,
    StoreError,
    ignore_errors,
    json_bytes,
    new_run_id,
    reason,
)
from core.store.journal import ENTRY_NAME as JOURNAL_ENTRY_NAME
from core.store.journal import JOURNAL_DIR, SETUP

MIB = 1 << 20
CHUNK = MIB
FOLDERS = ("snapshots", BATCH_GRADIENTS_DIR, JOURNAL_DIR)
NPZ_MAGIC = b"PK\x03\x04"
SYMLINK, REGULAR, DIRECTORY, FILE_TYPE = 0o120000, 0o100000, 0o040000, 0o170000
DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ImportLimits:
    """What an imported archive may hold. The defaults fit a long run of a deep model, far below a disk's size."""

    archive_bytes: int = 1 << 30  # the archive itself
    unpacked_bytes: int = 4 << 30  # everything it unpacks to, counted as it is read
    entries: int = 50_000  # files and folders
    ratio: int = 100  # unpacked / packed bytes of one entry, checked past 1 MiB (a run's npz files barely compress)
    json_bytes: int = 64 * MIB  # run.json or history.json, which are read into memory to be checked
    directory_bytes_per_entry: int = 1024  # the archive's central directory, parsed into memory before any check


def import_run(files: Files, archive: BinaryIO, name: str | None = None, limits: ImportLimits = ImportLimits()) -> str:
    """Unpack the run in `archive` (a seekable binary file) into the store under a new run id, and return that id.

    `name` is the imported run's display name (default: the name it had). A run that was still `running` when it was
    zipped is imported as `interrupted`: nothing writes to the copy. Raises StoreError, and leaves nothing behind,
    when the archive is refused (see the module docstring).
    """
    size = _archive_size(archive)
    if size > limits.archive_bytes:
        raise StoreError(f"The archive is {_megabytes(size)}; at most {_megabytes(limits.archive_bytes)} are accepted.")
    _check_directory(archive, size, limits)
    try:
        zipped = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, struct.error) as error:
        raise StoreError(f"This is not a readable zip archive ({reason(error)}).") from None
    with zipped:
        plan = _plan(zipped.infolist(), limits)
        meta = _run_meta(_read_small(zipped, plan.pop("run.json"), limits), name)
        return _unpack(files, zipped, plan, meta, limits)


def _archive_size(archive: BinaryIO) -> int:
    try:
        size = archive.seek(0, 2)
        archive.seek(0)
    except (AttributeError, OSError, ValueError):
        raise StoreError("The archive must be a seekable file.") from None
    return size


def _megabytes(size: int) -> str:
    return f"{size / MIB:,.1f} MB"


def _check_directory(archive: BinaryIO, size: int, limits: ImportLimits) -> None:
    """Refuse an archive whose end record declares too many entries or too large a directory, before `zipfile`
    parses that directory into memory. An archive without an end record is left for `zipfile` to refuse."""
    tail_size = min(size, 22 + 0xFFFF)  # the end record (22 bytes) and a comment of at most 64 KiB
    archive.seek(size - tail_size)
    tail = archive.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 22:
        return
    entries, directory_bytes = struct.unpack("<HI", tail[at + 10 : at + 16])
    if at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":  # a zip64 locator, pointing at the zip64 end record
        offset = struct.unpack("<Q", tail[at - 12 : at - 4])[0]
        if offset + 56 <= size:
            archive.seek(offset)
            record = archive.read(56)
            if record[:4] == b"PK\x06\x06":
                entries, directory_bytes = struct.unpack("<QQ", record[32:48])
    archive.seek(0)
    if entries > limits.entries:
        raise StoreError(f"The archive holds {entries:,} entries; at most {limits.entries:,} are accepted.")
    if directory_bytes > limits.entries * limits.directory_bytes_per_entry:
        raise StoreError(f"The archive's directory is {_megabytes(directory_bytes)}, more than a run's can be.")


def _plan(infos: list[zipfile.ZipInfo], limits: ImportLimits) -> dict[str, zipfile.ZipInfo]:
    """{path in the run: entry} for every file, after checking every entry's name and kind (folders are left out)."""
    if len(infos) > limits.entries:
        raise StoreError(f"The archive holds {len(infos):,} entries; at most {limits.entries:,} are accepted.")
    names = [_checked_name(info) for info in infos]
    flat = any(len(parts) == 1 and not info.is_dir() for parts, info in zip(names, infos))
    tops = {parts[0] for parts in names}
    if not flat and len(tops) != 1:
        raise StoreError("The archive must hold one run: its files at the top, or in one folder.")
    plan: dict[str, zipfile.ZipInfo] = {}
    for parts, info in zip(names, infos):
        relative = parts if flat else parts[1:]
        path = "/".join(relative)
        if info.is_dir():
            if len(relative) > 1 or (relative and relative[0] not in FOLDERS):
                raise StoreError(f"The archive holds a folder that is not part of a run: {_shown(info.filename)}.")
            continue
        if not _is_run_file(relative):
            raise StoreError(
                f"The archive holds a file that is not part of a run: {_shown(info.filename)}. A run "
                "holds run.json, probe.npz, history.json, snapshots/, batch_gradients/ and journal/."
            )
        if path in plan:
            raise StoreError(f"The archive holds {_shown(info.filename)} twice.")
        plan[path] = info
    if "run.json" not in plan:
        raise StoreError("The archive holds no run.json, so it is not a run.")
    declared = sum(info.file_size for info in plan.values())
    if declared > limits.unpacked_bytes:  # the cheap refusal; what is read is counted all the same
        raise StoreError(
            f"The archive would unpack to {_megabytes(declared)}; at most "
            f"{_megabytes(limits.unpacked_bytes)} are accepted."
        )
    return plan


def _checked_name(info: zipfile.ZipInfo) -> list[str]:
    """The entry's name as its parts, refusing one that could leave the folder it is unpacked in, and any entry
    that is not a plain file or folder."""
    name = info.filename
    shown = _shown(name)
    if "\\" in name or "\x00" in name:
        raise StoreError(f"The archive holds an entry with a backslash or a NUL in its name: {shown}.")
    if name.startswith("/") or DRIVE.match(name):
        raise StoreError(f"The archive holds an entry with an absolute path: {shown}.")
    parts = name.rstrip("/").split("/") if info.is_dir() else name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise StoreError(f"The archive holds an entry whose path leaves its folder or is malformed: {shown}.")
    kind = (info.external_attr >> 16) & FILE_TYPE
    if kind == SYMLINK:
        raise StoreError(f"The archive holds a symbolic link: {shown}. A run holds only files.")
    if kind not in (0, REGULAR, DIRECTORY):
        raise StoreError(f"The archive holds an entry that is not a file or a folder: {shown}.")
    if info.flag_bits & 0x1:
        raise StoreError(f"The archive holds an encrypted entry: {shown}.")
    return parts


def _shown(name: str) -> str:
    return repr(name[:120] + ("…" if len(name) > 120 else ""))


def _is_run_file(relative: list[str]) -> bool:
    if len(relative) == 1:
        return relative[0] in ("run.json", "probe.npz", "history.json")
    if len(relative) != 2:
        return False
    folder, name = relative
    if folder == "snapshots":
        return bool(SNAPSHOT_NAME.match(name))
    if folder == BATCH_GRADIENTS_DIR:
        return bool(BATCH_GRADIENTS_NAME.match(name))
    return folder == JOURNAL_DIR and (name == f"{SETUP}.npz" or bool(JOURNAL_ENTRY_NAME.match(name)))


class _Budget:
    """The bytes the archive may still unpack to, counted as they are read."""

    def __init__(self, limits: ImportLimits):
        self.limits, self.left = limits, limits.unpacked_bytes

    def chunks(self, zipped: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int | None = None) -> Iterator[bytes]:
        """The entry's bytes, a chunk at a time; StoreError as soon as it passes a limit or does not read."""
        produced, packed = 0, max(info.compress_size, 1)
        try:
            with zipped.open(info) as source:
                while chunk := source.read(CHUNK):
                    produced += len(chunk)
                    self.left -= len(chunk)
                    if self.left < 0:
                        raise StoreError(
                            f"The archive unpacks to more than {_megabytes(self.limits.unpacked_bytes)}; "
                            "no more is accepted."
                        )
                    if produced > MIB and produced > self.limits.ratio * packed:
                        raise StoreError(
                            f"{_shown(info.filename)} unpacks to more than {self.limits.ratio} times its "
                            "packed size: the archive is refused as a zip bomb."
                        )
                    if cap is not None and produced > cap:
                        raise StoreError(
                            f"{_shown(info.filename)} is larger than {_megabytes(cap)}, more than a run's can be."
                        )
                    yield chunk
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as error:
            raise StoreError(f"{_shown(info.filename)} does not unpack ({reason(error)}).") from None


def _read_small(zipped: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ImportLimits) -> bytes:
    return b"".join(_Budget(limits).chunks(zipped, info, cap=limits.json_bytes))


def _run_meta(data: bytes, name: str | None) -> dict:
    """The archive's run.json, checked as the reader checks it, made the copy's: its name, and no writer."""
    try:
        meta = run_format.run_meta(json.loads(data))
    except (ValueError, UnicodeDecodeError) as error:  # FormatProblem is a ValueError too
        raise StoreError(f"The archive's run.json is not a valid run ({reason(error)}).") from None
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise StoreError(
            f"The archive's run was written by a newer Strata (format {meta['format_version']}); this one "
            f"reads format {FORMAT_VERSION}."
        )
    if name is not None and str(name).strip():
        meta["name"] = str(name).strip()[:200]
    if meta.get("status", "running") == "running":
        meta["status"] = "interrupted"  # nothing writes to the copy
    return meta


def _unpack(
    files: Files, zipped: zipfile.ZipFile, plan: dict[str, zipfile.ZipInfo], meta: dict, limits: ImportLimits
) -> str:
    budget = _Budget(limits)
    temp = f"{TEMP_PREFIX}import-{uuid.uuid4().hex}"
    run_id = _fresh_id(files, meta)
    moved = False
    try:
        files.makedirs(files.join(temp))
        for folder in {path.split("/")[0] for path in plan if "/" in path}:
            files.makedirs(files.join(temp, folder))
        for path, info in plan.items():
            target = files.join(temp, *path.split("/"))
            if path == "history.json":
                data = b"".join(budget.chunks(zipped, info, cap=limits.json_bytes))
                _check_history(data)
                files.write_from(target, [data])
            elif path.endswith(".npz"):
                files.write_from(target, _npz_chunks(budget.chunks(zipped, info), info))
        files.rename(files.join(temp), files.join(run_id))
        moved = True
        meta.update(id=run_id, name=meta.get("name") or run_id)
        files.write_atomic(files.join(run_id, "run.json"), json_bytes(meta))  # last: from now on it is a run
    except BaseException as error:
        ignore_errors(files.remove_tree, files.join(run_id if moved else temp))
        if isinstance(error, OSError):
            raise StoreError(f"The run could not be written to the store ({reason(error)}).") from None
        raise
    return run_id


def _fresh_id(files: Files, meta: dict) -> str:
    for _ in range(8):
        run_id = new_run_id(str(meta.get("name") or meta.get("id") or "imported"))
        if not files.exists(files.join(run_id)):
            return run_id
    raise StoreError("No free run id could be found for the imported run.")  # 8 random collisions: never in practice


def _npz_chunks(chunks: Iterator[bytes], info: zipfile.ZipInfo) -> Iterator[bytes]:
    """The chunks of an npz entry, refusing one that does not start as an npz archive does."""
    first = True
    for chunk in chunks:
        if first and not chunk.startswith(NPZ_MAGIC):
            raise StoreError(f"{_shown(info.filename)} is not an npz archive.")
        first = False
        yield chunk
    if first:
        raise StoreError(f"{_shown(info.filename)} is empty, not an npz archive.")


def _check_history(data: bytes) -> None:
    try:
        run_format.history(json.loads(data))
    except (ValueError, UnicodeDecodeError) as error:
        raise StoreError(f"The archive's history.json is not valid ({reason(error)}).") from None
