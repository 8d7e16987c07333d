"""Builds the compiled Keras MLP classifier that Strata trains, from one small validated config."""

from __future__ import annotations

from dataclasses import dataclass, make_dataclass
from typing import TYPE_CHECKING

from core.settings import ACTIVATIONS, INITIALIZERS, OPTIMIZERS, dataclass_fields, model_settings

if TYPE_CHECKING:
    import keras


@dataclass
class ModelConfig(make_dataclass("ModelSettings", dataclass_fields(model_settings()))):  # type: ignore[misc]
    """Architecture and training settings of the MLP; `validate()` checks them before any layer is built.

    Its fields (`hidden`, `activation`, `init`, `optimizer`, `lr`, `l2`, `dropout`, `batch_norm`, `seed`) and their
    defaults are the settings `core.settings` marks `model=True`, the same defaults `python -m core train` uses.
    """

    def validate(self) -> ModelConfig:
        """Returns self, or raises ValueError naming the first bad setting and the value received."""
        hidden = tuple(self.hidden)
        if not hidden:
            raise ValueError(
                f"hidden must list at least one layer size, e.g. (128, 64, 32). Received: hidden={hidden!r}"
            )
        if not all(isinstance(units, int) and not isinstance(units, bool) and units > 0 for units in hidden):
            raise ValueError(f"hidden sizes must be positive integers, e.g. (128, 64, 32). Received: hidden={hidden!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, e.g. 1e-3. Received: lr={self.lr!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(
                f"dropout must be in [0, 1): it is the fraction of units dropped. Received: dropout={self.dropout!r}"
            )
        if not self.l2 >= 0:
            raise ValueError(f"l2 must be >= 0 (0 turns weight decay off). Received: l2={self.l2!r}")
        import keras  # last: every check above answers without loading TensorFlow

        _check_known(keras.activations.get, "activation", self.activation, ACTIVATIONS)
        _check_known(keras.initializers.get, "init", self.init, INITIALIZERS)
        _check_known(keras.optimizers.get, "optimizer", self.optimizer, OPTIMIZERS)
        return self


def build_model(input_shape, n_classes, config: ModelConfig | None = None) -> keras.Model:
    """Returns a compiled `keras.Sequential` MLP with stable, readable layer names.

    Each hidden layer i (from 0) is `dense_{i}`, followed by `batch_norm_{i}` and `activation_{i}` when
    `config.batch_norm`, and by `dropout_{i}` when `config.dropout > 0`. Inputs with more than one dimension
    pass through `flatten` first. The softmax layer is `output`.

    Example:
        model = build_model((2,), 2, ModelConfig(hidden=(8, 8), activation="tanh"))
        model.fit(x, y, epochs=5)
    """
    import keras

    config = (config or ModelConfig()).validate()
    input_shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2 for a softmax classifier. Received: n_classes={n_classes!r}")
    keras.utils.set_random_seed(config.seed)

    layers = [keras.Input(shape=input_shape, name="input")]
    if len(input_shape) > 1:
        layers.append(keras.layers.Flatten(name="flatten"))
    for i, units in enumerate(config.hidden):
        layers.extend(_hidden_block(i, units, config))
    layers.append(keras.layers.Dense(n_classes, activation="softmax", kernel_initializer=config.init, name="output"))
    model = keras.Sequential(layers, name="strata_mlp")
    model.compile(
        optimizer=keras.optimizers.get({"class_name": config.optimizer, "config": {"learning_rate": config.lr}}),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def parse_hidden(text: str) -> tuple[int, ...]:
    """Returns layer sizes from a comma-separated string: "128,64,32" -> (128, 64, 32)."""
    parts = [part.strip() for part in str(text).split(",")]
    if not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(f"hidden must be positive integers separated by commas, e.g. '128,64,32'. Received: {text!r}")
    return tuple(int(part) for part in parts)


def _hidden_block(i, units, config) -> list[keras.layers.Layer]:
    import keras

    regularizer = keras.regularizers.L2(config.l2) if config.l2 > 0 else None
    dense = keras.layers.Dense(
        units,
        activation=None if config.batch_norm else config.activation,
        kernel_initializer=config.init,
        kernel_regularizer=regularizer,
        name=f"dense_{i}",
    )
    block = [dense]
    if config.batch_norm:
        block.append(keras.layers.BatchNormalization(name=f"batch_norm_{i}"))
        block.append(keras.layers.Activation(config.activation, name=f"activation_{i}"))
    if config.dropout > 0:
        block.append(keras.layers.Dropout(config.dropout, name=f"dropout_{i}"))
    return block


def _check_known(lookup, field, value, examples):
    try:
        lookup(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"Unknown {field}: Keras does not recognise it. Try one of: {', '.join(examples)}. "
            f"Received: {field}={value!r}"
        ) from error
