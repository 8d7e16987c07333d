"""Turns one raw capture (numpy arrays from the compiled probe pass) into a snapshot record: scalars and arrays.

This is the numpy analysis that runs off the training thread. It keeps the little state that must carry from
one snapshot to the next: each layer's previous principal components (so an axis never mirror-flips, while PC1
stays the largest) and previous weights (for the update-to-weight ratio).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.analysis import measures
from core.capture.reduced import ReducedCapture, build_reduced

TOP_SAMPLES = 8  # probe samples kept per unit, most and least activating
MAX_UNITS_RANKED = 256  # wider layers keep top samples for their first 256 units only
CKA_SKETCH_POINTS = 256  # probe points kept per layer to compare a layer with its own final state (CKA)
SEPARATION_POINTS = 500  # silhouette is O(n^2): a fixed subsample keeps it a few milliseconds per layer
# A wider image-like or sequence output (a 48x48x96 feature map is 221,184 values a sample) is averaged over regions
# of its positions until it has at most this many features, before PCA, CKA and linear probes: their cost grows with
# the width, and an analysis of MobileNetV2's layers took 77 s a snapshot unpooled. The grid is recorded (`pooled`).
MAX_FEATURES = 4096


@dataclass
class RawCapture:
    """What the compiled pass returns for one snapshot, already converted to numpy."""

    kind: str  # "epoch" or "batch"
    epoch: int
    step: int
    batch: int | None
    logs: dict
    outputs: list[np.ndarray]  # per layer (n, ...) output on the probe set
    predictions: np.ndarray | list[np.ndarray]  # (n, classes); a list of them, one per output, for several outputs
    loss: float | None
    weights: list[dict[str, np.ndarray]]  # per layer {role: value}
    weight_grads: list[dict[str, np.ndarray]]  # per layer {role: gradient}, empty without labels
    output_grad_norms: list[float | None]  # per layer L2 norm of the loss gradient w.r.t. the layer output
    plane_outputs: list[np.ndarray] | None = None  # per layer output on the input-plane grid
    plane_predictions: np.ndarray | list[np.ndarray] | None = None  # (grid points, classes), or one per output


@dataclass
class SnapshotBuilder:
    """Analyses raw captures in order. One builder per run; not thread-safe (one worker owns it)."""

    activations: list[str | None]  # per layer Keras activation name
    labels: np.ndarray | None  # (n,) int probe labels
    components: int = 10
    seed: int = 0
    kernel_layer: int | None = None  # the first layer with a kernel: its weights are stored whole
    logits: bool = False  # the model outputs logits (its loss has from_logits=True): stored as probabilities
    # A model with several outputs: per output {"logits", "sigmoid"}, how to read its predictions (None: one output,
    # read by `logits` and the last layer's activation); `labels` are of output `primary`, stored as `pred/probs`.
    heads: list[dict] | None = None
    primary: int = 0
    # A model with several outputs: per output its (n,) class ids, None for one whose targets are not classes. Each
    # output of classes gets its own linear probe and separation per layer (`linear_probes`, `separations`).
    output_labels: list[np.ndarray | None] | None = None
    _previous_components: dict[int, np.ndarray] = field(default_factory=dict)
    _previous_weights: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    # Warm starts for each probe: by layer for the primary output's, by (output, layer) for another output's.
    _previous_probes: dict[Any, np.ndarray] = field(default_factory=dict)
    _sketch_rows: np.ndarray | None = None
    _previous_coords: dict[int, np.ndarray] = field(default_factory=dict)  # see `resume`

    def resume(self, coords: dict[int, np.ndarray], weights: list[dict[str, np.ndarray]] | None) -> None:
        """Go on after snapshots another builder wrote (a recovery): `coords` are each layer's stored PCA
        coordinates in the last of them, `weights` the weights it was taken on (None: unknown; the next
        snapshot then has no update ratios). The next snapshot's axes are matched to those coordinates."""
        self._previous_coords = {index: np.asarray(c, np.float64) for index, c in coords.items()}
        if weights is not None:
            self._previous_weights = {i: {role: np.asarray(v) for role, v in w.items()} for i, w in enumerate(weights)}

    def build(self, raw: RawCapture | ReducedCapture) -> tuple[dict, dict[str, np.ndarray]]:
        """(meta, arrays) for `RunWriter.write_snapshot`; a capture reduced on the device goes to `core.reduced`."""
        if isinstance(raw, ReducedCapture):
            return build_reduced(self, raw)
        arrays: dict[str, np.ndarray] = {}
        layers = []
        features = []
        for index, output in enumerate(raw.outputs):
            flat, grid = analysis_features(output)  # (n, d)
            features.append(flat)
            layers.append(self._layer_record(index, raw, flat, arrays))
            if grid is not None and "pca" in layers[-1]:
                layers[-1]["pca"]["pooled"] = grid
        meta = self.snapshot_meta(raw, layers, arrays)
        skipped: dict[str, str] = {}
        self._guarded(
            meta,
            arrays,
            skipped,
            "cka",
            lambda out: {"cka": measures.cka_matrix(features).tolist() if len(features) > 1 else [[1.0]]},
        )
        if skipped:
            meta["skipped"] = skipped
        return meta, arrays

    def snapshot_meta(self, capture: RawCapture | ReducedCapture, layers: list[dict], arrays: dict) -> dict:
        """The snapshot's meta from a capture of either kind and its layer records; stores the predictions into
        `arrays` (`prediction_arrays`)."""
        predictions = self.prediction_arrays(capture.predictions, capture.plane_predictions, arrays)
        return {
            "kind": capture.kind,
            "epoch": capture.epoch,
            "step": capture.step,
            "batch": capture.batch,
            "logs": _numeric_logs(capture.logs),
            "probe_loss": capture.loss,
            "probe_model_accuracy": self._model_accuracy(predictions),
            "layers": layers,
            "nonfinite": bool(
                not np.isfinite(predictions).all() or (capture.loss is not None and not np.isfinite(capture.loss))
            ),
        }

    def prediction_arrays(self, predictions: Any, plane_predictions: Any, arrays: dict) -> np.ndarray:
        """Stores the model's predictions on the probe (`pred/probs`, and `pred/<k>/probs` per output of several)
        and on the input plane into `arrays`, as probabilities where they are classes; returns `pred/probs`, the
        primary output's."""
        if isinstance(predictions, list):
            for head, values in enumerate(predictions):
                arrays[f"pred/{head}/probs"] = self._output_probabilities(values, head)
            primary = arrays[f"pred/{self.primary}/probs"]
        else:
            primary = self._class_probabilities(predictions)
        arrays["pred/probs"] = primary
        if isinstance(plane_predictions, list):
            plane = self._output_probabilities(plane_predictions[self.primary], self.primary)
            arrays["pred/plane_probs"] = plane.astype(np.float16)
        elif plane_predictions is not None:
            arrays["pred/plane_probs"] = self._class_probabilities(plane_predictions).astype(np.float16)
        return primary

    def _output_probabilities(self, predictions: np.ndarray, output: int) -> np.ndarray:
        """`_class_probabilities` of one output of several, read by its head."""
        head = (self.heads or [{}] * (output + 1))[output]
        return self._class_probabilities(predictions, head.get("logits", False), head.get("sigmoid", False))

    def _class_probabilities(
        self, predictions: np.ndarray, logits: bool | None = None, sigmoid: bool | None = None
    ) -> np.ndarray:
        """(n, C) float32 class probabilities, as every classifier's are stored. Logits (`logits`) go through a
        softmax, or a sigmoid for one unit. A model ending in one sigmoid unit predicts P(class 1): it is stored as
        the two columns P(class 0), P(class 1). Other outputs, such as regression values, are kept as they are."""
        logits = self.logits if logits is None else logits
        if sigmoid is None:
            sigmoid = bool(self.activations and self.activations[-1] == "sigmoid")
        predictions = np.asarray(predictions, np.float32)
        if predictions.ndim != 2:
            return predictions
        if logits and predictions.shape[1] > 1:
            shifted = np.exp(predictions - predictions.max(axis=1, keepdims=True))
            return shifted / shifted.sum(axis=1, keepdims=True)
        if logits:
            with np.errstate(over="ignore"):  # a very negative logit: exp overflows to inf, the probability to 0
                predictions = 1.0 / (1.0 + np.exp(-predictions))
        elif not sigmoid:
            return predictions
        return np.hstack([1.0 - predictions, predictions]) if predictions.shape[1] == 1 else predictions

    def _model_accuracy(self, predictions: np.ndarray) -> float | None:
        if self.labels is None or predictions.ndim != 2 or predictions.shape[1] < 2:
            return None
        return float(np.mean(predictions.argmax(axis=1) == self.labels))

    def _layer_record(self, index: int, raw: RawCapture, flat: np.ndarray, arrays: dict) -> dict:
        """The layer's record. A degenerate layer (constant, NaN, huge) costs only the pieces that cannot be computed
        on it: each one skipped is named in `record["skipped"]` with its reason, and the snapshot is still written."""
        prefix = f"L{index}/"
        record: dict = {}
        skipped: dict[str, str] = {}
        nonfinite = int(np.count_nonzero(~np.isfinite(flat).all(axis=1))) if flat.size else 0
        if nonfinite:
            skipped["projection"] = f"the output holds NaN or Inf on {nonfinite} of {len(flat)} probe samples"
        else:
            self._guarded(record, arrays, skipped, "projection", lambda out: self._projection(index, raw, flat, out))
        self._guarded(record, arrays, skipped, "activation", lambda out: self._activation(index, raw, out))
        self._guarded(record, arrays, skipped, "gradients", lambda out: self._gradients(index, raw, out))
        if not nonfinite:
            self._guarded(
                record,
                arrays,
                skipped,
                "unit_rankings",
                lambda out: out.update(self._unit_rankings(prefix, raw.outputs[index])) or {},
            )
        if skipped:
            record["skipped"] = skipped
        return record

    @staticmethod
    def _guarded(record: dict, arrays: dict, skipped: dict, piece: str, compute) -> None:
        """Run `compute(out) -> record fields`, which writes its arrays to `out`; keep both only if it succeeds,
        else name the piece and the error in `skipped`."""
        out: dict[str, np.ndarray] = {}
        try:
            with np.errstate(all="ignore"):
                fields = compute(out)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError, MemoryError) as error:
            skipped[piece] = f"{type(error).__name__}: {error}"
            return
        record.update(fields)
        arrays.update(out)

    def _activation(self, index: int, raw: RawCapture, arrays: dict) -> dict:
        prefix = f"L{index}/"
        stats = measures.activation_stats(raw.outputs[index], activation=self.activations[index])
        arrays[prefix + "act_hist_counts"] = stats["hist_counts"]
        arrays[prefix + "act_hist_edges"] = stats["hist_edges"]
        arrays[prefix + "dead_units"] = stats["dead_units"]
        arrays[prefix + "saturated_units"] = stats["saturated_units"]
        arrays[prefix + "unit_mean"] = stats["unit_mean"]
        return {
            "activation": {
                "mean": stats["mean"],
                "std": stats["std"],
                "percentiles": np.asarray(stats["percentiles"]).tolist(),
                "dead_fraction": stats["dead_fraction"],
                "saturated_fraction": stats["saturated_fraction"],
            }
        }

    def _projection(self, index: int, raw: RawCapture, flat: np.ndarray, arrays: dict) -> dict:
        prefix = f"L{index}/"
        fitted = measures.pca(flat, k=self.components, seed=self.seed)
        previous = self._previous_components.get(index)
        if previous is None and index in self._previous_coords:
            previous = _components_along(flat - fitted.mean, self._previous_coords.pop(index))
        aligned, order = measures.align_pca(fitted, previous)
        self._previous_components[index] = aligned.components
        arrays[prefix + "pca"] = aligned.coords.astype(np.float32)
        arrays[prefix + "cka_sketch"] = self._sketch(flat)
        if raw.plane_outputs is not None:
            plane = analysis_features(raw.plane_outputs[index])[0]
            arrays[prefix + "plane_pca"] = ((plane - aligned.mean) @ aligned.components.T).astype(np.float32)
            arrays[prefix + "plane_units"] = _unit_matrix(raw.plane_outputs[index]).astype(np.float16)
        record: dict[str, Any] = {
            "pca": {
                "explained_variance_ratio": np.asarray(aligned.explained_variance_ratio).tolist(),
                "order": np.asarray(order).tolist(),
                "method": aligned.method,
                "total_variance": aligned.total_variance,
            },
            "dimensionality": measures.effective_dimensionality(fitted),
        }
        record.update(self.class_probes(index, flat, aligned.coords))
        return record

    def class_probes(self, index: int, features: np.ndarray, coords: np.ndarray) -> dict:
        """Layer `index`'s linear probe on `features` (n, d) and class separation in its PCA `coords` (n, k), of the
        primary output's classes (`linear_probe`, `separation`) and, for a model of several outputs, of each output
        of classes (`linear_probes`, `separations`: {output number as text: value}); {} without labels."""
        record: dict[str, Any] = {}
        if self.labels is not None:
            record["linear_probe"], record["separation"] = self._class_probe(
                index, index, features, coords, self.labels
            )
        outputs = {k: ids for k, ids in enumerate(self.output_labels or []) if ids is not None}
        if outputs:
            record["linear_probes"], record["separations"] = {}, {}
            for output, ids in outputs.items():
                if output == self.primary and self.labels is not None:
                    accuracy, separation = record["linear_probe"], record["separation"]
                else:
                    accuracy, separation = self._class_probe((output, index), index, features, coords, ids)
                record["linear_probes"][str(output)], record["separations"][str(output)] = accuracy, separation
        return record

    def _class_probe(self, key: Any, index: int, features, coords, labels: np.ndarray) -> tuple[float, float]:
        """(held-out linear probe accuracy, silhouette) of `labels` on one layer, the probe warm-started from the
        fit kept under `key`."""
        accuracy, weights = measures.linear_probe(
            features, labels, seed=self.seed, start=self._previous_probes.get(key)
        )
        if weights is not None:
            self._previous_probes[key] = weights
        separation = measures.class_separation(coords, labels, max_points=SEPARATION_POINTS, seed=self.seed)
        return accuracy, separation

    def _sketch(self, flat: np.ndarray) -> np.ndarray:
        """A fixed subsample of centred features (or their Gram matrix when wider) for CKA across snapshots."""
        if self._sketch_rows is None:
            rng = np.random.default_rng(self.seed)
            count = min(CKA_SKETCH_POINTS, flat.shape[0])
            self._sketch_rows = np.sort(rng.choice(flat.shape[0], size=count, replace=False))
        rows = flat[self._sketch_rows].astype(np.float64)
        rows -= rows.mean(axis=0)
        if rows.shape[1] > rows.shape[0]:
            rows = rows @ rows.T  # (m, m) Gram: smaller than (m, d) for wide layers
        return rows.astype(np.float32)

    def _gradients(self, index: int, raw: RawCapture, arrays: dict) -> dict:
        prefix = f"L{index}/"
        weights = raw.weights[index]
        record: dict = {"weight_norm": {}, "update_ratio": {}}
        previous = self._previous_weights.get(index)
        for role, value in weights.items():
            norm = float(np.linalg.norm(value))
            record["weight_norm"][role] = norm
            if previous is not None and role in previous:
                change = float(np.linalg.norm(value - previous[role]))
                record["update_ratio"][role] = change / norm if norm > 0 else None
        self._previous_weights[index] = {role: value.copy() for role, value in weights.items()}
        if index == self.kernel_layer and "kernel" in weights:
            arrays[prefix + "kernel"] = weights["kernel"].astype(np.float32)  # drawn as images for image data
        if raw.weight_grads:
            record["grad"] = {}
            for role, gradient in raw.weight_grads[index].items():
                stats = measures.tensor_stats(gradient)
                arrays[f"{prefix}grad_{role}_log_hist"] = stats.pop("log_hist_counts")
                record["grad"][role] = stats
            output_grad_norm = raw.output_grad_norms[index]
            if output_grad_norm is not None:
                record["grad"]["output"] = {"norm": output_grad_norm}
        return record

    def _unit_rankings(self, prefix: str, output: np.ndarray) -> dict:
        units = np.ascontiguousarray(_unit_matrix(output)[:, :MAX_UNITS_RANKED].T)  # (units, n), rows contiguous
        top, bottom = _extreme_rows(units, TOP_SAMPLES)
        return {prefix + "unit_top": top, prefix + "unit_bottom": bottom}


