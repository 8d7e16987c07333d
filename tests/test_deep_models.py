"""Deep models are first-class: a residual network of more than 80 layers records a readable set of layers by
default, any set the user names (by name, pattern or type), or all of them, and every page opens on each."""

import json

import pytest
from apptest_pages import open_app
from conftest import run_python

from core.store import RunStore

BLOCKS = 14  # 6 layers a block, plus the stem and head: 90 recordable layers

RECORD = f"""
import sys
import keras, numpy as np
from core import Recorder

root = sys.argv[1]
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(96, 8, 8, 3)).astype("float32")
y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype("int64")


def residual_network():
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    for block in range({BLOCKS}):
        if block == {BLOCKS} // 2:  # a second stage at half the resolution
            h = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="down")(h)
        r = keras.layers.Conv2D(8, 3, padding="same", name=f"block{{block}}_conv_a")(h)
        r = keras.layers.BatchNormalization(name=f"block{{block}}_bn_a")(r)
        r = keras.layers.ReLU(name=f"block{{block}}_relu_a")(r)
        r = keras.layers.Conv2D(8, 3, padding="same", name=f"block{{block}}_conv_b")(r)
        r = keras.layers.BatchNormalization(name=f"block{{block}}_bn_b")(r)
        h = keras.layers.Add(name=f"block{{block}}_add")([h, r])
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(h)
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])  # SGD: no slots to trace
    return model


# One model fits twice, each fit a run of its own: its training step, ~120 variables deep, is traced once, not twice.
model = residual_network()
for run_id, layers in (("auto", None), ("all", "all")):
    recorder = Recorder(root, probe=(x, y), run_id=run_id, budget=None, layers=layers)
    model.fit(x, y, epochs=1, batch_size=32, callbacks=[recorder], verbose=0)
    recorder.wait()
print("ok")
"""


@pytest.fixture(scope="module")
def deep_runs(recorded):
    return str(recorded(RECORD))


def names(run) -> list[str]:
    return [layer["name"] for layer in run.layers]


def test_a_deep_network_records_its_block_outputs_and_stage_ends_by_default(deep_runs):
    run = RunStore(deep_runs).run("auto")
    recorded = names(run)
    assert run.meta["layer_selection"]["recordable"] > 80
    assert run.meta["layer_selection"] == {
        "asked": "auto",
        "recorded": len(recorded),
        "recordable": run.meta["layer_selection"]["recordable"],
    }
    assert len(recorded) <= 32
    assert [n for n in recorded if n.endswith("_add")] == [f"block{b}_add" for b in range(BLOCKS)]
    assert recorded[0] == "stem" and recorded[-2:] == ["pool", "head"]
    assert f"block{BLOCKS // 2 - 1}_add" in recorded  # the last layer at 8×8, where the first stage ends
    stages = [layer["stage"] for layer in run.layers]
    assert stages[0] == "8×8" and "4×4" in stages and stages[-1] == "layers"
    assert all(len(s.meta["layers"]) == len(recorded) for s in run.epoch_snapshots())


def test_all_records_every_layer(deep_runs):
    run = RunStore(deep_runs).run("all")
    assert len(names(run)) == run.meta["layer_selection"]["recordable"] > 80


def test_the_layer_picker_lists_a_deep_models_layers_by_stage(deep_runs):
    at = open_app(deep_runs, "layers", run="auto", layer="block3_add")
    picker = at.sidebar.selectbox(key="layer")
    assert picker.value == "block3_add"
    assert "8×8 · block3_add" in picker.options and "4×4 · block12_add" in picker.options
    assert "layers · head" in picker.options


@pytest.mark.parametrize("page", ["embeddings", "gradients", "layers"])
def test_every_page_opens_on_every_layer_of_a_deep_run(deep_runs, page):
    at = open_app(deep_runs, page, run="all", layer="block3_add")
    assert not at.exception, at.exception
    assert at.get("plotly_chart")


# The command line's `main` on each argument list in turn, in one process: one TensorFlow import for both.
_CLI = """
import json, sys
from core.cli import main
for argv in json.loads(sys.argv[1]):
    print(f"exit {main(argv)}", flush=True)
"""


def test_the_cli_records_the_layers_it_is_given_by_name_pattern_or_type(tmp_path):
    runs = ["--runs", str(tmp_path), "--quiet"]
    layers = ["--hidden", "8,8", "--batch-norm", "--epochs", "1", "--layers", "dense_1,activation_*,BatchNormalization"]
    wrong = ["--hidden", "8", "--epochs", "1", "--layers", "nothing_*"]
    commands = [["train", "--dataset", "iris", *layers, *runs], ["train", "--dataset", "iris", *wrong, *runs]]
    result = run_python(_CLI, json.dumps(commands))
    *recorded, first, second = result.stdout.strip().splitlines()
    assert first == "exit 0", result.stderr[-2000:]
    run = RunStore(str(tmp_path)).run(recorded[-1])
    # By name, by pattern, by type, and the output always, in the model's order
    assert names(run) == ["batch_norm_0", "activation_0", "dense_1", "batch_norm_1", "activation_1", "output"]
    assert run.meta["layer_selection"]["asked"] == "dense_1, activation_*, BatchNormalization"
    assert second != "exit 0" and "'nothing_*' matches no recorded layer" in result.stderr
