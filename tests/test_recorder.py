"""core.Recorder on real tiny Keras models: what it writes, that it is right, and that it survives bad days."""

import os
import signal
import subprocess
import textwrap
import time
import uuid
import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from core import Recorder  # noqa: E402
from core.store import RunStore  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_process(script: str, **popen):
    from conftest import python_process  # here: a script below imports this module, outside pytest

    return python_process(script, **popen)


def _toy_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    return x, y


def _mlp(activation="relu", seed=0, dropout=0.1):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation=activation, name="hidden_a"),
            *([keras.layers.Dropout(dropout)] if dropout else []),
            keras.layers.Dense(6, activation=activation, name="hidden_b"),
            keras.layers.Dense(2, activation="softmax", name="out"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _fit(model, recorder, epochs=3, x=None, y=None):
    if x is None:
        x, y = _toy_data()
    model.fit(x, y, epochs=epochs, batch_size=16, callbacks=[recorder], verbose=0)
    recorder.wait()


def test_sequential_run_has_every_snapshot_and_field(tmp_path):
    x, y = _toy_data()
    recorder = Recorder(str(tmp_path), probe=(x, y), name="toy", components=3)
    _fit(_mlp(), recorder, epochs=3)

    run = RunStore(str(tmp_path)).run(recorder.run_id)
    assert run.status == "finished"
    assert [layer["name"] for layer in run.layers] == ["hidden_a", "hidden_b", "out"]  # Dropout skipped
    assert run.epochs() == [0, 1, 2, 3]
    assert run.meta["epochs_done"] == 3 and run.meta["input"]["linear_probe"] > 0.5
    history = run.history()
    assert history["epoch"] == [1, 2, 3] and len(history["loss"]) == 3
    last = run.epoch_snapshots()[-1]
    assert last.array("L0/pca").shape == (64, 3)
    assert last.array("pred/probs").shape == (64, 2)
    record = last.layer(0)
    assert set(record["grad"]) == {"kernel", "bias", "output"}
    assert record["update_ratio"]["kernel"] > 0
    assert len(record["activation"]["percentiles"]) == 5
    assert 0 <= record["linear_probe"] <= 1
    assert np.allclose(np.asarray(last.meta["cka"]).diagonal(), 1)
    assert run.probe().x.shape == (64, 4) and run.probe().size == 64
    assert last.array("L0/plane_units") is None  # 4-D input: no input plane


def test_gradient_statistics_match_gradient_tape(tmp_path):
    x, y = _toy_data()
    model = _mlp(dropout=0)  # a model that trains as it infers: one pass, the gradients of inference mode
    recorder = Recorder(str(tmp_path), probe=(x, y), analysis="thread")
    model.fit(x, y, epochs=1, batch_size=16, callbacks=[recorder], verbose=0)
    recorder.wait()

    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=False), training=False)
    gradients = tape.gradient(loss, model.trainable_weights)
    by_path = {"/".join(v.path.split("/")[-2:]): g.numpy() for v, g in zip(model.trainable_weights, gradients)}
    last = RunStore(str(tmp_path)).run(recorder.run_id).epoch_snapshots()[-1]
    for index, name in enumerate(["hidden_a", "hidden_b", "out"]):
        for role in ("kernel", "bias"):
            expected = by_path[f"{name}/{role}"]
            stats = last.layer(index)["grad"][role]
            np.testing.assert_allclose(stats["norm"], np.linalg.norm(expected), rtol=1e-4)
            np.testing.assert_allclose(stats["max_abs"], np.abs(expected).max(), rtol=1e-4)
            np.testing.assert_allclose(stats["mean_abs"], np.abs(expected).mean(), rtol=1e-4)

    # The error signal reaching each layer's output, layer by layer through the same model. For the softmax
    # output, the loss on a plain copy of the probabilities (Keras would otherwise read the cached logits,
    # and the output would get no gradient at all: this used to be recorded as 0).
    outputs = {}
    with tf.GradientTape(persistent=True) as tape:
        h = tf.constant(x)
        for layer in model.layers:
            h = layer(h, training=False)
            tape.watch(h)
            outputs[layer.name] = h
        loss = model.compute_loss(x=x, y=y, y_pred=h, training=False)
        probabilities = tf.identity(h)
        probability_loss = model.compute_loss(x=x, y=y, y_pred=probabilities, training=False)
    expected = [
        *tape.gradient(loss, [outputs["hidden_a"], outputs["hidden_b"]]),
        tape.gradient(probability_loss, probabilities),
    ]
    for index, gradient in enumerate(expected):
        np.testing.assert_allclose(
            last.layer(index)["grad"]["output"]["norm"], np.linalg.norm(gradient.numpy()), rtol=1e-4
        )
    assert last.layer(2)["grad"]["output"]["norm"] > 0


def test_gradients_of_a_large_probe_come_from_an_even_spread_of_256_samples(tmp_path):
    from core.capture.recorder import GRAD_PROBE_SIZE, gradient_rows

    rows = gradient_rows(1000)
    assert len(rows) == GRAD_PROBE_SIZE and rows[0] == 0 and rows[-1] == 999 and np.all(np.diff(rows) >= 3)
    assert gradient_rows(40).tolist() == list(range(40))
    x, y = _toy_data(600)
    model = _mlp(dropout=0)
    recorder = Recorder(str(tmp_path), probe=(x, y), probe_size=600, analysis="thread")
    model.fit(x, y, epochs=1, batch_size=64, callbacks=[recorder], verbose=0)
    recorder.wait()
    picked = gradient_rows(600)
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x[picked], y=y[picked], y_pred=model(x[picked], training=False), training=False)
    expected = tape.gradient(loss, model.trainable_weights)[0].numpy()  # hidden_a's kernel
    last = RunStore(str(tmp_path)).run(recorder.run_id).epoch_snapshots()[-1]
    np.testing.assert_allclose(last.layer(0)["grad"]["kernel"]["norm"], np.linalg.norm(expected), rtol=1e-4)


