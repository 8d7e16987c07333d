"""Importing a run zip (`RunStore.import_zip`, `python -m core import`): a real recorded run makes the round trip,
and every hostile archive, built here, is refused with a StoreError that says why, leaving nothing in the store."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from s3_server import s3_fixture, s3_server_fixture  # noqa: F401 (the `s3` and `s3_server` fixtures)

from core import cli
from core.store import RunStore, RunWriter, StoreError, is_valid_run_id
from core.store.archive import ImportLimits

REPO = Path(__file__).resolve().parents[1]


def _assert_same_run(imported, original):
    """Every file of the run reads the same (run.json but for the id, and a name given at import)."""
    assert {k: v for k, v in imported.meta.items() if k not in ("id", "name")} == {
        k: v for k, v in original.meta.items() if k not in ("id", "name")
    }
    assert imported.history() == original.history()
    for key in ("indices", "y", "x", "input_pca"):
        a, b = getattr(imported.probe(), key), getattr(original.probe(), key)
        assert (a is None and b is None) or np.array_equal(a, b)
    mine, theirs = imported.snapshots(), original.snapshots()
    assert [s.seq for s in mine] == [s.seq for s in theirs] and len(mine) > 1
    for snapshot, reference in zip(mine, theirs):
        assert snapshot.meta == reference.meta and snapshot.keys() == reference.keys()
        for key in reference.keys():
            np.testing.assert_array_equal(snapshot.array(key), reference.array(key))


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_recorded_run_exported_and_imported_reads_the_same(spiral_run_dir, tmp_path, kind, request):
    root, run_id = spiral_run_dir
    source = RunStore(root)
    target_root = (
        str(tmp_path / "runs") if kind == "local" else f"s3://{request.getfixturevalue('s3').new_bucket()}/runs"
    )
    target = RunStore(target_root)
    with source.zip_file(run_id) as archive:
        new_id = target.import_zip(archive, name="imported spiral")
    assert is_valid_run_id(new_id) and new_id != run_id and "imported-spiral" in new_id
    [summary] = target.list_runs()
    assert (summary.id, summary.name, summary.status, summary.damaged) == (new_id, "imported spiral", "finished", None)
    imported = target.run(new_id)
    assert imported.meta["id"] == new_id and not imported.damaged_files() and not imported.lost_snapshots()
    _assert_same_run(imported, source.run(run_id))
    with source.zip_file(run_id) as archive:  # again, into the same store: a second, separate copy
        again = target.import_zip(archive)
    assert again != new_id and target.run(again).name == source.run(run_id).name
    assert sorted(target.run_ids()) == sorted([new_id, again])


def test_python_m_core_import_prints_the_new_run_id(spiral_run_dir, tmp_path, capsys):
    root, run_id = spiral_run_dir
    archive = tmp_path / "run.zip"
    archive.write_bytes(RunStore(root).zip_bytes(run_id))
    target = str(tmp_path / "runs")
    assert cli.main(["import", str(archive), "--runs", target, "--name", "from a colleague"]) == 0
    new_id = capsys.readouterr().out.strip().splitlines()[-1]
    assert RunStore(target).run(new_id).name == "from a colleague"
    archive.write_bytes(b"not a zip")
    assert cli.main(["import", str(archive), "--runs", target]) == cli.EXIT_USAGE
    assert "not a readable zip archive" in capsys.readouterr().err
    assert cli.main(["import", str(tmp_path / "missing.zip"), "--runs", target]) == cli.EXIT_USAGE
    assert RunStore(target).run_ids() == [new_id]


# ------------------------------------------------------------------------------------------------------------
# Hostile archives, built on a small valid run


def _valid_files(tmp_path) -> dict[str, bytes]:
    """{name in the archive: bytes} of a small valid run, as `zip_file` exports it (one folder named for the run)."""
    writer = RunWriter(str(tmp_path / "source"), "small", {"layers": [{"index": 0, "name": "dense", "type": "Dense"}]})
    writer.write_probe({"indices": np.arange(8)})
    writer.write_history({"epoch": [1], "loss": [0.5]})
    for seq in range(2):
        arrays = {"L0/pca": np.full((8, 2), seq, np.float32)}
        writer.write_snapshot(seq, {"kind": "epoch", "epoch": seq, "layers": []}, arrays)
    writer.set_status("finished")
    with zipfile.ZipFile(io.BytesIO(RunStore(str(tmp_path / "source")).zip_bytes("small"))) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _zip(entries, compression=zipfile.ZIP_STORED) -> io.BytesIO:
    """An archive of `entries`: (name or ZipInfo, bytes), in order, duplicates and all."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", compression) as archive:
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name, which is the point
        for name, data in entries:
            archive.writestr(name, data)
    buffer.seek(0)
    return buffer


