"""The probe pass, the part every backend shares: which backend records, how the probe is cut into chunks, and the
pass's results gathered from the chunks. Each backend compiles its own pieces with its own machinery
(`core.capture.probe_tf`: tf.function and GradientTape; `core.capture.probe_jax`: jax.jit and jax.grad).

Keras fixes its backend when it is first imported (`KERAS_BACKEND`), so the choice is made once per process.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from types import ModuleType

import keras
import numpy as np

from core.capture import keras_internals
from core.capture.graph import RecordedLayer, recorded_layers, trains_differently

SUPPORTED_BACKENDS = ("tensorflow", "jax")
GRAD_PROBE_SIZE = 256  # probe samples gradients are measured on: a stable norm, still cheap
# The probe pass runs in chunks of samples whose activations (every layer's output, float32) take at most this, so
# it never holds a whole large probe's activations at once; a small model's whole probe is one chunk, one call.
CHUNK_BYTES = 64 * 2**20
# A model that trains differently (batch normalization, dropout) takes its training-mode gradients in chunks of
# this many samples, Keras's default batch: batch statistics over a chunk are what its training steps see.
GRADIENT_CHUNK = 32


def check_backend(name: str | None = None) -> str:
    """The Keras backend in use (or `name`), when Strata can record on it; a RuntimeError naming the fix otherwise."""
    name = keras.backend.backend() if name is None else name
    if name not in SUPPORTED_BACKENDS:
        which = "PyTorch" if name == "torch" else f"the {name!r} backend"
        raise RuntimeError(
            f"Strata records on the TensorFlow and JAX backends; {which} is not supported yet: "
            "set KERAS_BACKEND=tensorflow or jax"
        )
    return name


def backend_passes() -> ModuleType:
    """The module of the current backend's compiled passes: `core.capture.probe_tf` or `core.capture.probe_jax`. Each
    has `ProbePass`, `gradient_norm_function`, `read_state`, `constants`, `dtype_size` and `writes_the_run`."""
    if check_backend() == "jax":
        from core.capture import probe_jax

        return probe_jax
    from core.capture import probe_tf

    return probe_tf


def build_compiled_loss(model: keras.Model, x, y) -> None:
    """Build the model's compiled loss before a probe pass uses it, as `fit` builds it, on symbolic tensors shaped like
    the probe's `x` and `y` (arrays, or lists or dicts of them). A model with several outputs keeps a loss tracker per
    output, created when the loss is first computed: created inside the pass's stateless scope, the trackers would
    hold no value, and the first training step would fail on them."""
    if y is not None:
        keras_internals.build_loss(model, x, y)


def gradient_rows(count: int) -> np.ndarray:
    """The probe rows gradients are measured on: at most `GRAD_PROBE_SIZE`, evenly spread over the probe (itself a
    stratified sample), so every class stays in. Gradient statistics are norms and histograms: 256 samples give them
    to a few percent, while a backward pass over a 2,000-sample probe of a deep network cost more than an epoch."""
    return np.unique(np.linspace(0, count - 1, min(count, GRAD_PROBE_SIZE)).round().astype(np.int64))


def model_variables(model: keras.Model) -> list:
    """Every variable the forward pass reads (weights, and state such as batch-norm statistics), once each."""
    return list({id(v): v for v in [*model.trainable_variables, *model.non_trainable_variables]}.values())


def weight_positions(layers: list[RecordedLayer], variables: list) -> list[list[int]]:
    """Per layer, the positions of its trainable weights in `variables` (and so in a state read from them)."""
    position = {id(v): i for i, v in enumerate(variables)}
    return [[position[id(v)] for v in layer.layer.trainable_weights] for layer in layers]


def regroup(flat: list, groups: list[list]) -> list[list]:
    """`flat` cut into consecutive pieces as long as `groups`' lists."""
    regrouped, start = [], 0
    for group in groups:
        regrouped.append(flat[start : start + len(group)])
        start += len(group)
    return regrouped


