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

Tested against the pinned Keras (requirements.txt) by tests/test_unit_graph.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import keras

try:
    from keras.src.models.functional import Functional, operation_fn
except ImportError as error:  # pragma: no cover - only on a Keras that moved them
    raise ImportError(
        f"Strata needs keras.src.models.functional.Functional and operation_fn, which Keras {keras.__version__} "
        "does not have: install the Keras version requirements.txt pins"
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