def test_a_probe_too_large_for_the_recorded_outputs_is_cut_to_a_stratified_subset_with_a_warning(tmp_path, monkeypatch):
    from core.capture import recorder as recorder_module

    x, y = _toy_data(400)
    per_sample = 4 * (8 + 6 + 2)  # the three recorded layers' outputs, float32
    monkeypatch.setattr(recorder_module, "PROBE_OUTPUT_BYTES", 150 * per_sample)
    recorder = Recorder(str(tmp_path), probe=(x, y), analysis="thread")
    with pytest.warns(UserWarning, match=r"on 150 of the 400 probe samples"):
        _fit(_mlp(), recorder, epochs=1, x=x, y=y)
    run = RunStore(str(tmp_path)).run(recorder.run_id)
    probe = run.probe()
    assert probe.size == 150 and run.epoch_snapshots()[-1].array("L0/pca").shape[0] == 150
    np.testing.assert_array_equal(probe.y, y[probe.indices])  # the rows kept are the rows described
    assert abs(np.mean(probe.y) - np.mean(y)) < 0.02  # stratified: the class balance is kept


def _batch_norm_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, name="dense"),
            keras.layers.BatchNormalization(name="norm"),
            keras.layers.Activation("relu", name="relu"),
            keras.layers.Dense(2, activation="softmax", name="out"),
        ]
    )
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    return model


def test_gradients_of_a_batch_norm_model_are_taken_in_training_mode_without_touching_its_state(tmp_path):
    """The gradients are the ones training computes (batch statistics of the probe), not inference mode's, whose
    moving statistics lag behind early on; and recording moves neither the moving statistics nor the weights."""
    x, y = _toy_data(128)
    x = x * 5 + 3  # far from the moving statistics' start (mean 0, variance 1)
    plain = _batch_norm_model()
    plain.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
    model = _batch_norm_model()
    recorder = Recorder(str(tmp_path), probe=(x, y), analysis="thread")
    model.fit(x, y, epochs=1, batch_size=32, shuffle=False, callbacks=[recorder], verbose=0)
    recorder.wait()
    for recorded, reference in zip(model.variables, plain.variables):  # moving statistics and weights alike
        np.testing.assert_allclose(recorded.numpy(), reference.numpy(), rtol=1e-5, atol=1e-6, err_msg=recorded.path)

    def gradients(training):
        """As training takes them: the mean over batches of 32 (the recorder's gradient chunks) of each batch's
        gradient, batch statistics per batch in training mode."""
        state = [v.numpy() for v in model.non_trainable_variables]
        total = None
        for start in range(0, len(x), 32):
            with tf.GradientTape() as tape:
                batch = x[start : start + 32]
                loss = model.compute_loss(
                    x=batch, y=y[start : start + 32], y_pred=model(batch, training=training), training=training
                )
            found = [g.numpy() * len(batch) / len(x) for g in tape.gradient(loss, model.trainable_weights)]
            total = found if total is None else [a + b for a, b in zip(total, found)]
        for variable, value in zip(model.non_trainable_variables, state):
            variable.assign(value)  # a training-mode call moved the moving statistics: put them back
        return {"/".join(v.path.split("/")[-2:]): g for v, g in zip(model.trainable_weights, total)}

    trained, inferred = gradients(True), gradients(False)
    kernel = np.linalg.norm(trained["dense/kernel"])
    assert abs(np.linalg.norm(inferred["dense/kernel"]) - kernel) > 0.1 * kernel  # the two modes differ here
    last = RunStore(str(tmp_path)).run(recorder.run_id).epoch_snapshots()[-1]
    names = [layer["name"] for layer in RunStore(str(tmp_path)).run(recorder.run_id).layers]
    for name, role in (("dense", "kernel"), ("norm", "gamma"), ("norm", "beta"), ("out", "kernel")):
        stats = last.layer(names.index(name))["grad"][role]
        np.testing.assert_allclose(stats["norm"], np.linalg.norm(trained[f"{name}/{role}"]), rtol=1e-4)


def test_pca_axes_do_not_flip_between_epochs(tmp_path):
    x, y = _toy_data(200)
    recorder = Recorder(str(tmp_path), probe=(x, y), components=2)
    model = _mlp("tanh")
    model.compile(keras.optimizers.SGD(1e-4), "sparse_categorical_crossentropy")  # tiny steps: axes barely move
    _fit(model, recorder, epochs=3, x=x, y=y)
    snapshots = RunStore(str(tmp_path)).run(recorder.run_id).epoch_snapshots()
    for before, after in zip(snapshots, snapshots[1:]):
        a, b = before.array("L1/pca"), after.array("L1/pca")
        correlation = [np.corrcoef(a[:, c], b[:, c])[0, 1] for c in range(2)]
        assert min(correlation) > 0.99, correlation


def test_functional_model_with_nested_block_is_flattened(tmp_path):
    block = keras.Sequential([keras.Input((8,)), keras.layers.Dense(5, activation="tanh", name="inner")], name="block")
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu", name="first")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax", name="last")(block(hidden))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = _toy_data()
    recorder = Recorder(str(tmp_path), probe=(x, y))
    _fit(model, recorder, epochs=1)
    run = RunStore(str(tmp_path)).run(recorder.run_id)
    assert [layer["name"] for layer in run.layers] == ["first", "block/inner", "last"]
    assert run.epoch_snapshots()[-1].layer(1)["grad"]["kernel"]["norm"] > 0


