"""The run store, the recovery journal and recovery on object storage: a real S3 server (moto), `memory://` and
`file://` URLs, next to a local folder.

The kill test records a deterministic fit into `s3://BUCKET/runs` twice, in one subprocess (conftest's
`KILLED_SCRIPT`): live, and SIGKILLed as `fit` returns with its snapshots still held back. It then recovers the
killed run from the bucket with `python -m core recover` and reads both back through the store reader and the
dashboard.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import CORE, KILLED_EPOCHS, _record_killable, run_python
from s3_server import s3_fixture, s3_server_fixture  # noqa: F401 (the `s3` and `s3_server` fixtures)

from core import cli
from core.store import RunStore, RunWriter
from core.store.files import Files, npz_bytes, snapshot_name
from core.store.journal import CAPTURE, JOURNAL_DIR, Journal, capture_key, read_journal

REPO = Path(__file__).resolve().parents[1]


def _layer_meta():
    return {"layers": [{"index": 0, "name": "dense_0", "type": "Dense"}], "dataset": {"name": "toy"}}


def _write_snapshots(writer, count, start=0):
    for seq in range(start, start + count):
        meta = {"kind": "epoch", "epoch": seq, "layers": [{"grad": {"kernel": {"norm": seq + 1.0}}}]}
        writer.write_snapshot(seq, meta, {"L0/pca": np.full((20, 3), seq, np.float32)})


class Store:
    """A store root of one kind, and every file under it (paths relative to the root), however it is listed."""

    def __init__(self, kind: str, tmp_path: Path, s3_server=None):
        self.kind = kind
        if kind == "s3":
            self.s3, self.bucket = s3_server, s3_server.new_bucket()
            self.url = f"s3://{self.bucket}/runs"
        elif kind == "memory":
            self.name = f"strata-{uuid.uuid4().hex}"
            self.url = f"memory://{self.name}"
        else:
            self.folder = tmp_path / "runs"
            self.folder.mkdir()
            self.url = str(self.folder) if kind == "local" else self.folder.as_uri()

    def everything(self) -> list[str]:
        """Every file anywhere in the bucket, the memory file system or the temporary folder, relative to the root
        (a file outside the root keeps its full path, so it shows)."""
        if self.kind == "s3":
            return [key.removeprefix("runs/") for key in self.s3.keys(self.bucket)]
        if self.kind == "memory":
            import fsspec

            memory = fsspec.filesystem("memory")
            return sorted(path.removeprefix(f"/{self.name}/") for path in memory.find(f"/{self.name}"))
        top = self.folder.parent
        return sorted(
            str(path.relative_to(self.folder)) if path.is_relative_to(self.folder) else str(path)
            for path in top.rglob("*")
            if path.is_file()
        )


@pytest.fixture(params=["local", "file", "memory", "s3"])
def store_root(request, tmp_path):
    return Store(request.param, tmp_path, request.getfixturevalue("s3") if request.param == "s3" else None)


def test_journal_entries_land_in_the_runs_journal_folder_and_nowhere_else(store_root):
    """The journal once joined its entries' paths under the root twice: on S3 they landed at
    `runs/BUCKET/runs/RUN/journal/`, on `file://` URLs the write failed, and recovery never found them."""
    writer = RunWriter(store_root.url, "run-a", _layer_meta())
    journal = Journal(store_root.url, "run-a")
    journal.append("setup", {"x": np.ones((4, 2), np.float32), "builder": {"components": 2}})
    first = journal.append(CAPTURE, {"kind": "epoch", "epoch": 0, "step": 0, "state": [np.zeros(3)]})
    journal.append("epoch", {"history": {"epoch": [1], "loss": [0.5]}})
    second = journal.append(CAPTURE, {"kind": "epoch", "epoch": 1, "step": 5, "state": [np.ones(3)]})
    entries = [
        "journal/000000-capture-epoch-0-0.npz",
        "journal/000001-epoch.npz",
        "journal/000002-capture-epoch-1-5.npz",
        "journal/setup.npz",
    ]
    assert store_root.everything() == [f"run-a/{name}" for name in entries] + ["run-a/run.json"]

    setup, read = read_journal(Files(store_root.url), "run-a")
    assert setup.payload["builder"] == {"components": 2}
    np.testing.assert_array_equal(setup.payload["x"], np.ones((4, 2), np.float32))
    assert [(e.kind, e.key) for e in read] == [(CAPTURE, ("epoch", 0, 0)), ("epoch", None), (CAPTURE, ("epoch", 1, 5))]
    np.testing.assert_array_equal(read[2].payload["state"][0], np.ones(3))
    writer.update_meta(pid=2**22 + 12345)  # a writer that is gone: the run reads interrupted, its captures unwritten
    assert RunStore(store_root.url).run("run-a").unwritten_captures() == 2
    journal.done(first)  # a capture's entry stays until the next capture is written
    journal.done(second)
    assert "run-a/journal/000000-capture-epoch-0-0.npz" not in store_root.everything()
    assert "run-a/journal/000002-capture-epoch-1-5.npz" in store_root.everything()
    journal.close()
    assert store_root.everything() == ["run-a/run.json"]


def test_the_store_reads_writes_and_polls_on_every_kind_of_root(store_root):
    writer = RunWriter(store_root.url, "run-a", _layer_meta())
    writer.write_probe({"indices": np.arange(20), "y": np.arange(20) % 2})
    writer.write_history({"epoch": [1, 2], "loss": [0.9, 0.5]})
    _write_snapshots(writer, 2)
    store = RunStore(store_root.url)
    run = store.run("run-a")
    assert run.poll() == [0, 1] and run.status == "running"
    _write_snapshots(writer, 1, start=2)
    writer.write_batch_gradients(1, np.arange(3), np.ones((3, 1), np.float32))
    assert run.poll() == [2]
    writer.set_status("finished")
    run = store.run("run-a")  # the cached reader sees the new run.json
    assert run.status == "finished" and run.epochs() == [0, 1, 2] and run.probe().size == 20
    assert run.history()["loss"] == [0.9, 0.5] and run.batch_gradient_norms()[1].shape == (3, 1)
    np.testing.assert_array_equal(run.snapshot(2).array("L0/pca"), np.full((20, 3), 2, np.float32))
    [summary] = store.list_runs()
    assert (summary.id, summary.status, summary.dataset, summary.damaged) == ("run-a", "finished", "toy", None)
    assert summary.created > 0
    with zipfile.ZipFile(io.BytesIO(store.zip_bytes("run-a"))) as archive:
        assert sorted(archive.namelist()) == [
            "run-a/batch_gradients/e000001.npz",
            "run-a/history.json",
            "run-a/probe.npz",
            "run-a/run.json",
        ] + [f"run-a/snapshots/{snapshot_name(seq)}" for seq in range(3)]
    assert not [path for path in store_root.everything() if ".tmp-" in path]  # no temporary file is left behind


def test_a_reader_on_s3_sees_what_another_writer_puts_in_the_bucket(s3):
    """s3fs caches listings for good; the reader must still see what another process writes (a recording process,
    a recovery, a copy made with other tools), here put straight into the bucket."""
    bucket = s3.new_bucket()
    url = f"s3://{bucket}/runs"
    writer = RunWriter(url, "run-a", _layer_meta())
    _write_snapshots(writer, 2)
    writer.set_status("interrupted")
    store = RunStore(url)
    assert store.run("run-a").epochs() == [0, 1] and store.run("run-a").status == "interrupted"
    header = {"format_version": 1, "seq": 2, "kind": "epoch", "epoch": 2, "layers": []}
    s3.client().put_object(
        Bucket=bucket,
        Key="runs/run-a/snapshots/s000002.npz",
        Body=npz_bytes({"L0/pca": np.zeros((20, 3), np.float32)}, header),
    )
    meta = dict(writer.meta, status="finished", recovered_snapshots=1)  # within the same second: S3 times have seconds
    s3.client().put_object(Bucket=bucket, Key="runs/run-a/run.json", Body=json.dumps(meta))
    run = store.run("run-a")
    assert run.status == "finished" and run.epochs() == [0, 1, 2]
    RunWriter(url, "run-b", _layer_meta())
    s3.client().put_object(Bucket=bucket, Key="runs/run-c/run.json", Body=b'{"format_version": 1, "id": "run-c"}')
    assert sorted(s.id for s in store.list_runs()) == ["run-a", "run-b", "run-c"]


@pytest.mark.parametrize("path", ["run-a/journal", "/etc", "..", "", "a\\b"])
def test_store_paths_are_joined_from_names_only(tmp_path, path):
    with pytest.raises(ValueError, match="single names"):
        Files(str(tmp_path)).join("run-a", path)


def test_a_recorder_on_a_file_url_journals_and_finishes(tmp_path, recwarn, monkeypatch):
    """On `file://` URLs the journal's first write used to fail, and the run went unprotected with a warning."""
    import keras

    from core import Recorder

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2, activation="softmax")]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    recorder = Recorder((tmp_path / "runs").as_uri(), probe=(x, y))  # the default budget: a journal is kept
    journals = []
    original = Journal.append

    def append(self, kind, payload):  # the real write, noting where it went
        journals.append(self.dir)
        return original(self, kind, payload)

    monkeypatch.setattr(Journal, "append", append)
    model.fit(x, y, epochs=3, batch_size=16, callbacks=[recorder], verbose=0)
    assert recorder.wait(60)
    assert not [w for w in recwarn if "journal" in str(w.message)]
    assert journals and set(journals) == {str(tmp_path / "runs" / recorder.run_id / JOURNAL_DIR)}
    run = RunStore((tmp_path / "runs").as_uri()).run(recorder.run_id)
    assert run.status == "finished" and run.epochs() == [0, 1, 2, 3]
    assert not (tmp_path / "runs" / recorder.run_id / JOURNAL_DIR).exists()


