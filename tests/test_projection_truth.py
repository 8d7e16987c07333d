"""Every axis the Embeddings and Layers pages label "PCk · share" is that snapshot's k-th largest direction, with
its true share of variance: checked on synthetic activations whose variance per direction is known, through the
real analysis (`SnapshotBuilder`), the store and the view functions."""

import numpy as np
import pytest
from captures import outputs_capture

from core.capture.snapshot import RawCapture, SnapshotBuilder
from core.store import RunStore, RunWriter, variance_ratios
from dashboard import data
from dashboard.views import embeddings as views

SAMPLES, WIDTH, EPOCHS = 600, 24, 9


def planted_outputs(seed=0):
    """Per epoch (n, d) activations with known variances along fixed orthonormal directions: direction A shrinks
    from 9 to 1 while B grows from 1 to 9 (they trade rank at epoch 4, where both are 5), C stays at 3, the
    other directions hold 0.01 each. Returns (outputs, directions, population variances)."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.standard_normal((WIDTH, WIDTH)))[0].T  # rows orthonormal
    outputs, variances = [], []
    for epoch in range(EPOCHS):
        t = epoch / (EPOCHS - 1)
        variance = np.full(WIDTH, 0.01)
        variance[:3] = [9 - 8 * t, 1 + 8 * t, 3.0]
        scores = rng.standard_normal((SAMPLES, WIDTH)) * np.sqrt(variance)
        outputs.append((scores @ directions + 5.0).astype(np.float32))
        variances.append(variance)
    return outputs, directions, variances


def exact_shares(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(descending shares of the total variance, eigenvectors as rows) of the sample covariance, in float64."""
    centred = x.astype(np.float64) - x.mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred / (len(x) - 1))
    return values[::-1] / values.sum(), vectors[:, ::-1].T


def capture(epoch: int, output: np.ndarray) -> RawCapture:
    return outputs_capture([output], epoch)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """A run of one layer whose snapshots are built by the real analysis from `planted_outputs`."""
    root = str(tmp_path_factory.mktemp("planted"))
    outputs, _, _ = planted_outputs()
    writer = RunWriter(
        root, "planted", {"layers": [{"index": 0, "name": "hidden", "type": "Dense"}], "dataset": {"name": "planted"}}
    )
    writer.write_probe({"indices": np.arange(SAMPLES)})
    builder = SnapshotBuilder(activations=["linear"], labels=None, components=5)
    for epoch, output in enumerate(outputs):
        meta, arrays = builder.build(capture(epoch, output))
        writer.write_snapshot(epoch, meta, arrays)
    writer.set_status("finished")
    return RunStore(root).run("planted"), outputs


def test_every_epoch_labels_its_own_components_in_variance_order_with_true_shares(planted_run):
    run, outputs = planted_run
    snapshots = run.epoch_snapshots()
    assert len(snapshots) == EPOCHS
    for snapshot, output in zip(snapshots, outputs):
        shares, vectors = exact_shares(output)
        projection = snapshot.projection(0)
        ratios = projection.variance_ratio
        assert np.all(np.diff(ratios) <= 1e-12), f"epoch {snapshot.epoch}: shares out of order {ratios}"
        np.testing.assert_allclose(ratios, shares[:5], atol=1e-4)
        # Column j holds the samples' coordinates along the j-th eigenvector (up to sign), so its variance share
        # is what its label says.
        centred = output.astype(np.float64) - output.mean(axis=0)
        for j in range(3):
            along = centred @ vectors[j]
            correlation = np.corrcoef(projection.coords[:, j], along)[0, 1]
            if abs(shares[j] - shares[j + 1]) > 0.02:  # a tie (epoch 4) leaves the eigenvectors undetermined
                assert abs(correlation) > 0.999, (snapshot.epoch, j, correlation)
            share = projection.coords[:, j].astype(np.float64).var(ddof=1) / centred.var(axis=0, ddof=1).sum()
            assert share == pytest.approx(ratios[j], abs=2e-4)


