"""The Embeddings view functions: plain pytest on runs recorded by the real recorder (no Streamlit)."""

import json
import subprocess
import sys

import numpy as np
import plotly.io as pio
import pytest

from core.store import RunStore
from dashboard import data
from dashboard.views import embeddings as views
from dashboard.views.embeddings import Coloring, Panel, untyped


@pytest.fixture(scope="module")
def spiral(spiral_run_dir):
    root, run_id = spiral_run_dir
    return RunStore(root).run(run_id)


@pytest.fixture(scope="module")
def digits(digits_run_dir):
    root, run_id = digits_run_dir
    return RunStore(root).run(run_id)


def clouds(spec, meta="points", xaxis=None):
    return [t for t in spec["data"] if t.get("meta") == meta and (xaxis is None or t.get("xaxis", "x") == xaxis)]


def drawn(traces):
    """(rows, x, y) that the cloud `traces` draw together, ordered by probe row."""
    rows = np.concatenate([untyped(t["customdata"]) for t in traces])
    order = np.argsort(rows)
    return rows[order], *(np.concatenate([untyped(t[axis]) for t in traces])[order] for axis in "xy")


def test_view_modules_import_neither_streamlit_nor_tensorflow():
    code = (
        "import sys; import dashboard.views.embeddings, dashboard.views.runs, dashboard.data, dashboard.state, "
        "dashboard.jobs, dashboard.synthetic; "
        "print(sorted(m for m in ('streamlit', 'tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------------------------------------
# Decimation and colour


def test_decimate_is_deterministic_bounded_and_keeps_the_selection():
    rows = views.decimate(100_000, 5_000, keep=[3, 99_999])
    assert len(rows) <= 5_002 and {3, 99_999} <= set(rows.tolist())
    assert np.array_equal(rows, views.decimate(100_000, 5_000, keep=[3, 99_999]))
    assert np.all(np.diff(rows) > 0)
    assert np.array_equal(views.decimate(10, 5_000), np.arange(10))


def test_coloring_modes():
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], np.float32)
    names = ["a", "b"]
    assert views.coloring("label", labels, probs, names).values.tolist() == [0, 1, 1, 0]
    assert views.coloring("pred", labels, probs, names).values.tolist() == [0, 1, 0, 0]
    correct = views.coloring("correct", labels, probs, names)
    assert correct.names == ("correct", "wrong") and correct.values.tolist() == [0, 0, 1, 0]
    confidence = views.coloring("confidence", labels, probs, names)
    assert not confidence.categorical and np.allclose(confidence.values, [0.9, 0.8, 0.6, 0.5])
    assert views.coloring("label", None, probs, names).title == "predicted label"  # no labels: prediction
    assert views.coloring("pred", labels, None, names).title == "true label"  # no predictions yet: label


def test_a_single_value_output_colours_by_the_predicted_value():
    values = np.array([[2.5], [-1.0], [0.5], [4.0]], np.float32)  # a regression's predictions: one column
    for mode in ("pred", "confidence", "correct", "label"):
        color = views.coloring(mode, None, values, None)
        assert not color.categorical and color.title == "predicted value"
        assert (color.low, color.high) == (-1.0, 4.0) and color.values.tolist() == [2.5, -1.0, 0.5, 4.0]
    marker = color.marker(np.arange(4))
    assert (marker["cmin"], marker["cmax"]) == (-1.0, 4.0)
    figure = views.strip_figure([Panel("dense", np.random.default_rng(0).standard_normal((4, 3)), None)], color)
    assert [t["marker"]["colorbar"]["title"]["text"] for t in figure["data"] if t["marker"].get("showscale")] == [
        "pred."
    ]
    table = views.sample_table([1, 3], None, values, None)
    assert [row["prediction"] for row in table] == [-1.0, 4.0] and "confidence" not in table[0]


# ----------------------------------------------------------------------------------------------------------
# 1. Layer strip