@pytest.fixture(scope="session")
def s3_killed(s3_server):
    """(url, bucket): a live and a SIGKILLed recording of one fit in `s3://BUCKET/runs`, made once per session."""
    bucket = s3_server.new_bucket()
    url = f"s3://{bucket}/runs"
    with s3_server.environment():
        _record_killable(url)
    return url, bucket


def test_a_fit_killed_while_recording_to_s3_is_recovered_from_the_bucket(s3, s3_killed):
    from test_recover import _assert_same_snapshots

    url, bucket = s3_killed
    keys = s3.keys(bucket)
    assert all(key.startswith(("runs/live/", "runs/killed/")) and ".tmp-" not in key for key in keys), keys
    assert not [key for key in keys if key.startswith("runs/live/journal/")]  # recorded live: nothing held back
    journal = [key for key in keys if "/journal/" in key]
    assert journal and all(key.startswith("runs/killed/journal/") for key in journal)
    assert "runs/killed/journal/setup.npz" in journal

    run = RunStore(url).run("killed")
    assert run.status == "interrupted"
    written = {capture_key(s.meta) for s in run.snapshots()}
    held = {entry.key for entry in read_journal(run.files, "killed")[1] if entry.kind == CAPTURE}
    assert held - written and run.unwritten_captures() == len(held - written)
    assert len(written | held) >= KILLED_EPOCHS  # at most the capture in progress at the kill is missing

    listing = subprocess.run(
        [sys.executable, "-m", "core", "runs", "--runs", url], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert f"interrupted ({len(held - written)} unwritten)" in listing.stdout, listing.stderr[-2000:]
    result = run_python(CORE, "recover", "killed", "--runs", url)
    assert f"wrote {len(held - written)} held-back snapshot(s)" in result.stdout

    store = RunStore(url)  # the dashboard's reader, fresh
    assert {(s.id, s.unwritten) for s in store.list_runs()} == {("live", 0), ("killed", 0)}
    run, reference = store.run("killed"), store.run("live")
    assert run.status in ("finished", "interrupted") and run.meta["recovered_snapshots"] == len(held - written)
    recovered = run.snapshots()
    assert {capture_key(s.meta) for s in recovered} >= written | held  # no epoch the journal held is lost
    _assert_same_snapshots(recovered, reference.snapshots()[: len(recovered)])
    assert run.history()["loss"] == pytest.approx(reference.history()["loss"][: len(run.history()["loss"])])
    assert not [key for key in s3.keys(bucket) if "/journal/" in key or ".tmp-" in key]
    assert cli.main(["recover", "killed", "--runs", url]) == cli.EXIT_USAGE  # nothing is left to recover

    from apptest_pages import open_app

    at = open_app(url, "runs", run="killed")
    assert not at.exception
    assert set(at.dataframe[0].value["id"]) == {"live", "killed"}
    at = open_app(url, run="killed")  # the Embeddings page draws the recovered snapshots from the bucket
    assert not at.exception and not at.error