def test_conv_model_and_image_probe(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((40, 8, 8, 1), dtype=np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype("int64")
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(2, activation="softmax", name="out"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    recorder = Recorder(str(tmp_path), probe=(x, y))
    _fit(model, recorder, epochs=1, x=x, y=y)
    run = RunStore(str(tmp_path)).run(recorder.run_id)
    assert run.meta["dataset"]["kind"] == "image" and run.meta["dataset"]["image_shape"] == [8, 8, 1]
    last = run.epoch_snapshots()[-1]
    assert last.array("L0/pca").shape[0] == 40
    assert last.array("L0/unit_mean").shape == (4,)  # a conv unit is a channel


def test_sequence_model_with_an_embedding_table_records_every_layer(tmp_path):
    # An embedding's gradient arrives as IndexedSlices; it used to fail the whole probe pass, so no snapshot was taken.
    rng = np.random.default_rng(0)
    x = rng.integers(1, 30, (80, 6))
    y = (x[:, 0] > 15).astype("int64")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            keras.layers.Embedding(30, 4, name="embed"),
            keras.layers.LSTM(5, return_sequences=True, name="lstm"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(2, activation="softmax", name="out"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    recorder = Recorder(str(tmp_path), probe=(x, y), components=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed probe pass warns
        model.fit(x, y, epochs=1, batch_size=16, callbacks=[recorder], verbose=0)
        recorder.wait()

    run = RunStore(str(tmp_path)).run(recorder.run_id)
    last = run.epoch_snapshots()[-1]
    assert run.epochs() == [0, 1] and last.array("L1/pca").shape == (80, 3)
    # The LSTM's (80, 6 steps, 5) output has 5 units in every per-unit record: statistics and sample rankings.
    assert len(last.array("L1/unit_mean")) == len(last.array("L1/dead_units")) == len(last.array("L1/unit_top")) == 5
    with tf.GradientTape() as tape:
        rows = recorder.probe_indices
        loss = model.compute_loss(x=x[rows], y=y[rows], y_pred=model(x[rows], training=False), training=False)
    table_gradient = tf.convert_to_tensor(tape.gradient(loss, model.get_layer("embed").embeddings))
    assert last.layer(0)["grad"]["embeddings"]["norm"] == pytest.approx(float(tf.norm(table_gradient)), rel=1e-4)

    # Where views and checks say "kernel", the embedding table stands in for the layer: charts, verdict, summary.
    from core.analysis.diagnosis import _Series
    from core.analysis.summary import run_summary
    from core.store import main_weight
    from dashboard.views import gradients as gradient_views

    norms = run.layer_series("grad", main_weight, "norm")
    assert (
        norms[-1, 0] == last.layer(0)["grad"]["embeddings"]["norm"] and np.isnan(norms[:, 2]).all()
    )  # pooling: no weights
    assert 0 in _Series.of(run).kernel_layers
    assert run_summary(run)["per_layer"]["embed"]["gradient_norm"][-1] == pytest.approx(norms[-1, 0])
    assert np.isfinite(gradient_views.layer_series(run).kernel_grad[:, 0]).all()
    assert np.isfinite(gradient_views.gradient_histograms(run, run.epoch_snapshots(), 0).density).all()


def test_plane_inputs_record_unit_maps(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (80, 2)).astype("float32")
    y = (x[:, 0] * x[:, 1] > 0).astype("int64")
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(2, activation="softmax")]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    recorder = Recorder(str(tmp_path), probe=(x, y))
    _fit(model, recorder, epochs=1, x=x, y=y)
    run = RunStore(str(tmp_path)).run(recorder.run_id)
    grid = run.probe().plane
    last = run.epoch_snapshots()[-1]
    assert last.array("L0/plane_units").shape == (len(grid["xs"]) * len(grid["ys"]), 5)
    assert last.array("pred/plane_probs").shape[1] == 2


def test_probe_without_labels_records_projections_but_no_gradients(tmp_path):
    x, _ = _toy_data()
    recorder = Recorder(str(tmp_path), probe=x)
    model = _mlp()
    model.fit(x, _toy_data()[1], epochs=1, callbacks=[recorder], verbose=0)
    recorder.wait()
    run = RunStore(str(tmp_path)).run(recorder.run_id)
    last = run.epoch_snapshots()[-1]
    assert run.probe().y is None and "grad" not in last.layer(0)
    assert last.array("L0/pca") is not None


def test_regression_targets_serve_the_loss_but_are_not_taken_for_classes(tmp_path):
    x, _ = _toy_data()
    targets = (x[:, :1] * 1.5 + 0.25).astype("float32")  # truncated to integers they used to become "classes"
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh", name="hidden"), keras.layers.Dense(1, name="out")]
    )
    model.compile("adam", "mse")
    with pytest.warns(UserWarning, match="not class ids.*records gradients against them"):
        recorder = Recorder(str(tmp_path), probe=(x, targets))
    model.fit(x, targets, epochs=1, callbacks=[recorder], verbose=0)
    recorder.wait()

    run = RunStore(str(tmp_path)).run(recorder.run_id)
    layer = run.epoch_snapshots()[-1].layer(0)
    assert run.probe().y is None and not run.meta["probe"]["has_labels"]
    assert layer["grad"]["kernel"]["norm"] > 0 and "linear_probe" not in layer


@pytest.mark.parametrize("loss", ["mse", keras.losses.Huber(), keras.losses.mean_absolute_error, "poisson"])
def test_whole_number_targets_of_a_regression_loss_are_not_taken_for_classes(tmp_path, loss):
    x, _ = _toy_data()
    counts = np.round(np.abs(x[:, :1]) * 3).astype("float32")  # counts: whole numbers, yet no classes
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1, activation="softplus")]
    )
    model.compile("adam", loss)
    recorder = Recorder(str(tmp_path), probe=(x, counts))
    assert recorder.labels is not None  # the targets alone look like class ids; the loss decides, at the start of fit
    with pytest.warns(
        UserWarning, match=r"loss \((mean_squared_error|huber|mean_absolute_error|poisson)\) compares values"
    ):
        model.fit(x, counts, epochs=1, callbacks=[recorder], verbose=0)
        recorder.wait()

    run = RunStore(str(tmp_path)).run(recorder.run_id)
    layer = run.epoch_snapshots()[-1].layer(0)
    assert run.probe().y is None and not run.meta["probe"]["has_labels"]
    assert layer["grad"]["kernel"]["norm"] > 0 and "linear_probe" not in layer


def test_one_sigmoid_output_is_stored_as_two_class_probabilities(tmp_path):
    x, y = _toy_data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile("adam", "binary_crossentropy")
    recorder = Recorder(str(tmp_path), probe=(x, y))
    model.fit(x, y, epochs=2, callbacks=[recorder], verbose=0)
    recorder.wait()

    last = RunStore(str(tmp_path)).run(recorder.run_id).epoch_snapshots()[-1]
    p = model.predict(x[recorder.probe_indices], verbose=0)[:, 0]
    np.testing.assert_allclose(last.array("pred/probs"), np.stack([1 - p, p], axis=1), rtol=1e-5, atol=1e-6)
    assert last.meta["probe_model_accuracy"] == pytest.approx(np.mean((p > 0.5) == recorder.labels))


@pytest.mark.parametrize("units, loss", [(2, "sparse"), (1, "binary")])
def test_a_model_that_outputs_logits_is_stored_as_probabilities(tmp_path, units, loss):
    x, y = _toy_data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(units)])
    losses = {
        "sparse": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "binary": keras.losses.BinaryCrossentropy(from_logits=True),
    }
    model.compile("adam", losses[loss])  # the tutorials' set-up: no softmax, the loss takes logits
    recorder = Recorder(str(tmp_path), probe=(x, y))
    model.fit(x, y, epochs=1, callbacks=[recorder], verbose=0)
    recorder.wait()

    stored = RunStore(str(tmp_path)).run(recorder.run_id).epoch_snapshots()[-1].array("pred/probs")
    logits = model.predict(x[recorder.probe_indices], verbose=0)
    expected = tf.nn.softmax(logits).numpy() if units > 1 else np.hstack([1 - tf.sigmoid(logits), tf.sigmoid(logits)])
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "y, expected",
    [
        (np.array([0.0, 2.0, 1.0]), [0, 2, 1]),  # whole numbers in a float array
        (np.array([[0.9, 0.1], [0.05, 0.95], [0.5, 0.5]]), [0, 1, 0]),  # smoothed one-hot rows
        (np.array([[1], [0], [1]], "uint8"), [1, 0, 1]),
        (np.array([0.5, 1.0, 2.0]), None),
        (np.array([[0.3, 2.0], [1.0, 0.0], [0.0, 1.0]]), None),  # two regression targets per sample
    ],
)
def test_class_ids_come_from_whole_numbers_or_distributions_only(y, expected):
    from core.capture.recorder import _class_ids

    ids = _class_ids(y)
    assert (ids is None and expected is None) or ids.tolist() == expected