def test_strip_has_the_input_first_then_every_layer(spiral):
    snapshot = data.snapshot_at(spiral, None)
    panels = data.strip_panels(spiral, snapshot)
    assert [p.name for p in panels] == ["input", "dense_0", "dense_1", "output"]
    color = views.coloring("label", data.labels(spiral), snapshot.array("pred/probs"), data.class_names(spiral))
    spec = views.strip_figure(panels, color)
    assert [a["text"] for a in spec["layout"]["annotations"]] == ["input", "dense_0", "dense_1", "output"]
    # SVG, one trace per class per panel, each in one flat colour
    assert len(clouds(spec)) == 4 * 2 and all(t["type"] == "scatter" for t in clouds(spec))
    assert {t["marker"]["color"] for t in clouds(spec, xaxis="x3")} == {
        views.category_colour(0),
        views.category_colour(1),
    }
    assert [t["name"] for t in spec["data"] if t.get("showlegend")] == ["arm A", "arm B"]  # one colour key for all
    assert not any(t.get("showlegend") or "legendgroup" in t for t in clouds(spec))
    assert spec["layout"]["legend"]["itemclick"] is False
    titles = [spec["layout"][k]["title"]["text"] for k in ("xaxis", "yaxis2")]
    assert titles[0].startswith("PC1 · ") and titles[0].endswith("%")
    assert titles[1].startswith("PC2 · ")
    # the panel shows exactly the stored coordinates of that layer, each point in its class's trace
    stored = snapshot.array("L1/pca")
    rows, x, y = drawn(clouds(spec, xaxis="x3"))
    assert np.array_equal(rows, views.decimate(len(stored), views.POINTS_PER_PANEL))
    scale = np.abs(stored).max()  # traces carry 4 significant digits (see views.plain)
    assert np.allclose(x, stored[rows, 0], atol=1e-3 * scale) and np.allclose(y, stored[rows, 1], atol=1e-3 * scale)
    arm_b = untyped(clouds(spec, xaxis="x3")[1]["customdata"])
    assert np.all(data.labels(spiral)[arm_b] == 1)


def test_strip_highlights_the_selection_in_every_panel(spiral):
    snapshot = data.snapshot_at(spiral, 1)
    color = views.coloring("pred", data.labels(spiral), snapshot.array("pred/probs"), data.class_names(spiral))
    spec = views.strip_figure(data.strip_panels(spiral, snapshot), color, selected=(4, 8, 15))
    picked = clouds(spec, "selected")
    assert len(picked) == 4 and not any(t["showlegend"] for t in picked)
    assert all(untyped(t["customdata"]).tolist() == [4, 8, 15] for t in picked)
    assert all(t["marker"]["opacity"] < 0.8 for t in clouds(spec))  # the rest fades back


def test_strip_caps_points_per_panel_for_huge_probe_sets():
    rng = np.random.default_rng(0)
    count = 100_000
    panels = [
        Panel(f"layer {i}", rng.normal(size=(count, 3)).astype(np.float32), np.array([0.5, 0.3, 0.2])) for i in range(8)
    ]
    color = Coloring(rng.integers(0, 10, count).astype(np.int16), tuple("abcdefghij"), "label")
    spec = views.strip_figure(panels, color, selected=(99_999,))
    per_panel = [drawn(clouds(spec, xaxis=x))[0] for x in ["x"] + [f"x{i}" for i in range(2, 9)]]
    assert all(len(rows) <= views.POINTS_PER_PANEL + 1 for rows in per_panel)
    assert all(np.array_equal(rows, per_panel[0]) for rows in per_panel)  # the same samples in every panel
    assert 99_999 in per_panel[0].tolist()
    assert len(pio.to_json(spec, validate=False)) < 200_000


def test_degenerate_direction_stays_flat():
    coords = np.column_stack([np.linspace(-1, 1, 50), np.full(50, 1e-9)]).astype(np.float32)
    spec = views.strip_figure(
        [Panel("flat", coords, np.array([1.0, 0.0]))], Coloring(np.zeros(50, np.int16), ("a",), "")
    )
    low, high = spec["layout"]["yaxis"]["range"]
    assert high - low >= 0.05 * 2  # not blown up to the float noise


# ----------------------------------------------------------------------------------------------------------
# 2. Focus view


