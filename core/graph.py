"""Walks a Keras 3 model's layer graph: which layers to record, and one forward pass that returns all their outputs.

Nested Sequential and functional models are flattened into their own layers, so a model built from blocks is
recorded layer by layer. Subclassed models have no graph to walk; they are refused with a message that says
how to rebuild them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import keras
from keras.src.models.functional import Functional, operation_fn

# Layers that are the identity at inference or only reshape: recording them would repeat the previous panel.
PASS_THROUGH_TYPES = frozenset(
    {
        "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
        "GaussianDropout", "AlphaDropout", "Flatten", "Reshape", "InputLayer", "ActivityRegularization",
    }
)


@dataclass(frozen=True)
class RecordedLayer:
    path: str  # "block_1/dense_2" for a layer inside a nested model
    layer: keras.layers.Layer

    @property
    def activation(self) -> str | None:
        function = getattr(self.layer, "activation", None)
        name = getattr(function, "__name__", None)
        return None if name in (None, "linear") else name

    def describe(self, index: int) -> dict:
        """The architecture record stored in run.json."""
        layer = self.layer
        shape = tuple(layer.output.shape) if _has_symbolic_output(layer) else None
        return {
            "index": index,
            "name": self.path,
            "type": type(layer).__name__,
            "output_shape": [None if d is None else int(d) for d in shape] if shape else None,
            "params": int(layer.count_params()) if layer.built else 0,
            "activation": self.activation,
            "weights": [_weight_role(v) for v in layer.trainable_weights],
        }


def _weight_role(variable) -> str:
    """'kernel', 'bias', 'gamma', ... from a variable's path such as 'dense_1/kernel'."""
    return variable.path.rsplit("/", 1)[-1]


def _has_symbolic_output(layer) -> bool:
    try:
        output = layer.output
    except (AttributeError, ValueError):
        return False
    return isinstance(output, keras.KerasTensor)


def _graph_of(model: keras.Model) -> Functional:
    if isinstance(model, keras.Sequential):
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise ValueError(
                f"Model `{model.name}` has no input shape yet, so its layers have no outputs to record. "
                "Start the Sequential with `keras.Input(shape=...)`, e.g. "
                "`keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(32), ...])`."
            )
        return graph
    if isinstance(model, Functional):
        return model
    raise ValueError(
        f"Model `{model.name}` is a subclassed `{type(model).__name__}`: its layers have no symbolic outputs, "
        "so Strata cannot see them. Rebuild it with the functional API "
        "(`inputs = keras.Input(shape=...)`, `outputs = ...`, `keras.Model(inputs, outputs)`) or as a "
        "`keras.Sequential` that starts with `keras.Input`."
    )


def recorded_layers(model: keras.Model, prefix: str = "") -> list[RecordedLayer]:
    """Every layer worth recording, in execution order, with nested models flattened."""
    graph = _graph_of(model)
    layers = []
    for layer in graph.layers:
        if isinstance(layer, (keras.Sequential, Functional)):
            layers.extend(recorded_layers(layer, prefix=f"{prefix}{layer.name}/"))
        elif type(layer).__name__ not in PASS_THROUGH_TYPES and _single_float_output(layer):
            layers.append(RecordedLayer(f"{prefix}{layer.name}", layer))
    return layers


# Built-in layers that compute something else in training than in inference (besides the `dropout` and
# `recurrent_dropout` arguments of recurrent and attention layers, and the Random* augmentation layers).
TRAINING_TYPES = frozenset(
    {
        "BatchNormalization", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
        "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    }
)


def trains_differently(model: keras.Model) -> bool:
    """Whether some layer of `model` computes something else in training than in inference: batch normalization,
    dropout, noise and augmentation layers, recurrent or attention layers with dropout, and custom layers whose
    own `call` takes a `training` argument (every built-in layer's `call` takes one, so that says nothing)."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        kind = type(layer)
        if kind.__name__ in TRAINING_TYPES or (kind.__name__.startswith("Random") and kind.__module__.startswith("keras.")):
            return True
        if any(float(getattr(layer, name, 0) or 0) > 0 for name in ("dropout", "recurrent_dropout")):
            return True
        if not kind.__module__.startswith("keras.") and "training" in inspect.signature(layer.call).parameters:
            return True
    return False


def _single_float_output(layer) -> bool:
    if not _has_symbolic_output(layer):
        return True  # layers inside a nested model have outputs in that model's graph; checked when called
    return "float" in str(layer.output.dtype)


def forward_recording(model: keras.Model, inputs, outputs: dict, training: bool = False):
    """Run `model` on `inputs` in inference mode (or training mode: `training`); store each layer's output in
    `outputs[id(layer)]`.

    Meant to be traced once inside a `tf.function`: the Python walk over layers happens at trace time only.
    """
    graph = _graph_of(model)

    def recording(operation):
        if isinstance(operation, (keras.Sequential, Functional)):
            return lambda *args, **kwargs: forward_recording(operation, args[0], outputs, training)
        call = operation_fn(operation, training=training)

        def call_and_record(*args, **kwargs):
            result = call(*args, **kwargs)
            outputs[id(operation)] = result
            return result

        return call_and_record

    return graph._run_through_graph(inputs, operation_fn=recording)
