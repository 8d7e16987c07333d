"""The probe pass on TensorFlow: tf.functions that run the model on read weights under Keras's StatelessScope, and
take gradients with GradientTape. Imported only when Keras runs on TensorFlow
(`core.capture.probe_pass.backend_passes`)."""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

from core.capture.graph import RecordedLayer, forward_recording, trains_differently
from core.capture.probe_pass import ProbePass as _SharedProbePass
from core.capture.probe_pass import regroup, weight_positions


class _OwnTracesAreExpected(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning about this module's compiled passes.

    TensorFlow counts traces per function body, not per function: every Recorder traces its own probe pass
    once, so the fifth `fit` recorded in one process (a notebook, a sweep) drew a warning that blamed
    excessive retracing on Strata. Retracing warnings about anything else still pass.
    """

    OWN = ("ProbePass._compile.<locals>.", "gradient_norm_function.<locals>.gradient_norms")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "triggered tf.function retracing" not in message or not any(name in message for name in self.OWN)


logging.getLogger("tensorflow").addFilter(_OwnTracesAreExpected())


class ProbePass(_SharedProbePass):
    """The probe pass (`core.capture.probe_pass.ProbePass`) as tf.functions: gradients by GradientTape, in a
    StatelessScope."""

    def _compile(self, model: keras.Model, layers: list[RecordedLayer], variables: list) -> tuple:
        training = self.training

        def forward(x, training=False) -> tuple:
            outputs: dict = {}
            predictions = forward_recording(model, x, outputs, training)
            return predictions, [outputs[id(layer.layer)] for layer in layers]

        # autograph=False: the functions have no tensor-dependent Python control flow, and skipping the source
        # conversion cuts the one-off tracing cost several times over.
        @tf.function(autograph=False, reduce_retracing=True)
        def infer(x, y, state):
            with keras.StatelessScope(state_mapping=list(zip(variables, state))):
                predictions, outputs = forward(x)
                total = (
                    model.compute_loss(x=x, y=y, y_pred=predictions, training=False)
                    * tf.cast(tf.shape(tf.nest.flatten(x)[0])[0], tf.float32)
                    if y is not None
                    else None
                )
            return predictions, outputs, total

        @tf.function(autograph=False, reduce_retracing=True)
        def gradients(x, y, state, share):
            """(weight gradients, squared norms of the output gradients) of `share` x the chunk's mean loss."""
            layer_weights = [[state[i] for i in group] for group in self.weights]
            flat = [w for group in layer_weights for w in group]
            with (
                keras.StatelessScope(state_mapping=list(zip(variables, state))),
                tf.GradientTape(persistent=True) as tape,
            ):
                tape.watch(flat)
                predictions, outputs = forward(x, training=training)
                loss = model.compute_loss(x=x, y=y, y_pred=predictions, training=training) * share
                # Keras computes a cross-entropy from the logits it caches on a softmax or sigmoid output, which
                # leaves the output itself off the gradient path. The same loss on a plain copy of it measures
                # the error signal that reaches the model's last layer.
                plain_predictions = tf.nest.map_structure(tf.identity, predictions)
                output_loss = model.compute_loss(x=x, y=y, y_pred=plain_predictions, training=training) * share
            weight_grads = _dense(tape.gradient(loss, flat, unconnected_gradients=tf.UnconnectedGradients.ZERO))
            output_grads = tape.gradient(loss, outputs)
            model_outputs = tf.nest.flatten(predictions)  # one, or several in the order of `model.outputs`
            plain_outputs = tf.nest.flatten(plain_predictions)
            for index, output in enumerate(outputs):
                if output_grads[index] is None:
                    which = next((i for i, o in enumerate(model_outputs) if output is o), None)
                    output_grads[index] = (
                        tape.gradient(output_loss, plain_outputs[which]) if which is not None else None
                    )
                    if output_grads[index] is None:  # a layer the loss does not reach
                        output_grads[index] = tf.zeros_like(output)
            # Only each output gradient's norm is kept: shipping the gradients (as large as the outputs) to the
            # analysis process for one number apiece would double what every capture hands over.
            return weight_grads, [tf.reduce_sum(tf.square(tf.cast(g, tf.float64))) for g in output_grads]

        return infer, gradients


def gradient_norm_function(model: keras.Model, layers: list[RecordedLayer], variables: list):
    """One tf.function returning a (layers,) vector: the L2 norm of each layer's loss gradient over all its
    weights (NaN for layers without weights), on a fixed batch. Like the probe pass it runs on `state`, values
    of `variables` read earlier, so it can run beside training. The per-layer loop runs at trace time only."""
    weights = weight_positions(layers, variables)
    training = trains_differently(model)  # as in the probe pass: gradients the way training takes them

    @tf.function(autograph=False, reduce_retracing=True)  # no tensor-dependent control flow, as in the probe pass
    def gradient_norms(x, y, state):
        flat = [state[i] for group in weights for i in group]
        with keras.StatelessScope(state_mapping=list(zip(variables, state))), tf.GradientTape() as tape:
            tape.watch(flat)
            predictions = model(x, training=training)
            loss = model.compute_loss(x=x, y=y, y_pred=predictions, training=training)
        gradients = _dense(tape.gradient(loss, flat, unconnected_gradients=tf.UnconnectedGradients.ZERO))
        squares = [tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in gradients]
        per_layer = [
            tf.sqrt(tf.add_n(group)) if group else tf.constant(float("nan")) for group in regroup(squares, weights)
        ]
        return tf.stack(per_layer)  # (layers,)

    return gradient_norms


def read_state(model: keras.Model, variables: list) -> list:
    """The current value of every variable, as tensors that keep that value: TensorFlow copies a variable's
    buffer on its next update while a read of it is still alive. Eager reads cost ~20 µs a variable, less than
    tracing a function to batch them would take back over a run."""
    return [tf.convert_to_tensor(v) for v in variables]


def constants(arrays: list) -> list:
    """Numpy arrays (or None, or lists or dicts of arrays: several inputs or outputs) as tensors, converted once:
    passing numpy each time would copy the probe into TensorFlow at every capture."""
    return [None if a is None else tf.nest.map_structure(tf.constant, a) for a in arrays]


def dtype_size(dtype: str) -> int:
    """Bytes per element of a variable's dtype."""
    return tf.as_dtype(dtype).size


def _dense(gradients: list) -> list:
    """Gradients as dense tensors: an embedding table's arrives as IndexedSlices (only the rows looked up)."""
    return [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in gradients]


def writes_the_run(model: keras.Model) -> bool:
    """Whether this process records: True except in a non-chief worker of a multi-worker tf.distribute job
    (MultiWorkerMirroredStrategy), where every worker runs the same script and one, the chief, must write.
    The chief is the task of type "chief", or worker 0 of a cluster without one, as TensorFlow's own
    checkpointing decides. The probe pass is local (it reads the mirrored weights and needs no collective), so
    the other workers do nothing for it and never wait on it."""
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return True
    cluster = resolver.cluster_spec().as_dict()
    if sum(len(tasks) if isinstance(tasks, (list, dict)) else 1 for tasks in cluster.values()) <= 1:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and "chief" not in cluster and int(resolver.task_id or 0) == 0
