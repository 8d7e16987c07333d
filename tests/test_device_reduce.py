"""`Recorder(reduce="device")` writes the snapshots `reduce="host"` writes: the same keys and meta, the same values
within float32 tolerance, on TensorFlow and on JAX.

Each backend records in a subprocess of its own (Keras fixes its backend at import): the same two small models (an
MLP on 2-D inputs, so the input-plane arrays are recorded too, and a CNN whose widest map is pooled before its
PCA) with the same weights, fitted twice, unshuffled, once with each setting. This process compares the stores.

The linear probe is the one value computed on something else: on the top 32 principal coordinates the device
ships instead of the layer's output (core/FORMAT.md), so it is checked to lie within the 95% interval of the
host's accuracy; `tests/test_layer_metrics.py` checks it on a trained network where the truth is known.
"""

from __future__ import annotations

import os
from pathlib import Path

import conftest
import numpy as np
import pytest

from core.capture.reduced import FEATURE_COMPONENTS
from core.capture.snapshot import analysis_features
from core.store import RunStore

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300

_RECORD = r"""
import os, sys
import numpy as np

if os.environ["KERAS_BACKEND"] == "jax":
    # Nothing here needs TensorFlow on JAX, but keras.utils.set_random_seed imports it (when installed) only to seed
    # it: ~15 s of CPU time. Unimportable, as on a machine with JAX alone; the stores are the same to the bit.
    sys.modules["tensorflow"] = None
import keras
from core import Recorder

root = sys.argv[1]
rng = np.random.default_rng(0)
plane_x = rng.standard_normal((240, 2)).astype("float32")
plane_y = ((plane_x[:, 0] * plane_x[:, 1] > 0).astype("int64") + (plane_x[:, 0] > 1)).astype("int64")
image_x = rng.standard_normal((120, 20, 20, 2)).astype("float32")
image_y = (image_x[:, :10, :, 0].mean(axis=(1, 2)) > 0).astype("int64")


def build(name):
    keras.utils.set_random_seed(3)
    if name == "mlp":
        layers = [keras.Input((2,)), keras.layers.Dense(24, activation="relu"),
                  keras.layers.Dense(12, activation="tanh"), keras.layers.Dense(3, activation="softmax")]
    else:
        layers = [keras.Input((20, 20, 2)), keras.layers.Conv2D(16, 3, activation="relu"),
                  keras.layers.MaxPooling2D(2), keras.layers.Conv2D(8, 3, activation="sigmoid"),
                  keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")]
    model = keras.Sequential(layers, name=name)
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


for name, (x, y) in {"mlp": (plane_x, plane_y), "cnn": (image_x, image_y)}.items():
    model = build(name)  # one model, its training step compiled once, fitted from the same start with each setting
    start = model.get_weights()
    for reduce in ("host", "device"):
        model.set_weights(start)
        model.optimizer.iterations.assign(0)  # plain SGD keeps no other state
        recorder = Recorder(root, probe=(x, y), analysis="thread", budget=None, reduce=reduce,
                            run_id=f"{name}-{reduce}")
        model.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0, callbacks=[recorder])
        recorder.wait()
print("ok")
"""


