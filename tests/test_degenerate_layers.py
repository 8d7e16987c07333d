"""A degenerate layer costs only its own statistics, never the snapshot: constant, nearly constant, NaN and huge
outputs through the real analysis, and a real model with a constant layer and a regression model recorded and
opened on every page."""

import json
import subprocess
import sys

import numpy as np
import pytest
from apptest_pages import open_app
from captures import outputs_capture
from conftest import REPO

from core.capture.snapshot import SnapshotBuilder
from core.store import RunStore

SAMPLES = 64


def outputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    nearly = np.full((SAMPLES, 8), 3.0, np.float32)
    nearly[::7, 0] = np.nextafter(np.float32(3.0), np.float32(4.0))  # within one ulp: np.histogram refused float32
    with_nan = rng.standard_normal((SAMPLES, 8)).astype(np.float32)
    with_nan[5, 2] = np.nan
    return {
        "healthy": rng.standard_normal((SAMPLES, 8)).astype(np.float32),
        "constant": np.full((SAMPLES, 8), -1.5, np.float32),
        "nearly_constant": nearly,
        "nan": with_nan,
        "huge": (rng.standard_normal((SAMPLES, 8)) * 1e30).astype(np.float32),
    }


def test_every_degenerate_layer_is_written_with_what_could_be_computed_and_why_not_the_rest():
    layers = outputs()
    builder = SnapshotBuilder(activations=["relu"] * len(layers), labels=np.arange(SAMPLES) % 2, components=3)
    raw = outputs_capture(list(layers.values()), loss=0.69)
    meta, arrays = builder.build(raw)
    records = dict(zip(layers, meta["layers"]))
    healthy = records["healthy"]
    assert "pca" in healthy and "activation" in healthy and "skipped" not in healthy
    for name in ("constant", "nearly_constant"):
        assert "activation" in records[name], name  # the histogram of a (nearly) constant layer is drawn
        assert "pca" in records[name] or "projection" in records[name].get("skipped", {}), name
    index = list(layers).index("nearly_constant")
    assert arrays[f"L{index}/act_hist_counts"].sum() == SAMPLES * 8
    nan = records["nan"]
    assert "pca" not in nan and "activation" in nan
    assert nan["skipped"]["projection"] == "the output holds NaN or Inf on 1 of 64 probe samples"
    assert "unit_rankings" not in nan["skipped"]  # not attempted on non-finite outputs: no reason to give
    huge = records["huge"]
    assert "activation" in huge
    assert "pca" in huge or huge["skipped"]["projection"]
    for name, record in records.items():  # whatever was skipped says why, in words
        for piece, reason in record.get("skipped", {}).items():
            assert isinstance(reason, str) and len(reason) > 10, (name, piece, reason)


RECORD = """
import sys
import keras, numpy as np
from core import Recorder

root = sys.argv[1]
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(240, 6)).astype("float32")
y = (x[:, 0] + x[:, 1] > 0).astype("int64")

inputs = keras.Input((6,))
hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
# Outputs 1.0 give or take an ulp whatever the input, and never trains: a nearly constant layer.
flat = keras.layers.Dense(4, kernel_initializer=keras.initializers.Constant(3e-8), bias_initializer="ones",
                          trainable=False, name="flat")(hidden)
merged = keras.layers.Concatenate(name="merged")([hidden, flat])
outputs = keras.layers.Dense(2, activation="softmax", name="output")(merged)
model = keras.Model(inputs, outputs)
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
recorder = Recorder(root, probe=(x, y), run_id="constant", budget=None)
model.fit(x, y, epochs=2, batch_size=32, callbacks=[recorder], verbose=0)
recorder.wait()

target = (2.0 * x[:, 0] - x[:, 1] + 0.1 * rng.normal(size=240)).astype("float32")
model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(12, activation="tanh", name="hidden"),
                          keras.layers.Dense(1, name="value")])
model.compile("adam", "mse")
recorder = Recorder(root, probe=(x, target), run_id="regression", budget=None)
model.fit(x, target, epochs=2, batch_size=32, callbacks=[recorder], verbose=0)
recorder.wait()
print("ok")
"""


@pytest.fixture(scope="module")
def real_runs(recorded):
    return str(recorded(RECORD))


