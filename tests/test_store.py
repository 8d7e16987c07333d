"""The run store on its own: atomic writes, tolerant incremental reads, id safety, fsspec roots."""

import io
import os
import subprocess
import sys
import threading
import uuid
import zipfile

import numpy as np
import pytest

from core.store import (
    FORMAT_VERSION,
    RunNotFound,
    RunStore,
    RunWriter,
    StoreError,
    is_valid_run_id,
    new_run_id,
)
from core.store.files import snapshot_name


def _layer_meta():
    return {"layers": [{"index": 0, "name": "dense_0", "type": "Dense"}], "dataset": {"name": "toy"}}


def _write_snapshots(writer, count, start=0):
    for seq in range(start, start + count):
        meta = {"kind": "epoch", "epoch": seq, "layers": [{"grad": {"kernel": {"norm": 0.5 * (seq + 1)}}}]}
        writer.write_snapshot(seq, meta, {"L0/pca": np.full((20, 3), seq, np.float32)})


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "runs")
    return f"memory://strata-test-{uuid.uuid4().hex}"


def test_written_run_reads_back(root):
    writer = RunWriter(root, "run-a", _layer_meta())
    writer.write_probe({"indices": np.arange(20), "y": np.arange(20) % 2})
    writer.write_history({"epoch": [1, 2], "loss": [0.9, 0.5]})
    _write_snapshots(writer, 3)
    writer.set_status("finished")

    run = RunStore(root).run("run-a")
    assert run.meta["format_version"] == FORMAT_VERSION
    assert run.status == "finished"
    assert run.epochs() == [0, 1, 2]
    assert run.history()["loss"] == [0.9, 0.5]
    assert run.probe().size == 20
    np.testing.assert_array_equal(run.snapshot(2).array("L0/pca"), np.full((20, 3), 2, np.float32))
    np.testing.assert_allclose(run.layer_series("grad", "kernel", "norm")[:, 0], [0.5, 1.0, 1.5])
    assert run.snapshot(1).array("missing") is None


def test_history_is_read_again_only_once_its_file_is_replaced(root, monkeypatch):
    writer = RunWriter(root, "run-h", _layer_meta())
    writer.write_history({"epoch": [1], "loss": [0.9]})
    run = RunStore(root).run("run-h")
    reads = []
    read_bytes = run.files.read_bytes
    monkeypatch.setattr(run.files, "read_bytes", lambda path: reads.append(path) or read_bytes(path))
    assert run.history() == {"epoch": [1], "loss": [0.9]}
    assert run.history() == {"epoch": [1], "loss": [0.9]}
    assert len(reads) == 1  # the second call found the same file: no read, no check
    writer.write_history({"epoch": [1, 2], "loss": [0.9, 0.5]})  # a training run appends an epoch
    assert run.history() == {"epoch": [1, 2], "loss": [0.9, 0.5]}
    assert len(reads) == 2


def test_poll_returns_only_new_snapshots(root):
    writer = RunWriter(root, "run-b", _layer_meta())
    run_reader = RunStore(root).run("run-b")
    assert run_reader.poll() == []
    _write_snapshots(writer, 2)
    assert run_reader.poll() == [0, 1]
    assert run_reader.poll() == []
    _write_snapshots(writer, 1, start=2)
    assert run_reader.refresh() == [2]