def test_focus_animates_every_epoch_on_the_stored_aligned_coordinates(spiral):
    frames, start = data.focus_frames(spiral, 1, "label", 2)
    assert [f.epoch for f in frames] == [0, 1, 2, 3] and start == 2
    spec = views.focus_figure(frames, start)
    assert [f["name"] for f in spec["frames"]] == ["0", "1", "2", "3"]
    slider = spec["layout"]["sliders"][0]
    assert slider["active"] == 2 and [s["label"] for s in slider["steps"]] == ["0", "1", "2", "3"]
    assert [b["label"] for b in spec["layout"]["updatemenus"][0]["buttons"]] == ["▶ Play", "❚❚ Pause"]
    points = clouds(spec)
    assert [t["name"] for t in points] == ["arm A", "arm B"] and spec["data"][-1]["meta"] == "selected"
    assert all(f["traces"] == [0, 1, 2] for f in spec["frames"])
    for frame, snapshot in zip(spec["frames"], spiral.epoch_snapshots()):
        stored = snapshot.array("L1/pca")
        # true labels never change, so each class trace keeps its rows and a frame only moves them
        x = np.concatenate([untyped(t["x"]) for t in frame["data"][:2]])
        rows = np.concatenate([untyped(t["customdata"]) for t in points])
        assert np.allclose(x, stored[rows, 0])  # no re-fitting, no flipping
    low, high = spec["layout"]["xaxis"]["range"]  # one range for the whole animation
    everything = np.concatenate([untyped(t["x"]) for f in spec["frames"] for t in f["data"]])
    assert low <= everything.min() and everything.max() <= high
    rows, x, _ = drawn(points)
    stored = spiral.epoch_snapshots()[2].array("L1/pca")
    assert np.allclose(x, stored[rows, 0], atol=1e-3 * np.abs(stored).max())
    assert points[0]["type"] == "scatter"  # a few thousand points: SVG


_BATCHES = """
import sys
from core.training.trainer import TrainingSpec, train
print(train(TrainingSpec(dataset="xor", hidden=(4,), epochs=2, batch_every=3, runs=sys.argv[1], name="batch captures")))
"""


@pytest.fixture(scope="module")
def batch_captures(recorded):
    """A real run recorded with `batch_every=3`: snapshots within epochs as well as at their ends."""
    root = recorded(_BATCHES)
    return RunStore(str(root)).run(RunStore(str(root)).run_ids()[0])


def test_focus_animates_batch_captures_between_epochs(batch_captures):
    run = batch_captures
    per_epoch = run.meta["steps_per_epoch"]
    frames, start = data.focus_frames(run, 0, "label", 1)
    epochs = [f for f in frames if not f.label]
    within = [f for f in frames if f.label]
    assert [f.epoch for f in epochs] == [0, 1, 2] and frames[start] is epochs[1]
    batches = [s for s in run.snapshots() if s.meta["kind"] == "batch" and s.meta["step"] % per_epoch]
    assert len(within) == len(batches) > 0  # a batch capture at an epoch's end is that epoch's frame, not another
    times = [float(f.name) for f in frames]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(f.epoch < float(f.name) < f.epoch + 1 for f in within)  # "0.30": 3 of 10 batches into epoch 0
    spec = views.focus_figure(frames, start)
    assert (
        [f["name"] for f in spec["frames"]]
        == [s["label"] for s in spec["layout"]["sliders"][0]["steps"]]
        == [f.name for f in frames]
    )


def test_frames_resend_colours_only_when_they_change(spiral):
    frames, start = data.focus_frames(spiral, 0, "label", None)  # true labels: fixed through training
    assert all(
        "customdata" not in t and "marker" not in t
        for f in views.focus_figure(frames, start)["frames"]
        for t in f["data"]
    )
    frames, start = data.focus_frames(spiral, 0, "pred", None)  # predictions change from epoch to epoch
    spec = views.focus_figure(frames, start)
    for frame, source in zip(spec["frames"], frames):  # each class trace gets the rows predicted as that class
        for category, trace in enumerate(frame["data"][:2]):
            assert np.all(source.color.values[untyped(trace["customdata"])] == category)
    frames, start = data.focus_frames(spiral, 0, "confidence", None)  # one trace coloured point by point
    assert all("color" in f["data"][0]["marker"] for f in views.focus_figure(frames, start)["frames"])


def test_focus_in_3d_uses_three_components(spiral):
    frames, start = data.focus_frames(spiral, 0, "confidence", None)
    spec = views.focus_figure(frames, start, dims="3d", components=(1, 2, 3))
    assert spec["data"][0]["type"] == "scatter3d" and "z" in spec["data"][0] and len(clouds(spec)) == 1
    assert spec["layout"]["scene"]["zaxis"]["title"]["text"].startswith("PC3")
    assert start == len(frames) - 1  # None means the latest epoch
    assert spec["data"][0]["marker"]["showscale"]  # confidence is continuous: a colour bar