def test_the_dominant_direction_is_always_on_the_default_axes(planted_run):
    """The issue's moons case: 92% of the variance sat in a column the scatter did not show. Here the direction
    that dominates each epoch (A early, B late) is PC1, on the x axis, at every epoch."""
    run, outputs = planted_run
    _, directions, variances = planted_outputs()
    for snapshot, output, variance in zip(run.epoch_snapshots(), outputs, variances):
        if abs(variance[0] - variance[1]) < 1:
            continue
        dominant = directions[int(np.argmax(variance))]
        along = (output.astype(np.float64) - output.mean(axis=0)) @ dominant
        x_axis = snapshot.projection(0).coords[:, 0]
        # Against the planted (population) direction, so sampling leaves a little of B in A's estimate and back.
        assert abs(np.corrcoef(x_axis, along)[0, 1]) > 0.98, snapshot.epoch


def test_signs_follow_the_previous_epoch_so_the_animation_does_not_mirror(planted_run):
    """Each planted direction keeps its orientation from one epoch to the next. A and B are mixed at the crossing
    (epoch 4, equal variances), so their orientation is checked on either side of it; C at every step."""
    run, outputs = planted_run
    _, directions, _ = planted_outputs()
    signs = []  # per epoch, the sign of each planted direction A, B, C in the column that holds it
    for snapshot, output in zip(run.epoch_snapshots(), outputs):
        scores = (output.astype(np.float64) - output.mean(axis=0)) @ directions[:3].T  # (n, 3)
        coords = snapshot.projection(0).coords[:, :3].astype(np.float64)
        loadings = np.corrcoef(coords.T, scores.T)[:3, 3:]  # (columns, directions)
        signs.append([np.sign(loadings[np.argmax(np.abs(loadings[:, d])), d]) for d in range(3)])
    signs = np.asarray(signs)
    assert np.all(signs[:, 2] == signs[0, 2])
    for side in (slice(0, 4), slice(5, EPOCHS)):
        assert np.all(signs[side, :2] == signs[side, :2][0])


def test_the_views_axis_titles_and_the_scree_chart_say_the_same_shares(planted_run):
    run, outputs = planted_run
    last = run.epoch_snapshots()[-1]
    shares, _ = exact_shares(outputs[-1])
    [panel] = data.strip_panels(run, last)
    strip = views.strip_figure([panel], views.coloring("prediction", None, last.array("pred/probs"), []))
    assert strip["layout"]["xaxis"]["title"]["text"] == f"PC1 · {shares[0]:.0%}"
    assert strip["layout"]["yaxis"]["title"]["text"] == f"PC2 · {shares[1]:.0%}"
    frames, start = data.focus_frames(run, 0, "prediction", None)
    for frame, output in zip(frames, outputs):
        expected, _ = exact_shares(output)
        assert views.axis_title(1, frame.variance) == f"PC1 · {expected[0]:.0%}"
        assert views.axis_title(3, frame.variance) == f"PC3 · {expected[2]:.0%}"
    focus = views.focus_figure(frames, start, "3d")
    assert focus["layout"]["scene"]["zaxis"]["title"]["text"] == f"PC3 · {shares[2]:.0%}"
    names, variances, _ = data.scree_inputs(run, last)
    np.testing.assert_allclose(np.cumsum(variances[names.index("hidden")]), np.cumsum(shares[:5]), atol=1e-4)


def test_a_one_unit_layer_has_one_component_and_its_flat_axis_says_so(tmp_path):
    """A 1-unit layer has one direction, holding all of its variance; the scatter's second axis is drawn flat at 0,
    and its title must not call that a PC2."""
    writer = RunWriter(str(tmp_path), "narrow", {"layers": [{"index": 0, "name": "unit", "type": "Dense"}]})
    writer.write_probe({"indices": np.arange(SAMPLES)})
    output = np.random.default_rng(1).standard_normal((SAMPLES, 1)).astype(np.float32)
    meta, arrays = SnapshotBuilder(activations=["linear"], labels=None, components=5).build(capture(0, output))
    writer.write_snapshot(0, meta, arrays)
    writer.set_status("finished")
    run = RunStore(str(tmp_path)).run("narrow")
    [snapshot] = run.epoch_snapshots()
    [panel] = data.strip_panels(run, snapshot)
    strip = views.strip_figure([panel], views.coloring("prediction", None, snapshot.array("pred/probs"), []))
    assert strip["layout"]["xaxis"]["title"]["text"] == "PC1 · 100%"
    assert strip["layout"]["yaxis"]["title"]["text"] == "no PC2 (the layer has 1): 0"
    assert set(np.asarray(strip["data"][0]["y"]).tolist()) == {0.0}