def _numeric_logs(logs: dict) -> dict[str, float]:
    """The real numbers among Keras's logs: a callback may add text or arrays, which only lose themselves."""
    kept = {}
    for key, value in logs.items():
        if isinstance(value, (bool, np.bool_)) or not hasattr(value, "__float__") or np.ndim(value) != 0:
            continue
        try:
            kept[str(key)] = float(value)  # numbers, numpy scalars and 0-d arrays, tensors that hold one number
        except (TypeError, ValueError):
            continue
    return kept


def _extreme_rows(values: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(largest, smallest): (units, count) column indices of the `count` largest values per row, largest
    first, and of the `count` smallest, smallest first. One partition pass finds both ends."""
    n = values.shape[1]
    count = min(count, n)
    if 2 * count >= n:
        order = np.argsort(values, axis=1, kind="stable")
        return order[:, ::-1][:, :count].astype(np.int32), order[:, :count].astype(np.int32)
    picked = np.argpartition(values, (count - 1, n - count), axis=1)  # O(n) per row instead of a full sort
    low, high = picked[:, :count], picked[:, n - count :]
    low = np.take_along_axis(low, np.argsort(np.take_along_axis(values, low, axis=1), axis=1, kind="stable"), axis=1)
    high = np.take_along_axis(
        high, np.argsort(-np.take_along_axis(values, high, axis=1), axis=1, kind="stable"), axis=1
    )
    return high.astype(np.int32), low.astype(np.int32)


def _components_along(centred: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """(k, d) unit directions in this snapshot's feature space that place the probe samples as `coords` (n, k),
    an earlier snapshot's stored coordinates, did: aligning to them gives each new axis the sign of the old axis
    whose coordinates it correlates with most, when the old axes themselves are not at hand."""
    directions = coords.T @ centred.astype(np.float64)  # (k, d)
    norms = np.linalg.norm(directions, axis=1, keepdims=True)
    return directions / np.where(norms > 0, norms, 1.0)


def analysis_features(output: np.ndarray, limit: int = MAX_FEATURES) -> tuple[np.ndarray, list[int] | None]:
    """(n, d) features the PCA, CKA and linear probes of a layer use, and the grid its positions were averaged to
    (None: the output as it is). An output with positions (n, *positions, channels) wider than `limit` is averaged
    over regions of its positions, halving every side of the grid until grid cells x channels <= `limit`."""
    if output.ndim < 3 or output[0].size <= limit:
        return _as_matrix(output), None
    n, *positions, channels = output.shape
    grid = list(positions)
    while math.prod(grid) * channels > limit and max(grid) > 1:
        grid = [max(1, cells // 2) for cells in grid]
    pooled: np.ndarray = np.asarray(output, np.float32)  # the averages below are float64
    for axis, (size, cells) in enumerate(zip(positions, grid), start=1):
        edges = np.linspace(0, size, cells + 1).round().astype(np.int64)
        shape = [1] * pooled.ndim
        shape[axis] = cells
        pooled = np.add.reduceat(pooled, edges[:-1], axis=axis) / np.diff(edges).reshape(shape)
    return _as_matrix(pooled), grid


def _as_matrix(output: np.ndarray) -> np.ndarray:
    """(n, d) view of a layer output of any rank."""
    return output.reshape(output.shape[0], -1)


def _unit_matrix(output: np.ndarray) -> np.ndarray:
    """(n, units): conv outputs average over positions so a unit is a channel."""
    if output.ndim > 2:
        return output.reshape(output.shape[0], -1, output.shape[-1]).mean(axis=1)
    return output
