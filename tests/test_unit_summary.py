"""core/analysis/summary.py on its own: `run_summary` of runs written with numpy only (dashboard/synthetic.py,
RunWriter)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.analysis.summary import run_summary
from core.store import RunStore, RunWriter
from dashboard.synthetic import synthetic_run

LAYERS, SNAPSHOTS, POINTS, CLASSES, COMPONENTS = 3, 4, 90, 3, 8  # synthetic_run needs components >= 8


def _separation(index: int, epoch: int) -> float:
    """What synthetic_run writes as layer `index`'s separation at `epoch` (its linear probe is 0.1 + 0.9 x this)."""
    progress = epoch / (SNAPSHOTS - 1)
    return (0.2 + 0.8 * (index + 1) / LAYERS) * (0.1 + 0.9 * progress)


def _ratios(top: float) -> list[float]:
    ratios = top * (1 - top) ** np.arange(COMPONENTS)
    return (ratios / max(1.0, ratios.sum())).tolist()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("summary"))
    synthetic_run(
        root, "syn", layers=LAYERS, snapshots=SNAPSHOTS, points=POINTS, classes=CLASSES, components=COMPONENTS, width=8
    )
    return RunStore(root).run("syn")


def test_the_summary_holds_the_run_as_written(synthetic):
    summary = run_summary(synthetic)
    assert summary["id"] == "syn" and summary["status"] == "finished"
    assert summary["name"] == f"synthetic {LAYERS}x{SNAPSHOTS}x{POINTS}"
    assert [layer["name"] for layer in summary["layers"]] == ["dense_0", "dense_1", "output"]
    assert summary["layers"][0] == {
        "name": "dense_0",
        "type": "Dense",
        "output_shape": [None, 8],
        "params": 64,
        "activation": "relu",
    }
    assert summary["epochs"] == [0, 1, 2, 3]
    assert summary["epochs_done"] == 3 and summary["epochs_planned"] == 3
    assert summary["nan_epoch"] is None and summary["error"] is None
    assert summary["dataset"]["class_names"] == ["class 0", "class 1", "class 2"]
    assert summary["config"]["hidden"] == [8, 8]
    assert summary["unwritten_snapshots"] == 0
    assert summary["lost_snapshots"] == {"epochs": [], "files": {}}
    assert summary["damaged_files"] == {}
    assert summary["skipped"] == []


def test_metrics_are_the_history_in_epoch_order(synthetic):
    metrics = run_summary(synthetic)["metrics"]
    assert metrics["epoch"] == [1, 2, 3]
    assert metrics["loss"] == pytest.approx([2.3 * (1 - e / 3) + 0.1 for e in (1, 2, 3)])
    assert metrics["accuracy"] == pytest.approx([0.1 + 0.85 * e / 3 for e in (1, 2, 3)])
    assert metrics["val_loss"] == pytest.approx([1.1 * v for v in metrics["loss"]])


def test_per_layer_statistics_follow_layers_and_epochs_in_order(synthetic):
    summary = run_summary(synthetic)
    per_layer = summary["per_layer"]
    assert list(per_layer) == ["dense_0", "dense_1", "output"]
    for index, name in enumerate(per_layer):
        series = per_layer[name]
        assert series["linear_probe"] == pytest.approx([0.1 + 0.9 * _separation(index, e) for e in range(SNAPSHOTS)])
        assert series["dead_fraction"] == [0.1] * SNAPSHOTS and series["saturated_fraction"] == [0.0] * SNAPSHOTS
        for epoch, ratios in enumerate(series["explained_variance_ratio"]):
            assert ratios == pytest.approx(_ratios(0.3 + 0.5 * _separation(index, epoch)))
        # synthetic runs hold no gradients or weights: absent values are None, never 0
        assert series["gradient_norm"] == [None] * SNAPSHOTS
        assert series["bias_gradient_norm"] == [None] * SNAPSHOTS
        assert series["output_gradient_norm"] == [None] * SNAPSHOTS
        assert series["update_ratio"] == [None] * SNAPSHOTS
    probe = summary["probe_accuracy"]
    assert probe["epochs"] == [0, 1, 2, 3] and probe["input"] is None
    assert probe["layers"] == {name: per_layer[name]["linear_probe"] for name in per_layer}
    assert summary["cka"] == {"layers": ["dense_0", "dense_1", "output"], "epoch": 3, "matrix": np.eye(3).tolist()}


