"""The probe pass that reduces on the device (`Recorder(reduce="device")`): the backend's probe pass runs as ever,
its outputs, weights and gradients stay where they are (an accelerator's memory, or TensorFlow's and XLA's buffers
on a CPU), and one compiled function of `core.capture.reductions` turns them into what a snapshot stores. Only that
crosses to the host, as a `core.capture.reduced.ReducedCapture`, plus the first kernel layer's weights, which the
dashboard draws.

The state that carries from one snapshot to the next lives here too, on the device: each layer's components (the
next PCA's warm start and sign reference) and the weights (for update ratios).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from core.analysis import measures
from core.analysis.measures import HIST_MAX_VALUES
from core.capture import reductions
from core.capture.graph import RecordedLayer
from core.capture.reduced import FEATURE_COMPONENTS, ReducedCapture, ReducedLayer
from core.capture.snapshot import CKA_SKETCH_POINTS, MAX_FEATURES, MAX_UNITS_RANKED, TOP_SAMPLES

REDUCE_CHOICES = ("auto", "host", "device")
# Where `reduce="auto"` reduces on a machine without an accelerator. Measured with bench/bench_capture_bytes.py
# (bench/README.md, TensorFlow on 2 CPUs): MobileNetV2's snapshot blocks training 5.5 s reduced in the probe pass,
# against 3.5 s for the pass alone when the numpy analysis (1.5 s) runs in the recording process beside training;
# the smaller models' snapshots are cheaper on the device in total CPU, but that work is in training's way.
CPU_REDUCE = "host"


def default_reduce() -> str:
    """Where `reduce="auto"` reduces: "device" when Keras's backend computes on an accelerator (GPU, TPU), else
    `CPU_REDUCE`."""
    if keras.backend.backend() == "jax":
        import jax

        accelerated = jax.default_backend() != "cpu"
    else:
        import tensorflow as tf

        accelerated = bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    return "device" if accelerated else CPU_REDUCE


def compiled(function):
    """`function` compiled by the backend in use: `jax.jit`, or a `tf.function` without autograph."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(function)
    import logging

    import tensorflow as tf

    logging.getLogger("tensorflow").addFilter(_OwnTraces())
    return tf.function(function, autograph=False, reduce_retracing=True)


class _OwnTraces:
    """Drops TensorFlow's retracing warning about the reductions: every ReducingPass traces its own (as
    `core.capture.probe_tf` does for the probe pass), and TensorFlow counts traces per function body."""

    def filter(self, record) -> bool:
        message = record.getMessage()
        return "triggered tf.function retracing" not in message or "ReducingPass._reductions" not in message


