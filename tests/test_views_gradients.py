"""The Gradients & activations view functions: plain pytest on hand-written and real runs (no Streamlit)."""

import subprocess
import sys

import numpy as np
import pytest
from gradient_fixtures import gradient_runs  # noqa: F401  (a fixture)

from core.analysis.diagnosis import Finding
from core.analysis.measures import LOG_HIST_EDGES
from core.store import RunStore, RunWriter
from dashboard.views import gradients as views

LAYERS = ["dense_0", "dense_1", "output"]


def write_run(root, run_id="toy", snapshots=4, name=None):
    """3 layers (2 hidden with 4 units + output); layer i's kernel gradient norm at epoch e is 10^-(2 - i) / (e + 1)."""
    layers = [
        {"index": i, "name": n, "type": "Dense", "activation": "relu", "weights": ["kernel", "bias"]}
        for i, n in enumerate(LAYERS)
    ]
    writer = RunWriter(root, run_id, {"name": name or run_id, "layers": layers, "steps_per_epoch": 5})
    for epoch in range(snapshots):
        records, arrays = [], {}
        for i in range(3):
            records.append(
                {
                    "grad": {
                        "kernel": {"norm": 10.0 ** -(2 - i) / (epoch + 1)},
                        "bias": {"norm": 0.5},
                        "output": {"norm": 0.1},
                    },
                    "update_ratio": {"kernel": 2e-3} if epoch else {},
                    "activation": {
                        "percentiles": [0, 0.1, 0.5, 0.9, 1 + epoch],
                        "dead_fraction": 0.25 * (i == 0),
                        "saturated_fraction": 0.0,
                    },
                }
            )
            arrays[f"L{i}/act_hist_edges"] = np.linspace(0, 1 + epoch, 5)  # each snapshot its own range
            arrays[f"L{i}/act_hist_counts"] = np.array([10, 0, 0, 10])
            arrays[f"L{i}/grad_kernel_log_hist"] = np.eye(len(LOG_HIST_EDGES) - 1, dtype=np.int64)[20 + epoch] * 7
            arrays[f"L{i}/dead_units"] = np.array([True, False, False, False]) if i == 0 else np.zeros(4, bool)
            arrays[f"L{i}/saturated_units"] = np.array([False, False, False, True]) if i == 1 else np.zeros(4, bool)
        writer.write_snapshot(epoch, {"kind": "epoch", "epoch": epoch, "step": 5 * epoch, "layers": records}, arrays)
    return RunStore(root).run(run_id)


@pytest.fixture
def run(tmp_path):
    return write_run(str(tmp_path))


