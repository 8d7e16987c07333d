"""The same `Recorder` on Keras's TensorFlow and JAX backends records the same snapshots.

Keras fixes its backend when it is imported, so each backend records in a subprocess of its own
(`KERAS_BACKEND=tensorflow` / `jax`): the same two tiny models with the same given weights fit the same data for
2 epochs, unshuffled, each into its own store. This process only reads the stores (and never imports a backend).

    mlp   Dense-Dense-Dense(softmax), no randomness in training: every snapshot agrees across backends
    bn    Dense-BatchNorm-ReLU-Dropout-Dense(softmax): gradients in training mode. Dropout draws its mask from each
          backend's own generator, so their gradients are checked against that backend's own reference (GradientTape,
          or jax.grad of `stateless_call`) and against a plain fit, which recording must leave exactly as it is
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import python_process

from core.store import RunStore

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax")
TIMEOUT = 300  # seconds for one backend's subprocess: importing it, compiling its passes, two fits and two plain ones

# The data, and the two models built with the given weights (argv: store root, given.npz, ...).
_MODELS = r"""
import json, os, signal, sys
import numpy as np
import keras
from core import Recorder

root, given_path = sys.argv[1:3]
given = np.load(given_path)
x, y = given["x"], given["y"]
backend = keras.backend.backend()


def build(name):
    layers = {
        "mlp": [keras.layers.Dense(8, activation="relu", name="hidden_a"),
                keras.layers.Dense(6, activation="tanh", name="hidden_b")],
        "bn": [keras.layers.Dense(8, name="dense"), keras.layers.BatchNormalization(name="norm"),
               keras.layers.Activation("relu", name="relu"), keras.layers.Dropout(0.25, seed=7, name="drop")],
    }[name]
    model = keras.Sequential([keras.Input((4,)), *layers, keras.layers.Dense(3, activation="softmax", name="out")],
                             name=name)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            layer.set_weights([given[f"{name}/{layer.name}/kernel"], given[f"{name}/{layer.name}/bias"]])
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def fit(model, callbacks=(), epochs=2):
    model.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, callbacks=list(callbacks), verbose=0)
"""

# Records both models (argv[3]: where to write the references and the model's variables after fit).
_RECORD = (
    _MODELS
    + r'''
from core.capture.probe_pass import gradient_rows

out_path = sys.argv[3]


def training_mode_gradients(model):
    """{"layer/role": gradient} of the mean loss on the gradient rows, as the recorder takes them in training mode:
    per chunk of 32 from the same state (batch statistics, dropout on), weighted by the chunk's size."""
    rows = gradient_rows(len(x))
    gx, gy = x[rows], y[rows]
    state = [np.array(v) for v in model.non_trainable_variables]
    total = None
    for start in range(0, len(rows), 32):
        xb, yb = gx[start : start + 32], gy[start : start + 32]
        if backend == "jax":
            import jax

            def loss(trainable):
                predictions, _ = model.stateless_call(trainable, state, xb, training=True)
                return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(yb, predictions))

            found = jax.grad(loss)([v.value for v in model.trainable_variables])
        else:
            import tensorflow as tf

            with tf.GradientTape() as tape:
                predictions = model(xb, training=True)
                loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(yb, predictions))
            found = tape.gradient(loss, model.trainable_variables)
            for variable, value in zip(model.non_trainable_variables, state):  # moving statistics, dropout's seed
                variable.assign(value)
        found = [np.asarray(g) * len(xb) / len(rows) for g in found]
        total = found if total is None else [a + b for a, b in zip(total, found)]
    return {"/".join(v.path.split("/")[-2:]): g for v, g in zip(model.trainable_variables, total)}


out = {}
recorder = Recorder(root, probe=(x, y), run_id="mlp", components=3, grad_every=2)  # the defaults: budget, process
# Keras itself imports TensorFlow, when it is installed, to serialize a model (the journal's copy of it): so what
# the recorder imports is looked at before fit.
tensorflow_before_fit = "tensorflow" in sys.modules
fit(build("mlp"), [recorder])
assert recorder.wait(120)

bn, plain = build("bn"), build("bn")
for key, gradient in training_mode_gradients(bn).items():
    out[f"reference/{key}"] = gradient