def test_frame_subset_keeps_first_last_and_chosen():
    epochs = list(range(200))
    picks = views.frame_subset(epochs, 77, limit=60)
    assert len(picks) <= 61 and {0, 77, 199} <= set(picks)
    assert views.frame_subset(list(range(10)), 3) == list(range(10))


# ----------------------------------------------------------------------------------------------------------
# 3. Selected samples


def test_selection_rows_reads_customdata_from_a_plotly_event():
    event = {
        "selection": {"points": [{"customdata": 7}, {"customdata": [3]}, {"point_index": 1}], "point_indices": [0]}
    }
    assert views.selection_rows(event) == (3, 7)
    assert views.selection_rows(None) == () and views.selection_rows({"selection": {}}) == ()


def test_a_region_on_the_strip_selects_every_sample_inside_not_only_the_drawn_ones():
    grid = np.array([(x, y) for x in range(40) for y in range(40)], dtype=np.float32)  # 1,600 points, 1 apart
    panels = [Panel("a", grid[:, ::-1], None), Panel("b", grid, None)]
    drawn_points = [{"customdata": 0}]  # what plotly reports: only the decimated points it drew
    box = {
        "selection": {
            "points": drawn_points,
            "box": [{"xref": "x2", "yref": "y2", "x": [9.5, 2.5], "y": [0.5, 3.5]}],
            "lasso": [],
        }
    }
    rows = views.selection_rows(box, panels)
    assert len(rows) == 7 * 3 and all(3 <= grid[r, 0] <= 9 and 1 <= grid[r, 1] <= 3 for r in rows)
    triangle = {
        "selection": {"box": [], "lasso": [{"xref": "x", "yref": "y", "x": [-0.5, 11, -0.5], "y": [-0.5, -0.5, 11]}]}
    }
    rows = views.selection_rows(triangle, panels)  # panel "a" shows (y, x): the triangle x + y <= 10, swapped
    assert len(rows) == 66 and all(grid[r].sum() <= 10 for r in rows)
    assert views.selection_rows(box, None) == (0,)  # without panels (the focus view): the points plotly reports
    stale = {
        "selection": {"box": [{"xref": "x9", "x": [0, 1], "y": [0, 1]}, {"xref": "x", "x": ["a", 1], "y": [0, 1]}]}
    }
    assert views.selection_rows(stale, panels) == ()  # a panel that is gone, garbage coordinates: nothing


def test_inside_polygon_matches_the_even_odd_rule():
    square_with_notch = (np.array([0, 4, 4, 2, 0], float), np.array([0, 0, 4, 2, 4], float))
    x, y = np.array([1.0, 3.0, 2.0, 5.0, 2.0]), np.array([1.0, 3.0, 3.5, 1.0, 1.0])
    assert views.inside_polygon(x, y, *square_with_notch).tolist() == [True, True, False, False, True]


def test_image_samples_get_thumbnails_and_a_table(digits):
    probe = digits.probe()
    snapshot = data.snapshot_at(digits, None)
    shape = digits.meta["dataset"]["image_shape"]
    images = views.thumbnails(probe.x, [0, 5], shape)
    border = 2 * views.THUMBNAIL_BORDER
    assert (
        len(images) == 2
        and images[0].shape == (64 + border, 64 + border)
        and 0 <= images[0].min()
        and images[0].max() <= 1
    )
    table = views.sample_table([0, 5], probe.y, snapshot.array("pred/probs"), digits.meta["dataset"]["class_names"])
    assert table[0]["row"] == 0 and table[0]["label"] == str(probe.y[0])
    assert set(table[0]) == {"row", "label", "prediction", "confidence", "correct"}


def test_tabular_samples_list_feature_values(spiral):
    probe = spiral.probe()
    table = views.sample_table([2], probe.y, None, ["arm A", "arm B"], features=probe.x, feature_names=["x1", "x2"])
    assert table[0]["x1"] == pytest.approx(float(probe.x[2, 0]), abs=1e-4) and "prediction" not in table[0]


# ----------------------------------------------------------------------------------------------------------
# 4. Explained variance and 5. training curves


def test_components_for_90_percent():
    assert views.components_for([0.5, 0.3, 0.15, 0.05]) == 3
    assert views.components_for([0.9, 0.1]) == 1
    assert views.components_for([0.2, 0.2]) is None  # the stored components fall short