def test_the_summary_is_strict_json(synthetic):
    summary = run_summary(synthetic)
    text = json.dumps(summary, allow_nan=False)  # raises on NaN, inf or a numpy value
    assert json.loads(text) == summary
    assert isinstance(summary["diagnosis"], list)
    assert all(set(finding) == {"kind", "layer", "epoch", "message"} for finding in summary["diagnosis"])


def _layer(name: str) -> dict:
    return {
        "index": 0,
        "name": name,
        "type": "Dense",
        "output_shape": [None, 3],
        "params": 12,
        "activation": "tanh",
        "weights": ["kernel", "bias"],
    }


def _handmade(root: str) -> None:
    """Two layers, two epochs: gradients, update ratios, permuted PCA columns (an older run), a NaN ratio, a
    skipped piece and a snapshot-level `skipped`."""
    writer = RunWriter(
        root,
        "hand",
        {
            "name": "hand",
            "layers": [_layer("a"), {**_layer("b"), "index": 1}],
            "every": 1,
            "epochs_planned": 1,
            "epochs_done": 0,
            "snapshots": 0,
            "input": {"linear_probe": 0.4},
        },
    )
    writer.write_probe({"indices": np.arange(4), "y": np.array([0, 1, 0, 1])})
    for epoch in (0, 1):
        grad = {"kernel": {"norm": 1.0 + epoch}, "bias": {"norm": 0.5 + epoch}, "output": {"norm": 0.25}}
        first = {
            "pca": {"explained_variance_ratio": [0.2, 0.5, 0.3], "order": [2, 0, 1]},
            "grad": grad,
            "update_ratio": {"kernel": 0.01 * epoch},
            "linear_probe": 0.5 + 0.25 * epoch,
        }
        second = {"pca": {"explained_variance_ratio": [0.6, None]}, "skipped": {"gradients": "ValueError: x"}}
        writer.write_snapshot(
            epoch,
            {
                "kind": "epoch",
                "epoch": epoch,
                "step": 2 * epoch,
                "layers": [first, second],
                "skipped": {"cka": "LinAlgError: y"},
                "cka": [[1.0, 0.5], [0.5, 1.0]],
            },
            {"L0/pca": np.zeros((4, 3), np.float32)},
        )
    writer.write_history({"epoch": [1], "loss": [0.7]})
    writer.update_meta(epochs_done=1, snapshots=2)
    writer.set_status("finished")


def test_gradients_ranked_ratios_and_skipped_pieces(tmp_path):
    _handmade(str(tmp_path))
    summary = run_summary(RunStore(str(tmp_path)).run("hand"))
    a, b = summary["per_layer"]["a"], summary["per_layer"]["b"]
    assert a["gradient_norm"] == [1.0, 2.0] and a["bias_gradient_norm"] == [0.5, 1.5]
    assert a["output_gradient_norm"] == [0.25, 0.25] and a["update_ratio"] == [0.0, 0.01]
    assert a["explained_variance_ratio"] == [[0.5, 0.3, 0.2]] * 2  # put back in rank order by `order`
    assert b["explained_variance_ratio"] == [[0.6, None]] * 2  # an unknown share stays unknown
    assert b["gradient_norm"] == [None, None] and b["linear_probe"] == [None, None]
    assert summary["probe_accuracy"]["input"] == 0.4
    assert summary["probe_accuracy"]["layers"] == {"a": [0.5, 0.75], "b": [None, None]}
    assert summary["skipped"] == [
        {"epoch": 0, "layer": None, "piece": "cka", "reason": "LinAlgError: y"},
        {"epoch": 0, "layer": "b", "piece": "gradients", "reason": "ValueError: x"},
        {"epoch": 1, "layer": None, "piece": "cka", "reason": "LinAlgError: y"},
        {"epoch": 1, "layer": "b", "piece": "gradients", "reason": "ValueError: x"},
    ]
    assert summary["cka"]["matrix"] == [[1.0, 0.5], [0.5, 1.0]] and summary["cka"]["epoch"] == 1


def test_a_run_without_snapshots(tmp_path):
    RunWriter(str(tmp_path), "empty", {"name": "empty", "layers": [_layer("a")], "epochs_planned": 5})
    run = RunStore(str(tmp_path)).run("empty")
    summary = run_summary(run)
    assert summary["status"] == "running"  # this process wrote it and is alive
    assert summary["epochs"] == [] and summary["per_layer"]["a"]["linear_probe"] == []
    assert summary["cka"] == {"layers": ["a"], "epoch": None, "matrix": None}
    assert summary["metrics"] == {"epoch": []} and summary["diagnosis"] == []