def _info(name: str, file_type: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (file_type | 0o644) << 16
    info.create_system = 3  # unix, so the mode is read
    return info


LOCAL, DIRECTORY = (b"PK\x03\x04", 30), (b"PK\x01\x02", 46)  # header signature, where the name starts
FLAGS = {LOCAL: 6, DIRECTORY: 8}
UNPACKED_SIZE = {LOCAL: 22, DIRECTORY: 24}


def _patched(archive: io.BytesIO, name: str, field: dict, value: bytes) -> io.BytesIO:
    """`archive` with one field (FLAGS, UNPACKED_SIZE) of entry `name` overwritten in both of its headers: what
    zipfile will not write, and a hostile archive can hold."""
    data = bytearray(archive.getvalue())
    for header, offset in field.items():
        signature, name_at = header
        at = data.find(signature)
        while at >= 0:
            if data[at + name_at : at + name_at + len(name)] == name.encode():
                data[at + offset : at + offset + len(value)] = value
            at = data.find(signature, at + 4)
    return io.BytesIO(bytes(data))


@pytest.fixture
def store(tmp_path):
    """A store that holds one run already, and a way to check that a refused import left it exactly as it was."""
    root = tmp_path / "runs"
    RunWriter(str(root), "existing", {}).set_status("finished")

    def everything() -> list[str]:  # but the source run that `_valid_files` writes beside the store
        paths = (p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        return sorted(str(p) for p in paths if p.parts[0] != "source")

    before = everything()

    class Store(RunStore):
        def refuses(self, archive, match: str, **limits) -> None:
            with pytest.raises(StoreError, match=match):
                self.import_zip(archive, limits=ImportLimits(**limits) if limits else None)
            assert everything() == before, "a refused import left something behind"
            assert [s.id for s in self.list_runs()] == ["existing"]

    return Store(str(root))


@pytest.mark.parametrize(
    "name",
    [
        "../escaped/run.json",
        "small/../../escaped.npz",
        "/tmp/absolute/run.json",
        "small\\..\\..\\escaped.npz",
        "C:/runs/small/run.json",
        "C:run.json",
        "small/./run.json",
        "small//run.json",
    ],
)
def test_paths_that_could_leave_the_run_folder_are_refused(store, tmp_path, name):
    files = _valid_files(tmp_path)
    store.refuses(
        _zip([*files.items(), (name, files["small/run.json"])]),
        r"outside|absolute path|backslash|leaves its folder|one run",
    )
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "escaped.npz").exists()


@pytest.mark.parametrize(
    "file_type, words",
    [
        (stat.S_IFLNK, "symbolic link"),
        (stat.S_IFIFO, "not a file or a folder"),
        (stat.S_IFCHR, "not a file or a folder"),
    ],
)
def test_links_and_special_files_are_refused(store, tmp_path, file_type, words):
    files = _valid_files(tmp_path)
    store.refuses(_zip([*files.items(), (_info("small/snapshots/s000002.npz", file_type), b"/etc/passwd")]), words)


def test_an_encrypted_entry_is_refused(store, tmp_path):
    files = _valid_files(tmp_path)
    archive = _zip([*files.items(), ("small/snapshots/s000002.npz", b"PK\x03\x04 secret")])
    store.refuses(_patched(archive, "small/snapshots/s000002.npz", FLAGS, struct.pack("<H", 0x1)), "encrypted")


def test_a_deflate_bomb_is_refused_as_it_unpacks(store, tmp_path):
    files = _valid_files(tmp_path)
    bomb = b"PK\x03\x04" + bytes(64 << 20)  # 64 MB of zeros packs to about 64 KB
    archive = _zip([*files.items(), ("small/snapshots/s000002.npz", bomb)], zipfile.ZIP_DEFLATED)
    assert len(archive.getvalue()) < 1 << 20
    store.refuses(archive, "zip bomb")


def test_more_than_the_unpacked_limit_is_refused(store, tmp_path):
    files = _valid_files(tmp_path)
    big = [(f"small/snapshots/s{seq:06d}.npz", b"PK\x03\x04" + os.urandom(1 << 20)) for seq in range(2, 6)]
    store.refuses(_zip([*files.items(), *big]), "would unpack to", unpacked_bytes=3 << 20)


def test_a_header_that_understates_a_size_is_refused(store, tmp_path):
    """The sizes in the archive's headers are not trusted: one that says less than the entry holds fails as it
    is read (zipfile stops at the stated size, and the checksum then fails)."""
    files = _valid_files(tmp_path)
    half = struct.pack("<I", len(files["small/snapshots/s000001.npz"]) // 2)
    store.refuses(_patched(_zip(files.items()), "small/snapshots/s000001.npz", UNPACKED_SIZE, half), "does not unpack")


def test_too_many_entries_and_an_oversize_archive_are_refused(store, tmp_path):
    files = _valid_files(tmp_path)
    many = [*files.items(), *((f"small/snapshots/s{seq:06d}.npz", b"PK\x03\x04") for seq in range(2, 30))]
    store.refuses(_zip(many), "holds 33 entries; at most 20", entries=20)
    store.refuses(_zip(files.items()), "at most 0.0 MB are accepted", archive_bytes=1000)


def test_a_directory_larger_than_a_runs_is_refused_before_it_is_parsed(store, tmp_path):
    files = _valid_files(tmp_path)
    store.refuses(_zip(files.items()), "directory is", entries=10, directory_bytes_per_entry=10)


def test_duplicate_entries_are_refused(store, tmp_path):
    files = _valid_files(tmp_path)
    snapshot = files["small/snapshots/s000001.npz"]
    store.refuses(_zip([*files.items(), ("small/snapshots/s000001.npz", snapshot)]), "twice")
    store.refuses(_zip([*files.items(), ("small/run.json", files["small/run.json"])]), "twice")


@pytest.mark.parametrize(
    "name",
    [
        "small/evil.py",
        "small/snapshots/notes.txt",
        "small/.streamlit/config.toml",
        "small/snapshots/s1.npz",
        "small/journal/evil.npz",
        "small/snapshots/deep/s000003.npz",
    ],
)
def test_files_that_are_not_part_of_a_run_are_refused(store, tmp_path, name):
    files = _valid_files(tmp_path)
    store.refuses(_zip([*files.items(), (name, b"PK\x03\x04")]), "not part of a run")


def test_archives_that_are_not_one_valid_run_are_refused(store, tmp_path):
    files = _valid_files(tmp_path)
    run_json = json.loads(files["small/run.json"])
    without = {name: data for name, data in files.items() if name != "small/run.json"}
    store.refuses(io.BytesIO(b"PK\x03\x04 not really a zip" * 10), "not a readable zip archive")
    store.refuses(_zip(without.items()), "no run.json")
    store.refuses(_zip([*files.items(), ("other/run.json", files["small/run.json"])]), "one run")
    for bad, words in (
        (b"{not json", "not a valid run"),
        (json.dumps([1]).encode(), "not an object"),
        (json.dumps({**run_json, "status": 5}).encode(), "`status`"),
        (json.dumps({**run_json, "format_version": 99}).encode(), "newer Strata"),
    ):
        store.refuses(_zip([*without.items(), ("small/run.json", bad)]), words)
    store.refuses(_zip([*files.items(), ("small/snapshots/s000002.npz", b"#!/bin/sh")]), "not an npz archive")
    store.refuses(_zip([*files.items(), ("small/snapshots/s000002.npz", b"")]), "empty")
    store.refuses(_zip({**files, "small/history.json": b'{"loss": "high"}'}.items()), "history.json is not valid")


def test_a_refused_import_leaves_nothing_in_a_bucket(s3, tmp_path):
    bucket = s3.new_bucket()
    files = _valid_files(tmp_path)
    bomb = b"PK\x03\x04" + bytes(64 << 20)
    with pytest.raises(StoreError, match="zip bomb"):
        RunStore(f"s3://{bucket}/runs").import_zip(
            _zip([*files.items(), ("small/snapshots/s000002.npz", bomb)], zipfile.ZIP_DEFLATED)
        )
    assert s3.keys(bucket) == []


def test_a_flat_archive_and_a_running_run_import_as_an_interrupted_copy(store, tmp_path):
    files = _valid_files(tmp_path)
    flat = {name.split("/", 1)[1]: data for name, data in files.items()}
    flat["run.json"] = json.dumps({**json.loads(flat["run.json"]), "status": "running", "pid": os.getpid()}).encode()
    new_id = store.import_zip(_zip(flat.items()))
    run = store.run(new_id)
    assert run.status == "interrupted" and run.epochs() == [0, 1]  # nothing writes to the copy


def test_the_cli_import_runs_without_tensorflow(tmp_path):
    files = _valid_files(tmp_path)
    (tmp_path / "run.zip").write_bytes(_zip(files.items()).getvalue())
    code = (
        "import sys; from core import cli; code = cli.main(['import', sys.argv[1], '--runs', sys.argv[2]]);"
        "assert 'tensorflow' not in sys.modules; sys.exit(code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run.zip"), str(tmp_path / "runs")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert RunStore(str(tmp_path / "runs")).run_ids() == [result.stdout.strip()]