def test_partial_and_temporary_files_are_not_finished_snapshots(tmp_path):
    root = str(tmp_path)
    writer = RunWriter(root, "run-c", _layer_meta())
    _write_snapshots(writer, 1)
    snapshots = tmp_path / "run-c" / "snapshots"
    (snapshots / ".tmp-abc").write_bytes(b"half")
    good = (snapshots / snapshot_name(0)).read_bytes()
    (snapshots / snapshot_name(1)).write_bytes(good[: len(good) // 2])  # a torn file from an old, non-atomic copy
    run = RunStore(root).run("run-c")
    assert [s.seq for s in run.snapshots()] == [0]


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    writer = RunWriter(str(tmp_path), "run-d", _layer_meta())
    _write_snapshots(writer, 3)
    names = os.listdir(tmp_path / "run-d" / "snapshots")
    assert sorted(names) == [snapshot_name(i) for i in range(3)]


def test_failed_write_keeps_earlier_snapshots(tmp_path, monkeypatch):
    import errno

    writer = RunWriter(str(tmp_path), "run-e", _layer_meta())
    _write_snapshots(writer, 2)

    def disk_full(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        _write_snapshots(writer, 1, start=2)
    monkeypatch.undo()
    assert RunStore(str(tmp_path)).run("run-e").epochs() == [0, 1]
    assert sorted(os.listdir(tmp_path / "run-e" / "snapshots")) == [snapshot_name(0), snapshot_name(1)]


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".hidden", "x" * 200, "a..b", None, 7, "a b"])
def test_unsafe_run_ids_never_reach_the_filesystem(tmp_path, bad):
    assert not is_valid_run_id(bad)
    with pytest.raises(StoreError):
        RunStore(str(tmp_path)).run(bad)


def test_generated_ids_are_valid_and_unique():
    ids = {new_run_id("Digits / 128-64 relu!") for _ in range(50)}
    assert len(ids) == 50 and all(is_valid_run_id(i) for i in ids)


def test_missing_run_and_unreadable_metadata(tmp_path):
    store = RunStore(str(tmp_path))
    with pytest.raises(RunNotFound):
        store.run("nope")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{not json")
    with pytest.raises(StoreError):
        store.run("broken")
    [listed] = store.list_runs()  # listed as damaged, with the reason, instead of failing the listing
    assert (listed.id, listed.status) == ("broken", "damaged") and "unreadable run.json" in listed.damaged


def test_newer_format_is_refused_with_a_message(tmp_path):
    RunWriter(str(tmp_path), "future", {"format_version": FORMAT_VERSION + 1})
    with pytest.raises(StoreError, match="newer Strata"):
        RunStore(str(tmp_path)).run("future")


def test_rename_delete_and_zip(root):
    writer = RunWriter(root, "run-f", _layer_meta())
    _write_snapshots(writer, 2)
    store = RunStore(root)
    store.rename("run-f", "My run")
    assert store.run("run-f").name == "My run"
    assert [s.name for s in store.list_runs()] == ["My run"]
    with zipfile.ZipFile(io.BytesIO(store.zip_bytes("run-f"))) as archive:
        names = set(archive.namelist())
    assert {"run-f/run.json", "run-f/snapshots/s000000.npz", "run-f/snapshots/s000001.npz"} <= names
    store.delete("run-f")
    assert store.list_runs() == []


def test_crashed_writer_reads_as_interrupted(tmp_path):
    code = f"from core.store import RunWriter;RunWriter({str(tmp_path)!r}, 'dead', {{}})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    run = RunStore(str(tmp_path)).run("dead")
    assert run.meta["status"] == "running" and run.status == "interrupted"


def test_concurrent_reader_never_sees_a_partial_snapshot(tmp_path):
    root = str(tmp_path)
    writer = RunWriter(root, "live", _layer_meta())
    big = np.random.default_rng(0).random((2000, 400), dtype=np.float32)  # ~3 MB per file
    errors, seen = [], []
    done = threading.Event()

    def read_continuously():
        reader = RunStore(root).run("live")
        while not done.is_set():
            try:
                for seq in reader.poll():
                    np.testing.assert_array_equal(reader.snapshot(seq).array("L0/pca"), big + seq)
                    seen.append(seq)
            except Exception as error:  # any failure here is a test failure
                errors.append(error)

    thread = threading.Thread(target=read_continuously)
    thread.start()
    for seq in range(15):
        writer.write_snapshot(seq, {"kind": "epoch", "epoch": seq, "layers": []}, {"L0/pca": big + seq})
    done.set()
    thread.join()
    reader = RunStore(root).run("live")
    assert not errors
    assert sorted(set(seen) | set(reader.poll())) == list(range(15))


def test_reader_does_not_import_tensorflow():
    code = (
        "import core, core.store, core.analysis.summary, core.cli, sys; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_an_ended_run_is_listed_once_and_arrays_load_lazily(tmp_path, monkeypatch):
    writer = RunWriter(str(tmp_path), "ended", _layer_meta())
    writer.write_probe({"indices": np.arange(20), "input/pca": np.ones((20, 2), np.float32)})
    _write_snapshots(writer, 3)
    writer.set_status("finished")
    run = RunStore(str(tmp_path)).run("ended")
    assert len(run.snapshots()) == 3
    listings = []
    original = run.files.listdir
    monkeypatch.setattr(run.files, "listdir", lambda path: listings.append(path) or original(path))
    assert len(run.snapshots()) == 3 and listings == []  # a finished run gets no new snapshots: no re-listing
    snapshot = run.snapshots()[0]
    assert snapshot._arrays == {}  # only the header was read so far
    assert snapshot.array("L0/pca").shape == (20, 3) and list(snapshot._arrays) == ["L0/pca"]
    assert run.probe().input_pca.shape == (20, 2)


def test_a_cached_reader_sees_an_ended_run_that_changes(root):
    """An ended run is not re-listed while it stays as it is; a recovery (`python -m core recover`) or a rename
    replaces its run.json, and the store's cached reader then reads it again."""
    writer = RunWriter(root, "ended", _layer_meta())
    _write_snapshots(writer, 2)
    writer.set_status("interrupted")
    store = RunStore(root)
    assert len(store.run("ended").snapshots()) == 2 and store.run("ended").status == "interrupted"
    recovery = RunWriter.attach(root, "ended")
    _write_snapshots(recovery, 2, start=2)
    recovery.set_status("interrupted", recovered_snapshots=2)
    run = store.run("ended")
    assert run.meta["recovered_snapshots"] == 2 and [s.seq for s in run.snapshots()] == [0, 1, 2, 3]


def test_listing_again_reads_only_the_run_json_files_that_changed(root, monkeypatch):
    """The dashboard lists the store every few seconds: an unchanged run.json (even 100 MB of it) is not read
    and parsed again, and neither is a damaged one whose file did not change."""
    for run_id in ("a", "b"):
        writer = RunWriter(root, run_id, _layer_meta())
        writer.write_probe({"indices": np.arange(20)})
        writer.set_status("finished")
    store = RunStore(root)
    store.files.makedirs(store.files.join("broken"))
    store.files.write_atomic(store.files.join("broken", "run.json"), b"[1, 2]")
    reads = []
    original = store.files.read_bytes
    monkeypatch.setattr(store.files, "read_bytes", lambda path: reads.append(path.rsplit("/", 2)[-2]) or original(path))
    first = store.list_runs()
    assert sorted(reads) == ["a", "b", "broken"]
    assert {s.id: s.status for s in first} == {"a": "finished", "b": "finished", "broken": "damaged"}
    reads.clear()
    assert store.list_runs() == first and reads == []  # nothing changed: nothing read
    store.rename("b", "renamed")
    reads.clear()
    listed = {s.id: s for s in store.list_runs()}
    assert reads == ["b"] and listed["b"].name == "renamed" and listed["broken"].status == "damaged"
    store.files.write_atomic(store.files.join("broken", "run.json"), b'{"status": "finished", "name": "fixed"}')
    reads.clear()
    listed = {s.id: s for s in store.list_runs()}
    assert reads == ["broken"] and listed["broken"].status == "finished" and listed["broken"].name == "fixed"
