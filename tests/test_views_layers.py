"""Pure view functions of the Layers page: arrays in, plotly figures out (no Streamlit, no run store)."""

import numpy as np
import plotly.graph_objects as go
import pytest

from dashboard.views import layers as views

LAYERS = ["dense_0", "dense_1", "output"]
EPOCHS = [0, 1, 2, 3]


def probe_table():
    return np.array([[0.6, 0.6, 0.5], [0.7, 0.8, 0.8], [0.75, 0.9, 0.95], [0.8, np.nan, 1.0]])  # (epochs, layers)


def traces(figure, kind):
    return [t for t in figure.data if t.type == kind]


def test_no_view_uses_webgl():
    """Grids of many panels must not each open a WebGL context (browsers allow ~16)."""
    import inspect

    source = inspect.getsource(views)
    assert "Scattergl" not in source and "Scatter3d" not in source and "Heatmapgl" not in source


def test_every_caption_is_one_line():
    for name, caption in [*views.CAPTIONS.items(), *views.UNLABELLED_CAPTIONS.items()]:
        assert "\n" not in caption and 40 < len(caption) < 260, name


def test_a_run_without_labels_gets_captions_without_class_separation():
    assert "silhouette" in views.caption("depth") and "three" in views.caption("time")
    assert "silhouette" not in views.caption("depth", labelled=False) and "two" in views.caption("time", labelled=False)
    assert views.caption("cka_heatmap", labelled=False) == views.CAPTIONS["cka_heatmap"]


def test_probe_heatmap_puts_the_input_baseline_first_and_marks_missing_cells():
    figure = views.probe_heatmap(EPOCHS, LAYERS, probe_table(), baseline=0.55, epoch=2, chance=0.5)
    (heatmap,) = traces(figure, "heatmap")
    assert list(heatmap.y) == ["input"] + LAYERS
    assert list(heatmap.z[0]) == [0.55] * 4  # the baseline does not change with training
    assert heatmap.z[2][3] is None  # NaN becomes a gap, not a colour
    assert heatmap.zmin == 0.5 and heatmap.zmax == 1.0
    assert heatmap.texttemplate  # 4 x 4 cells: values printed
    many = views.probe_heatmap(list(range(40)), LAYERS, np.full((40, 3), 0.9), baseline=None)
    assert traces(many, "heatmap")[0].texttemplate is None and list(traces(many, "heatmap")[0].y) == LAYERS


def test_colour_floor_spends_the_scale_on_the_values_shown():
    assert views.colour_floor([[0.97, 0.99], [0.93, None]], chance=0.1) == pytest.approx(0.9)
    assert views.colour_floor([[0.2, 0.9]], chance=0.5) == 0.5  # never below chance
    assert views.colour_floor([[1.0]]) == 0.95 and views.colour_floor([[None]]) == 0.0


def test_probe_depth_starts_at_the_input_and_shows_the_untrained_network():
    figure = views.probe_depth_figure(
        LAYERS, probe_table()[2], 0.55, epoch=2, initial=probe_table()[0], chance=0.5, chosen="dense_1"
    )
    early, now = traces(figure, "scatter")
    assert list(now.x) == ["input"] + LAYERS and list(now.y) == [0.55, 0.75, 0.9, 0.95]
    assert now.name == "epoch 2" and early.name == "epoch 0"
    resumed = views.probe_depth_figure(
        LAYERS, probe_table()[2], 0.55, epoch=8, initial=probe_table()[0], initial_epoch=5
    )
    assert [t.name for t in traces(resumed, "scatter")] == ["epoch 5", "epoch 8"]  # a resumed fit's first snapshot
    assert any(shape.x0 == "dense_1" for shape in figure.layout.shapes)  # the chosen layer is marked