def test_boolean_labels_are_class_ids(tmp_path):
    x, y = _toy_data()
    recorder = Recorder(str(tmp_path), probe=(x, y.astype(bool)))
    assert recorder.labels.dtype == np.int64 and recorder.labels.tolist() == y[recorder.probe_indices].tolist()


def test_probes_of_several_inputs_or_outputs_are_read_as_fit_reads_them(tmp_path):
    """The issue's forms: a dict of inputs, lists of inputs and targets, and a list of inputs (once read as (x, y)).
    Each is taken as `fit` takes it; whether it fits the model is checked at the start of fit (tests/test_multi_io.py
    records each form on a real two-input, two-output model)."""
    left, right = np.zeros((5, 4)), np.ones((5, 2))
    labels = np.array([0, 1, 0, 1, 1])
    for probe in ([left, right], {"left": left, "right": right}):
        recorder = Recorder(str(tmp_path), probe=probe)
        assert recorder.labels is None  # no targets: a list is inputs, never (x, y)
        assert [a.shape for a in keras.tree.flatten(recorder._x)] == [(5, 4), (5, 2)]
    recorder = Recorder(str(tmp_path), probe=([left, right], [labels, np.linspace(0, 1, 5)]))
    assert recorder.labels.tolist() == labels.tolist()  # stratified by the first target that holds classes
    recorder = Recorder(str(tmp_path), probe=(left, {"a": np.linspace(0, 1, 5), "b": labels}))
    assert recorder.labels.tolist() == labels.tolist()


def test_a_single_input_or_output_by_name_or_in_a_list_is_one_array(tmp_path):
    x, y = _toy_data()
    for probe in (({"features": x}, y), ([x], [y]), (x, {"out": y})):
        recorder = Recorder(str(tmp_path), probe=probe)
        assert recorder.labels.tolist() == y[recorder.probe_indices].tolist()


