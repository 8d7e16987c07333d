"""The probe pass on JAX: jitted pure functions of the weights' values, gradients by `jax.grad`. Imported only when
Keras runs on JAX (`core.capture.probe_pass.backend_passes`); it never imports TensorFlow.

The model runs on given values the way `Layer.stateless_call` runs it, in a Keras StatelessScope that maps each
variable to a value, here around a walk of the layer graph (`core.capture.graph.forward_recording`) that keeps every
recorded layer's output. Whatever the pass would change (batch-norm moving statistics, dropout's seed) goes to the
scope and is dropped with it, so a training-mode pass moves no statistic and no weight. The gradient reaching a
layer's output is the gradient with respect to a zero added to that output: the values stay as they are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
import numpy as np

from core.capture.graph import RecordedLayer, forward_recording, trains_differently
from core.capture.probe_pass import ProbePass as _SharedProbePass
from core.capture.probe_pass import regroup, weight_positions


def _run(
    model: keras.Model,
    variables: list,
    state: list,
    x,
    y,
    training: bool,
    layer_ids: list[int],
    zeros: dict | None = None,
):
    """(predictions, [outputs of the layers `layer_ids`], mean loss or None without `y`) of `model` on `state`.
    `zeros` {id(layer): array} are added to those layers' outputs, to take the gradient with respect to them."""
    outputs: dict = {}
    # collect_losses: losses a layer adds in its call (activity regularization) stay in the scope, as in
    # `stateless_call(return_losses=True)`, instead of leaking traced values onto the layer.
    with keras.StatelessScope(
        state_mapping=list(zip(variables, state)) + _scratch(model, variables), collect_losses=True
    ):
        predictions = forward_recording(model, x, outputs, training, zeros)
        loss = None if y is None else model.compute_loss(x=x, y=y, y_pred=predictions, training=training)
    return predictions, [outputs[i] for i in layer_ids], loss


def _scratch(model: keras.Model, variables: list) -> list:
    """Zeros for the metric variables `compute_loss` updates (the loss of each output of a model with several):
    Keras's JAX trainer empties those variables during an epoch (`_purge_model_variables`), so a pass that runs
    beside training must not read them, and its updates stay in the scope."""
    mapped = {id(v) for v in variables}
    return [(v, jnp.zeros(v.shape, v.dtype)) for v in model.metrics_variables if id(v) not in mapped]


def _with_weights(state: list, positions: list[int], weights: list) -> list:
    """`state` with the values at `positions` replaced by `weights`: the arguments gradients are taken for."""
    values = list(state)
    for position, weight in zip(positions, weights):
        values[position] = weight
    return values


class ProbePass(_SharedProbePass):
    """The probe pass (`core.capture.probe_pass.ProbePass`) as jitted JAX functions."""

    def _compile(self, model: keras.Model, layers: list[RecordedLayer], variables: list) -> tuple:
        training = self.training
        layer_ids = [id(layer.layer) for layer in layers]
        flat = [i for group in self.weights for i in group]

        @jax.jit
        def infer(x, y, state):
            predictions, outputs, loss = _run(model, variables, state, x, y, False, layer_ids)
            return predictions, outputs, None if loss is None else loss * jax.tree_util.tree_leaves(x)[0].shape[0]

        def chunk_loss(weights, zeros, x, y, state, share):
            values = _with_weights(state, flat, weights)
            return _run(model, variables, values, x, y, training, layer_ids, dict(zip(layer_ids, zeros)))[2] * share

        @jax.jit
        def gradients(x, y, state, share):
            """(weight gradients, squared norms of the output gradients) of `share` x the chunk's mean loss."""
            shapes = jax.eval_shape(
                lambda s, inputs: _run(model, variables, s, inputs, None, training, layer_ids)[1], state, x
            )
            zeros = [jnp.zeros(shape.shape, shape.dtype) for shape in shapes]
            weight_grads, output_grads = jax.grad(chunk_loss, argnums=(0, 1))(
                [state[i] for i in flat], zeros, x, y, state, share
            )
            # Only each output gradient's norm is kept, as on TensorFlow. float32: JAX computes in 32 bits unless
            # x64 is enabled.
            return weight_grads, [jnp.sum(jnp.square(g.astype(jnp.float32))) for g in output_grads]

        return infer, gradients


def gradient_norm_function(model: keras.Model, layers: list[RecordedLayer], variables: list):
    """A jitted function returning a (layers,) vector: the L2 norm of each layer's loss gradient over all its
    weights (NaN for layers without weights), on a fixed batch, on `state` (values of `variables` read earlier)."""
    weights = weight_positions(layers, variables)
    flat = [i for group in weights for i in group]
    training = trains_differently(model)  # as in the probe pass: gradients the way training takes them

    def loss(weight_values, x, y, state):
        return _run(model, variables, _with_weights(state, flat, weight_values), x, y, training, [])[2]

    @jax.jit
    def gradient_norms(x, y, state):
        gradients = jax.grad(loss)([state[i] for i in flat], x, y, state)
        squares = [jnp.sum(jnp.square(g.astype(jnp.float32))) for g in gradients]
        per_layer = [jnp.sqrt(sum(group)) if group else jnp.float32(np.nan) for group in regroup(squares, weights)]
        return jnp.stack(per_layer)  # (layers,)

    return gradient_norms


def read_state(model: keras.Model | None, variables: list) -> list:
    """The current value of every variable, as copies. Keras's JAX trainer keeps the weights outside the variables
    during an epoch (`jax_state_sync` puts them back), and hands its arrays to the next step as donated buffers,
    which that step may reuse: a copy keeps this moment's values."""
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()
    return [jnp.array(v.value, copy=True) for v in variables]


def constants(arrays: list) -> list:
    """Numpy arrays (or None, or lists or dicts of arrays: several inputs or outputs) as JAX arrays, on the default
    device once rather than at every capture."""
    return [None if a is None else jax.tree_util.tree_map(jnp.asarray, a) for a in arrays]


def dtype_size(dtype: str) -> int:
    """Bytes per element of a variable's dtype (`bfloat16` included)."""
    return np.dtype(getattr(jnp, dtype, dtype)).itemsize


def writes_the_run(model: keras.Model) -> bool:
    """Whether this process records: on JAX, one process trains (multi-process JAX is not supported yet)."""
    return True