def test_probe_depth_error_bars_are_the_95_percent_interval_on_the_held_out_samples():
    figure = views.probe_depth_figure(LAYERS, probe_table()[2], 0.55, epoch=2, held_out=100)
    (now,) = traces(figure, "scatter")
    # 0.9 on 100 samples: Wilson 95% interval 0.826 to 0.945
    row = list(now.y).index(0.9)
    assert now.error_y.array[row] == pytest.approx(0.9448 - 0.9, abs=1e-4)
    assert now.error_y.arrayminus[row] == pytest.approx(0.9 - 0.8256, abs=1e-4)
    assert traces(views.probe_depth_figure(LAYERS, probe_table()[2], 0.55, epoch=2), "scatter")[0].error_y.array is None
    heatmap = traces(views.probe_heatmap(EPOCHS, LAYERS, probe_table(), baseline=0.55, held_out=100), "heatmap")[0]
    assert "on 100 held-out samples" in heatmap.hovertemplate


def test_probe_reliability_says_how_many_samples_how_sure_and_one_seed():
    text = views.probe_reliability(1000, 2000, 0.9, seed=3)
    assert "trained on 1,000 probe samples and scored on the other 1,000" in text
    assert "95% interval is 88% to 92%" in text and "few samples" not in text
    assert "one training run (seed 3)" in text
    few = views.probe_reliability(40, 81, 0.9, seed=None)
    assert "95% interval is 77% to 96%" in few and "few samples" in few and "one training run:" in few
    assert "interval" not in views.probe_reliability(0, 0, None, None)


def test_cka_heatmap_and_a_snapshot_without_one():
    matrix = [[1.0, 0.8, 0.2], [0.8, 1.0, None], [0.2, None, 1.0]]
    (heatmap,) = traces(views.cka_heatmap(LAYERS, matrix, epoch=3), "heatmap")
    assert list(heatmap.x) == LAYERS and heatmap.z[1][2] is None and heatmap.zmin == 0 and heatmap.zmax == 1
    assert views.cka_heatmap(LAYERS, None, 3).layout.annotations[0].text.startswith("This snapshot has no CKA")


def test_cka_to_final_draws_one_line_per_layer_coloured_by_depth():
    values = np.array([[0.5, 0.3, 0.1], [0.9, 0.7, 0.5], [1.0, 1.0, 1.0]])
    figure = views.cka_final_figure([0, 5, 10], LAYERS, values, epoch=5)
    lines = traces(figure, "scatter")
    assert [line.name for line in lines] == LAYERS
    assert [line.line.color for line in lines] == views.depth_colours(3)
    assert len(set(views.depth_colours(3))) == 3
    assert views.cka_final_figure([], LAYERS, np.zeros((0, 3))).layout.annotations


def test_separation_and_dimensionality_against_depth_and_time():
    measures = {
        "separation": np.array([0.1, 0.2, 0.6]),
        "n90": np.array([4, 3, 1]),
        "participation": np.array([3.0, 2.0, 1.0]),
    }
    figure = views.depth_metrics_figure(
        LAYERS, measures, epoch=3, initial=measures, input_separation=0.05, chosen="dense_0"
    )
    assert len(traces(figure, "scatter")) == 6  # before training and now, in each of the three panels
    assert (
        list(figure.data[1].x) == ["input"] + LAYERS and list(figure.data[3].x) == LAYERS
    )  # input only for separation
    over_time = {key: np.tile(value, (4, 1)) for key, value in measures.items()}
    figure = views.time_metrics_figure(EPOCHS, LAYERS, over_time, epoch=2)
    assert len(figure.data) == 9 and sum(t.showlegend for t in figure.data) == 3


def test_unit_scale_gives_every_unit_its_own_range():
    responses = np.array([[0.0, -2.0, 0.0], [5.0, 1.0, 0.0]])
    np.testing.assert_allclose(views.unit_scale(responses), [[0, -1, 0], [1, 0.5, 0]])


def test_unit_grid_has_one_heatmap_per_unit_and_outlines_the_chosen_one():
    side, units = 5, 12
    xs = ys = np.linspace(-1, 1, side)
    responses = np.random.default_rng(0).standard_normal((side * side, units))
    figure = views.unit_grid_figure(responses, xs, ys, chosen=9, dead=np.arange(units) == 3)
    heatmaps = traces(figure, "heatmap")
    assert len(heatmaps) == units and np.asarray(heatmaps[0].z).shape == (side, side)
    assert all(h.coloraxis == "coloraxis" for h in heatmaps)
    assert figure.layout.annotations[3].text == "3 · dead"
    assert [s.xref for s in figure.layout.shapes] == ["x10 domain"]
    wide = views.unit_grid_figure(np.zeros((side * side, 300)), xs, ys)
    assert len(wide.data) == views.MAX_GRID_UNITS


