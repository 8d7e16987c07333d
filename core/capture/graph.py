"""Walks a Keras 3 model's layer graph: which layers to record, and one forward pass that returns all their outputs.

Nested Sequential and functional models are flattened into their own layers, so a model built from blocks is
recorded layer by layer. Subclassed models have no graph to walk; they are refused with a message that says
how to rebuild them.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass

import keras

from core.capture.keras_internals import all_layers, graph_of, is_graph_model, operation_call, run_graph

# Layers that drop or perturb values in training only (and ActivityRegularization, whose loss term does): the
# identity at inference.
TRAINING_ONLY_TYPES = frozenset(
    {
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "ActivityRegularization",
    }
)
# Layers that are the identity at inference or only reshape: recording them would repeat the previous panel.
PASS_THROUGH_TYPES = TRAINING_ONLY_TYPES | {"Flatten", "Reshape", "InputLayer"}


# Models with at most this many recordable layers record every one by default; deeper ones record a readable set
# (`auto_layers`): 32 panels still fit the Embeddings strip and keep a snapshot of a 150-layer network small.
AUTO_ALL_LAYERS = 32
# Layers that join branches: in a residual or multi-branch network, each one's output is a block's output.
MERGE_TYPES = frozenset({"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot"})
# Layers that only pad or crop: a stage ends before them, not at them.
PADDING_TYPES = frozenset({"ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D"})


@dataclass(frozen=True)
class RecordedLayer:
    path: str  # "block_1/dense_2" for a layer inside a nested model
    layer: keras.layers.Layer

    @property
    def activation(self) -> str | None:
        function = getattr(self.layer, "activation", None)
        name = getattr(function, "__name__", None)
        return None if name in (None, "linear") else name

    @property
    def shape(self) -> tuple | None:
        """The output shape without the batch axis, where the layer has a symbolic output."""
        return tuple(self.layer.output.shape[1:]) if _has_symbolic_output(self.layer) else None

    @property
    def stage(self) -> str:
        """The group the pages list this layer under: its spatial size for image-like outputs ("24×24"), its
        nested model for a layer inside one, else "layers"."""
        shape = self.shape
        if shape is not None and len(shape) >= 3 and all(isinstance(d, int) for d in shape[:-1]):
            return "×".join(str(d) for d in shape[:-1])
        return self.path.rsplit("/", 1)[0] if "/" in self.path else "layers"

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
            "stage": self.stage,
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


def _graph_of(model: keras.Model):
    """The functional graph of `model`; a ValueError that says how to rebuild a model that has none."""
    graph = graph_of(model)
    if graph is not None:
        return graph
    if isinstance(model, keras.Sequential):
        raise ValueError(
            f"Model `{model.name}` has no input shape yet, so its layers have no outputs to record. "
            "Start the Sequential with `keras.Input(shape=...)`, e.g. "
            "`keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(32), ...])`."
        )
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
        if is_graph_model(layer):
            layers.extend(recorded_layers(layer, prefix=f"{prefix}{layer.name}/"))
        elif type(layer).__name__ not in PASS_THROUGH_TYPES and _single_float_output(layer):
            layers.append(RecordedLayer(f"{prefix}{layer.name}", layer))
    return layers


# Built-in layers that compute something else in training than in inference (besides the `dropout` and
# `recurrent_dropout` arguments of recurrent and attention layers, and the Random* augmentation layers).
TRAINING_TYPES = TRAINING_ONLY_TYPES | {"BatchNormalization"}


def trains_differently(model: keras.Model) -> bool:
    """Whether some layer of `model` computes something else in training than in inference: batch normalization,
    dropout, noise and augmentation layers, recurrent or attention layers with dropout, and custom layers whose
    own `call` takes a `training` argument (every built-in layer's `call` takes one, so that says nothing)."""
    for layer in all_layers(model):
        kind = type(layer)
        if kind.__name__ in TRAINING_TYPES or (
            kind.__name__.startswith("Random") and kind.__module__.startswith("keras.")
        ):
            return True
        if any(float(getattr(layer, name, 0) or 0) > 0 for name in ("dropout", "recurrent_dropout")):
            return True
        if not kind.__module__.startswith("keras.") and "training" in inspect.signature(layer.call).parameters:
            return True
    return False


def check_selection(selection) -> None:
    """Raises ValueError, repeating what was passed, unless `selection` is a valid `Recorder(layers=...)`: None or
    "auto", "all", a name or pattern, or a non-empty list of names, patterns and layer classes."""
    if selection is None or isinstance(selection, str):
        if isinstance(selection, str) and not selection.strip():
            raise ValueError(f"layers must name at least one layer. Received: layers={selection!r}")
        return
    items = list(selection) if isinstance(selection, (list, tuple, set, frozenset)) else None
    if not items or not all(
        (isinstance(i, str) and i.strip()) or (isinstance(i, type) and issubclass(i, keras.layers.Layer)) for i in items
    ):
        raise ValueError(
            "layers must be 'auto', 'all', or a list of layer names, patterns (`block_*_add`) and layer classes "
            f"(`keras.layers.Conv2D`, or its name 'Conv2D'). Received: layers={selection!r}"
        )


def select_layers(layers: list[RecordedLayer], selection=None) -> list[RecordedLayer]:
    """The layers a `Recorder(layers=selection)` records, in execution order; the model's last layer always.

    None or "auto": every layer of a model with at most `AUTO_ALL_LAYERS`, else `auto_layers`. "all": every one.
    Otherwise each item is a layer name or path (`block_3_add`, `base/dense_1`), a pattern over names and paths
    (`conv4_*_out`), or a layer class or class name (`Add`); an item that matches nothing is a ValueError that
    lists what there is.
    """
    check_selection(selection)
    if selection is None or selection == "auto":
        return layers if len(layers) <= AUTO_ALL_LAYERS else auto_layers(layers)
    if selection == "all":
        return layers
    items = [selection] if isinstance(selection, str) else list(selection)
    chosen: set[int] = set()
    for item in items:
        found = {i for i, layer in enumerate(layers) if _matches(layer, item)}
        if not found:
            names = ", ".join(layer.path for layer in layers[:12]) + (", ..." if len(layers) > 12 else "")
            kinds = ", ".join(sorted({type(layer.layer).__name__ for layer in layers}))
            raise ValueError(
                f"layers: {item!r} matches no recorded layer of this model. Its layers are {names}; its layer "
                f"types {kinds}. Received: layers={selection!r}"
            )
        chosen |= found
    chosen.add(len(layers) - 1)
    return [layer for i, layer in enumerate(layers) if i in chosen]


def _matches(layer: RecordedLayer, item) -> bool:
    if isinstance(item, type):
        return isinstance(layer.layer, item)
    leaf = layer.path.rsplit("/", 1)[-1]
    if any(ch in item for ch in "*?["):
        return fnmatch.fnmatchcase(layer.path, item) or fnmatch.fnmatchcase(leaf, item)
    return item in (layer.path, leaf) or item in {cls.__name__ for cls in type(layer.layer).__mro__}


def auto_layers(layers: list[RecordedLayer], limit: int = AUTO_ALL_LAYERS) -> list[RecordedLayer]:
    """A readable set of a deep model's layers: the first layer, each block's output (every layer that joins
    branches, such as a residual `Add`), the last layer at each spatial size (where a stage ends), and the last two
    layers (the head). Past `limit`, an even spread of them, the last layer kept."""
    count = len(layers)
    shaped = [i for i, layer in enumerate(layers) if type(layer.layer).__name__ not in PADDING_TYPES] or [0]
    kept = {shaped[0], count - 1, max(count - 2, 0)}
    for i, layer in enumerate(layers):
        if type(layer.layer).__name__ in MERGE_TYPES:
            kept.add(i)
    for here, after in zip(shaped, shaped[1:]):
        if _spatial(layers[here]) != _spatial(layers[after]):
            kept.add(here)
    chosen = sorted(kept)
    if len(chosen) > limit:
        picks = {round(p) for p in [j * (len(chosen) - 1) / (limit - 1) for j in range(limit)]}
        chosen = [chosen[p] for p in sorted(picks)]
    return [layers[i] for i in chosen]


def _spatial(layer: RecordedLayer):
    shape = layer.shape
    return shape[:-1] if shape is not None and len(shape) >= 3 else None


def _single_float_output(layer) -> bool:
    if not _has_symbolic_output(layer):
        return True  # layers inside a nested model have outputs in that model's graph; checked when called
    return "float" in str(layer.output.dtype)


def forward_recording(model: keras.Model, inputs, outputs: dict, training: bool = False, added: dict | None = None):
    """Run `model` on `inputs` in inference mode (or training mode: `training`); store each layer's output in
    `outputs[id(layer)]`. `added` {id(layer): tensor} is added to those layers' outputs before they go on: zeros
    change no value, and the gradient with respect to one is the gradient reaching that layer's output.

    Meant to be traced once inside a compiled function (`tf.function`, `jax.jit`): the Python walk over layers
    happens at trace time only.
    """
    graph = _graph_of(model)

    def recording(operation):
        if is_graph_model(operation):
            return lambda *args, **kwargs: forward_recording(operation, args[0], outputs, training, added)
        call = operation_call(operation, training)

        def call_and_record(*args, **kwargs):
            result = call(*args, **kwargs)
            if added is not None and id(operation) in added:
                result = result + added[id(operation)]
            outputs[id(operation)] = result
            return result

        return call_and_record

    return run_graph(graph, inputs, recording)