@pytest.fixture(scope="module", params=["tensorflow", "jax"])
def store(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    env = {**os.environ, "KERAS_BACKEND": request.param, "TF_CPP_MIN_LOG_LEVEL": "3"}
    conftest.run_python(_RECORD, str(root), env=env, timeout=TIMEOUT)
    return RunStore(str(root))


def key_paths(value, prefix=""):
    """Every key path of a nested dict (lists of dicts by position)."""
    if isinstance(value, dict):
        return {p for key, item in value.items() for p in key_paths(item, f"{prefix}/{key}")} | {prefix}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return {p for i, item in enumerate(value) for p in key_paths(item, f"{prefix}[{i}]")}
    return {prefix}


def _feature_width(layer: dict) -> int:
    return analysis_features(np.zeros((1, *layer["output_shape"][1:]), np.float32))[0].shape[1]


def pairs(store, name):
    host, device = store.run(f"{name}-host"), store.run(f"{name}-device")
    hosts, devices = host.epoch_snapshots(), device.epoch_snapshots()
    assert len(hosts) == len(devices) == 3  # before training and after each of 2 epochs
    return list(zip(hosts, devices))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_the_same_keys_and_meta_fields(store, name):
    widths = [_feature_width(layer) for layer in store.run(f"{name}-host").meta["layers"]]
    wide = {f"/layers[{i}]/probe_components" for i, width in enumerate(widths) if width > FEATURE_COMPONENTS}
    for host, device in pairs(store, name):  # but a wide layer's probe says it read the top components only
        assert key_paths(device.meta) == key_paths(host.meta) | wide
        assert sorted(device.keys()) == sorted(host.keys())
    assert name == "mlp" or wide  # the CNN has wide layers


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_the_same_stored_values_within_float_tolerance(store, name):
    run = store.run(f"{name}-host")
    feature_widths = [_feature_width(layer) for layer in run.meta["layers"]]
    for host, device in pairs(store, name):
        for index, (h, d) in enumerate(zip(host.meta["layers"], device.meta["layers"])):
            where = f"{name} epoch {host.meta['epoch']} layer {index}"
            assert d["pca"]["explained_variance_ratio"] == pytest.approx(
                h["pca"]["explained_variance_ratio"], abs=1e-4
            ), where
            assert d["pca"]["total_variance"] == pytest.approx(h["pca"]["total_variance"], rel=1e-4), where
            assert d["pca"].get("pooled") == h["pca"].get("pooled"), where
            assert d["dimensionality"]["n90"] == h["dimensionality"]["n90"], where
            assert d["dimensionality"]["participation_ratio"] == pytest.approx(
                h["dimensionality"]["participation_ratio"], rel=1e-3
            ), where
            for key in ("mean", "std", "dead_fraction", "saturated_fraction"):
                assert d["activation"][key] == pytest.approx(h["activation"][key], rel=1e-4, abs=1e-6), (where, key)
            np.testing.assert_allclose(d["activation"]["percentiles"], h["activation"]["percentiles"], rtol=1e-4)
            for role, norm in h["weight_norm"].items():
                assert d["weight_norm"][role] == pytest.approx(norm, rel=1e-5), where
            for role, ratio in h["update_ratio"].items():
                assert d["update_ratio"][role] == pytest.approx(ratio, rel=1e-3), where
            for role, stats in h["grad"].items():
                for key, value in stats.items():
                    assert d["grad"][role][key] == pytest.approx(value, rel=1e-3, abs=1e-9), (where, role, key)
            assert d["separation"] == pytest.approx(h["separation"], abs=1e-4), where
            if feature_widths[index] <= FEATURE_COMPONENTS:  # the layer's own features are shipped: the same fit
                assert d["linear_probe"] == pytest.approx(h["linear_probe"], abs=1e-9), where
            else:  # a fit on its top 32 components, another feature set: on these barely trained layers, near
                # chance, the two differ by up to a dozen of the 59 held-out samples
                assert abs(d["linear_probe"] - h["linear_probe"]) <= 0.25, where
        np.testing.assert_allclose(device.meta["cka"], host.meta["cka"], atol=1e-4)
        assert device.meta["probe_loss"] == pytest.approx(host.meta["probe_loss"], rel=1e-6)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_the_same_arrays_within_float_tolerance(store, name):
    for host, device in pairs(store, name):
        for key in host.keys():
            expected, found = host.array(key), device.array(key)
            assert found.shape == expected.shape and found.dtype == expected.dtype, key
            if key.endswith(("unit_top", "unit_bottom")):
                continue  # below: ties (a dead unit's zeros) may rank in either order
            if key.endswith(("_hist", "hist_counts")):
                assert np.abs(found.astype(np.int64) - expected).sum() <= 4, key  # float32 bin edges
                continue
            if key.endswith("pca"):  # a component whose largest entries tie in size (a 2-unit softmax: (a, -a))
                # takes its first sign from float round-off, on either path: compare up to each column's sign
                found = found * np.where(np.sum(found * expected, axis=0) < 0, -1, 1)
            scale = max(float(np.abs(expected.astype(np.float64)).max(initial=0.0)), 1e-6)
            np.testing.assert_allclose(found, expected, atol=2e-3 * scale, rtol=1e-3, err_msg=key)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_unit_rankings_agree_on_units_without_ties(store, name):
    for host, device in pairs(store, name):
        for index in range(len(host.meta["layers"])):
            dead = host.array(f"L{index}/dead_units")[: len(host.array(f"L{index}/unit_top"))]
            # A zero-floor activation (relu) ties at 0 on many samples: its least-activating rows are any of them.
            keys = (
                ("unit_top",)
                if host.meta["layers"][index]["activation"]["percentiles"][0] == 0
                else ("unit_top", "unit_bottom")
            )
            for key in keys:
                expected, found = host.array(f"L{index}/{key}"), device.array(f"L{index}/{key}")
                agree = np.mean(np.all(found[~dead] == expected[~dead], axis=1))
                assert agree >= 0.9, (key, index, agree)  # near-equal unit means (float32) may swap neighbours


def test_a_killed_device_reducing_fit_is_recovered_as_it_was_recorded_live(tmp_path, monkeypatch):
    """The recovery journal's fit (conftest's KILLED_SCRIPT) with `reduce="device"`: recorded live, and SIGKILLed with
    its snapshots held back, then `python -m core recover`. The recovery reduces on the device too, resuming the
    axes from the stored coordinates of the snapshots written before the kill."""
    script = conftest.KILLED_SCRIPT.replace("run_id=mode,", "run_id=mode, reduce='device',")
    assert script != conftest.KILLED_SCRIPT
    monkeypatch.setattr(conftest, "KILLED_SCRIPT", script)  # read by _record_killable
    conftest._record_killable(tmp_path)
    store = RunStore(str(tmp_path))
    assert store.run("killed").unwritten_captures() >= 3
    from core.capture.recover import recover

    def stop_after_two(done, total, entry):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # interrupted: the second recovery resumes from the stored coordinates
        recover(str(tmp_path), "killed", stop_after_two)
    conftest.run_python(conftest.CORE, "recover", "killed", "--runs", str(tmp_path), timeout=TIMEOUT)
    recovered = store.run("killed").epoch_snapshots()
    live = store.run("live").epoch_snapshots()[: len(recovered)]
    assert len(recovered) >= conftest.KILLED_EPOCHS  # every epoch but the capture in progress at the kill
    assert [s.meta["epoch"] for s in recovered] == [s.meta["epoch"] for s in live]
    for mine, theirs in zip(recovered, live):
        np.testing.assert_allclose(mine.array("L0/kernel"), theirs.array("L0/kernel"), atol=1e-6)
        for index in range(3):
            np.testing.assert_allclose(mine.array(f"L{index}/pca"), theirs.array(f"L{index}/pca"), atol=1e-4)
            for key in ("update_ratio", "weight_norm"):
                assert mine.layer(index)[key] == pytest.approx(theirs.layer(index)[key], rel=1e-4)
            assert mine.layer(index)["grad"]["kernel"]["norm"] == pytest.approx(
                theirs.layer(index)["grad"]["kernel"]["norm"], rel=1e-4
            )


def test_auto_reduces_on_the_host_of_a_machine_without_an_accelerator():
    from core import Recorder
    from core.capture.device_pass import CPU_REDUCE, default_reduce

    x = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="reduce="):
        Recorder("memory://runs", probe=x, reduce="gpu")
    assert Recorder("memory://runs", probe=x).reduce == "auto"
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            pytest.skip("this machine has a GPU")
    assert CPU_REDUCE == "host" and default_reduce() == "host"


