"""The Gradients & activations page through Streamlit's AppTest, on real healthy and pathological runs."""

import pytest
from apptest_pages import open_app, shown
from gradient_fixtures import gradient_runs  # noqa: F401  (a fixture)

from dashboard.views.layers import UNLABELLED_CAPTIONS


@pytest.fixture
def open_page(gradient_runs, monkeypatch):  # noqa: F811
    """open_page(**params) -> AppTest of /gradients with `params` in the link."""
    monkeypatch.setenv("STRATA_RUNS", gradient_runs)
    return lambda **params: open_app(gradient_runs, "gradients", **params)


def charts(at) -> list:
    return at.get("plotly_chart")


def test_a_vanishing_run_gets_a_callout_and_every_chart(open_page):
    at = open_page(run="vanishing")
    assert not at.exception
    assert at.title[0].value == "Gradients & activations"
    [callout] = at.warning
    assert callout.value.startswith("**Vanishing gradients.**") and "`dense_0`" in shown(callout.value)
    assert len(charts(at)) == 9  # no per-batch norms in this run
    assert any("--grad-every" in c.value for c in at.caption)
    assert len(at.caption) >= 9  # every chart says how to read it


def test_a_healthy_run_says_so_and_shows_per_batch_norms(open_page):
    at = open_page(run="relu_he")
    assert not at.exception and not at.warning and not at.error
    assert "No problems found" in at.success[0].value
    assert len(charts(at)) == 10
    assert any("every 5 batches" in c.value for c in at.caption)


def test_divergence_is_an_error_callout(open_page):
    at = open_page(run="exploding")
    assert not at.exception
    assert at.error[0].value.startswith("**Exploding gradients.**")


def test_the_weights_toggle_opens_from_the_link_and_switches(open_page):
    at = open_page(run="vanishing", grad_role="bias")  # the browser test checks that the toggle writes the link
    assert not at.exception and at.segmented_control(key="grad_role").value == "bias"
    assert any(c.value.startswith("‖∇ bias‖ of each layer") for c in at.caption)
    at.segmented_control(key="grad_role").set_value("kernel").run()
    assert not at.exception and any(c.value.startswith("‖∇ kernel‖ of each layer") for c in at.caption)


def test_comparing_runs_overlays_them(open_page):
    at = open_page(run="vanishing", compare="relu_he", layer="dense_2", epoch="1")
    assert not at.exception
    assert at.multiselect(key="compare").value == ["relu_he"]
    assert any(shown(c.value).startswith("Compared run relu_he: no problems found") for c in at.caption)
    assert len(charts(at)) == 10  # the compared run brings its per-batch norms
    assert "Histograms over time: dense_2" in [s.value for s in at.subheader]
    assert any("at epoch 1" in c.value for c in at.caption)


def test_the_share_link_keeps_the_weights_toggle(open_page):
    from urllib.parse import parse_qs, urlparse

    at = open_page(run="vanishing", grad_role="bias")
    at.session_state["share_open"] = True  # open the sidebar's Share expander
    query = parse_qs(urlparse(at.run().sidebar.code[0].value).query)
    assert query["grad_role"] == ["bias"] and query["run"] == ["vanishing"]


# Two small fits, each into a store of its own (argv[1]/unlabelled, argv[1]/normalised), recorded in one subprocess:
# one TensorFlow import for both.
_RECORD = """
import os, sys, numpy as np, keras
from core import Recorder
rng = np.random.default_rng(0)
x = rng.normal(size=(128, 4)).astype("float32"); y = (x[:, 0] > 0).astype("int64")

keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                          keras.layers.Dense(2, activation="softmax")])
model.compile("adam", "sparse_categorical_crossentropy")
unlabelled = Recorder(os.path.join(sys.argv[1], "unlabelled"), probe=(x, None), name="unlabelled")
model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[unlabelled])

keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="dense"),
                          keras.layers.BatchNormalization(name="norm"), keras.layers.Activation("relu", name="relu"),
                          keras.layers.Dense(2, activation="softmax", name="out")])
model.compile("adam", "sparse_categorical_crossentropy")
normalised = Recorder(os.path.join(sys.argv[1], "normalised"), probe=(x, y), name="normalised")
model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[normalised])
assert unlabelled.wait(120) and normalised.wait(120)
"""


def test_a_run_without_labels_claims_nothing_about_its_gradients(recorded):
    root = recorded(_RECORD) / "unlabelled"
    [run_id] = [p.name for p in root.iterdir() if p.is_dir()]
    at = open_app(root, "gradients", run=run_id)
    assert not at.exception
    assert any("recorded without targets" in i.value for i in at.info)
    headings = [h.value for h in at.subheader]
    assert "Gradient flow" not in headings and "Error signal per layer" not in headings  # nothing measured to draw
    assert "Update-to-weight ratio" in headings and "Activation percentiles per layer" in headings
    [verdict] = at.success
    assert "gradients reach every layer" not in verdict.value and "Gradients were not measured" in verdict.value
    assert not at.warning  # the link asked for no colouring, so the switch to predictions is no link notice
    status = next(c.value for c in at.sidebar.caption if "unlabelled" in c.value)
    assert status.endswith("finished · epoch 2/2")  # no "?" for the data set a user's own fit did not name

    layers = open_app(root, "layers", run=run_id)  # no empty probe or silhouette charts either
    assert not layers.exception
    headers = [h.value for h in layers.header]
    assert "Linear probe accuracy" not in headers and "Dimensionality" in headers
    assert any("without class labels" in i.value for i in layers.info)
    captions = [c.value for c in layers.caption]
    assert UNLABELLED_CAPTIONS["depth"] in captions and not any("silhouette" in c for c in captions)

    embeddings = open_app(root, "embeddings", run=run_id)  # and no promise of classes coming apart
    assert not embeddings.exception
    strip = next(c.value for c in embeddings.caption if c.value.startswith("Read left to right"))
    assert "classes" not in strip and "prediction" in strip


@pytest.mark.parametrize("layer, drawn", [("norm", False), ("relu", False), ("dense", True)])
def test_a_layer_without_the_weight_gets_a_note_instead_of_an_empty_gradient_histogram(recorded, layer, drawn):
    root = recorded(_RECORD) / "normalised"
    [run_id] = [p.name for p in root.iterdir() if p.is_dir()]
    at = open_app(root, "gradients", run=run_id, layer=layer)
    assert not at.exception
    assert ("grad_hist" in [c.key for c in charts(at)]) is drawn
    assert any(i.value.startswith(layer) and "has no kernel weights" in i.value for i in at.info) is not drawn
    heatmap = next(c for c in charts(at) if c.key == "grad_heatmap")
    assert '"norm"' not in heatmap.proto.spec and '"dense"' in heatmap.proto.spec  # no blank rows either