recorder = Recorder(root, probe=(x, y), run_id="bn", components=3, budget=None, analysis="thread", batch_every=3)
fit(bn, [recorder])
fit(plain)
assert recorder.wait(120)
for recorded, reference in zip(bn.variables, plain.variables):
    out[f"recorded/{recorded.path}"], out[f"plain/{recorded.path}"] = np.array(recorded), np.array(reference)
np.savez(out_path, **out)
print(json.dumps({"backend": backend, "tensorflow_before_fit": tensorflow_before_fit,
                  "probe_pass": type(recorder._capture_fn).__module__,
                  "probe_tf_loaded": "core.capture.probe_tf" in sys.modules}))
'''
)


# Fits the MLP for 4 epochs twice, in one process: analysed live (run "live"), then with snapshots held back for the
# budget (run "killed"), SIGKILLing itself once the last capture is journaled, before the held-back snapshots are
# written.
_KILLABLE = (
    _MODELS
    + r"""
import glob, time
from core.capture import worker

worker._idle_seconds = lambda: None  # nothing runs beside training, however idle the machine: all is held back
for mode in ("live", "killed"):
    recorder = Recorder(root, probe=(x, y), run_id=mode, components=3, budget=None if mode == "live" else 0.03)
    fit(build("mlp"), [recorder], epochs=4)
    if mode == "killed":
        # The worker's thread journals each capture as it takes it over: wait for the last one (milliseconds), while
        # the first held-back snapshot's probe pass is still being compiled.
        deadline = time.monotonic() + 60
        last = os.path.join(root, mode, "journal", "*-capture-epoch-4-*.npz")
        while not glob.glob(last) and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGKILL)
    assert recorder.wait(120)
"""
)


def _given(path: Path) -> None:
    """The data and every Dense layer's starting weights, for both backends alike."""
    rng = np.random.default_rng(19)
    x = rng.normal(size=(96, 4)).astype("float32")
    arrays = {"x": x, "y": np.digitize(x[:, 0] + x[:, 1], [-0.6, 0.6]).astype("int64")}
    for name, widths in (
        ("mlp", [("hidden_a", 4, 8), ("hidden_b", 8, 6), ("out", 6, 3)]),
        ("bn", [("dense", 4, 8), ("out", 8, 3)]),
    ):
        for layer, inputs, units in widths:
            arrays[f"{name}/{layer}/kernel"] = (rng.normal(size=(inputs, units)) / np.sqrt(inputs)).astype("float32")
            arrays[f"{name}/{layer}/bias"] = rng.normal(scale=0.1, size=units).astype("float32")
    np.savez(path, **arrays)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> dict:
    """{backend: (store root, the subprocess's report, its arrays)}: both backends record at once."""
    folder = tmp_path_factory.mktemp("backends")
    _given(folder / "given.npz")
    running = {}
    for backend in BACKENDS:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
        paths = [str(folder / backend), str(folder / "given.npz"), str(folder / f"{backend}.npz")]
        running[backend] = python_process(_RECORD, *paths, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = {}
    try:
        for backend, process in running.items():
            stdout, stderr = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, f"recording on {backend} failed:\n{stderr[-4000:]}"
            results[backend] = (
                str(folder / backend),
                json.loads(stdout.strip().splitlines()[-1]),
                dict(np.load(folder / f"{backend}.npz")),
            )
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    return results


def _runs(recorded, run_id):
    return [RunStore(recorded[backend][0]).run(run_id) for backend in BACKENDS]


def _structure(value):
    """The nested keys of a snapshot's layer record, without the values."""
    return (
        {k: _structure(v) for k, v in value.items()}
        if isinstance(value, dict)
        else type(value).__name__ in ("int", "float")
    )


@pytest.mark.parametrize("run_id", ["mlp", "bn"])
def test_both_backends_record_the_same_snapshots_with_the_same_arrays(recorded, run_id):
    assert {backend: recorded[backend][1]["backend"] for backend in BACKENDS} == {b: b for b in BACKENDS}
    tf_run, jax_run = _runs(recorded, run_id)
    assert tf_run.status == jax_run.status == "finished"
    assert (
        tf_run.layers == jax_run.layers and len(tf_run.layers) == {"mlp": 3, "bn": 4}[run_id]
    )  # Dropout is not recorded
    order = [
        [tuple(s.meta[k] for k in ("kind", "epoch", "step", "batch")) for s in run.snapshots()]
        for run in (tf_run, jax_run)
    ]
    assert order[0] == order[1]
    assert len(order[0]) == (
        3 if run_id == "mlp" else 5
    )  # epochs 0, 1, 2; the bn run also every 3 batches (steps 3, 6)
    for mine, theirs in zip(tf_run.snapshots(), jax_run.snapshots()):
        assert sorted(mine.keys()) == sorted(theirs.keys())
        for key in mine.keys():
            assert mine.array(key).shape == theirs.array(key).shape, key
            assert mine.array(key).dtype == theirs.array(key).dtype, key
        assert mine.skipped() == theirs.skipped() == []
        for index in range(len(tf_run.layers)):
            assert _structure(mine.layer(index)) == _structure(theirs.layer(index))
    for run in (tf_run, jax_run):
        last = run.epoch_snapshots()[-1]
        for index, layer in enumerate(run.layers):
            assert set(last.layer(index)["grad"]) == {*layer["weights"], "output"}
            assert (
                last.layer(index)["grad"]["output"]["norm"] > 0
            )  # the error signal reaching each output, the softmax's too


def test_on_identical_weights_both_backends_record_the_same_values(recorded):
    """Epoch 0 of both models (the given weights), and every snapshot of the MLP, whose training is deterministic."""
    for run_id in ("mlp", "bn"):
        tf_run, jax_run = _runs(recorded, run_id)
        snapshots = list(zip(tf_run.snapshots(), jax_run.snapshots()))
        for mine, theirs in snapshots if run_id == "mlp" else snapshots[:1]:
            where = f"{run_id} epoch {mine.meta['epoch']} batch {mine.meta['batch']}"
            assert mine.meta["probe_loss"] == pytest.approx(theirs.meta["probe_loss"], rel=1e-4), where
            assert mine.meta["probe_model_accuracy"] == theirs.meta["probe_model_accuracy"], where
            np.testing.assert_allclose(mine.array("pred/probs"), theirs.array("pred/probs"), atol=1e-4, err_msg=where)
            np.testing.assert_allclose(mine.array("L0/kernel"), theirs.array("L0/kernel"), atol=1e-4, err_msg=where)
            for index in range(len(tf_run.layers)):
                np.testing.assert_allclose(
                    mine.array(f"L{index}/unit_mean"), theirs.array(f"L{index}/unit_mean"), atol=1e-4, err_msg=where
                )
                # PCA of the same outputs: the same shares and coordinates (each axis's sign is chosen the same way)
                np.testing.assert_allclose(
                    mine.layer(index)["pca"]["explained_variance_ratio"],
                    theirs.layer(index)["pca"]["explained_variance_ratio"],
                    atol=1e-4,
                    err_msg=where,
                )
                np.testing.assert_allclose(
                    mine.array(f"L{index}/pca"), theirs.array(f"L{index}/pca"), atol=2e-3, err_msg=where
                )
                np.testing.assert_allclose(
                    mine.layer(index)["activation"]["percentiles"],
                    theirs.layer(index)["activation"]["percentiles"],
                    atol=1e-4,
                    err_msg=where,
                )
                assert mine.layer(index)["linear_probe"] == pytest.approx(theirs.layer(index)["linear_probe"], abs=0.02)
                if run_id == "mlp":  # inference-mode gradients: no randomness
                    for role, statistics in mine.layer(index)["grad"].items():
                        assert statistics["norm"] == pytest.approx(
                            theirs.layer(index)["grad"][role]["norm"], rel=1e-3
                        ), f"{where} L{index} {role}"
    steps, norms = _runs(recorded, "mlp")[0].batch_gradient_norms()
    jax_steps, jax_norms = _runs(recorded, "mlp")[1].batch_gradient_norms()
    np.testing.assert_array_equal(steps, [2, 4, 6])  # 3 batches an epoch, every 2nd
    np.testing.assert_array_equal(jax_steps, steps)
    np.testing.assert_allclose(jax_norms, norms, rtol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_mode_gradients_match_the_backends_own_and_leave_the_model_as_a_plain_fit(recorded, backend):
    root, report, arrays = recorded[backend]
    run = RunStore(root).run("bn")
    first = run.epoch_snapshots()[0]
    names = [layer["name"] for layer in run.layers]
    for name, role in (("dense", "kernel"), ("dense", "bias"), ("norm", "gamma"), ("norm", "beta"), ("out", "kernel")):
        expected = np.linalg.norm(arrays[f"reference/{name}/{role}"])
        # abs: the dense bias's gradient is rounding noise, batch normalization takes out any shift before it
        assert first.layer(names.index(name))["grad"][role]["norm"] == pytest.approx(expected, rel=1e-4, abs=1e-6), (
            f"{name}/{role}"
        )
    recorded_paths = sorted(key.split("/", 1)[1] for key in arrays if key.startswith("recorded/"))
    assert any(path.endswith("moving_mean") for path in recorded_paths)
    for path in recorded_paths:  # weights, moving statistics and dropout's seed: exactly as a plain fit leaves them
        np.testing.assert_allclose(
            arrays[f"recorded/{path}"], arrays[f"plain/{path}"], rtol=1e-6, atol=1e-7, err_msg=path
        )
    moving_mean = next(arrays[f"recorded/{path}"] for path in recorded_paths if path.endswith("moving_mean"))
    assert np.abs(moving_mean).max() > 1e-3  # training did move the statistics the recording must not touch
    assert report["probe_pass"] == {"tensorflow": "core.capture.probe_tf", "jax": "core.capture.probe_jax"}[backend]
    if backend == "jax":  # the JAX path never falls back on TensorFlow
        assert not report["tensorflow_before_fit"] and not report["probe_tf_loaded"]


def test_an_unsupported_backend_is_refused_when_the_recorder_is_made():
    script = (
        "import numpy as np\nfrom core import Recorder\nfrom core.capture.probe_pass import check_backend\n"
        "for make in (lambda: Recorder('unused', probe=np.zeros((4, 2))), lambda: check_backend('torch')):\n"
        "    try:\n        make()\n    except RuntimeError as error:\n        print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KERAS_BACKEND": "numpy"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "Strata records on the TensorFlow and JAX backends; the 'numpy' backend is not supported yet: set "
        "KERAS_BACKEND=tensorflow or jax",
        "Strata records on the TensorFlow and JAX backends; PyTorch is not supported yet: set "
        "KERAS_BACKEND=tensorflow or jax",
    ]
    assert not (REPO / "unused").exists()


def test_a_fit_killed_on_jax_is_recovered_on_jax_as_it_was_recorded_live(tmp_path):
    """`python -m core recover` runs the JAX probe pass on the journaled weights: the snapshots a SIGKILL left
    unwritten come out as the same fit recorded live wrote them."""
    _given(tmp_path / "given.npz")
    root, env = tmp_path / "runs", {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-c", _KILLABLE, str(root), str(tmp_path / "given.npz")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    killed = RunStore(str(root)).run("killed")
    unwritten = killed.unwritten_captures()
    assert unwritten >= 1 and unwritten + len(killed.snapshots()) == 5
    command = [sys.executable, "-m", "core", "recover", "killed", "--runs", str(root)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    recovered, live = RunStore(str(root)).run("killed"), RunStore(str(root)).run("live")
    # The status the journal's end entry names, or "interrupted" when the kill came first: as on TensorFlow.
    assert recovered.status in ("finished", "interrupted")
    assert recovered.meta["recovered_snapshots"] == unwritten
    assert (
        [s.meta["epoch"] for s in recovered.snapshots()]
        == [s.meta["epoch"] for s in live.snapshots()]
        == [0, 1, 2, 3, 4]
    )
    for mine, theirs in zip(recovered.snapshots(), live.snapshots()):
        assert mine.meta["step"] == theirs.meta["step"]
        np.testing.assert_allclose(mine.array("L0/kernel"), theirs.array("L0/kernel"), atol=1e-6)
        for index in range(3):
            np.testing.assert_allclose(mine.array(f"L{index}/pca"), theirs.array(f"L{index}/pca"), atol=1e-4)
            np.testing.assert_allclose(
                mine.array(f"L{index}/unit_mean"), theirs.array(f"L{index}/unit_mean"), atol=1e-5
            )
            for role, statistics in theirs.layer(index)["grad"].items():
                assert mine.layer(index)["grad"][role]["norm"] == pytest.approx(statistics["norm"], rel=1e-4)