def test_large_probe_is_subsampled_stratified(tmp_path):
    x, y = _toy_data(300)
    recorder = Recorder(str(tmp_path), probe=(x, y), probe_size=100)
    assert len(recorder.probe_indices) == 100
    assert abs(recorder.labels.mean() - y.mean()) < 0.02


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"probe": None}, "probe set"),
        ({"probe": (np.zeros((5, 4)), np.zeros(4))}, "5 inputs and 4 labels"),
        ({"probe": (np.zeros(5), None)}, "shape"),
        ({"probe": (np.zeros((5, 4)), None), "every": 0}, "every=0"),
        ({"probe": (np.zeros((5, 4)), None), "components": "10"}, "components='10'"),
        ({"probe": (np.zeros((5, 4)), None), "run_id": "../elsewhere"}, "run_id='../elsewhere'"),
        ({"probe": (np.zeros((5, 4)), None), "name": 123}, "name` must be a string.*name=123"),
        ({"probe": (np.zeros((5, 4)), None), "budget": 0}, r"budget must be a share.*in \(0, 1\].*budget=0"),
        ({"probe": (np.zeros((5, 4)), None), "budget": 3}, "budget=3"),
        ({"probe": (np.zeros((5, 4)), None), "budget": "3%"}, "budget='3%'"),
    ],
)
def test_bad_arguments_fail_at_construction(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Recorder(str(tmp_path), **kwargs)


def test_probe_of_the_wrong_shape_fails_at_start_naming_the_fix(tmp_path):
    x, y = _toy_data()
    recorder = Recorder(str(tmp_path), probe=(np.zeros((10, 3), "float32"), np.zeros(10, "int64")))
    with pytest.raises(ValueError, match=r"takes samples of shape \(4,\)"):
        _fit(_mlp(), recorder, x=x, y=y)


def test_a_recorder_passed_to_two_fits_records_two_runs(tmp_path):
    x, y = _toy_data()
    model, recorder = _mlp(), Recorder(str(tmp_path), probe=(x, y), name="twice")
    _fit(model, recorder, epochs=2)
    first = recorder.run_id
    _fit(model, recorder, epochs=3)  # fine-tuning the same model: a run of its own

    store = RunStore(str(tmp_path))
    assert recorder.run_id != first and sorted(store.run_ids()) == sorted([first, recorder.run_id])
    assert [store.run(first).name, store.run(recorder.run_id).name] == ["twice", "twice (fit 2)"]
    for run_id, epochs in ((first, [0, 1, 2]), (recorder.run_id, [0, 1, 2, 3])):
        run = store.run(run_id)
        assert run.status == "finished" and run.epochs() == epochs
        assert run.history()["epoch"] == epochs[1:] and [s.seq for s in run.snapshots()] == list(range(len(epochs)))
    # The second run starts from the first one's trained weights, and its snapshots say so.
    first_end = store.run(first).epoch_snapshots()[-1].layer(0)["weight_norm"]["kernel"]
    assert store.run(recorder.run_id).epoch_snapshots()[0].layer(0)["weight_norm"]["kernel"] == pytest.approx(first_end)


def test_a_resumed_fit_is_recorded_from_the_epoch_it_starts_at(tmp_path):
    x, y = _toy_data()
    model = _mlp()
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)  # trained earlier, without Strata
    kernel_then = model.get_layer("hidden_a").kernel.numpy().copy()
    recorder = Recorder(str(tmp_path), probe=(x, y))
    model.fit(x, y, epochs=5, initial_epoch=3, batch_size=16, callbacks=[recorder], verbose=0)
    recorder.wait()

    run = RunStore(str(tmp_path)).run(recorder.run_id)
    assert run.epochs() == [3, 4, 5] and run.history()["epoch"] == [4, 5]  # no "epoch 0", no stray repeat
    assert [s.seq for s in run.snapshots()] == [0, 1, 2] and run.meta["snapshots"] == 3
    start = run.epoch_snapshots()[0]
    assert start.meta["step"] == 3 * 4  # 64 samples in batches of 16: 4 steps an epoch
    assert start.layer(0)["weight_norm"]["kernel"] == pytest.approx(np.linalg.norm(kernel_then), rel=1e-5)


@pytest.mark.filterwarnings("ignore:Your input ran out of data")  # Keras's note at the end of each pass
def test_steps_keep_counting_when_keras_does_not_know_how_long_an_epoch_is(tmp_path):
    x, y = _toy_data()
    passes = lambda: ((x[i : i + 16], y[i : i + 16]) for i in range(0, len(x), 16))  # noqa: E731  (4 batches)
    data = tf.data.Dataset.from_generator(
        passes, output_signature=(tf.TensorSpec((None, 4), tf.float32), tf.TensorSpec((None,), tf.int64))
    )
    recorder = Recorder(str(tmp_path), probe=(x, y), batch_every=3, grad_every=2)
    _mlp().fit(data, epochs=3, shuffle=False, callbacks=[recorder], verbose=0)
    recorder.wait()

    run = RunStore(str(tmp_path)).run(recorder.run_id)
    assert [s.meta["step"] for s in run.epoch_snapshots()] == [0, 4, 8, 12]
    assert [s.meta["step"] for s in run.snapshots() if s.meta["kind"] == "batch"] == [3, 6, 9, 12]
    assert run.batch_gradient_norms()[0].tolist() == [2, 4, 6, 8, 10, 12]


def test_steps_count_every_batch_when_keras_runs_several_per_call(tmp_path):
    x, y = _toy_data()
    model = _mlp()
    model.compile("adam", "sparse_categorical_crossentropy", steps_per_execution=2)  # one hook call per 2 batches
    recorder = Recorder(str(tmp_path), probe=(x, y), batch_every=2, grad_every=4)
    model.fit(x, y, epochs=3, batch_size=16, callbacks=[recorder], verbose=0)
    recorder.wait()

    run = RunStore(str(tmp_path)).run(recorder.run_id)
    assert [s.meta["step"] for s in run.epoch_snapshots()] == [0, 4, 8, 12]
    assert [s.meta["step"] for s in run.snapshots() if s.meta["kind"] == "batch"] == [2, 4, 6, 8, 10, 12]
    assert run.batch_gradient_norms()[0].tolist() == [4, 8, 12]