class ProbePass(ABC):
    """The probe pass of one model: every recorded layer's output, the predictions and the probe loss in inference
    mode, and the gradients of the loss, on `state` (values of `variables` read earlier, never the live variables,
    so it runs beside training while the optimizer moves on).

    Gradients are taken the way training takes them, on `gradient_rows`: a model with batch normalization, dropout
    or noise runs its gradient steps in training mode, in chunks of `GRADIENT_CHUNK` samples (batch statistics of
    each chunk, dropout on), on a stateless pass that leaves moving statistics and weights alone; other models in
    chunks sized by `CHUNK_BYTES`. The gradient of the mean loss is the size-weighted sum of the chunks'. Outputs,
    predictions and the probe loss come from inference mode, as the model is used, in chunks sized by
    `CHUNK_BYTES`, keeping only the recorded layers' outputs.

    A backend supplies the two compiled functions (`_compile`):
        infer(x, y, state) -> (predictions, [recorded outputs], the chunk's summed loss or None when y is None)
        gradients(x, y, state, share) -> ([gradient of `share` x the chunk's mean loss for each recorded layer's
            weights, flat in layer order], [squared L2 norm of the gradient reaching each recorded layer's output])
    """

    def __init__(self, model: keras.Model, layers: list[RecordedLayer], variables: list, with_loss: bool, plane: bool):
        self.weights = weight_positions(layers, variables)
        self.with_loss, self.plane = with_loss, plane
        self.training = trains_differently(model)
        shapes = [layer.shape for layer in recorded_layers(model)]
        per_sample = 4 * sum(math.prod(s) for s in shapes if s is not None and all(isinstance(d, int) for d in s)) or 1
        self.output_chunk = max(16, CHUNK_BYTES // per_sample)
        # A backward pass keeps about three times a forward pass's activations.
        self.gradient_chunk = GRADIENT_CHUNK if self.training else max(16, CHUNK_BYTES // (3 * per_sample))
        self._infer, self._gradients = self._compile(model, layers, variables)

    @abstractmethod
    def _compile(self, model: keras.Model, layers: list[RecordedLayer], variables: list) -> tuple:
        """(infer, gradients), compiled by the backend: see the class docstring."""

    def __call__(self, x, y, grid, state, on_host: bool = False) -> dict:
        """`x` and `y` as the model takes them: one tensor, or a list or dict of them (several inputs or outputs),
        every one with a row per probe sample. Predictions come back as one tensor, or a list in the order of
        `model.outputs`. `on_host`: the recorded outputs come back as numpy arrays, each chunk copied into them
        as it is computed, so the pass never holds the outputs twice (chunks and their concatenation)."""
        count = sample_count(x)
        predictions, outputs, loss = self._inferred(x, y, count, state, on_host)
        result = {
            "predictions": predictions,
            "outputs": outputs,
            "loss": loss / count if self.with_loss else None,
            "weights": [[state[i] for i in group] for group in self.weights],
        }
        if self.with_loss:
            rows = keras.ops.convert_to_tensor(gradient_rows(count))
            gx, gy = (keras.tree.map_structure(lambda t: keras.ops.take(t, rows, axis=0), s) for s in (x, y))
            size = int(rows.shape[0])
            weight_grads, squares = None, None
            step = self.gradient_chunk
            for start in range(0, size, step):
                share = keras.ops.convert_to_tensor(min(step, size - start) / size, "float32")
                grads, norms = self._gradients(
                    _rows(gx, start, start + step), _rows(gy, start, start + step), state, share
                )
                weight_grads = grads if weight_grads is None else [a + b for a, b in zip(weight_grads, grads)]
                squares = norms if squares is None else [a + b for a, b in zip(squares, norms)]
            assert weight_grads is not None and squares is not None  # size >= 1, so the loop ran
            result["weight_grads"] = regroup(weight_grads, result["weights"])
            result["output_grad_norms"] = [keras.ops.sqrt(s) for s in squares]
        else:
            result["weight_grads"] = [[] for _ in self.weights]
            result["output_grad_norms"] = [None] * len(self.weights)
        if self.plane:
            result["plane_predictions"], result["plane_outputs"], _ = self._inferred(
                grid, None, int(grid.shape[0]), state, on_host
            )
        return result

    def _inferred(self, x, y, count: int, state, on_host: bool) -> tuple:
        """(predictions, [each recorded layer's output], summed loss) of inference over `count` rows, in chunks."""
        step = self.output_chunk
        predictions, chunks, outputs, loss = [], [], None, 0.0
        for start in range(0, count, step):
            chunk = self._infer(
                _rows(x, start, start + step), None if y is None else _rows(y, start, start + step), state
            )
            predictions.append(chunk[0])
            if chunk[2] is not None:
                loss += float(chunk[2])
            if not on_host:
                chunks.append(chunk[1])
                continue
            if outputs is None:
                outputs = [np.empty((count, *o.shape[1:]), keras.backend.standardize_dtype(o.dtype)) for o in chunk[1]]
            for target, output in zip(outputs, chunk[1]):
                target[start : start + step] = keras.ops.convert_to_numpy(output)
        if not on_host:
            outputs = [_joined([c[i] for c in chunks]) for i in range(len(self.weights))]
        return _flat_predictions(_joined(predictions)), outputs, loss


def sample_count(x) -> int:
    """Probe samples in `x`: one tensor, or a list or dict of them (a model's several inputs), a row per sample."""
    return int(keras.tree.flatten(x)[0].shape[0])


def _rows(x, start: int, stop: int):
    """Rows `start:stop` of every tensor in `x` (one tensor, or a list or dict of them)."""
    return keras.tree.map_structure(lambda t: t[start:stop], x)


def _joined(chunks: list):
    """The chunks' results joined along the samples: tensors, or lists or dicts of them (several outputs)."""
    if len(chunks) == 1:
        return chunks[0]
    return keras.tree.map_structure(lambda *parts: keras.ops.concatenate(parts, axis=0), *chunks)


def _flat_predictions(predictions):
    """One tensor for a model with one output; a list in the order of `model.outputs` for several (a dict of
    outputs flattens by key, as Keras orders `model.outputs`)."""
    flat = keras.tree.flatten(predictions)
    return flat[0] if len(flat) == 1 else flat