def _residual_cnn(blocks: int):
    """A residual CNN of 4 * blocks + 3 recorded layers: a stem convolution, `blocks` blocks of two convolutions, an
    Add and a ReLU, then pooling and a softmax head."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    for _ in range(blocks):
        y = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
        y = keras.layers.Conv2D(8, 3, padding="same")(y)
        x = keras.layers.Activation("relu")(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def test_an_80_layer_residual_model_moves_at_most_twice_the_bytes_its_snapshot_stores():
    """Issue 22's budget: what crosses from the device to the host for one snapshot (every array of the
    ReducedCapture) is at most 2x what the snapshot stores (its arrays and JSON header), every layer recorded. Its
    blocks' layers share shapes, so the device reduces them in groups: their values are the host's."""
    import json

    from core.capture.graph import recorded_layers, select_layers
    from core.capture.probe_pass import backend_passes, model_variables
    from core.capture.recorder import _roles, reducing_pass, run_capture_pass
    from core.capture.snapshot import RawCapture, SnapshotBuilder

    model = _residual_cnn(blocks=20)
    layers = select_layers(recorded_layers(model), "all")
    assert len(layers) >= 80
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 10, 96).astype(np.int64)
    settings = {
        "activations": [layer.activation for layer in layers],
        "labels": y,
        "components": 10,
        "seed": 0,
        "kernel_layer": next((i for i, l in enumerate(layers) if "kernel" in _roles(l)), None),
    }
    passes = backend_passes()
    variables = model_variables(model)
    inputs = tuple(passes.constants([x, y, None]))
    host = passes.ProbePass(model, layers, variables, True, False)
    moved, stored, metas = {}, {}, {}
    for reduce, capture_fn in (("host", host), ("device", reducing_pass(host, layers, settings, len(x)))):
        state = passes.read_state(model, variables)
        capture = run_capture_pass(
            capture_fn, inputs, layers, state, kind="epoch", epoch=0, step=0, batch=None, logs={}
        )
        if isinstance(capture, RawCapture):
            arrays = [*capture.outputs, capture.predictions, *(g for w in capture.weight_grads for g in w.values())]
            moved[reduce] = sum(np.asarray(a).nbytes for a in arrays)
        else:
            moved[reduce] = capture.nbytes()
        meta, snapshot_arrays = SnapshotBuilder(**settings).build(capture)
        stored[reduce] = sum(a.nbytes for a in snapshot_arrays.values()) + len(json.dumps(meta))
        metas[reduce] = meta
    assert stored["device"] == pytest.approx(stored["host"], rel=0.05)  # the same snapshot, either way
    assert moved["device"] <= 2 * stored["device"], (moved, stored)
    assert moved["host"] > 10 * stored["host"]  # what the budget saves: every layer's whole output on the probe
    host, device = metas["host"]["layers"], metas["device"]["layers"]
    for index, (h, d) in enumerate(zip(host, device)):
        assert d["pca"]["explained_variance_ratio"] == pytest.approx(h["pca"]["explained_variance_ratio"], abs=1e-4)
        assert d["activation"]["mean"] == pytest.approx(h["activation"]["mean"], rel=1e-4, abs=1e-6), index
        assert d["activation"]["dead_fraction"] == h["activation"]["dead_fraction"], index
        for role, stats in h.get("grad", {}).items():
            assert d["grad"][role]["norm"] == pytest.approx(stats["norm"], rel=1e-3, abs=1e-9), (index, role)
        assert d["weight_norm"] == pytest.approx(h["weight_norm"], rel=1e-5), index
    np.testing.assert_allclose(metas["device"]["cka"], metas["host"]["cka"], atol=1e-4)