def test_unit_plane_marks_top_and_bottom_samples_over_the_decision():
    side = 5
    xs = ys = np.linspace(-1, 1, side)
    x = np.random.default_rng(1).uniform(-1, 1, (40, 2))
    labels = (x[:, 0] > 0).astype(int)
    probs = np.stack([np.linspace(0, 1, side * side), np.linspace(1, 0, side * side)], axis=1)
    figure = views.unit_plane_figure(
        np.arange(side * side, dtype=float),
        probs,
        xs,
        ys,
        x,
        labels,
        [0, 1, 2],
        [3, 4],
        unit=7,
        class_names=["left", "right"],
    )
    names = [t.name for t in figure.data if t.type == "scatter"]
    assert names == ["most active", "least active", "left", "right"]
    top = figure.data[1]
    np.testing.assert_allclose(np.c_[top.x, top.y], x[[0, 1, 2]])
    assert len(traces(figure, "heatmap")) == 2


def test_a_single_value_output_draws_its_predicted_value_over_the_plane():
    side = 4
    xs = ys = np.linspace(-1, 1, side)
    values = np.linspace(-3, 5, side * side)[:, None]  # a regression over the plane: one output column
    figure = views.unit_plane_figure(np.zeros(side * side), values, xs, ys, None, None, [0], [1], unit=0)
    decision = traces(figure, "heatmap")[1]
    np.testing.assert_allclose(np.asarray(decision.z).reshape(-1), values[:, 0])
    table = views.unit_examples_table(None, None, values, [2], [5])
    assert [row["prediction"] for row in table] == [round(float(values[2, 0]), 4), round(float(values[5, 0]), 4)]


def test_a_measure_without_any_value_gets_no_panel():
    layers = ["a", "b"]
    unlabelled = {"separation": np.full(2, np.nan), "n90": np.array([3.0, 2.0]), "participation": np.array([2.5, 1.5])}
    depth = views.depth_metrics_figure(layers, unlabelled, epoch=3, chosen="b")
    assert [a.text for a in depth.layout.annotations] == ["components for 90% variance", "participation ratio"]
    assert [shape.xref for shape in depth.layout.shapes] == ["x", "x2"]  # the chosen layer's band, on panels that exist
    over_time = views.time_metrics_figure([0, 1], layers, {k: np.stack([v, v]) for k, v in unlabelled.items()})
    assert len(over_time.layout.annotations) == 2
    labelled = dict(unlabelled, separation=np.array([0.1, 0.4]))
    assert len(views.depth_metrics_figure(layers, labelled, epoch=3).layout.annotations) == 3


def test_mesh_lines_draw_rows_and_columns_of_the_grid():
    side = 3
    points = np.stack(np.meshgrid(np.arange(side), np.arange(side)), axis=-1).reshape(-1, 2).astype(float)
    xs, ys = views.mesh_lines(points, side)
    assert len(xs) == 2 * side * (side + 1) and xs.count(None) == 2 * side
    assert xs[:3] == [0.0, 1.0, 2.0] and ys[:3] == [0.0, 0.0, 0.0]  # first row: constant x2
    assert xs[12:15] == [0.0, 0.0, 0.0] and ys[12:15] == [0.0, 1.0, 2.0]  # first column: constant x1


def test_bent_plane_has_a_mesh_and_points_per_panel():
    side = 4
    grid = np.random.default_rng(2).standard_normal((side * side, 2))
    figure = views.bent_plane_figure(
        [("input", grid), ("dense_0", grid * 2)], np.full((side * side, 3), 1 / 3), side, chosen="dense_0"
    )
    assert [t.mode for t in figure.data] == ["lines", "markers", "lines", "markers"]
    assert figure.layout.xaxis.title.text == "x1" and figure.layout.xaxis2.title.text == "PC1"
    assert len(figure.layout.shapes) == 1
    assert views.bent_plane_figure([], None, side).layout.annotations
    own = views.bent_plane_figure(  # each panel's own titles: a 1-unit layer has no PC2
        [("input", grid), ("unit", grid * [1, 0])], None, side, axis_titles=[("x1", "x2"), ("PC1", "no PC2: 0")]
    )
    assert own.layout.yaxis2.title.text == "no PC2: 0" and own.layout.yaxis.title.text == "x2"


