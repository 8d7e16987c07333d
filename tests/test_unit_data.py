"""dashboard/data.py on its own: what the Embeddings views read out of a run, checked against what is in the store."""

from __future__ import annotations

import numpy as np
import pytest

from core.store import RunStore, RunWriter
from dashboard import data
from dashboard.synthetic import synthetic_run
from dashboard.views.embeddings import MAX_FRAMES

LAYERS, SNAPSHOTS, POINTS, CLASSES, COMPONENTS = 3, 5, 80, 4, 8  # synthetic_run needs components >= 8
NAMES = ["dense_0", "dense_1", "output"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data"))
    synthetic_run(
        root, "syn", layers=LAYERS, snapshots=SNAPSHOTS, points=POINTS, classes=CLASSES, components=COMPONENTS, width=8
    )
    return root


@pytest.fixture
def run(synthetic):
    return RunStore(synthetic).run("syn")


def _raw_snapshot(root: str, run_id: str, seq: int) -> dict[str, np.ndarray]:
    """A snapshot file's arrays, read with numpy alone (not through the store's reader)."""
    with np.load(f"{root}/{run_id}/snapshots/s{seq:06d}.npz", allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


# ----------------------------------------------------------------------------------------------------------------
# snapshot_at, labels, class_names


def test_snapshot_at_picks_the_epoch_or_the_nearest_one(run):
    assert data.snapshot_at(run, None).epoch == SNAPSHOTS - 1  # None: the latest
    for epoch in range(SNAPSHOTS):
        assert data.snapshot_at(run, epoch).epoch == epoch
    assert data.snapshot_at(run, 999).epoch == SNAPSHOTS - 1
    assert data.snapshot_at(run, -3).epoch == 0


def test_snapshot_at_breaks_a_tie_towards_the_earlier_epoch(tmp_path):
    writer = RunWriter(str(tmp_path), "gaps", {"name": "gaps", "layers": [{"name": "a"}], "every": 2})
    for seq, epoch in enumerate((0, 2, 4)):
        writer.write_snapshot(seq, {"kind": "epoch", "epoch": epoch, "step": epoch, "layers": [{}]}, {})
    run = RunStore(str(tmp_path)).run("gaps")
    assert data.snapshot_at(run, 3).epoch == 2 and data.snapshot_at(run, 1).epoch == 0
    assert data.snapshot_at(run, 4).seq == 2


def test_a_run_without_snapshots_or_probe(tmp_path):
    RunWriter(str(tmp_path), "bare", {"name": "bare", "layers": [{"name": "a"}]})
    run = RunStore(str(tmp_path)).run("bare")
    assert data.snapshot_at(run, None) is None and data.snapshot_at(run, 3) is None
    assert data.labels(run) is None  # no probe.npz yet
    assert data.class_names(run) == []
    assert data.input_panel(run) is None
    assert data.timeline(run) == ([], [])
    assert data.focus_frames(run, 0, "label", None) == ([], 0)


def test_labels_and_class_names_are_the_probe_and_dataset(synthetic, run):
    with np.load(f"{synthetic}/syn/probe.npz", allow_pickle=False) as probe:
        np.testing.assert_array_equal(data.labels(run), probe["y"])
    assert data.labels(run).shape == (POINTS,)
    assert data.class_names(run) == [f"class {c}" for c in range(CLASSES)]


def test_a_damaged_probe_reads_as_no_labels(tmp_path):
    RunWriter(str(tmp_path), "broken", {"name": "broken", "layers": [{"name": "a"}]})
    (tmp_path / "broken" / "probe.npz").write_bytes(b"not an npz")
    run = RunStore(str(tmp_path)).run("broken")
    assert data.labels(run) is None and data.input_panel(run) is None
    assert "probe.npz" in run.damaged_files()


# ----------------------------------------------------------------------------------------------------------------
# strip_panels, input_panel, pooled_note, scree_inputs


def test_strip_panels_are_the_input_then_every_layer(synthetic, run):
    snapshot = data.snapshot_at(run, 2)
    panels = data.strip_panels(run, snapshot)
    assert [p.name for p in panels] == ["input"] + NAMES
    with np.load(f"{synthetic}/syn/probe.npz", allow_pickle=False) as probe:
        np.testing.assert_array_equal(panels[0].coords, probe["input/pca"])
    np.testing.assert_allclose(panels[0].variance, run.meta["input"]["explained_variance_ratio"])
    raw = _raw_snapshot(synthetic, "syn", 2)
    for index, panel in enumerate(panels[1:]):
        np.testing.assert_array_equal(panel.coords, raw[f"L{index}/pca"])
        assert panel.coords.shape == (POINTS, COMPONENTS)
        np.testing.assert_allclose(panel.variance, snapshot.layer(index)["pca"]["explained_variance_ratio"])


def test_pooled_note_names_the_grid_of_a_pooled_layer(tmp_path):
    records = [
        {"pca": {"pooled": [6, 6]}},
        {"pca": {"pooled": [3]}},
        {"pca": {}},
        {"pca": {"pooled": [True]}},
        {"pca": {"pooled": "6x6"}},
        {},
    ]
    writer = RunWriter(str(tmp_path), "pool", {"name": "pool", "layers": [{"name": f"l{i}"} for i in range(6)]})
    writer.write_snapshot(
        0,
        {"kind": "epoch", "epoch": 0, "layers": records},
        {"L0/pca": np.ones((3, 2), np.float32), "L2/pca": np.zeros((3, 2), np.float32)},
    )
    run = RunStore(str(tmp_path)).run("pool")
    snapshot = run.snapshots()[0]
    assert [data.pooled_note(snapshot, i) for i in range(7)] == [" · pooled 6×6", " · pooled 3", "", "", "", "", ""]
    panels = data.strip_panels(run, snapshot)  # no probe: no input panel; only layers with coordinates
    assert [p.name for p in panels] == ["l0 · pooled 6×6", "l2"]
    assert all(p.variance is None for p in panels)  # no ratios recorded


def test_scree_inputs_are_the_recorded_ratios_and_n90(run):
    snapshot = data.snapshot_at(run, 1)
    names, variances, n90 = data.scree_inputs(run, snapshot)
    assert names == ["input"] + NAMES
    assert variances[0] == run.meta["input"]["explained_variance_ratio"] and n90[0] is None
    for index in range(LAYERS):
        record = snapshot.layer(index)
        assert variances[index + 1] == pytest.approx(record["pca"]["explained_variance_ratio"])
        assert n90[index + 1] == record["dimensionality"]["n90"]
        assert all(isinstance(v, float) for v in variances[index + 1])


def test_scree_inputs_rank_older_permuted_columns_and_keep_unknowns(tmp_path):
    writer = RunWriter(str(tmp_path), "old", {"name": "old", "layers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]})
    records = [
        {"pca": {"explained_variance_ratio": [0.2, 0.5, 0.3], "order": [2, 0, 1]}},
        {"pca": {"explained_variance_ratio": [0.7, None]}, "dimensionality": {"n90": 2}},
        {},
    ]
    writer.write_snapshot(0, {"kind": "epoch", "epoch": 0, "layers": records}, {})
    run = RunStore(str(tmp_path)).run("old")
    names, variances, n90 = data.scree_inputs(run, run.snapshots()[0])
    assert names == ["a", "b", "c"]  # no input baseline recorded
    assert variances == [[0.5, 0.3, 0.2], [0.7, None], None]
    assert n90 == [None, 2, None]


# ----------------------------------------------------------------------------------------------------------------
# timeline and focus_frames


def test_focus_frames_of_a_synthetic_run(synthetic, run):
    frames, start = data.focus_frames(run, 1, "label", 2)
    assert [f.epoch for f in frames] == list(range(SNAPSHOTS)) and start == 2
    assert all(f.label == "" for f in frames)
    labels = data.labels(run)
    for frame in frames:
        np.testing.assert_array_equal(frame.coords, _raw_snapshot(synthetic, "syn", frame.epoch)["L1/pca"])
        np.testing.assert_array_equal(frame.color.values, labels)  # coloured by the true label
        assert frame.color.names == tuple(data.class_names(run))
    latest, start = data.focus_frames(run, 0, "pred", None)
    assert start == SNAPSHOTS - 1  # None: the latest epoch
    probs = _raw_snapshot(synthetic, "syn", 0)["pred/probs"]
    np.testing.assert_array_equal(latest[0].color.values, probs.argmax(axis=1))
    correct, _ = data.focus_frames(run, 0, "correct", None)
    np.testing.assert_array_equal(correct[0].color.values, (probs.argmax(axis=1) != labels).astype(int))


def test_focus_frames_of_a_long_run_keep_at_most_max_frames_and_the_chosen_epoch(tmp_path):
    count = MAX_FRAMES + 25
    writer = RunWriter(str(tmp_path), "long", {"name": "long", "layers": [{"name": "a"}]})
    for epoch in range(count):
        writer.write_snapshot(
            epoch,
            {"kind": "epoch", "epoch": epoch, "step": epoch, "layers": [{}]},
            {"L0/pca": np.full((2, 2), epoch, np.float32), "pred/probs": np.eye(2, dtype=np.float32)},
        )
    run = RunStore(str(tmp_path)).run("long")
    frames, start = data.focus_frames(run, 0, "pred", 41)
    epochs = [f.epoch for f in frames]
    assert len(frames) <= MAX_FRAMES and epochs[0] == 0 and epochs[-1] == count - 1 and 41 in epochs
    assert epochs == sorted(epochs) and frames[start].epoch == 41
    assert all(np.all(f.coords == f.epoch) for f in frames)


def _batched(root: str) -> None:
    """Two epochs of 10 steps, a batch capture every 5 steps: the one at step 10 is also epoch 1's end."""
    writer = RunWriter(
        root, "batched", {"name": "batched", "layers": [{"name": "a"}], "batch_every": 5, "steps_per_epoch": 10}
    )
    captures = [
        ("epoch", 0, 0, None),
        ("batch", 0, 5, 5),
        ("batch", 0, 10, 10),
        ("epoch", 1, 10, None),
        ("batch", 1, 15, 5),
        ("batch", 1, 20, 10),
        ("epoch", 2, 20, None),
    ]
    for seq, (kind, epoch, step, batch) in enumerate(captures):
        writer.write_snapshot(
            seq,
            {"kind": kind, "epoch": epoch, "step": step, "batch": batch, "layers": [{}]},
            {"L0/pca": np.full((3, 2), seq, np.float32), "pred/probs": np.eye(3, dtype=np.float32)},
        )
    writer.write_probe({"indices": np.arange(3), "y": np.array([0, 1, 2])})


def test_timeline_puts_batch_captures_between_epoch_ends(tmp_path):
    _batched(str(tmp_path))
    run = RunStore(str(tmp_path)).run("batched")
    snapshots, times = data.timeline(run)
    assert [s.seq for s in snapshots] == [0, 1, 3, 4, 6]  # batch captures at an epoch's end step are left out
    assert times == [0.0, 0.5, 1.0, 1.5, 2.0]
    frames, start = data.focus_frames(run, 0, "label", 1)
    assert [(f.epoch, f.label) for f in frames] == [(0, ""), (0, "0.50"), (1, ""), (1, "1.50"), (2, "")]
    assert start == 2  # the epoch frame of epoch 1, not a batch frame
    assert [int(f.coords[0, 0]) for f in frames] == [0, 1, 3, 4, 6]


def test_timeline_without_steps_per_epoch_keeps_only_epoch_ends(tmp_path):
    writer = RunWriter(str(tmp_path), "nosteps", {"name": "nosteps", "layers": [{"name": "a"}], "batch_every": 5})
    for seq, (kind, epoch, step) in enumerate([("epoch", 0, 0), ("batch", 0, 5), ("epoch", 1, 10)]):
        writer.write_snapshot(seq, {"kind": kind, "epoch": epoch, "step": step, "layers": [{}]}, {})
    snapshots, times = data.timeline(RunStore(str(tmp_path)).run("nosteps"))
    assert [s.seq for s in snapshots] == [0, 2] and times == [0.0, 1.0]


def test_a_probe_without_labels_or_input_pca(tmp_path):
    writer = RunWriter(str(tmp_path), "plain", {"name": "plain", "layers": [{"name": "a"}], "input": {}})
    writer.write_probe({"indices": np.arange(3)})
    writer.write_snapshot(
        0,
        {"kind": "epoch", "epoch": 0, "step": 0, "layers": [{}]},
        {"L0/pca": np.zeros((3, 2), np.float32), "pred/probs": np.eye(3, dtype=np.float32)},
    )
    run = RunStore(str(tmp_path)).run("plain")
    assert data.labels(run) is None and data.input_panel(run) is None
    assert [p.name for p in data.strip_panels(run, run.snapshots()[0])] == ["a"]
    frames, start = data.focus_frames(run, 0, "label", 99)  # no labels: coloured by prediction; no epoch 99
    assert start == 0 and [f.epoch for f in frames] == [0]
    np.testing.assert_array_equal(frames[0].color.values, [0, 1, 2])
    assert frames[0].color.title == "predicted label"


def test_a_synthetic_run_may_store_fewer_components_than_its_eight_inputs(tmp_path):
    run_id = synthetic_run(str(tmp_path), layers=2, snapshots=2, points=40, components=3)
    run = RunStore(str(tmp_path)).run(run_id)
    assert run.probe().x.shape == (40, 8) and run.snapshots()[0].array("L0/pca").shape == (40, 3)


def test_a_run_written_before_outputs_were_stored_reads_its_labels_as_the_only_outputs_truth(run):
    """The synthetic run's run.json has no `outputs` (as every run before December 2026): its labels are the truth,
    and its predictions `pred/probs`, whichever output is asked for."""
    assert run.info.outputs == () and run.probe().targets == {}
    labels, values, title = data.output_truth(run, None)
    np.testing.assert_array_equal(labels, run.probe().y)
    assert values is None and title == "" and data.output_caption(run, None) == ""
    assert data.output_truth(run, 3)[0] is labels
    snapshot = data.snapshot_at(run, None)
    np.testing.assert_array_equal(snapshot.predictions(2), snapshot.array("pred/probs"))