def test_scree_has_a_line_per_layer_and_the_recorders_n90(digits):
    snapshot = data.snapshot_at(digits, None)
    names, variances, n90 = data.scree_inputs(digits, snapshot)
    assert names[0] == "input" and names[1:] == [layer["name"] for layer in digits.layers]
    spec = views.scree_figure(names, variances, n90)
    lines = [t for t in spec["data"] if t["type"] == "scatter"]
    bars = [t for t in spec["data"] if t["type"] == "bar"][0]
    assert [t["name"] for t in lines] == names
    assert bars["y"][1] == snapshot.layer(0)["dimensionality"]["n90"]
    assert all(0 <= y <= 1.0001 for t in lines for y in t["y"])


def test_curves_show_train_and_validation(spiral):
    spec = views.curves_figure(spiral.history(), epoch=2)
    names = [(t["name"], t["xaxis"]) for t in spec["data"]]
    assert names == [("train", "x"), ("validation", "x"), ("train", "x2"), ("validation", "x2")]
    assert [s["x0"] for s in spec["layout"]["shapes"]] == [2, 2]
    assert views.curves_figure({"epoch": []})["data"] == []


def test_plain_lists_round_to_four_significant_digits_and_keep_gaps():
    assert views.plain(np.array([1234.5678, -0.001234], np.float32)) == [1234.6, -0.0]
    assert views.plain(np.array([0.012345, np.nan, np.inf])) == [0.012345, None, None]
    assert views.plain(np.array([3, 7], np.int64)) == [3, 7] and views.plain(np.zeros(0)) == []


def test_specs_serialise_to_compact_plotly_json(spiral):
    frames, start = data.focus_frames(spiral, 0, "label", None)
    text = pio.to_json(views.focus_figure(frames, start), validate=False)
    assert '"bdata"' in text
    assert json.loads(text)["layout"]["sliders"][0]["active"] == start


def test_a_regression_target_colours_continuously_and_classes_categorically():
    """The true value of a regression output is a continuous scale from its smallest to its largest value; the
    class ids of a classification output are one flat colour per class."""
    truth = np.array([3.0, -2.0, 0.5, 7.0], np.float32)
    predicted = np.array([[2.0], [-2.5], [0.5], [9.0]], np.float32)
    by_truth = views.coloring("label", None, predicted, None, values=truth)
    assert not by_truth.categorical and by_truth.title == "true value"
    assert (by_truth.low, by_truth.high) == (-2.0, 7.0) and by_truth.values.tolist() == truth.tolist()
    marker = by_truth.marker(np.arange(4))
    assert marker["colorscale"] == views.CONFIDENCE_SCALE and (marker["cmin"], marker["cmax"]) == (-2.0, 7.0)
    error = views.coloring("correct", None, predicted, None, values=truth)
    assert not error.categorical and np.allclose(error.values, [1.0, 0.5, 0.0, 2.0])
    assert views.coloring("pred", None, predicted, None, values=truth).title == "predicted value"

    labels = np.array([0, 2, 1, 2])
    probs = np.eye(3, dtype=np.float32)[[0, 2, 2, 1]]
    by_class = views.coloring("label", labels, probs, ["a", "b", "c"])
    assert by_class.categorical and by_class.names == ("a", "b", "c") and by_class.values.tolist() == [0, 2, 1, 2]
    stepped = by_class.marker(np.arange(4))["colorscale"]
    assert len({colour for _, colour in stepped}) == 3  # one flat colour per class, no gradient between them
    table = views.sample_table([1], None, predicted, None, values=truth)
    assert table[0]["true value"] == -2.0 and table[0]["prediction"] == -2.5


def test_a_component_the_layer_lacks_is_named_so_and_drawn_at_zero():
    coords = np.arange(6.0).reshape(6, 1)  # a 1-unit layer: one component
    first, second = views.columns(coords, (1, 2))
    np.testing.assert_array_equal(first, coords[:, 0])
    np.testing.assert_array_equal(second, np.zeros(6))
    assert views.component_title(1, 1) == "PC1"
    assert views.component_title(2, 1) == "no PC2 (the layer has 1): 0"
    assert views.component_title(2, 1, short=True) == "no PC2: 0"
    assert views.axis_title(2, np.array([1.0])) == views.component_title(2, 1)