@pytest.mark.parametrize("stopper_first", [True, False])
def test_the_last_snapshot_of_an_early_stop_holds_that_epoch_not_the_restored_weights(tmp_path, stopper_first):
    x, y = _toy_data()
    model = _mlp()
    kernels = []
    keep = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, l: kernels.append(model.get_layer("hidden_a").kernel.numpy().copy())
    )
    # The loss falls, so "max" mode stops after epoch 3 and puts back epoch 1's weights at the end of fit.
    stop = keras.callbacks.EarlyStopping(monitor="loss", mode="max", patience=1, restore_best_weights=True)
    recorder = Recorder(str(tmp_path), probe=(x, y), every=5)
    model.fit(x, y, epochs=10, callbacks=[keep, stop, recorder] if stopper_first else [keep, recorder, stop], verbose=0)
    recorder.wait()

    run = RunStore(str(tmp_path)).run(recorder.run_id)
    assert run.epochs() == [0, len(kernels)]
    norm = run.epoch_snapshots()[-1].layer(0)["weight_norm"]["kernel"]
    assert norm == pytest.approx(np.linalg.norm(kernels[-1]), rel=1e-5)
    assert norm != pytest.approx(np.linalg.norm(model.get_layer("hidden_a").kernel.numpy()), rel=1e-5)


def test_a_given_run_id_that_is_taken_fails_at_start_and_leaves_that_run_alone(tmp_path):
    x, y = _toy_data()
    model = _mlp()
    _fit(model, Recorder(str(tmp_path), probe=(x, y), run_id="mine"), epochs=2)
    before = sorted(os.listdir(tmp_path / "mine" / "snapshots"))

    with pytest.raises(ValueError, match="already exists.*Pass a new run_id"):
        _fit(model, Recorder(str(tmp_path), probe=(x, y), run_id="mine"), epochs=1)
    reused = Recorder(str(tmp_path), probe=(x, y), run_id="other")
    _fit(model, reused, epochs=1)
    with pytest.raises(ValueError, match="earlier fit.*new Recorder"):
        _fit(model, reused, epochs=1)

    run = RunStore(str(tmp_path)).run("mine")
    assert run.status == "finished" and run.epochs() == [0, 1, 2]
    assert sorted(os.listdir(tmp_path / "mine" / "snapshots")) == before


def test_subclassed_model_is_refused_with_instructions(tmp_path):
    class Custom(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2, activation="softmax")

        def call(self, x):
            return self.dense(x)

    model = Custom()
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = _toy_data()
    with pytest.raises(ValueError, match="functional API"):
        _fit(model, Recorder(str(tmp_path), probe=(x, y)), x=x, y=y)


def test_nan_loss_is_recorded_and_marked(tmp_path):
    x, y = _toy_data()
    model = _mlp()
    model.compile(keras.optimizers.SGD(1e6), "sparse_categorical_crossentropy")  # diverges at once
    recorder = Recorder(str(tmp_path), probe=(x, y), analysis="thread")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _fit(model, recorder, epochs=3, x=x * 100, y=y)
    run = RunStore(str(tmp_path)).run(recorder.run_id)
    assert run.meta["nan_epoch"] == 1
    assert run.status == "finished" and run.epochs() == [0, 1, 2, 3]
    assert run.epoch_snapshots()[-1].meta["nonfinite"]


def test_unwritable_store_warns_and_training_goes_on(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the store should be")
    x, y = _toy_data()
    model = _mlp()
    with pytest.warns(RuntimeWarning, match="cannot write"):
        _fit(model, Recorder(str(blocker / "runs"), probe=(x, y)), epochs=2, x=x, y=y)
    assert len(model.history.history["loss"]) == 2


def test_write_failure_mid_run_warns_keeps_training_and_earlier_snapshots(tmp_path, monkeypatch):
    import errno

    from core.store import files as store

    x, y = _toy_data()
    model = _mlp()
    recorder = Recorder(str(tmp_path), probe=(x, y), analysis="thread")
    original = store.Files.write_atomic
    writes = {"count": 0}

    def fill_disk_after_a_few_writes(self, path, data):
        writes["count"] += 1
        if writes["count"] > 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, path, data)

    monkeypatch.setattr(store.Files, "write_atomic", fill_disk_after_a_few_writes)
    with pytest.warns(RuntimeWarning, match="No space left"):
        _fit(model, recorder, epochs=4, x=x, y=y)
    monkeypatch.undo()
    assert len(model.history.history["loss"]) == 4
    run = RunStore(str(tmp_path)).run(recorder.run_id)
    for snapshot in run.snapshots():
        assert snapshot.array("L0/pca").shape == (64, 2) or snapshot.array("L0/pca").shape[0] == 64


def test_memory_filesystem_root(tmp_path):
    root = f"memory://strata-{uuid.uuid4().hex}"
    x, y = _toy_data()
    recorder = Recorder(root, probe=(x, y))
    _fit(_mlp(), recorder, epochs=1)
    run = RunStore(root).run(recorder.run_id)
    assert run.status == "finished" and run.epochs() == [0, 1]


