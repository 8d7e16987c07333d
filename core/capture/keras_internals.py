"""Every private Keras API Strata relies on, in one module, so that a Keras upgrade that moves one breaks here, by
name, and nowhere else. Everything else in Strata uses public Keras only.

Keras 3 has no public way to run a functional graph with a hook around each layer call, which is what recording
every layer's output in one compiled pass needs, nor to list a model's layers recursively (custom layers that hold
layers included). What is used, and why:

- `keras.src.models.functional.Functional`: the class of models built with `keras.Model(inputs, outputs)`, to tell
  them from subclassed models, which have no graph to walk.
- `Functional._run_through_graph(inputs, operation_fn=...)`: runs the graph with each operation's call wrapped.
- `keras.src.models.functional.operation_fn(operation, training=...)`: the call the graph would make.
- `Sequential._functional`: the functional graph a built `Sequential` runs through.
- `Layer._flatten_layers(include_self=False, recursive=True)`: every layer inside a model, at any depth.
- `Functional._inputs_struct` / `_outputs_struct`: the list or dict of symbolic tensors a model was built on, which
  is how `fit` takes its inputs and targets (a dict model is fed by name).
- `KerasTensor._keras_history.operation`: the layer that produced a model output.
- `Model._compile_loss`, `Model._compute_loss` and `keras.src.backend.compute_output_spec`: building the compiled
  loss on symbolic tensors before the first probe pass, as `fit`'s own symbolic build does (see `build_loss`).

Tested against the pinned Keras (requirements.txt) by tests/test_unit_graph.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import keras

try:
    from keras.src import backend as keras_backend
    from keras.src.models.functional import Functional, operation_fn
except ImportError as error:  # pragma: no cover - only on a Keras that moved them
    raise ImportError(
        f"Strata needs keras.src.backend and keras.src.models.functional (Functional, operation_fn), which Keras "
        f"{keras.__version__} does not have: install the Keras version requirements.txt pins"
    ) from error


def is_graph_model(layer: Any) -> bool:
    """Whether `layer` is a model with a layer graph: a `Sequential` or a functional `keras.Model`."""
    return isinstance(layer, (keras.Sequential, Functional))


def graph_of(model: keras.Model) -> Functional | None:
    """The functional graph `model` runs through: itself when functional, the graph a built `Sequential` holds, and
    None for a `Sequential` not built yet or a subclassed model."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    return model if isinstance(model, Functional) else None


def all_layers(model: keras.Layer) -> Iterator[keras.Layer]:
    """Every layer inside `model`, at any depth (nested models and custom layers that hold layers), not `model`."""
    return model._flatten_layers(include_self=False, recursive=True)


def run_graph(graph: Functional, inputs: Any, wrap: Callable[[keras.Operation], Callable]) -> Any:
    """Run `graph` on `inputs`, calling `wrap(operation)` in place of each operation's own call."""
    return graph._run_through_graph(inputs, operation_fn=wrap)


def operation_call(operation: keras.Operation, training: bool) -> Callable:
    """The call the graph makes for `operation`, with `training` passed to layers that take it."""
    return operation_fn(operation, training=training)


def graph_struct(model: keras.Model, which: str) -> Any:
    """The structure the model's graph takes (`which="inputs"`) or gives (`"outputs"`): a list or dict of symbolic
    tensors, or one; None for a model without a graph."""
    graph = graph_of(model)
    return getattr(graph, f"_{which}_struct", None)


def producing_layer(tensor: Any) -> keras.Operation:
    """The layer that produced the symbolic tensor `tensor` (a model output)."""
    return tensor._keras_history.operation


def build_loss(model: keras.Model, x: Any, y: Any) -> None:
    """Build `model`'s compiled loss on symbolic tensors shaped like `x` and `y` (arrays, or lists or dicts of them),
    as `fit`'s symbolic build does; nothing when the model was compiled without a loss or its loss is built."""
    compile_loss = getattr(model, "_compile_loss", None)
    if compile_loss is None or compile_loss.built:
        return

    def symbolic(array):
        return keras.KerasTensor(array.shape, keras_backend.standardize_dtype(array.dtype))

    x, y = keras.tree.map_structure(symbolic, x), keras.tree.map_structure(symbolic, y)
    y_pred = keras_backend.compute_output_spec(model, x, training=False)
    keras_backend.compute_output_spec(model._compute_loss, x, y, y_pred, training=False)
