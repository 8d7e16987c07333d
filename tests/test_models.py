"""Tests for core.training.models: layer layout and names, config validation, seeding, and a tiny real fit."""

import numpy as np
import pytest

from core.training.datasets import load_dataset
from core.training.models import ModelConfig, build_model, parse_hidden


def layer_names(model):
    return [layer.name for layer in model.layers]


def test_plane_model_layers_and_shapes():
    model = build_model((2,), 2, ModelConfig(hidden=(8, 4)))
    assert layer_names(model) == ["dense_0", "dense_1", "output"]
    assert model.output_shape == (None, 2)
    assert model.get_layer("dense_0").activation.__name__ == "relu"
    assert model.get_layer("output").activation.__name__ == "softmax"
    assert model.loss == "sparse_categorical_crossentropy"


def test_digits_model_from_dataset():
    digits = load_dataset("digits", n_samples=100)
    model = build_model(digits.input_shape, digits.n_classes, ModelConfig(hidden=(16,)))
    assert layer_names(model) == ["dense_0", "output"]
    assert model.output_shape == (None, 10)


def test_image_shaped_input_is_flattened_first():
    model = build_model((8, 8), 10, ModelConfig(hidden=(16,)))
    assert layer_names(model) == ["flatten", "dense_0", "output"]


def test_batch_norm_dropout_and_l2_layers_when_asked():
    config = ModelConfig(hidden=(8, 4), activation="tanh", batch_norm=True, dropout=0.2, l2=1e-4)
    model = build_model(3, 2, config)
    assert layer_names(model) == [
        "dense_0", "batch_norm_0", "activation_0", "dropout_0",
        "dense_1", "batch_norm_1", "activation_1", "dropout_1",
        "output",
    ]  # fmt: skip
    assert model.get_layer("dense_0").activation.__name__ == "linear"  # BN normalises pre-activations
    assert model.get_layer("activation_0").activation.__name__ == "tanh"
    assert model.get_layer("dropout_1").rate == 0.2
    assert model.get_layer("dense_1").kernel_regularizer is not None
    assert model.get_layer("output").kernel_regularizer is None


def test_optimizer_and_learning_rate_are_applied():
    model = build_model((2,), 2, ModelConfig(hidden=(4,), optimizer="sgd", lr=0.01, init="he_normal"))
    assert type(model.optimizer).__name__ == "SGD"
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)


def test_same_seed_same_initial_weights_other_seed_differs():
    def weights(seed):
        return build_model((2,), 2, ModelConfig(hidden=(8, 4), seed=seed)).get_weights()

    first, again, other = weights(7), weights(7), weights(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])


def test_tiny_fit_runs_with_finite_loss():
    moons = load_dataset("moons", n_samples=64)
    model = build_model(moons.input_shape, moons.n_classes, ModelConfig(hidden=(8, 8), batch_norm=True, dropout=0.1))
    history = model.fit(moons.x, moons.y, epochs=2, batch_size=16, verbose=0)
    assert len(history.history["loss"]) == 2
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("hidden", (), r"at least one layer size.*Received: hidden=\(\)"),
        ("hidden", (8, 0), r"positive integers.*Received: hidden=\(8, 0\)"),
        ("activation", "relux", r"Unknown activation.*relu, tanh, sigmoid.*Received: activation='relux'"),
        ("init", "glorot_unifrom", r"Unknown init.*he_normal.*Received: init='glorot_unifrom'"),
        ("optimizer", "adamm", r"Unknown optimizer.*sgd.*Received: optimizer='adamm'"),
        ("lr", 0.0, r"lr must be > 0.*Received: lr=0.0"),
        ("dropout", 1.0, r"dropout must be in \[0, 1\).*Received: dropout=1.0"),
        ("l2", -1e-4, r"l2 must be >= 0.*Received: l2=-0.0001"),
    ],
)
def test_validation_errors_repeat_the_received_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{field: value}).validate()


def test_build_model_validates_config_and_classes():
    with pytest.raises(ValueError, match="Received: activation='nope'"):
        build_model((2,), 2, ModelConfig(activation="nope"))
    with pytest.raises(ValueError, match="Received: n_classes=1"):
        build_model((2,), 1, ModelConfig())


def test_parse_hidden():
    assert parse_hidden("128,64,32") == (128, 64, 32)
    assert parse_hidden(" 16 , 8 ") == (16, 8)
    for bad in ["", "128,,32", "128,x", "-4", "0", "1.5"]:
        with pytest.raises(ValueError, match=f"e.g. '128,64,32'. Received: {bad!r}"):
            parse_hidden(bad)