def test_thumbnails_of_a_units_top_and_bottom_images():
    x = np.arange(10 * 16, dtype=np.float32).reshape(10, 16)
    labels = np.arange(10) % 3
    figure = views.unit_images_figure(x, [9, 8], [0, 1], (4, 4), labels, ["a", "b", "c"])
    heatmaps = traces(figure, "heatmap")
    assert len(heatmaps) == 4
    np.testing.assert_array_equal(np.asarray(heatmaps[0].z), x[9].reshape(4, 4))
    assert figure.layout.annotations[0].text == "top 1 · a" and figure.layout.annotations[2].text == "low 1 · a"
    assert figure.layout.coloraxis.cmin == 0 and figure.layout.coloraxis.cmax == x.max()


def test_prototypes_average_the_top_images_and_blank_dead_units():
    x = np.stack([np.full(4, v, np.float32) for v in range(6)])
    images = views.prototype_images(x, np.array([[0, 2], [4, 5], [1, 1]]), (2, 2), dead=[False, False, True])
    assert images.shape == (3, 2, 2)
    np.testing.assert_allclose(images[0], 1.0) and np.testing.assert_allclose(images[1], 4.5)
    assert np.isnan(images[2]).all()
    figure = views.image_grid_figure(images, ["0", "1", "2 · dead"], columns=3, chosen=2)
    assert all(np.isfinite(np.asarray(t.z, dtype=float)).all() for t in figure.data)  # plotly.js gets no NaN-only map
    assert figure.data[2].opacity == 0.0


def test_kernel_images_of_dense_and_convolution_kernels():
    dense = np.random.default_rng(3).standard_normal((64, 100)).astype(np.float32)
    images = views.kernel_images(dense, (8, 8))
    assert images.shape == (views.MAX_GRID_UNITS, 8, 8)
    np.testing.assert_array_equal(images[5], dense[:, 5].reshape(8, 8))
    conv = np.random.default_rng(4).standard_normal((3, 3, 2, 16)).astype(np.float32)
    np.testing.assert_allclose(views.kernel_images(conv, (28, 28, 2))[7], conv[:, :, :, 7].mean(axis=2))
    assert views.kernel_images(np.zeros((10, 4)), (8, 8)) is None  # not one image per unit
    figure = views.image_grid_figure(images[:4], list("abcd"), columns=4, scale=views.UNIT_SCALE, symmetric=True)
    assert figure.layout.coloraxis.cmin == -1 and max(
        np.abs(np.asarray(t.z)).max() for t in figure.data
    ) == pytest.approx(1.0)


def test_tabular_units_as_feature_z_scores_and_a_table():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 3))
    figure = views.unit_feature_figure(x, [0, 1], [2], ["alpha", "beta"])
    (heatmap,) = traces(figure, "heatmap")
    assert list(heatmap.x) == ["alpha", "beta", "x3"] and list(heatmap.y) == [
        "top 1 · row 0",
        "top 2 · row 1",
        "low 1 · row 2",
    ]
    np.testing.assert_allclose(heatmap.z[0], np.clip((x[0] - x.mean(0)) / x.std(0), -3, 3))
    table = views.unit_examples_table(
        x, np.array([0, 1] * 25), np.eye(2)[np.zeros(50, int)], [0, 1], [2], ["no", "yes"], ["alpha"]
    )
    assert [row["rank"] for row in table] == ["top 1", "top 2", "low 1"]
    assert table[1] == {
        "rank": "top 2",
        "row": 1,
        "label": "yes",
        "prediction": "no",
        "alpha": round(float(x[1, 0]), 4),
        "x2": round(float(x[1, 1]), 4),
        "x3": round(float(x[1, 2]), 4),
    }


def test_figures_serialise():
    """Every figure must survive plotly's JSON encoding, which is what st.plotly_chart sends."""
    figure = views.probe_heatmap(EPOCHS, LAYERS, probe_table(), 0.55)
    assert isinstance(figure, go.Figure) and figure.to_json()