def test_a_constant_layer_loses_no_snapshot(real_runs):
    run = RunStore(real_runs).run("constant")
    assert run.status == "finished" and run.epochs() == [0, 1, 2]
    flat = [layer["name"] for layer in run.layers].index("flat")
    for snapshot in run.epoch_snapshots():
        assert "activation" in snapshot.layer(flat)
        assert snapshot.array(f"L{flat}/act_hist_counts").sum() > 0
    summary = json.loads(
        subprocess.run(
            [sys.executable, "-m", "core", "show", "constant", "--runs", real_runs, "--json"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    )
    assert isinstance(summary["skipped"], list)  # every skipped piece, by epoch and layer (here: none needed)


@pytest.mark.parametrize("page", ["embeddings", "gradients", "layers"])
def test_every_page_opens_on_the_constant_layer_run(real_runs, page):
    at = open_app(real_runs, page, run="constant", layer="flat")
    assert not at.exception
    assert at.get("plotly_chart"), page


def test_the_gradients_page_shows_a_regression_runs_gradients(real_runs):
    """Regression targets are not class labels, but the recorder takes gradients against them all the same."""
    run = RunStore(real_runs).run("regression")
    assert run.meta["probe"]["has_labels"] is False
    assert "grad" in run.epoch_snapshots()[-1].layer(0)
    at = open_app(real_runs, "gradients", run="regression")
    assert not at.exception
    assert not any("no gradients" in info.value for info in at.info)
    assert any(c.value.startswith("‖∇ kernel‖ of each layer") for c in at.caption)


@pytest.mark.parametrize("page", ["embeddings", "layers"])
def test_the_other_pages_open_on_the_regression_run(real_runs, page):
    at = open_app(real_runs, page, run="regression")
    assert not at.exception and at.get("plotly_chart")


# ---------------------------------------------------------------------------------------------------
# Wide feature maps: analysed on their outputs averaged over regions, and saying so


def test_a_wide_feature_map_is_averaged_over_regions_before_its_pca():
    from core.capture.snapshot import MAX_FEATURES, analysis_features

    rng = np.random.default_rng(0)
    wide = rng.random((6, 48, 48, 32)).astype(np.float32)  # 73,728 values a sample
    features, grid = analysis_features(wide)
    assert grid == [6, 6] and features.shape == (6, 6 * 6 * 32) and features.shape[1] <= MAX_FEATURES
    np.testing.assert_allclose(features, wide.reshape(6, 6, 8, 6, 8, 32).mean(axis=(2, 4)).reshape(6, -1), rtol=1e-5)
    uneven = rng.random((2, 5, 3, 700)).astype(np.float32)  # 5 positions into 2 regions: rows 0-1 (2 of them) and 2-4
    features, grid = analysis_features(uneven)
    assert grid == [2, 1]
    expected = np.stack([uneven[:, :2].mean(axis=(1, 2)), uneven[:, 2:].mean(axis=(1, 2))], axis=1).reshape(2, -1)
    np.testing.assert_allclose(features, expected, rtol=1e-5)
    narrow = rng.random((4, 8, 8, 16)).astype(np.float32)
    features, grid = analysis_features(narrow)
    assert grid is None and features.shape == (4, 1024)


def test_the_pca_of_a_pooled_layer_states_its_grid_and_true_shares_of_the_pooled_output():
    from core.analysis.measures import pca
    from core.capture.snapshot import analysis_features

    rng = np.random.default_rng(1)
    wide = (rng.standard_normal((80, 24, 24, 16)) * np.linspace(0.1, 3, 16)).astype(np.float32)
    builder = SnapshotBuilder(activations=["linear"], labels=None, components=4)
    raw = outputs_capture([wide])
    meta, arrays = builder.build(raw)
    record = meta["layers"][0]["pca"]
    assert record["pooled"] == [12, 12]
    exact = pca(analysis_features(wide)[0], k=4, method="gram")
    np.testing.assert_allclose(record["explained_variance_ratio"], exact.explained_variance_ratio, rtol=1e-3)
    assert arrays["L0/pca"].shape == (80, 4)
    edges = arrays["L0/act_hist_edges"]  # activation statistics are of the output itself, not of its averages
    assert edges[0] <= wide.min() and edges[-1] >= wide.max()