class ReducingPass:
    """A backend `ProbePass` followed by the compiled reductions; called as `capture(x, y, grid, state)` like it.

    Args:
        probe_pass: the backend's `core.capture.probe_pass.ProbePass` of the model.
        layers: the recorded layers, in order.
        roles: per layer, the role of each trainable weight (`kernel`, `bias`, ...).
        activations, components, seed, kernel_layer: the `SnapshotBuilder`'s settings of the run.
        probe_count: probe samples (the CKA sketch's rows are drawn from them as the builder draws them).
    """

    def __init__(
        self,
        probe_pass,
        layers: list[RecordedLayer],
        roles: list[list[str]],
        activations: list[str | None],
        components: int,
        seed: int,
        kernel_layer: int | None,
        probe_count: int,
    ):
        self.probe_pass = probe_pass
        self.layers, self.roles, self.activations = layers, roles, activations
        self.components, self.seed, self.kernel_layer = components, seed, kernel_layer
        rng = np.random.default_rng(seed)  # SnapshotBuilder._sketch's draw
        self._probe_count = probe_count
        self.sketch_rows = np.sort(rng.choice(probe_count, size=min(CKA_SKETCH_POINTS, probe_count), replace=False))
        self._previous: list = [None] * len(layers)  # per layer: None, {"components": c} or {"coords": coords}
        self._previous_weights: list | None = None
        self._constants: list | None = None  # per layer, the reductions' fixed arrays: see `_layer_constants`
        self._reduce = compiled(self._reductions)

    def resume(self, coords: dict[int, np.ndarray], weights: list[dict[str, np.ndarray]] | None) -> None:
        """Go on after stored snapshots (a recovery), as `SnapshotBuilder.resume`: the next snapshot's axes follow
        `coords`, each layer's stored coordinates in the last of them; `weights` give the update ratios."""
        for index, value in coords.items():
            self._previous[index] = {"coords": ops.convert_to_tensor(np.asarray(value, np.float32))}
        if weights is not None:
            self._previous_weights = [
                [ops.convert_to_tensor(w[role]) for role in roles] for w, roles in zip(weights, self.roles)
            ]

    def capture(self, inputs: tuple, state: list, **fields) -> ReducedCapture:
        """The probe pass on `state`, reduced on the device (`fields`: kind, epoch, step, batch, logs)."""
        result = self.probe_pass(*inputs, state)
        measured = result["loss"] is not None
        if self._constants is None:
            self._constants = [self._layer_constants(output.shape) for output in result["outputs"]]
        reduced, components = self._reduce(
            result["outputs"],
            result["weights"],
            result["weight_grads"] if measured else None,
            result.get("plane_outputs"),
            self._previous,
            self._previous_weights,
            self._constants,
        )
        reduced = _per_layer(
            _to_numpy(reduced),
            self._groups(result["outputs"], self._previous),
            _gradient_groups(result["weight_grads"]) if measured else None,
            [len(w) for w in result["weights"]],
        )
        layers = []
        for index, layer in enumerate(reduced["layers"]):
            if int(layer["nonfinite_rows"]) == 0:  # a NaN layer keeps its last good axes as the reference
                self._previous[index] = {"components": components[index]}
            layers.append(self._layer(index, layer, result, measured))
        self._previous_weights = result["weights"]
        return ReducedCapture(
            **fields,
            predictions=_to_numpy(result["predictions"]),
            loss=float(result["loss"]) if measured else None,
            layers=layers,
            cka=reduced["cka"],
            measured=measured,
            plane_predictions=_to_numpy(result.get("plane_predictions")),
        )

    def _layer(self, index: int, layer: dict, result: dict, measured: bool) -> ReducedLayer:
        features_shape, grid = _features_shape(result["outputs"][index].shape)
        roles = self.roles[index]
        arrays = {
            "cka_sketch": layer["cka_sketch"],
            "act_hist_counts": layer["hist_counts"],
            "dead_units": layer["dead_units"],
            "saturated_units": layer["saturated_units"],
            "unit_mean": layer["unit_mean"].astype(np.float32),
            "unit_top": layer["unit_top"],
            "unit_bottom": layer["unit_bottom"],
        }
        if "plane_pca" in layer:
            arrays["plane_pca"], arrays["plane_units"] = layer["plane_pca"], layer["plane_units"]
        if index == self.kernel_layer and "kernel" in roles:
            arrays["kernel"] = np.asarray(result["weights"][index][roles.index("kernel")])  # drawn as images
        grad = {}
        if measured:
            for role, stats in zip(roles, layer["grads"]):
                grad[role] = {key: stats[key] for key in _GRADIENT_KEYS}
        return ReducedLayer(
            coords=layer["coords"],
            extra_coords=layer.get("extra_coords", np.zeros((len(layer["coords"]), 0), np.float16)),
            probe_features=layer.get("features"),
            variance=layer["variance"],
            total_variance=float(layer["total_variance"]),
            spectrum=layer.get("spectrum"),
            method=reductions.pca_method(*features_shape),
            grid=grid,
            features_shape=features_shape,
            nonfinite_rows=int(layer["nonfinite_rows"]),
            arrays=arrays,
            activation={key: layer[key] for key in ("mean", "std", "percentiles", "hist_low", "hist_high")},
            weight_norm={role: float(n) for role, n in zip(roles, layer["weight_norms"])},
            update_norm={} if layer["update_norms"] is None else dict(zip(roles, map(float, layer["update_norms"]))),
            grad=grad,
            output_grad_norm=float(result["output_grad_norms"][index]) if measured else None,
        )

    def _layer_constants(self, shape) -> dict:
        """The fixed arrays a layer's reductions use, as tensors made once: passed to the compiled function as
        arguments, since constants of a few megabytes inside it (a CKA projection) cost it tens of seconds to
        compile."""
        shape = tuple(int(s) for s in shape)
        (n, d), _ = _features_shape(shape)
        values = int(np.prod(shape)) if len(shape) <= 2 else n * int(np.prod(shape[1:-1])) * shape[-1]
        wanted = max(self.components, FEATURE_COMPONENTS)
        constants = {
            "averaging": [ops.convert_to_tensor(m) for m in reductions.averaging_matrices(shape, MAX_FEATURES)],
            "positions": ops.convert_to_tensor(reductions.sample_positions(values))
            if values > HIST_MAX_VALUES
            else None,
            "projection": None,
            "start": None,
            "sketch_rows": ops.convert_to_tensor(self.sketch_rows),
        }
        projection = reductions.cka_projection(d)
        if projection is not None:
            constants["projection"] = ops.convert_to_tensor(projection)
        if reductions.pca_method(n, d) == "subspace":
            start = reductions.gaussian_start(d, reductions.subspace_size(n, d, wanted), self.seed)
            constants["start"] = ops.convert_to_tensor(start)
        return constants

    def _reductions(self, outputs, weights, weight_grads, plane_outputs, previous, previous_weights, constants):
        """Compiled: every reduction a snapshot stores, and each layer's components for the next snapshot.

        Layers of the same output shape and activation (the blocks of a residual network) are reduced together,
        as one batched computation (`_batched`), and so are gradients of the same shape: the operations, and a
        GPU's kernels, grow with the number of distinct layer shapes rather than with the number of layers. Each
        group's results come back stacked (`_per_layer` splits them on the host), with every weight's norm in one
        vector."""
        features = [
            reductions.analysis_features(output, MAX_FEATURES, constants[index]["averaging"])[0]
            for index, output in enumerate(outputs)
        ]
        groups, components = [], [None] * len(outputs)
        planes: list = [None] * len(outputs)
        for members in self._groups(outputs, previous):
            first = members[0]
            kind = None if previous[first] is None else next(iter(previous[first]))

            def reduce_one(elements, first=first, kind=kind):
                output, flat, *earlier = elements
                return self._layer_reductions(
                    first, output, flat, None if kind is None else {kind: earlier[0]}, constants[first]
                )

            elements = [[outputs[i] for i in members], [features[i] for i in members]]
            if kind is not None:
                elements.append([previous[i][kind] for i in members])
            layer, basis, mean = _batched(reduce_one, elements)
            groups.append(layer)
            for position, index in enumerate(members):
                components[index] = basis[position] if len(members) > 1 else basis
                if plane_outputs is not None:  # small (2-D inputs): per layer
                    planes[index] = self._plane(
                        plane_outputs[index], components[index], mean[position] if len(members) > 1 else mean, index
                    )
        norms = [ops.sqrt(ops.sum(ops.square(ops.cast(w, "float32")))) for group in weights for w in group]
        reduced = {"groups": groups, "weight_norms": ops.stack(norms) if norms else ops.zeros((0,))}
        if previous_weights is not None:
            updates = [
                ops.sqrt(ops.sum(ops.square(ops.cast(w, "float32") - ops.cast(p, "float32"))))
                for group, earlier in zip(weights, previous_weights)
                for w, p in zip(group, earlier)
            ]
            reduced["update_norms"] = ops.stack(updates) if updates else ops.zeros((0,))
        if weight_grads is not None:
            reduced["gradient_groups"] = [
                _batched(lambda e: reductions.tensor_stats(e[0]), [[weight_grads[i][p] for i, p in places]])
                for places in _gradient_groups(weight_grads)
            ]
        if plane_outputs is not None:
            reduced["planes"] = planes
        projections = [c["projection"] for c in constants]
        reduced["cka"] = reductions.cka_matrix(features, projections) if len(features) > 1 else ops.ones((1, 1))
        return reduced, components

    def _plane(self, plane_output, components, mean, index: int) -> dict:
        """The input plane's grid through layer `index`: its points on the stored components, and its unit means."""
        plane = reductions.analysis_features(plane_output, MAX_FEATURES)[0]  # small: its own constants
        k = min(self.components, *(int(s) for s in plane.shape[1:]), self._probe_count)
        return {
            "plane_pca": ops.matmul(plane - mean, ops.transpose(components[:k])),
            "plane_units": ops.cast(reductions.unit_means(plane_output), "float16"),
        }

    def _groups(self, outputs, previous) -> list[list[int]]:
        """The layers' indices, grouped where every reduction of one applies to the others as it is: the same output
        shape and activation, and the same kind of state from the snapshot before (none, components or
        coordinates)."""
        groups: dict[tuple, list[int]] = {}
        for index, output in enumerate(outputs):
            kind = None if previous[index] is None else next(iter(previous[index]))
            key = (tuple(int(s) for s in output.shape), measures._activation_name(self.activations[index]), kind)
            groups.setdefault(key, []).append(index)
        return list(groups.values())

    def _layer_reductions(self, index: int, output, features, previous, constants: dict) -> tuple[dict, object, object]:
        """(the layer's reductions, its components, its mean feature), for layer `index` or any of its group."""
        n, d = (int(s) for s in features.shape)
        wanted = max(self.components, FEATURE_COMPONENTS)
        k = min(self.components, n, d)
        finite_rows = ops.all(ops.isfinite(features), axis=1)
        nonfinite_rows = n - ops.sum(ops.cast(finite_rows, "int32"))
        if previous is not None and "coords" in previous:  # after a recovery: directions from stored coordinates
            centred = features - ops.mean(features, axis=0, keepdims=True)
            previous = reductions.directions_along(centred, previous["coords"])
        elif previous is not None:
            previous = previous["components"]
        fitted = reductions.pca(
            features,
            wanted,
            previous,
            anchor=None if previous is None else previous[:k],
            start=constants["start"],
            seed=self.seed,
        )
        stats = reductions.activation_stats(output, self.activations[index], positions=constants["positions"])
        units = ops.transpose(reductions.unit_means(output)[:, :MAX_UNITS_RANKED])  # (units, n)
        top, bottom = reductions.extreme_rows(units, TOP_SAMPLES)
        layer = {
            "coords": fitted["coords"][..., :k],  # stored
            "variance": fitted["variance"],
            "total_variance": fitted["total_variance"],
            "nonfinite_rows": nonfinite_rows,
            "cka_sketch": reductions.cka_sketch(features, constants["sketch_rows"]),
            "unit_top": top,
            "unit_bottom": bottom,
            **{key: stats[key] for key in _ACTIVATION_KEYS},
        }
        if "spectrum" in fitted:
            layer["spectrum"] = fitted["spectrum"]
        if d <= FEATURE_COMPONENTS:  # narrow: the features themselves, no larger than their components
            layer["features"] = features
        else:  # wide: the components after the stored k, for the host's linear probe, at half the bytes
            layer["extra_coords"] = ops.cast(fitted["coords"][..., k:], "float16")
        return layer, fitted["components"], fitted["mean"]