def test_a_constant_layer_is_said_to_have_no_variance_not_0_percent(tmp_path):
    writer = RunWriter(str(tmp_path), "dead", {"layers": [{"index": 0, "name": "dead", "type": "Dense"}]})
    writer.write_probe({"indices": np.arange(SAMPLES)})
    output = np.zeros((SAMPLES, 4), np.float32)  # a ReLU layer that died: every unit outputs 0
    meta, arrays = SnapshotBuilder(activations=["relu"], labels=None, components=5).build(capture(0, output))
    writer.write_snapshot(0, meta, arrays)
    run = RunStore(str(tmp_path)).run("dead")
    [snapshot] = run.epoch_snapshots()
    [panel] = data.strip_panels(run, snapshot)
    assert views.axis_title(1, panel.variance) == "PC1 · no variance"


def test_older_runs_with_permuted_columns_read_back_in_variance_order(tmp_path):
    """Runs recorded before this change stored columns permuted to follow the previous snapshot, with `order`
    giving each column's rank: the reader puts PC1 first again, for the scatter, the plane and the ratios."""
    writer = RunWriter(str(tmp_path), "old", {"layers": [{"index": 0, "name": "d", "type": "Dense"}]})
    ranked = np.arange(30, dtype=np.float32).reshape(10, 3)
    stored = ranked[:, [2, 0, 1]]  # column 0 held rank 2, column 1 rank 0, column 2 rank 1
    meta = {
        "kind": "epoch",
        "epoch": 0,
        "layers": [{"pca": {"explained_variance_ratio": [0.04, 0.9, 0.05], "order": [2, 0, 1]}}],
    }
    writer.write_snapshot(0, meta, {"L0/pca": stored, "L0/plane_pca": stored * 2})
    snapshot = RunStore(str(tmp_path)).run("old").snapshots()[0]
    projection = snapshot.projection(0)
    np.testing.assert_array_equal(projection.coords, ranked)
    np.testing.assert_array_equal(projection.variance_ratio, [0.9, 0.05, 0.04])
    np.testing.assert_array_equal(snapshot.projection(0, "plane_pca").coords, ranked * 2)
    np.testing.assert_array_equal(variance_ratios(snapshot.layer(0)), [0.9, 0.05, 0.04])


@pytest.mark.parametrize("order", [["a", 1, 2], [True, 0, 2], "x"])
def test_an_order_of_the_wrong_type_makes_the_snapshot_damaged_and_says_why(tmp_path, order):
    writer = RunWriter(str(tmp_path), "odd", {"layers": [{"index": 0, "name": "d", "type": "Dense"}]})
    meta = {"kind": "epoch", "epoch": 0, "layers": [{"pca": {"explained_variance_ratio": [0.5, 0.3], "order": order}}]}
    writer.write_snapshot(0, meta, {"L0/pca": np.zeros((10, 2), np.float32)})
    run = RunStore(str(tmp_path)).run("odd")
    assert run.snapshots() == [] and any("order" in reason for reason in run.damaged_files().values())


@pytest.mark.parametrize("order", [[0, 0, 1], [0, 1], None, [3, 0, 1]])
def test_a_malformed_order_is_ignored_not_trusted(tmp_path, order):
    writer = RunWriter(str(tmp_path), "odd", {"layers": [{"index": 0, "name": "d", "type": "Dense"}]})
    coords = np.arange(30, dtype=np.float32).reshape(10, 3)
    meta = {
        "kind": "epoch",
        "epoch": 0,
        "layers": [{"pca": {"explained_variance_ratio": [0.5, 0.3, None], "order": order}}],
    }
    writer.write_snapshot(0, meta, {"L0/pca": coords})
    projection = RunStore(str(tmp_path)).run("odd").snapshots()[0].projection(0)
    np.testing.assert_array_equal(projection.coords, coords)
    np.testing.assert_array_equal(projection.variance_ratio, [0.5, 0.3, np.nan])