def test_view_module_imports_neither_streamlit_nor_tensorflow():
    code = (
        "import sys, dashboard.views.gradients; "
        "print(sorted(m for m in ('streamlit', 'tensorflow', 'keras') if m in sys.modules))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_layer_series_reads_every_statistic(run):
    series = views.layer_series(run)
    assert series.layers == tuple(LAYERS) and list(series.epochs) == [0, 1, 2, 3]
    assert series.kernel_grad.shape == (4, 3) and np.isclose(series.kernel_grad[1, 0], 0.005)
    assert np.allclose(series.gradient("bias"), 0.5)
    assert np.isnan(series.update_ratio[0]).all() and np.allclose(series.update_ratio[1:], 2e-3)
    assert series.percentiles.shape == (4, 3, 5) and series.percentiles[3, 0, 4] == 4
    assert series.dead[0, 0] == 0.25


def test_long_runs_are_downsampled_keeping_the_chosen_epoch(tmp_path):
    run = write_run(str(tmp_path), snapshots=12)
    series = views.layer_series(run, epoch=5, cap=4)
    assert len(series.epochs) <= 5 and {0, 5, 11} <= set(series.epochs.tolist())
    assert list(views.spaced(3, 10)) == [0, 1, 2] and len(views.spaced(1000, 50)) == 50


def test_rebin_keeps_the_total_and_spreads_evenly():
    edges, counts = np.array([0.0, 1.0, 2.0]), np.array([4.0, 8.0])
    assert np.allclose(views.rebin(edges, counts, edges), counts)
    assert np.allclose(views.rebin(edges, counts, np.linspace(0, 2, 5)), [2, 2, 4, 4])
    wide = views.rebin(edges, counts, np.linspace(-1, 3, 5))  # the grid is wider than the data
    assert np.allclose(wide, [0, 4, 8, 0])
    narrow = views.rebin(edges, counts, np.array([0.5, 1.5]))  # narrower: the tails land in the end bins
    assert narrow.sum() == counts.sum()


def test_histogram_weight_is_the_layers_weight_in_that_role_or_none():
    dense, norm = {"weights": ["kernel", "bias"]}, {"weights": ["gamma", "beta"]}
    assert views.histogram_weight(dense, "kernel") == "kernel" and views.histogram_weight(dense, "bias") == "bias"
    assert views.histogram_weight({"weights": ["embeddings"]}, "kernel") == "embeddings"
    assert views.histogram_weight(norm, "kernel") is None and views.histogram_weight({"weights": []}, "bias") is None
    assert views.histogram_weight({"name": "old run"}, "kernel") == "kernel"  # no weight list recorded: try it


def test_activation_histograms_share_one_grid_and_gradient_ones_use_the_fixed_edges(run):
    snapshots = views.bounded_snapshots(run)
    activations = views.activation_histograms(snapshots, 0, bins=8)
    assert activations.edges[0] == 0 and activations.edges[-1] == 4  # spans every snapshot's own range
    assert np.allclose(np.nansum(activations.density, axis=1), 1)
    gradients = views.gradient_histograms(run, snapshots, 0)
    assert np.array_equal(gradients.edges, LOG_HIST_EDGES) and gradients.log_values
    assert [int(np.argmax(row)) for row in gradients.density] == [20, 21, 22, 23]
    figure = views.histogram_heatmap_figure(gradients, "grad", epoch=2)
    assert figure.data[0].z.shape[1] == 4 and figure.layout.shapes[0].x0 == 2  # bins x epochs, with the epoch marker


def test_gradient_flow_lines_overlay_runs_by_line_style(tmp_path):
    first, second = write_run(str(tmp_path), "a", name="deep sigmoid"), write_run(str(tmp_path), "b", name="relu he")
    runs = [views.layer_series(first), views.layer_series(second)]
    figure = views.gradient_flow_figure(runs, "kernel", epoch=1)
    lines = [t for t in figure.data if t.x[0] is not None]
    assert len(lines) == 6 and {t.line.dash for t in lines} == {"solid", "dash"}
    assert [t.name for t in figure.data if t.showlegend is not False] == LAYERS + ["deep sigmoid", "relu he"]
    assert figure.layout.yaxis.type == "log"


def test_heatmap_is_log10_layer_by_epoch(run):
    figure = views.gradient_heatmap_figure(views.layer_series(run))
    z = np.asarray(figure.data[0].z)
    assert z.shape == (3, 4) and np.isclose(z[0, 0], -2) and np.isclose(z[2, 0], 0)
    assert list(figure.data[0].y) == LAYERS


def test_heatmap_leaves_out_layers_without_the_weight_but_keeps_a_zero_gradient(run):
    import dataclasses

    series = views.layer_series(run)
    kernel = series.kernel_grad.copy()
    kernel[:, 1] = np.nan  # like an activation or normalisation layer: no kernel at all
    kernel[:, 2] = 0.0  # a kernel whose gradient is exactly zero: a finding, not a gap
    figure = views.gradient_heatmap_figure(dataclasses.replace(series, kernel_grad=kernel))
    assert list(figure.data[0].y) == [LAYERS[0], LAYERS[2]] and np.asarray(figure.data[0].z).shape == (2, 4)


def test_update_ratio_chart_shades_the_band_around_1e_3(run):
    figure = views.update_ratio_figure([views.layer_series(run)])
    band = figure.layout.shapes[0]
    assert (band.y0, band.y1) == views.HEALTHY_BAND and np.isclose(np.sqrt(band.y0 * band.y1), 1e-3)


def test_error_signal_leaves_out_the_output_layer(run):
    figure = views.error_signal_figure([views.layer_series(run)])
    assert [t.name for t in figure.data] == ["dense_0", "dense_1"]


def test_percentile_bands_have_one_panel_per_hidden_layer(run):
    figure = views.percentile_figure([views.layer_series(run)])
    assert [a.text for a in figure.layout.annotations] == ["dense_0", "dense_1"]
    assert len(figure.data) == 2 * 5  # per hidden layer: band edges (2), 2% and 98%, median


def test_unit_states_mark_dead_and_saturated_units(run):
    snapshot = run.epoch_snapshots()[-1]
    states = views.unit_states(snapshot, views.hidden_layers(run))
    assert states.tolist() == [[1, 0, 0, 0], [0, 0, 0, 2]]
    figure = views.unit_strip_figure(states, LAYERS[:2], 3)
    assert list(figure.data[0].y) == ["dense_0", "dense_1"]


def test_batch_norms_are_none_without_grad_every_and_read_as_epochs(run, tmp_path):
    assert views.batch_norms(run) is None
    writer = RunWriter(
        str(tmp_path), "batches", {"layers": [{"name": n} for n in LAYERS], "steps_per_epoch": 10, "grad_every": 5}
    )
    writer.write_batch_gradients(1, np.array([5, 10]), np.ones((2, 3)))
    writer.write_batch_gradients(2, np.array([15, 20]), np.full((2, 3), 0.5))
    norms = views.batch_norms(RunStore(str(tmp_path)).run("batches"))
    assert norms.epochs.tolist() == [0.5, 1.0, 1.5, 2.0] and norms.norms.shape == (4, 3)
    assert len(views.batch_norm_figure([norms]).data) == 3


def test_callout_text_bolds_the_kind():
    finding = Finding(
        "dead_units",
        "dense_0",
        3,
        "Dead units: from epoch 3, 90% of `dense_0`... Try: x.",
        {"fraction": 0.9},
        "Try: x.",
    )
    assert views.finding_markdown(finding).startswith("**Dead units.** From epoch 3")
    assert views.findings_summary("run a", [finding]) == "`run a`: 1 finding(s): dead units."
    assert views.findings_summary("run b", []) == "`run b`: no problems found."


def test_real_runs_draw_without_gaps(gradient_runs):  # noqa: F811
    store = RunStore(gradient_runs)
    vanishing, relu = (views.layer_series(store.run(name)) for name in ("vanishing", "relu_he"))
    figure = views.gradient_flow_figure([vanishing, relu])
    assert all(np.isfinite(np.asarray(t.y, dtype=float)).all() for t in figure.data if t.x[0] is not None)
    assert views.batch_norms(store.run("relu_he")).norms.shape[1] == len(store.run("relu_he").layers)
    states = views.unit_states(store.run("dead").epoch_snapshots()[-1], [0, 1, 2])
    assert (states[0] == 1).mean() > 0.5  # most of dense_0 is dead