def _gradient_groups(weight_grads: list[list]) -> list[list[tuple[int, int]]]:
    """The (layer, weight) places of the gradients, grouped by shape, in a fixed order."""
    shapes: dict[tuple, list[tuple[int, int]]] = {}
    for index, grads in enumerate(weight_grads):
        for position, grad in enumerate(grads):
            shapes.setdefault(tuple(int(s) for s in grad.shape), []).append((index, position))
    return list(shapes.values())


def _batched(function, elements: list[list]):
    """`function((a, b, ...))` on every member of a group at once, whose elements are `elements` ([a per member],
    [b per member], ...): on the members' tensors stacked, with results stacked the same way; a group of one is
    called as it is, with results unstacked."""
    if len(elements[0]) == 1:
        return function(tuple(column[0] for column in elements))
    return ops.vectorized_map(function, tuple(ops.stack(column) for column in elements))


def _per_layer(reduced: dict, groups: list[list[int]], gradient_groups: list | None, weight_counts: list[int]) -> dict:
    """The compiled reductions' results (numpy), stacked by group, as `{"layers": [a dict per layer], "cka"}`: each
    layer's dict of reductions, its `weight_norms` and `update_norms` (None on the first snapshot) and, with
    gradients, its `grads` (a dict of statistics per weight)."""
    layers: list = [None] * sum(len(members) for members in groups)
    for members, stacked in zip(groups, reduced["groups"]):
        for position, index in enumerate(members):
            layers[index] = _member(stacked, position) if len(members) > 1 else dict(stacked)
    starts = np.cumsum([0, *weight_counts])
    for index, layer in enumerate(layers):
        layer["weight_norms"] = list(reduced["weight_norms"][starts[index] : starts[index + 1]])
        updates = reduced.get("update_norms")
        layer["update_norms"] = None if updates is None else list(updates[starts[index] : starts[index + 1]])
        if reduced.get("planes") is not None:
            layer.update(reduced["planes"][index])
        if gradient_groups is not None:
            layer["grads"] = [None] * weight_counts[index]
    for places, stacked in zip(gradient_groups or [], reduced.get("gradient_groups", [])):
        for position, (index, weight) in enumerate(places):
            layers[index]["grads"][weight] = _member(stacked, position) if len(places) > 1 else stacked
    return {"layers": layers, "cka": reduced["cka"]}


def _member(stacked: dict, position: int) -> dict:
    return {key: value[position] for key, value in stacked.items()}


_ACTIVATION_KEYS = (
    "mean",
    "std",
    "percentiles",
    "hist_counts",
    "hist_low",
    "hist_high",
    "dead_units",
    "saturated_units",
    "unit_mean",
)
_GRADIENT_KEYS = ("norm", "mean_abs", "std", "max_abs", "zero_fraction", "nonfinite", "log_hist_counts")


def _features_shape(shape) -> tuple[tuple[int, int], list[int] | None]:
    """((n, d) of the features a layer's PCA runs on, the pooling grid or None), from its output's shape."""
    shape = tuple(int(s) for s in shape)
    grid = reductions.pooling_grid(shape, MAX_FEATURES)
    width = int(np.prod(shape[1:])) if grid is None else int(np.prod(grid)) * shape[-1]
    return (shape[0], width), grid


def _to_numpy(value):
    if value is None or isinstance(value, (int, float, str)):
        return value
    if isinstance(value, dict):
        return {key: _to_numpy(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_numpy(v) for v in value]
    return np.asarray(value)
