"""core/capture/graph.py on its own, on tiny real Keras models: which layers are recorded and selected, what each is
described as, and whether a model computes something else in training."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from core.capture.graph import (
    AUTO_ALL_LAYERS,
    auto_layers,
    check_selection,
    forward_recording,
    recorded_layers,
    select_layers,
    trains_differently,
)

layers = keras.layers


def _paths(recorded) -> list[str]:
    return [r.path for r in recorded]


def _mlp(*middle, name: str = "mlp") -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((6,)),
            layers.Dense(8, activation="relu", name="hidden"),
            *middle,
            layers.Dense(3, activation="softmax", name="out"),
        ],
        name=name,
    )


def _residual() -> keras.Model:
    inputs = keras.Input((8,), name="x")
    a = layers.Dense(8, activation="relu", name="a")(inputs)
    b = layers.Dense(8, name="b")(a)
    joined = layers.Add(name="join")([a, b])
    outputs = layers.Dense(3, activation="softmax", name="head")(joined)
    return keras.Model(inputs, outputs, name="residual")


def _nested() -> keras.Model:
    block = keras.Sequential(
        [keras.Input((8,)), layers.Dense(8, activation="tanh", name="d1"), layers.Dense(8, name="d2")], name="block"
    )
    return keras.Sequential(
        [keras.Input((8,)), block, layers.Dense(3, activation="softmax", name="head")], name="outer"
    )


@pytest.fixture(scope="module")
def deep_conv() -> keras.Model:
    """40 recordable layers: a stem, 12 residual blocks (Conv2D + Add) at 16x16, a pooling, 6 blocks at 8x8, a global
    pooling and a head."""
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    for i in range(12):
        x = layers.Add(name=f"add16_{i}")([x, layers.Conv2D(4, 3, padding="same", name=f"conv16_{i}")(x)])
    x = layers.MaxPooling2D(name="pool")(x)
    for i in range(6):
        x = layers.Add(name=f"add8_{i}")([x, layers.Conv2D(4, 3, padding="same", name=f"conv8_{i}")(x)])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(2, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="deep")


# ----------------------------------------------------------------------------------------------------------------
# recorded_layers and describe


def test_a_sequential_records_its_computing_layers_in_order():
    model = _mlp(layers.Dropout(0.5, name="drop"), layers.Dense(5, name="linear"), layers.Flatten(name="flat"))
    recorded = recorded_layers(model)
    assert _paths(recorded) == ["hidden", "linear", "out"]  # Dropout and Flatten repeat the previous panel
    first = recorded[0].describe(0)
    assert first == {
        "index": 0,
        "name": "hidden",
        "type": "Dense",
        "output_shape": [None, 8],
        "params": 56,
        "activation": "relu",
        "weights": ["kernel", "bias"],
        "stage": "layers",
    }
    assert recorded[1].activation is None  # "linear" is no activation
    assert recorded[2].describe(2)["activation"] == "softmax" and recorded[2].shape == (3,)


def test_a_functional_model_with_a_residual_add():
    recorded = recorded_layers(_residual())
    assert _paths(recorded) == ["a", "b", "join", "head"]
    join = recorded[2].describe(2)
    assert join["type"] == "Add" and join["params"] == 0 and join["weights"] == [] and join["output_shape"] == [None, 8]


def test_a_nested_model_is_flattened_with_paths():
    recorded = recorded_layers(_nested())
    assert _paths(recorded) == ["block/d1", "block/d2", "head"]
    assert [r.stage for r in recorded] == ["block", "block", "layers"]
    assert recorded[0].activation == "tanh"


def test_stages_of_image_like_outputs_are_their_spatial_size(deep_conv):
    recorded = recorded_layers(deep_conv)
    stages = {r.path: r.stage for r in recorded}
    assert stages["stem"] == "16×16" and stages["pool"] == "8×8" and stages["gap"] == "layers"
    assert recorded[0].describe(0)["output_shape"] == [None, 16, 16, 4]


def test_models_without_a_graph_are_refused_with_the_fix():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match="subclassed `Subclassed`.*functional API"):
        recorded_layers(Subclassed())
    with pytest.raises(ValueError, match=r"keras\.Input\(shape=\.\.\.\)"):
        recorded_layers(keras.Sequential([layers.Dense(2)]))


# ----------------------------------------------------------------------------------------------------------------
# check_selection and select_layers


@pytest.mark.parametrize(
    "selection", [None, "auto", "all", "dense", "block_*", ["a", layers.Dense], ("x",), {"y"}, frozenset({layers.Add})]
)
def test_valid_selections(selection):
    assert check_selection(selection) is None


# A class on its own is refused (a name on its own is not): the docstring asks for a list of classes.
@pytest.mark.parametrize("selection", ["", "  ", [], [""], [3], [int], 5, {"a": 1}, [layers.Dense(2)], layers.Dense])
def test_invalid_selections_repeat_what_was_passed(selection):
    with pytest.raises(ValueError, match="Received: layers="):
        check_selection(selection)


def test_select_by_name_path_pattern_class_and_class_name():
    recorded = recorded_layers(_nested())
    assert _paths(select_layers(recorded, "block/d1")) == ["block/d1", "head"]  # the last layer always
    assert _paths(select_layers(recorded, "d2")) == ["block/d2", "head"]  # a leaf name
    assert _paths(select_layers(recorded, "block/*")) == ["block/d1", "block/d2", "head"]
    assert _paths(select_layers(recorded, "d?")) == ["block/d1", "block/d2", "head"]  # a pattern over leaves
    assert _paths(select_layers(recorded, ["head", "d1"])) == ["block/d1", "head"]  # in execution order
    assert _paths(select_layers(recorded, [layers.Dense])) == ["block/d1", "block/d2", "head"]
    assert _paths(select_layers(recorded, "Layer")) == _paths(recorded)  # a base class's name matches too
    residual = recorded_layers(_residual())
    assert _paths(select_layers(residual, "Add")) == ["join", "head"]
    assert _paths(select_layers(residual, [layers.Add])) == ["join", "head"]
    assert _paths(select_layers(residual, None)) == _paths(select_layers(residual, "all")) == ["a", "b", "join", "head"]


def test_an_item_that_matches_nothing_lists_what_there_is():
    with pytest.raises(ValueError) as caught:
        select_layers(recorded_layers(_residual()), ["a", "conv*"])
    message = str(caught.value)
    assert "'conv*' matches no recorded layer" in message
    assert "Its layers are a, b, join, head" in message and "Add, Dense" in message
    assert "Received: layers=['a', 'conv*']" in message


def test_a_shallow_model_records_every_layer_by_default():
    recorded = recorded_layers(_mlp(*[layers.Dense(4, name=f"d{i}") for i in range(AUTO_ALL_LAYERS - 2)]))
    assert len(recorded) == AUTO_ALL_LAYERS
    assert select_layers(recorded) == recorded and select_layers(recorded, "auto") == recorded


def test_a_deep_model_records_blocks_stage_ends_and_head(deep_conv):
    recorded = recorded_layers(deep_conv)
    assert len(recorded) == 40 > AUTO_ALL_LAYERS
    chosen = _paths(select_layers(recorded))
    assert chosen == _paths(auto_layers(recorded))
    adds = [f"add16_{i}" for i in range(12)] + [f"add8_{i}" for i in range(6)]
    assert chosen == ["stem", *adds, "gap", "head"]  # first, every join, and the head; add16_11 also ends 16x16
    assert len(select_layers(recorded, "all")) == 40


def test_a_deep_plain_stack_keeps_its_first_layer_and_head():
    recorded = recorded_layers(_mlp(*[layers.Dense(4, name=f"d{i}") for i in range(38)]))
    assert len(recorded) == 40
    assert _paths(select_layers(recorded)) == ["hidden", "d37", "out"]


def test_a_stage_ends_before_padding_not_at_it():
    inputs = keras.Input((8, 8, 2))
    x = layers.Conv2D(2, 3, padding="same", name="c8")(inputs)
    x = layers.ZeroPadding2D(1, name="pad")(x)  # 10x10
    x = layers.Conv2D(2, 3, name="c8b")(x)  # back to 8x8
    x = layers.Conv2D(2, 3, strides=2, padding="same", name="c4")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(2, name="head")(x)
    recorded = recorded_layers(keras.Model(inputs, outputs))
    assert _paths(recorded) == ["c8", "pad", "c8b", "c4", "gap", "head"]
    assert _paths(auto_layers(recorded)) == ["c8", "c8b", "c4", "gap", "head"]  # never the padding


def test_past_the_limit_an_even_spread_keeps_the_last_layer(deep_conv):
    recorded = recorded_layers(deep_conv)
    spread = _paths(auto_layers(recorded, limit=5))
    assert len(spread) == 5 and spread[0] == "stem" and spread[-1] == "head"
    full = _paths(auto_layers(recorded))
    assert [full.index(p) for p in spread] == sorted(full.index(p) for p in spread)  # a subset, in order


# ----------------------------------------------------------------------------------------------------------------
# trains_differently


class _Noisy(layers.Layer):
    def call(self, x, training=False):
        return x


class _Plain(layers.Layer):
    def call(self, x):
        return x


@pytest.mark.parametrize(
    "middle, expected",
    [
        ((), False),
        ((layers.Dense(4),), False),
        ((layers.BatchNormalization(),), True),
        ((layers.Dropout(0.2),), True),
        ((layers.GaussianNoise(0.1),), True),
        ((_Noisy(),), True),  # a custom call that takes `training`
        ((_Plain(),), False),
    ],
    ids=["plain", "dense", "batchnorm", "dropout", "noise", "custom-training", "custom-plain"],
)
def test_trains_differently(middle, expected):
    assert trains_differently(_mlp(*middle)) is expected


def test_trains_differently_looks_inside_nested_models_and_recurrent_dropout():
    block = keras.Sequential([keras.Input((8,)), layers.Dense(8), layers.BatchNormalization()], name="bn_block")
    nested = keras.Sequential([keras.Input((8,)), block, layers.Dense(2)])
    assert trains_differently(nested) is True
    assert trains_differently(_nested()) is False

    def recurrent(**dropout):
        return keras.Sequential([keras.Input((5, 3)), layers.LSTM(4, **dropout), layers.Dense(2)])

    assert trains_differently(recurrent()) is False
    assert trains_differently(recurrent(dropout=0.1)) is True
    assert trains_differently(recurrent(recurrent_dropout=0.1)) is True
    flips = keras.Sequential([keras.Input((8, 8, 1)), layers.RandomFlip(), layers.Flatten(), layers.Dense(2)])
    assert trains_differently(flips) is True


# ----------------------------------------------------------------------------------------------------------------
# forward_recording


def test_forward_recording_returns_the_output_and_every_layers_own():
    model = _nested()
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    outputs: dict = {}
    result = keras.ops.convert_to_numpy(forward_recording(model, x, outputs))
    np.testing.assert_allclose(result, keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-6)
    recorded = recorded_layers(model)
    assert all(id(r.layer) in outputs for r in recorded)
    d1 = recorded[0].layer
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(outputs[id(d1)]),
        np.tanh(x @ keras.ops.convert_to_numpy(d1.kernel) + keras.ops.convert_to_numpy(d1.bias)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_forward_recording_in_training_mode_applies_dropout():
    keras.utils.set_random_seed(0)
    model = _mlp(layers.Dropout(0.5, name="drop"))
    x = np.ones((64, 6), "float32")
    inference: dict = {}
    training: dict = {}
    forward_recording(model, x, inference)
    forward_recording(model, x, training, training=True)
    drop = model.get_layer("drop")
    hidden = keras.ops.convert_to_numpy(inference[id(model.get_layer("hidden"))])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(inference[id(drop)]), hidden)  # the identity
    dropped = keras.ops.convert_to_numpy(training[id(drop)])
    assert 0 < np.mean(dropped == 0) < 1 and not np.allclose(dropped, hidden)


# ----------------------------------------------------------------------------------------------------------
# The private Keras APIs, all behind core/capture/keras_internals.py


PRIVATE_KERAS = (
    "keras.src",
    "_flatten_layers",
    "_run_through_graph",
    "_functional",
    "operation_fn",
    "_keras_history",
    "_inputs_struct",
    "_outputs_struct",
    "_compile_loss",
    "_compute_loss",
)


def test_no_module_but_keras_internals_touches_a_private_keras_api():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    users = {
        str(path.relative_to(root))
        for folder in ("core", "dashboard")
        for path in (root / folder).rglob("*.py")
        if any(name in path.read_text() for name in PRIVATE_KERAS)
    }
    assert users == {"core/capture/keras_internals.py"}


def test_the_internals_see_graphs_nested_layers_and_run_a_graph_with_each_call_wrapped():
    from core.capture import keras_internals

    inner = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="inner_dense")], name="inner")
    inputs = keras.Input((4,))
    outputs = layers.Dense(2, name="head")(inner(inputs))
    model = keras.Model(inputs, outputs)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert keras_internals.is_graph_model(model) and keras_internals.is_graph_model(inner)
    assert not keras_internals.is_graph_model(layers.Dense(2)) and keras_internals.graph_of(Subclassed()) is None
    assert keras_internals.graph_of(keras.Sequential([layers.Dense(2)])) is None  # not built: no graph yet
    assert keras_internals.graph_of(model) is model and keras_internals.graph_of(inner) is not None
    assert {layer.name for layer in keras_internals.all_layers(model)} >= {"inner", "inner_dense", "head"}

    called = []

    def wrap(operation):
        call = keras_internals.operation_call(operation, training=False)
        return lambda *args, **kwargs: called.append(operation.name) or call(*args, **kwargs)

    x = np.ones((5, 4), "float32")
    result = keras_internals.run_graph(keras_internals.graph_of(model), x, wrap)
    np.testing.assert_allclose(np.asarray(result), np.asarray(model(x)), rtol=1e-6)
    assert called == ["inner", "head"]
