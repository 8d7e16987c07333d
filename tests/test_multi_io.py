"""core.Recorder on real functional models with several inputs or outputs: probes given as `fit` takes them, the
stored targets and per-output predictions read back with RunStore against known truth."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from multi_io_models import data as _data  # noqa: E402
from multi_io_models import two_in_two_out as _two_in_two_out  # noqa: E402

from core import Recorder  # noqa: E402
from core.store import RunStore  # noqa: E402


def _record(tmp_path, model, probe, fit_x, fit_y, **options):
    recorder = Recorder(str(tmp_path), probe=probe, budget=None, analysis="thread", **options)
    model.fit(fit_x, fit_y, epochs=2, batch_size=16, callbacks=[recorder], verbose=0)
    recorder.wait()
    return recorder, RunStore(str(tmp_path)).run(recorder.run_id)


def test_a_list_probe_of_two_inputs_and_two_outputs_stores_each_outputs_truth_and_predictions(tmp_path):
    left, right, classes, value = _data()
    model = _two_in_two_out()
    recorder, run = _record(tmp_path, model, ([left, right], [classes, value]), [left, right], [classes, value])

    assert run.status == "finished"
    rows = recorder.probe_indices
    probe = run.probe()
    assert [(o.name, o.kind) for o in run.info.outputs] == [("cls", "classes"), ("reg", "values")]
    assert run.info.probe.primary_output == 0 and run.info.probe.has_labels
    np.testing.assert_array_equal(probe.y, classes[rows])
    np.testing.assert_array_equal(probe.targets[0], classes[rows])
    np.testing.assert_allclose(probe.targets[1], value[rows, 0])
    np.testing.assert_allclose(probe.x, left[rows])  # of several inputs, the first is stored

    last = run.epoch_snapshots()[-1]
    predicted_cls, predicted_reg = model.predict([left[rows], right[rows]], verbose=0)
    np.testing.assert_allclose(last.predictions(0), predicted_cls, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last.predictions(1), predicted_reg, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last.predictions(), predicted_cls, rtol=1e-5, atol=1e-6)  # pred/probs: the primary
    accuracy = np.mean(predicted_cls.argmax(axis=1) == classes[rows])
    assert last.meta["probe_model_accuracy"] == pytest.approx(accuracy)
    hidden = run.info.layer("hidden").index
    record = last.layer(hidden)
    assert "linear_probe" in record and record["grad"]["kernel"]["norm"] > 0
    for head in ("cls", "reg"):  # the loss's error signal reaches each output layer
        assert last.layer(run.info.layer(head).index)["grad"]["output"]["norm"] > 0


def test_reducing_on_the_device_stores_what_the_host_stores_for_two_inputs_and_two_outputs(tmp_path):
    left, right, classes, value = _data()
    probe = ([left, right], [classes, value])
    runs = {}
    for reduce in ("host", "device"):
        model = _two_in_two_out()
        runs[reduce] = _record(tmp_path / reduce, model, probe, [left, right], [classes, value], reduce=reduce)[1]
    host, device = (runs[r].epoch_snapshots()[-1] for r in ("host", "device"))
    assert sorted(device.keys()) == sorted(host.keys())
    for head in (0, 1):  # each output's predictions, read by its own head
        np.testing.assert_allclose(device.predictions(head), host.predictions(head), rtol=1e-4, atol=1e-5)
    assert device.meta["probe_model_accuracy"] == pytest.approx(host.meta["probe_model_accuracy"])
    hidden = runs["device"].info.layer("hidden").index
    assert device.layer(hidden)["pca"]["explained_variance_ratio"] == pytest.approx(
        host.layer(hidden)["pca"]["explained_variance_ratio"], abs=1e-4
    )
    assert device.layer(hidden)["grad"]["kernel"]["norm"] == pytest.approx(
        host.layer(hidden)["grad"]["kernel"]["norm"], rel=1e-4
    )


def test_a_dict_probe_keyed_by_name_in_any_order_with_dict_targets(tmp_path):
    """Inputs and targets by name, in another order than the model's; the regression head comes first, so the
    primary output (the first of classes) is the second."""
    left, right, classes, value = _data()
    model = _two_in_two_out(regression_first=True)
    probe = ({"right": right, "left": left}, {"cls": classes, "reg": value})
    recorder, run = _record(
        tmp_path, model, probe, {"left": left, "right": right}, {"cls": classes, "reg": value}, grad_every=2
    )

    rows = recorder.probe_indices
    steps, norms = run.batch_gradient_norms()  # the per-batch gradient pass takes both inputs and targets too
    assert (
        len(steps) == 6 and norms.shape == (6, len(run.layers)) and np.all(norms[:, run.info.layer("hidden").index] > 0)
    )
    assert [(o.name, o.kind) for o in run.info.outputs] == [("reg", "values"), ("cls", "classes")]
    assert run.info.probe.primary_output == 1
    probe_read = run.probe()
    np.testing.assert_array_equal(probe_read.y, classes[rows])
    np.testing.assert_allclose(probe_read.targets[0], value[rows, 0])
    np.testing.assert_array_equal(probe_read.targets[1], classes[rows])

    last = run.epoch_snapshots()[-1]
    predicted_reg, predicted_cls = model.predict({"left": left[rows], "right": right[rows]}, verbose=0)
    np.testing.assert_allclose(last.predictions(0), predicted_reg, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last.predictions(1), predicted_cls, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last.predictions(), predicted_cls, rtol=1e-5, atol=1e-6)


def test_subsampling_takes_the_same_rows_from_every_input_and_target(tmp_path):
    left, right, classes, value = _data(n=300)
    model = _two_in_two_out()
    recorder, run = _record(
        tmp_path,
        model,
        ({"left": left, "right": right}, [classes, value]),
        [left, right],
        [classes, value],
        probe_size=40,
    )
    rows = recorder.probe_indices
    assert len(rows) == 40 and run.probe().size == 40
    probe = run.probe()
    np.testing.assert_allclose(probe.x, left[rows])
    np.testing.assert_allclose(probe.targets[1], value[rows, 0])
    np.testing.assert_array_equal(probe.y, classes[rows])
    # Predictions on those rows of both inputs match: the right input was cut with the same rows as the left.
    predicted_cls, predicted_reg = model.predict([left[rows], right[rows]], verbose=0)
    last = run.epoch_snapshots()[-1]
    np.testing.assert_allclose(last.predictions(0), predicted_cls, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last.predictions(1), predicted_reg, rtol=1e-5, atol=1e-5)


def test_gradient_rows_are_taken_from_every_input_in_chunks(tmp_path, monkeypatch):
    """A probe pass cut into chunks (outputs, copied chunk by chunk into the host's arrays, and gradients) records
    what one whole pass records."""
    from core.capture import probe_pass

    left, right, classes, value = _data(n=80)
    probe = ([left, right], [classes, value])
    whole_model = _two_in_two_out()
    _, whole = _record(tmp_path / "whole", whole_model, probe, [left, right], [classes, value])
    monkeypatch.setattr(probe_pass, "CHUNK_BYTES", 1)  # 16-sample chunks
    chunked_model = _two_in_two_out()
    _, chunked = _record(tmp_path / "chunked", chunked_model, probe, [left, right], [classes, value])
    for a, b in zip(whole.epoch_snapshots(), chunked.epoch_snapshots()):
        np.testing.assert_allclose(a.predictions(1), b.predictions(1), rtol=1e-4, atol=1e-5)
        for index in range(len(whole.layers)):
            activation_a, activation_b = a.layer(index)["activation"], b.layer(index)["activation"]
            assert activation_a["mean"] == pytest.approx(activation_b["mean"], rel=1e-4, abs=1e-6)
            assert activation_a["percentiles"] == pytest.approx(activation_b["percentiles"], rel=1e-4, abs=1e-6)
            grad_a, grad_b = a.layer(index).get("grad", {}), b.layer(index).get("grad", {})
            assert grad_a.keys() == grad_b.keys()
            for role in grad_a:
                assert grad_a[role]["norm"] == pytest.approx(grad_b[role]["norm"], rel=1e-3)


def test_multi_label_targets_store_the_number_of_labels(tmp_path):
    left, right, classes, _ = _data()
    tags = np.stack([classes == 0, left[:, 3] > 0, right[:, 2] > 0], axis=1).astype("float32")  # 3 tags a sample
    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    out = keras.layers.Dense(3, activation="sigmoid", name="tags")(hidden)
    model = keras.Model(x, out)
    model.compile("adam", "binary_crossentropy")
    with pytest.warns(UserWarning, match="not class ids"):
        recorder, run = _record(tmp_path, model, (left, tags), left, tags)
    rows = recorder.probe_indices
    assert [(o.name, o.kind) for o in run.info.outputs] == [("tags", "multilabel")]
    np.testing.assert_allclose(run.probe().targets[0], tags[rows].sum(axis=1))
    assert run.probe().y is None


@pytest.mark.parametrize(
    "probe, message",
    [
        ((np.zeros((8, 4), "float32"), np.zeros(8)), r"takes 2 inputs \(left, right\), the probe has one array"),
        (([np.zeros((8, 4), "float32")] * 3, None), r"takes 2 inputs \(left, right\), the probe has a list of 3"),
        (({"left": np.zeros((8, 4)), "other": np.zeros((8, 3))}, None), r"named left, right, the probe has a dict"),
        (([np.zeros((8, 4)), np.zeros((8, 5))], None), r"input `right` of model .* \(3,\), .* \(5,\)"),
        (([np.zeros((8, 4)), np.zeros((8, 3))], np.zeros(8)), r"takes 2 outputs \(cls, reg\), the probe has one array"),
    ],
)
def test_a_probe_that_does_not_fit_the_model_is_refused_at_the_start_of_fit_saying_why(tmp_path, probe, message):
    left, right, classes, value = _data(n=16)
    model = _two_in_two_out()
    recorder = Recorder(str(tmp_path), probe=probe, budget=None, analysis="thread")
    with pytest.raises(ValueError, match=message):
        model.fit([left, right], [classes, value], epochs=1, callbacks=[recorder], verbose=0)


def test_inputs_of_different_lengths_are_refused_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"a list of 2 arrays \(\(8, 4\), \(6, 3\)\) with 8, 6 samples"):
        Recorder(str(tmp_path), probe=[np.zeros((8, 4)), np.zeros((6, 3))])


_ON_JAX = r"""
import sys
import numpy as np

# Nothing here needs TensorFlow on JAX, but keras.utils.set_random_seed imports it (when installed) only to seed it:
# seconds of CPU time. Unimportable, as on a machine with JAX alone.
sys.modules["tensorflow"] = None
import keras
sys.path.insert(0, sys.argv[2])
from multi_io_models import data, two_in_two_out
from core import Recorder

assert keras.backend.backend() == "jax"
left, right, classes, value = data()
model = two_in_two_out()
recorder = Recorder(sys.argv[1], probe=({"left": left, "right": right}, [classes, value]), budget=None, grad_every=2,
                    analysis="thread", run_id="jax")
model.fit([left, right], [classes, value], epochs=2, batch_size=16, callbacks=[recorder], verbose=0)
recorder.wait()
rows = recorder.probe_indices
predicted_cls, predicted_reg = model.predict([left[rows], right[rows]], verbose=0)
np.savez(sys.argv[1] + "/truth.npz", rows=rows, cls=predicted_cls, reg=predicted_reg)

# During an epoch Keras's JAX trainer empties the metric variables, among them each output's loss that
# compute_loss updates. A probe pass traced then (a slow machine) must not read them: trace fresh passes so.
from core.capture.recorder import _capture_function, _gradient_norm_function, _read_state
state = _read_state(model, recorder._variables)
model._purge_model_variables(metrics_variables=True)
probe = _capture_function(model, recorder._layers, recorder._variables, True, False)(*recorder._inputs, state)
norms = _gradient_norm_function(model, recorder._layers, recorder._variables)(*recorder._grad_inputs, state)
np.savez(sys.argv[1] + "/purged.npz", loss=float(probe["loss"]), norms=np.asarray(norms))
"""


def test_several_inputs_and_outputs_record_on_jax(tmp_path):
    """The JAX probe pass (jax.jit over the graph walk) with a dict of inputs and a list of targets."""
    pytest.importorskip("jax")
    import os
    import subprocess
    import sys

    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join([os.path.dirname(tests), tests])}
    done = subprocess.run(
        [sys.executable, "-c", _ON_JAX, str(tmp_path), tests], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    truth = np.load(tmp_path / "truth.npz")
    run = RunStore(str(tmp_path)).run("jax")
    _, _, classes, value = _data()
    assert run.status == "finished" and [o.kind for o in run.info.outputs] == ["classes", "values"]
    np.testing.assert_array_equal(run.probe().y, classes[truth["rows"]])
    np.testing.assert_allclose(run.probe().targets[1], value[truth["rows"], 0])
    last = run.epoch_snapshots()[-1]
    np.testing.assert_allclose(last.predictions(0), truth["cls"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(last.predictions(1), truth["reg"], rtol=1e-4, atol=1e-5)
    assert last.layer(run.info.layer("hidden").index)["grad"]["kernel"]["norm"] > 0
    steps, norms = run.batch_gradient_norms()  # the per-batch gradient pass on JAX, with both inputs and targets
    assert len(steps) == 6 and np.all(norms[:, run.info.layer("hidden").index] > 0), done.stderr[-3000:]
    purged = np.load(tmp_path / "purged.npz")  # passes traced while the trainer had emptied its metric variables
    assert np.isfinite(purged["loss"]) and purged["norms"][run.info.layer("hidden").index] > 0


# ---------------------------------------------------------------------------------------------------
# The dashboard on a run of two inputs and two outputs

_RECORD = r"""
import sys
import numpy as np
import keras
from core import Recorder

root = sys.argv[1]
rng = np.random.default_rng(0)
left = rng.normal(size=(120, 4)).astype("float32")
right = rng.normal(size=(120, 3)).astype("float32")
classes = (left[:, 0] + right[:, 0] > 0).astype("int64")
value = (left[:, 2] - 0.5 * right[:, 1]).astype("float32")
keras.utils.set_random_seed(0)
a, b = keras.Input((4,), name="left"), keras.Input((3,), name="right")
hidden = keras.layers.Dense(8, activation="relu", name="hidden")(keras.layers.Concatenate(name="joined")([a, b]))
model = keras.Model({"left": a, "right": b}, {"cls": keras.layers.Dense(2, activation="softmax", name="cls")(hidden),
                                              "reg": keras.layers.Dense(1, name="reg")(hidden)})
model.compile("adam", {"cls": "sparse_categorical_crossentropy", "reg": "mse"})
recorder = Recorder(root, probe=({"left": left, "right": right}, {"cls": classes, "reg": value}), run_id="two",
                    budget=None)
model.fit({"left": left, "right": right}, {"cls": classes, "reg": value}, epochs=2, callbacks=[recorder], verbose=0)
recorder.wait()
print("ok")
"""


@pytest.fixture(scope="module")
def two_io_run(recorded):
    return str(recorded(_RECORD))


def share_link(at) -> str:
    """The link in the sidebar's Share expander (drawn only while open)."""
    at.session_state["share_open"] = True
    return at.run().sidebar.code[0].value


def _strip_spec(at) -> str:
    return at.get("plotly_chart")[0].proto.spec


def test_the_embeddings_are_coloured_by_the_output_the_link_names(two_io_run):
    from apptest_pages import open_app, shown

    run = RunStore(two_io_run).run("two")
    assert [(o.name, o.kind) for o in run.info.outputs] == [("cls", "classes"), ("reg", "values")]

    at = open_app(two_io_run, "", run="two", out="1")
    assert not at.exception
    assert at.sidebar.selectbox(key="out").value == 1
    assert '"colorscale":"Viridis"' in _strip_spec(at).replace(" ", "")  # the true value, on a continuous scale
    assert any("The output “reg” (regression) colours the points" in shown(c.value) for c in at.caption)

    at = open_app(two_io_run, "", run="two")  # no `out`: the first classification output
    assert not at.exception and at.sidebar.selectbox(key="out").value == 0
    assert '"colorscale":"Viridis"' not in _strip_spec(at).replace(" ", "")  # one flat colour per class

    at.sidebar.selectbox(key="out").set_value(1).run()
    assert not at.exception and at.session_state["_strata_view"].out == 1
    assert "out=1" in share_link(at)
    assert '"colorscale":"Viridis"' in _strip_spec(at).replace(" ", "")


def test_a_link_to_an_output_the_run_lacks_falls_back_with_a_notice(two_io_run):
    from apptest_pages import open_app

    at = open_app(two_io_run, "", run="two", out="7")
    assert not at.exception and at.sidebar.selectbox(key="out").value == 0
    assert any("has no output 7" in w.value for w in list(at.warning) + list(at.info))


@pytest.mark.parametrize("page", ["embeddings", "gradients", "layers"])
def test_every_page_opens_on_a_run_of_two_inputs_and_two_outputs_and_says_which_output(two_io_run, page):
    from apptest_pages import open_app, shown

    at = open_app(two_io_run, "" if page == "embeddings" else page, run="two")
    assert not at.exception and at.get("plotly_chart"), page
    if page == "layers":
        assert any("primary output, “cls” (classes)" in shown(c.value) for c in at.caption)
    if page == "gradients":
        assert any(
            "the diagnosis judges each output of classes by its own accuracy" in shown(c.value) for c in at.caption
        )


def test_a_regression_model_stores_its_true_values_for_the_views(tmp_path):
    """One output, regression targets: not classes, but their values are kept to colour the points by."""
    left, _, _, value = _data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    with pytest.warns(UserWarning, match="not class ids"):
        recorder, run = _record(tmp_path, model, (left, value), left, value)
    rows = recorder.probe_indices
    assert [o.kind for o in run.info.outputs] == ["values"] and run.probe().y is None
    np.testing.assert_allclose(run.probe().targets[0], value[rows, 0])
    last = run.epoch_snapshots()[-1]
    assert last.array("pred/0/probs") is None  # one output: its predictions stay under pred/probs only
    np.testing.assert_allclose(last.predictions(0), model.predict(left[rows], verbose=0), rtol=1e-5, atol=1e-5)


def test_a_journaled_capture_of_a_two_input_two_output_model_is_recovered(tmp_path):
    """`python -m core recover` rebuilds the model and runs the probe pass on the journaled inputs and targets, lists
    of them here, as the Recorder journals them (core/capture/recover.py builds the compiled loss first, as the Recorder
    does)."""
    from core.capture.graph import recorded_layers
    from core.capture.probe_pass import model_variables
    from core.capture.recover import recover
    from core.store import RunWriter
    from core.store.journal import Journal

    left, right, classes, value = _data(n=40)
    model = _two_in_two_out()
    layers = recorded_layers(model)
    variables = model_variables(model)
    root = str(tmp_path)
    RunWriter(root, "two", {"epochs_planned": 1}).update_meta(pid=2**22 + 12345)  # a process that is gone
    journal = Journal(root, "two")
    builder = {
        "activations": [layer.activation for layer in layers],
        "labels": classes,
        "components": 2,
        "seed": 0,
        "kernel_layer": 0,
        "logits": False,
        "heads": [{"logits": False, "sigmoid": False}, {"logits": False, "sigmoid": False}],
        "primary": 0,
    }
    setup = {
        "x": [left, right],
        "y": [classes, value],
        "grid": None,
        "builder": builder,
        "layers": len(layers),
        "variables": [[v.path, list(v.shape)] for v in variables],
        "model": model.to_json(),
        "compile": model.get_compile_config(),
    }
    journal.append("setup", setup)
    capture = {"kind": "epoch", "epoch": 0, "step": 0, "batch": None, "logs": {}}
    journal.append("capture", {**capture, "state": [np.asarray(v) for v in variables]})

    result = recover(root, "two")
    assert result.written == 1
    snapshot = RunStore(root).run("two").snapshots()[0]
    predicted_cls, predicted_reg = model.predict([left, right], verbose=0)
    np.testing.assert_allclose(snapshot.predictions(0), predicted_cls, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(snapshot.predictions(1), predicted_reg, rtol=1e-5, atol=1e-5)
    hidden = [layer.path for layer in layers].index("hidden")
    assert snapshot.layer(hidden)["grad"]["kernel"]["norm"] > 0


def test_the_primary_output_can_be_chosen_and_a_wrong_choice_is_refused_saying_why(tmp_path):
    left, right, classes, value = _data()
    other = (right[:, 2] > 0).astype("int64")  # a second classification target
    keras.utils.set_random_seed(0)
    a, b = keras.Input((4,), name="left"), keras.Input((3,), name="right")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(keras.layers.Concatenate()([a, b]))
    heads = [keras.layers.Dense(3, activation="softmax", name="cls")(hidden)]
    heads += [
        keras.layers.Dense(2, activation="softmax", name="side")(hidden),
        keras.layers.Dense(1, name="reg")(hidden),
    ]
    model = keras.Model([a, b], heads)
    model.compile("adam", ["sparse_categorical_crossentropy", "sparse_categorical_crossentropy", "mse"])
    targets = [classes, other, value]
    recorder, run = _record(tmp_path, model, ([left, right], targets), [left, right], targets, primary_output="side")
    assert run.info.probe.primary_output == 1
    np.testing.assert_array_equal(run.probe().y, other[recorder.probe_indices])
    last = run.epoch_snapshots()[-1]
    np.testing.assert_allclose(last.predictions(), last.predictions(1))
    for choice, message in (("reg", "has no class targets"), ("tail", "is not an output"), (5, "is not an output")):
        recorder = Recorder(str(tmp_path), probe=([left, right], targets), primary_output=choice, budget=None)
        with pytest.raises(ValueError, match=message) as error:
            model.fit([left, right], targets, epochs=1, callbacks=[recorder], verbose=0)
        assert "cls (classes), side (classes), reg (values)" in str(error.value)
    with pytest.raises(ValueError, match=r"Received: primary_output=\[0\]"):
        Recorder(str(tmp_path), probe=left, primary_output=[0])


def test_several_inputs_for_a_model_of_one_input_are_refused_naming_it(tmp_path):
    left, right, classes, _ = _data(n=16)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    recorder = Recorder(str(tmp_path), probe=({"x": left, "extra": right}, classes), budget=None)
    with pytest.raises(ValueError, match=r"takes 1 input named x, the probe has a dict of 2 inputs \(x: .*extra: "):
        model.fit(left, classes, epochs=1, callbacks=[recorder], verbose=0)


def test_the_focus_frames_of_each_output_are_coloured_by_its_own_truth(two_io_run):
    from dashboard import data

    run = RunStore(two_io_run).run("two")
    probe = run.probe()
    labels, values, title = data.output_truth(run, None)  # the primary output: classes
    np.testing.assert_array_equal(labels, probe.targets[0])
    assert values is None
    labels, values, title = data.output_truth(run, 1)
    assert labels is None and title == "true value"
    np.testing.assert_allclose(values, probe.targets[1])
    frames, _ = data.focus_frames(run, 0, "label", None, output=1)
    assert frames and all(not f.color.categorical and f.color.title == "true value" for f in frames)
    np.testing.assert_allclose(frames[-1].color.values, probe.targets[1])
    frames, _ = data.focus_frames(run, 0, "pred", None, output=0)
    last = run.epoch_snapshots()[-1]
    assert frames[-1].color.categorical
    np.testing.assert_array_equal(frames[-1].color.values, last.predictions(0).argmax(axis=1))


def test_core_show_names_each_output_and_the_primary_one(two_io_run):
    import json
    import subprocess
    import sys

    from conftest import REPO

    def show(*extra):
        command = [sys.executable, "-m", "core", "show", "two", "--runs", two_io_run, *extra]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout

    text, outputs = show(), json.loads(show("--json"))["outputs"]
    assert f"    cls (classes, primary): accuracy {outputs[0]['accuracy'][-1]:.3g} (chance " in text
    assert f"    reg (values): squared error {outputs[1]['squared_error'][-1]:.3g}\n" in text
    assert [{key: o[key] for key in ("name", "kind", "primary", "layer")} for o in outputs] == [
        {"name": "cls", "kind": "classes", "primary": True, "layer": "cls"},
        {"name": "reg", "kind": "values", "primary": False, "layer": "reg"},
    ]


# ---------------------------------------------------------------------------------------------------
# A linear probe per output of classes, and a regression target of several columns


def _readable_and_not(n=240, seed=0):
    """Inputs (n, 4); `sign` classes are x0 > 0, read off the inputs by a line; `noise` classes are coin flips that no
    layer can decode from held-out samples; `pos` a regression target of two columns."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    sign = (x[:, 0] > 0).astype("int64")
    noise = rng.integers(0, 2, size=n).astype("int64")
    pos = np.stack([x[:, 1] + x[:, 2], 2.0 * x[:, 3]], axis=1).astype("float32")
    return x, sign, noise, pos


def _three_heads(seed=0):
    keras.utils.set_random_seed(seed)
    x = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    heads = [
        keras.layers.Dense(2, activation="softmax", name="sign")(hidden),
        keras.layers.Dense(2, activation="softmax", name="noise")(hidden),
        keras.layers.Dense(2, name="pos")(hidden),
    ]
    model = keras.Model(x, heads)
    model.compile("adam", ["sparse_categorical_crossentropy", "sparse_categorical_crossentropy", "mse"])
    return model


@pytest.fixture(scope="module")
def three_head_runs(tmp_path_factory):
    """The same three-head model recorded with the numpy analysis on the host and with the device reductions."""
    x, sign, noise, pos = _readable_and_not()
    runs = {}
    for reduce in ("host", "device"):
        model = _three_heads()
        recorder, run = _record(
            tmp_path_factory.mktemp(reduce), model, (x, [sign, noise, pos]), x, [sign, noise, pos], reduce=reduce
        )
        runs[reduce] = (recorder, run, model)
    return runs


@pytest.mark.parametrize("reduce", ["host", "device"])
def test_each_output_of_classes_gets_its_own_linear_probe_readable_or_not(three_head_runs, reduce):
    """`sign` is decodable by a line from the hidden layer and the raw input, the coin-flip `noise` is not: each
    output's probe says so, and the primary output's stays where it was (`linear_probe`)."""
    from core.analysis import measures, metrics

    x, sign, noise, _ = _readable_and_not()
    recorder, run, model = three_head_runs[reduce]
    rows = recorder.probe_indices
    assert [o.kind for o in run.info.outputs] == ["classes", "classes", "values"]
    assert run.info.probe.primary_output == 0
    hidden = run.info.layer("hidden").index
    last = run.epoch_snapshots()[-1]
    record = last.layer(hidden)
    assert set(record["linear_probes"]) == set(record["separations"]) == {"0", "1"}  # the regression has none
    assert record["linear_probes"]["0"] == record["linear_probe"]
    assert record["separations"]["0"] == record["separation"]
    assert record["linear_probes"]["0"] >= 0.9
    assert record["linear_probes"]["1"] <= 0.7  # coin flips: chance is 0.5 on the held-out half
    assert record["separations"]["0"] > record["separations"]["1"]

    # Against the probe computed here on the hidden layer's own output for those rows.
    features = keras.Model(model.inputs, model.get_layer("hidden").output).predict(x[rows], verbose=0)
    for output, labels in (("0", sign[rows]), ("1", noise[rows])):
        assert record["linear_probes"][output] == pytest.approx(
            measures.linear_probe_accuracy(features, labels), abs=0.03
        )

    baseline = run.meta["input"]  # the raw input's probe, per output too
    assert baseline["linear_probes"]["0"] >= 0.9 and baseline["linear_probes"]["1"] <= 0.7
    assert baseline["linear_probes"]["0"] == baseline["linear_probe"]

    found = metrics.layer_metrics(run, output=1)  # what the Layers page charts for output 1
    assert found.probe[-1, hidden] == record["linear_probes"]["1"] and found.input_probe <= 0.7
    assert found.separation[-1, hidden] == record["separations"]["1"]
    primary = metrics.layer_metrics(run)
    assert primary.probe[-1, hidden] == record["linear_probe"]
    assert metrics.probed_outputs(run) == [0, 1]


def test_the_device_reductions_give_each_output_the_probes_the_host_gives(three_head_runs):
    host, device = (three_head_runs[r][1] for r in ("host", "device"))
    for index in range(len(host.layers)):
        for a, b in zip(host.epoch_snapshots(), device.epoch_snapshots()):
            expected, found = a.layer(index).get("linear_probes"), b.layer(index).get("linear_probes")
            assert found.keys() == expected.keys()
            for output in expected:
                assert found[output] == pytest.approx(expected[output], abs=0.05), (index, output)


def test_a_regression_target_of_two_columns_is_stored_whole_and_coloured_by_a_column_or_its_norm(three_head_runs):
    from dashboard import data

    x, _, _, pos = _readable_and_not()
    recorder, run, model = three_head_runs["host"]
    rows = recorder.probe_indices
    stored = run.probe().targets[2]
    assert stored.shape == (len(rows), 2)
    np.testing.assert_allclose(stored, pos[rows])

    labels, values, title = data.output_truth(run, 2, "1")
    assert labels is None and title == "true value, column 1 of 2"
    np.testing.assert_allclose(values, pos[rows, 1])
    _, values, title = data.output_truth(run, 2, "norm")
    assert title == "true value, norm of 2 columns"
    np.testing.assert_allclose(values, np.hypot(pos[rows, 0], pos[rows, 1]), rtol=1e-6)
    assert data.output_truth(run, 2, "5")[2] == "true value, norm of 2 columns"  # a column it lacks: the norm

    last = run.epoch_snapshots()[-1]
    predicted = model.predict(x[rows], verbose=0)[2]  # (n, 2)
    np.testing.assert_allclose(data.output_predictions(run, last, 2, "0"), predicted[:, :1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        data.output_predictions(run, last, 2, "norm")[:, 0], np.linalg.norm(predicted, axis=1), rtol=1e-4, atol=1e-5
    )
    assert data.output_predictions(run, last, 0, "0").shape == (len(rows), 2)  # classes: probabilities as stored

    frames, _ = data.focus_frames(run, 0, "label", None, output=2, column="0")
    assert not frames[-1].color.categorical and frames[-1].color.title == "true value, column 0 of 2"
    np.testing.assert_allclose(frames[-1].color.values, pos[rows, 0])
    frames, _ = data.focus_frames(run, 0, "correct", None, output=2, column="1")  # the error of that column
    np.testing.assert_allclose(frames[-1].color.values, np.abs(predicted[:, 1] - pos[rows, 1]), rtol=1e-4, atol=1e-4)


def test_the_link_keeps_the_target_column_and_a_column_the_output_lacks_falls_back(three_head_runs):
    from dashboard import state

    run = three_head_runs["host"][1]
    facts = state.RunFacts.of(run)
    assert facts.target_columns(2) == 2 and facts.target_columns(0) == 0 and facts.target_columns(None) == 0
    view, notices = state.parse_query({"out": "2", "tcol": "1"})
    assert view.tcol == "1" and not notices and state.to_query(view)["tcol"] == "1"
    assert state.validate(view, facts)[0].tcol == "1"
    checked, notices = state.validate(state.parse_query({"out": "2", "tcol": "4"})[0], facts)
    assert checked.tcol == "norm" and "no column 4" in notices[0]
    _, notices = state.parse_query({"tcol": "x"})
    assert "is not norm or a column number" in notices[0]


def test_the_layers_page_shows_the_probes_of_the_output_of_classes_chosen(three_head_runs):
    from apptest_pages import open_app, shown

    recorder, run, _ = three_head_runs["host"]
    at = open_app(recorder.log_dir, "layers", run=run.id, out="1")
    assert not at.exception
    captions = [shown(c.value) for c in at.caption]
    chose = "decode the classes of the output the sidebar's Output chose, “noise” (classes)."
    assert any(chose in c for c in captions)
    at = open_app(recorder.log_dir, "layers", run=run.id, out="2")  # a regression: the primary output's probes
    assert not at.exception
    captions = [shown(c.value) for c in at.caption]
    assert any("the chosen output “pos” (regression) has no linear probes of its own" in c for c in captions)


def test_the_embeddings_page_colours_by_the_target_column_chosen_and_says_which(three_head_runs):
    from apptest_pages import open_app, shown

    recorder, run, _ = three_head_runs["host"]
    at = open_app(recorder.log_dir, "", run=run.id, out="2", tcol="1")
    assert not at.exception and at.sidebar.selectbox(key="tcol").value == "1"
    assert any("the colours show column 1 of 2, true and predicted alike" in shown(c.value) for c in at.caption)
    at.sidebar.selectbox(key="tcol").set_value("norm").run()
    assert not at.exception
    assert any("the colours show the norm of 2 columns" in shown(c.value) for c in at.caption)
    at.sidebar.selectbox(key="out").set_value(0).run()  # an output of classes: no column to choose
    assert not at.exception and not [s for s in at.sidebar.selectbox if s.key == "tcol"]


def test_every_input_is_stored_within_the_size_limit_and_shown_side_by_side(tmp_path, monkeypatch):
    from core.capture import recorder as recorder_module
    from dashboard import data

    left, right, classes, value = _data()
    model = _two_in_two_out()
    recorder, run = _record(tmp_path / "all", model, ([left, right], [classes, value]), [left, right], [classes, value])
    rows = recorder.probe_indices
    probe = run.probe()
    assert sorted(probe.inputs) == [0, 1] and run.info.probe.input_names == ("left", "right")
    np.testing.assert_allclose(probe.inputs[0], left[rows])
    np.testing.assert_allclose(probe.inputs[1], right[rows])
    features, names = data.probe_features(run)
    np.testing.assert_allclose(features, np.hstack([left[rows], right[rows]]))
    assert names == ["left 1", "left 2", "left 3", "left 4", "right 1", "right 2", "right 3"]

    # Room for the first input only: the second is left out, and the views show what is there.
    monkeypatch.setattr(recorder_module, "MAX_STORED_INPUT_BYTES", 4 * left[rows].size)
    model = _two_in_two_out()
    _, run = _record(tmp_path / "first", model, ([left, right], [classes, value]), [left, right], [classes, value])
    assert sorted(run.probe().inputs) == [0]
    features, names = data.probe_features(run)
    assert features.shape == (len(rows), 4) and names == ["left 1", "left 2", "left 3", "left 4"]


def test_a_probe_file_with_a_badly_named_or_shaped_input_is_damaged():
    from core.store import run_format

    indices = np.arange(4)
    run_format.probe_arrays({"indices": indices, "x": np.zeros((4, 2)), "inputs/1": np.zeros((4, 3))})
    run_format.probe_arrays({"indices": indices, "targets/0": np.zeros((4, 2))})  # a regression of 2 columns
    for arrays, reason in (
        ({"inputs/0": np.zeros((4, 3))}, "input not named by its number from 1"),
        ({"inputs/x": np.zeros((4, 3))}, "input not named by its number from 1"),
        ({"inputs/1": np.zeros((3, 3))}, "not 4 rows"),
        ({"targets/0": np.zeros((4, 2, 2))}, "of 1 or 2 dimension"),
    ):
        with pytest.raises(run_format.FormatProblem, match=reason):
            run_format.probe_arrays({"indices": indices, **arrays})


def test_a_layer_record_with_bad_per_output_probes_is_damaged():
    from core.store import run_format

    good = {"seq": 0, "epoch": 0, "layers": [{"linear_probes": {"0": 0.9, "2": None}, "separations": {"0": 0.1}}]}
    run_format.snapshot_meta(good, 0)
    for probes in ({"a": 0.9}, {"0": "high"}, [0.9]):
        with pytest.raises(run_format.FormatProblem, match="linear_probes"):
            run_format.snapshot_meta({"seq": 0, "epoch": 0, "layers": [{"linear_probes": probes}]}, 0)
    with pytest.raises(run_format.FormatProblem, match="input"):
        run_format.run_meta({"input": {"separations": {"0": []}}})


# ---------------------------------------------------------------------------------------------------
# The diagnosis and `core show --json` read every output


def _class_and_flag(seed=0):
    """A softmax head `cls` over 2 classes through a ReLU layer; a sigmoid head `flag` read straight off the input,
    whose kernel of 1000 on x0 makes it answer x0 > 0 saturated, within 2% of 0 or 1 on ~99.7% of the samples, from
    before training on (as a confident output should be); a softmax head `noise` of coin flips, which no layer can
    learn; and a linear regression head `reg`, the last layer."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    cls = keras.layers.Dense(2, activation="softmax", name="cls")(hidden)
    flag = keras.layers.Dense(
        1,
        activation="sigmoid",
        name="flag",
        kernel_initializer=keras.initializers.Constant(np.array([[1000.0], [0.0], [0.0], [0.0]])),
    )(x)
    noise = keras.layers.Dense(2, activation="softmax", name="noise")(hidden)
    reg = keras.layers.Dense(1, name="reg")(hidden)
    model = keras.Model(x, [cls, flag, noise, reg])
    model.compile(
        keras.optimizers.Adam(0.01),
        ["sparse_categorical_crossentropy", "binary_crossentropy", "sparse_categorical_crossentropy", "mse"],
        metrics=[["accuracy"], ["accuracy"], ["accuracy"], []],
    )
    return model


@pytest.fixture(scope="module")
def class_and_flag_run(tmp_path_factory):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(160, 4)).astype("float32")
    classes = (x[:, 1] + x[:, 2] > 0).astype("int64")
    flag = (x[:, 0] > 0).astype("float32")
    value = (x[:, 3] - x[:, 1]).astype("float32")
    noise = rng.integers(0, 2, size=len(x)).astype("int64")
    model = _class_and_flag()
    root = tmp_path_factory.mktemp("class_and_flag")
    targets = [classes, flag, noise, value]
    recorder = Recorder(str(root), probe=(x, targets), budget=None, analysis="thread", run_id="heads")
    model.fit(x, targets, epochs=3, batch_size=16, callbacks=[recorder], verbose=0)
    recorder.wait()
    rows = recorder.probe_indices
    return str(root), model, x[rows], classes[rows], flag[rows], noise[rows], value[rows]


def test_the_diagnosis_leaves_every_output_layer_out_of_the_unit_findings(class_and_flag_run):
    from core.analysis.diagnosis import diagnose

    root = class_and_flag_run[0]
    run = RunStore(root).run("heads")
    flag = run.info.layer("flag").index
    assert [(o.name, o.kind, o.layer) for o in run.info.outputs] == [
        ("cls", "classes", "cls"),
        ("flag", "classes", "flag"),
        ("noise", "classes", "noise"),
        ("reg", "values", "reg"),
    ]
    assert run.info.output_layers() == [run.info.layer(name).index for name in ("cls", "flag", "noise", "reg")]
    assert flag < len(run.layers) - 1  # not the last recorded layer, which alone used to count as the output
    saturated = run.layer_series("activation", "saturated_fraction")[:, flag]
    assert len(saturated) == 4 and np.all(saturated >= 0.5)  # a hidden sigmoid layer this saturated is a finding
    assert diagnose(run) == []


def test_core_show_json_summarises_every_output(class_and_flag_run):
    import json
    import subprocess
    import sys

    from conftest import REPO

    root, model, x, classes, flag, noise, value = class_and_flag_run
    command = [sys.executable, "-m", "core", "show", "heads", "--runs", root, "--json"]
    summary = json.loads(
        subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout
    )
    cls, flagged, coins, reg = summary["outputs"]
    described = [(o["name"], o["kind"], o["primary"], o["layer"]) for o in summary["outputs"]]
    assert described == [
        ("cls", "classes", True, "cls"),
        ("flag", "classes", False, "flag"),
        ("noise", "classes", False, "noise"),
        ("reg", "values", False, "reg"),
    ]

    # The trained model holds the last snapshot's state.
    predicted_cls, predicted_flag, predicted_noise, predicted_reg = model.predict(x, verbose=0)
    assert len(cls["accuracy"]) == len(summary["epochs"]) == 4
    assert cls["accuracy"][-1] == pytest.approx(np.mean(predicted_cls.argmax(axis=1) == classes))
    assert flagged["accuracy"][-1] == pytest.approx(np.mean((predicted_flag[:, 0] > 0.5) == flag))
    assert flagged["accuracy"][-1] >= 0.95
    assert coins["accuracy"][-1] == pytest.approx(np.mean(predicted_noise.argmax(axis=1) == noise))
    p_true = np.clip(np.where(flag == 1, predicted_flag[:, 0], 1 - predicted_flag[:, 0]), 1e-7, 1)
    assert flagged["crossentropy"][-1] == pytest.approx(-np.mean(np.log(p_true)), rel=1e-3, abs=1e-4)
    assert cls["chance_accuracy"] == pytest.approx(np.bincount(classes).max() / len(classes))
    assert flagged["chance_accuracy"] == pytest.approx(max(flag.mean(), 1 - flag.mean()))
    assert cls["squared_error"] is None and flagged["squared_error"] is None
    assert (reg["kind"], reg["layer"], reg["accuracy"], reg["probe_accuracy"]) == ("values", "reg", None, None)
    assert reg["squared_error"][-1] == pytest.approx(np.mean((predicted_reg[:, 0] - value) ** 2), rel=1e-3)

    # The primary output's linear probes are the top-level `probe_accuracy`; the other output's are its own.
    assert cls["probe_accuracy"] == summary["probe_accuracy"]
    run = RunStore(root).run("heads")
    hidden = run.info.layer("hidden").index
    last = run.epoch_snapshots()[-1]
    assert flagged["probe_accuracy"]["layers"]["hidden"][-1] == last.layer(hidden)["linear_probes"]["1"]
    assert flagged["probe_accuracy"]["input"] == run.meta["input"]["linear_probes"]["1"]
    history = run.history()
    assert cls["metrics"]["loss"] == history["cls_loss"] and flagged["metrics"]["accuracy"] == history["flag_accuracy"]
    assert reg["metrics"] == {"loss": history["reg_loss"]}


def test_a_regression_outputs_summary_is_its_squared_error(three_head_runs):
    from core.analysis.summary import run_summary

    x, _, _, pos = _readable_and_not()
    recorder, run, model = three_head_runs["host"]
    outputs = run_summary(run)["outputs"]
    assert [(o["name"], o["layer"]) for o in outputs] == [("sign", "sign"), ("noise", "noise"), ("pos", "pos")]
    rows = recorder.probe_indices
    predicted = model.predict(x[rows], verbose=0)[2]
    regression = outputs[2]
    assert regression["accuracy"] is None and regression["probe_accuracy"] is None
    assert regression["squared_error"][-1] == pytest.approx(np.mean((predicted - pos[rows]) ** 2), rel=1e-3)
    assert outputs[1]["probe_accuracy"]["layers"]["hidden"] == [
        s.layer(run.info.layer("hidden").index)["linear_probes"]["1"] for s in run.epoch_snapshots()
    ]


def test_an_output_that_does_not_learn_is_named_by_the_diagnosis(class_and_flag_run):
    """`noise` is coin flips: its accuracy stays near chance and its loss near where it started, while `cls` learns.
    The run is short (30 steps), so the persistence and the steps the diagnosis waits for are lowered."""
    from core.analysis.diagnosis import Thresholds, diagnose

    run = RunStore(class_and_flag_run[0]).run("heads")
    findings = diagnose(run, Thresholds(persistence=2, learning_steps=0))
    assert [(f.kind, f.output, f.layer) for f in findings] == [("not_learning", "noise", "noise")]
    [stuck] = findings
    assert "of output `noise`" in stuck.message and "`cls`" not in stuck.message
    assert stuck.evidence["output"] == "noise" and stuck.evidence["probe_accuracy"] < 0.7
    assert stuck.brief()["output"] == "noise"


def test_core_diagnose_names_the_output_of_a_finding(class_and_flag_run, capsys):
    import json

    from core.cli import main

    lowered = ["--threshold", "persistence=2", "--threshold", "learning_steps=0"]
    assert main(["diagnose", "heads", "--runs", class_and_flag_run[0], *lowered]) == 1
    assert "[not_learning] noise, from epoch 1" in capsys.readouterr().out
    assert main(["diagnose", "heads", "--runs", class_and_flag_run[0], "--json", *lowered]) == 1
    [finding] = json.loads(capsys.readouterr().out)["findings"]
    assert (finding["kind"], finding["output"], finding["layer"]) == ("not_learning", "noise", "noise")
    assert main(["diagnose", "heads", "--runs", class_and_flag_run[0]]) == 0


def test_the_gradients_charts_leave_every_output_layer_out_as_the_diagnosis_does(class_and_flag_run):
    from dashboard.views import gradients as views

    series = views.layer_series(RunStore(class_and_flag_run[0]).run("heads"))
    assert series.hidden == [series.layers.index("hidden")]
    for figure in (views.unit_fraction_figure([series]), views.error_signal_figure([series])):
        assert {trace.name for trace in figure.data if trace.name in series.layers} == {"hidden"}
    run = RunStore(class_and_flag_run[0]).run("heads")
    assert views.hidden_layers(run) == series.hidden
    assert [a.text for a in views.percentile_figure([series]).layout.annotations] == ["hidden"]
    states = views.unit_states(run.epoch_snapshots()[-1], series.hidden)
    assert states.shape[0] == 1 and len(views.unit_strip_figure(states, ["hidden"], 3).data[0].y) == 1