# Every snapshot is analysed as it is taken (budget=None): what this guards is that every snapshot written stays
# readable. Snapshots a budget holds back are journaled and written by `python -m core recover` (test_recover.py).
CRASH_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import keras, numpy as np
    from core import Recorder

    class SlowDown(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            print("epoch", epoch + 1, flush=True)
            time.sleep(0.3)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32"); y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1000, batch_size=32, verbose=0,
              callbacks=[Recorder({root!r}, probe=(x, y), run_id="crash", budget=None), SlowDown()])
    """
)


def test_sigkill_mid_run_leaves_every_completed_snapshot_readable(tmp_path):
    root = str(tmp_path)
    script = CRASH_SCRIPT.format(repo=REPO, root=root)
    process = _python_process(script, stdout=subprocess.PIPE)
    for line in process.stdout:
        if line.strip() == "epoch 6":
            break
    reader = RunStore(root).run("crash")
    seen_while_running = reader.poll()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(1.0)  # the analysis process finishes what it had received, then sees end of input
    reader = RunStore(root).run("crash")
    snapshots = reader.snapshots()
    assert len(snapshots) >= 5 and set(seen_while_running) <= {s.seq for s in snapshots}
    for snapshot in snapshots:
        assert snapshot.array("L0/pca").shape == (256, 10)
    assert reader.status == "interrupted"


def test_sigkill_while_snapshots_are_held_back_leaves_a_readable_interrupted_run(tmp_path):
    # Within the budget, nothing may have been written but run.json, by the training process itself: once it
    # is killed, the run must read as interrupted, not running forever.
    root = str(tmp_path)
    script = (
        CRASH_SCRIPT.format(repo=REPO, root=root)
        .replace("budget=None", "budget=0.0001")
        .replace(
            "from core import Recorder",
            "from core import Recorder; from core.capture import worker; worker._idle_seconds = lambda: None",
        )
    )
    process = _python_process(script, stdout=subprocess.PIPE)
    for line in process.stdout:
        if line.strip() == "epoch 3":
            break
    assert RunStore(root).run("crash").status == "running"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(1.0)
    reader = RunStore(root).run("crash")
    assert reader.status == "interrupted"
    for snapshot in reader.snapshots():  # at most the few the budget let through, each complete
        assert snapshot.array("L0/pca").shape == (256, 10)
    # The rest are in the journal: epochs 0 to 3 were captured before "epoch 3" was printed, and the kill follows.
    assert len(reader.snapshots()) + reader.unwritten_captures() >= 3  # epoch 3 may be the one in progress


def test_concurrent_reader_follows_a_live_training_run(tmp_path):
    root = str(tmp_path)
    script = CRASH_SCRIPT.format(repo=REPO, root=root).replace("epochs=1000", "epochs=8")
    process = _python_process(script, stdout=subprocess.DEVNULL)
    seen, deadline = [], time.time() + 120
    reader = None
    while time.time() < deadline and process.poll() is None:
        try:
            reader = reader or RunStore(root).run("crash")
            for seq in reader.poll():
                assert reader.snapshot(seq).array("pred/probs").shape == (256, 2)
                seen.append(seq)
        except Exception as error:
            if type(error).__name__ != "RunNotFound":
                raise
        time.sleep(0.05)
    assert process.wait(timeout=120) == 0
    final = RunStore(root).run("crash")
    assert final.status == "finished"
    assert sorted(set(seen) | set(final.poll())) == list(range(9))
    assert len(seen) >= 2  # it really was read while being written


def test_batch_snapshots_every_n_batches(tmp_path):
    x, y = _toy_data()  # 64 samples, batch 16: 4 steps per epoch
    recorder = Recorder(str(tmp_path), probe=(x, y), batch_every=2, analysis="thread")
    _fit(_mlp(), recorder, epochs=2)
    snapshots = RunStore(str(tmp_path)).run(recorder.run_id).snapshots()
    batches = [(s.meta["epoch"], s.meta["batch"], s.meta["step"]) for s in snapshots if s.meta["kind"] == "batch"]
    assert batches == [(0, 2, 2), (0, 4, 4), (1, 2, 6), (1, 4, 8)]
    epochs = [(s.meta["epoch"], s.meta["step"]) for s in snapshots if s.meta["kind"] == "epoch"]
    assert epochs == [(0, 0), (1, 4), (2, 8)]


class _Witness(keras.callbacks.Callback):
    """Keeps what the model holds whenever the recorder captures: the first kernel and the probe predictions."""

    def __init__(self, x):
        super().__init__()
        self.x, self.kernels, self.predictions = x, [], []

    def _keep(self):
        self.kernels.append(self.model.get_layer("hidden_a").kernel.numpy().copy())
        self.predictions.append(self.model(self.x, training=False).numpy())

    def on_train_begin(self, logs=None):
        self._keep()

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % 2 == 0:
            self._keep()

    def on_epoch_end(self, epoch, logs=None):
        self._keep()


def test_each_snapshot_holds_the_model_as_it_was_when_captured_while_training_runs_on(tmp_path, monkeypatch):
    # The probe pass runs on the worker's thread, on a copy of the weights taken at the capture, while the
    # optimizer keeps updating the live variables: every snapshot must still show its own moment of training.
    import threading

    from core.capture import recorder as recorder_module

    threads = set()
    run_pass = recorder_module.Recorder._run_capture_pass

    def spying(self, *args):  # also late, as on a busy machine: training has moved on by the time it runs
        threads.add(threading.current_thread().name)
        time.sleep(0.05)
        return run_pass(self, *args)

    monkeypatch.setattr(recorder_module.Recorder, "_run_capture_pass", spying)
    x, y = _toy_data()
    model = _mlp()
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")  # large steps: weights move
    recorder = Recorder(str(tmp_path), probe=(x, y), batch_every=2, analysis="thread")
    witness = _Witness(x)
    model.fit(x, y, epochs=3, batch_size=16, callbacks=[recorder, witness], verbose=0)
    recorder.wait()

    snapshots = RunStore(str(tmp_path)).run(recorder.run_id).snapshots()
    assert len(snapshots) == len(witness.kernels) == 1 + 3 * 3  # epoch 0, then two batches and an epoch end
    for snapshot, kernel, predictions in zip(snapshots, witness.kernels, witness.predictions):
        np.testing.assert_allclose(snapshot.array("L0/kernel"), kernel, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(snapshot.array("pred/probs"), predictions, rtol=1e-4, atol=1e-6)
    assert not np.allclose(witness.kernels[0], witness.kernels[-1])  # training did move the weights
    assert threads == {"strata-sink"}  # never the training thread


def test_recording_many_fits_in_one_process_draws_no_retracing_warning(tmp_path):
    """TensorFlow counts traces per function body: the fifth recorder used to draw a warning blaming Strata."""
    import logging

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        x, y = _toy_data(n=32)
        for _ in range(6):
            _fit(_mlp(), Recorder(str(tmp_path), probe=(x, y), analysis="thread"), epochs=1)
        other = logging.LogRecord(
            "tensorflow",
            logging.WARNING,
            __file__,
            1,
            "5 out of the last 5 calls to <function user_step at 0x1> triggered tf.function retracing.",
            None,
            None,
        )
        logger.handle(other)  # anyone else's retracing still warns
    finally:
        logger.removeHandler(handler)
    assert [m for m in messages if "retracing" in m] == [other.getMessage()]
    assert len(RunStore(str(tmp_path)).run_ids()) == 6


class _RaiseAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch, error):
        super().__init__()
        self.epoch, self.error = epoch, error

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise self.error


def test_a_fit_that_raised_is_ended_as_interrupted_when_the_recorder_fits_again(tmp_path):
    x, y = _toy_data()
    model, recorder = _mlp(), Recorder(str(tmp_path), probe=(x, y))
    with pytest.raises(RuntimeError):
        model.fit(x, y, epochs=5, callbacks=[recorder, _RaiseAtEpoch(2, RuntimeError("boom"))], verbose=0)
    stopped = recorder.run_id
    assert RunStore(str(tmp_path)).run(stopped).status == "running"  # Keras skipped on_train_end; the process lives
    _fit(model, recorder, epochs=1)

    store = RunStore(str(tmp_path))
    assert store.run(stopped).status == "interrupted" and store.run(stopped).epochs() == [0, 1, 2]
    assert store.run(recorder.run_id).status == "finished"


NOTEBOOK_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np, keras
    from IPython.core.interactiveshell import InteractiveShell
    from core import Recorder
    from core.store import RunStore
    from core.capture.worker import wait_for_all
    from tests.test_recorder import _mlp, _toy_data, _RaiseAtEpoch

    shell = InteractiveShell.instance()
    x, y = _toy_data()
    shell.user_ns.update(dict(Recorder=Recorder, _mlp=_mlp, _RaiseAtEpoch=_RaiseAtEpoch, keras=keras, x=x, y=y,
                              root={root!r}))
    cells = {{
        "stopped": "KeyboardInterrupt()",  # what the notebook's stop button raises inside fit
        "failed": "ValueError('bad batch')",
        "threaded": None,
    }}
    hooks = len(shell.events.callbacks["post_run_cell"])
    shell.run_cell("for _ in range(3): _mlp().fit(x, y, epochs=1, verbose=0, "
                   "callbacks=[Recorder(root, probe=(x, y))])\\n"
                   "during = len(get_ipython().events.callbacks['post_run_cell'])")  # a sweep keeps no recorder alive
    print("RESULT", "hooks left by a cell of finished fits:", shell.user_ns["during"] - hooks, flush=True)
    for name, error in cells.items():
        if error is None:  # a fit on a thread of its own outlives its cell: the cell must leave it alone
            shell.run_cell("import os, threading, time; r = Recorder(root, probe=(x, y), run_id='threaded'); "
                           "t = threading.Thread(target=lambda: _mlp().fit(x, y, epochs=3, verbose=0, "
                           "callbacks=[r, keras.callbacks.LambdaCallback("
                           "on_epoch_end=lambda e, l: time.sleep(1.0))])); "
                           "t.start()" + chr(10) +  # the cell ends once the run exists, seconds before its fit does
                           "while not os.path.exists(os.path.join(root, 'threaded', 'run.json')): time.sleep(0.05)")
            print("RESULT", name, RunStore({root!r}).run(name).status, flush=True)
            shell.run_cell("t.join()")
        else:
            shell.run_cell("_mlp().fit(x, y, epochs=5, verbose=0, "
                           f"callbacks=[Recorder(root, probe=(x, y), run_id={{name!r}}), "
                           f"_RaiseAtEpoch(2, {{error}})])")
        wait_for_all()  # the run is ended when its cell finishes, and written in the background
        run = RunStore({root!r}).run(name)
        print("RESULT", name, run.status, run.meta.get("error"), run.epochs(), flush=True)
    """
)


def test_in_a_notebook_a_fit_stopped_or_failed_is_ended_when_its_cell_finishes(tmp_path):
    pytest.importorskip("IPython")
    script = NOTEBOOK_SCRIPT.format(repo=REPO, root=str(tmp_path))
    from conftest import run_python  # here: the script imports this module, outside pytest

    result = run_python(script, timeout=300, check=False)
    lines = [line.removeprefix("RESULT ") for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines == [  # the shell prints each cell's traceback in between, as a notebook shows it
        "hooks left by a cell of finished fits: 0",
        "stopped interrupted None [0, 1, 2]",
        "failed failed ValueError: bad batch [0, 1, 2]",
        "threaded running",
        "threaded finished None [0, 1, 2, 3]",
    ], "\n".join(lines) + result.stderr[-3000:]
