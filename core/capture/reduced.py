"""A capture reduced on the device (`core.capture.device_pass`), and the snapshot record written from it: the same keys
and meta as `SnapshotBuilder.build` writes from a raw capture (core/FORMAT.md). Numpy only: the recording process
imports it to unpickle what the training process sends.

What the host still computes: the linear probe, from the features of a layer at most `FEATURE_COMPONENTS` wide
and from the top `FEATURE_COMPONENTS` principal coordinates of a wider one, shipped instead of its output, and the class
separation (on the stored ten, as from a raw capture). CKA between layers comes from the device, computed as
`measures.cka_matrix` computes it on the layers' features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from core.analysis import measures

if TYPE_CHECKING:
    from core.capture.snapshot import SnapshotBuilder

ACTIVATION_BINS = 40
# Principal components computed per layer on the device: the stored k (10 by default) and, for the host's linear
# probe and CKA, the next ones up to this many (shipped as float16), in place of the layer's output.
FEATURE_COMPONENTS = 32


@dataclass
class ReducedLayer:
    """One layer's reductions, as numpy. `coords` (n, k) float32 are the stored projection; `extra_coords`
    (n, m - k) float16 the next components, for the host's linear probe and CKA only."""

    coords: np.ndarray
    extra_coords: np.ndarray
    probe_features: np.ndarray | None  # (n, d) the features themselves when d <= FEATURE_COMPONENTS: probed as they are
    variance: np.ndarray  # (m,) with ddof=1, largest first
    total_variance: float
    spectrum: np.ndarray | None  # every eigenvalue when the method is exact
    method: str
    grid: list[int] | None  # the pooling grid of a wide output (None: the output as it is)
    features_shape: tuple[int, int]  # (n, d) of the features the PCA ran on
    nonfinite_rows: int  # probe samples whose features hold NaN or Inf
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # stored as they are: act_hist_counts, cka_sketch...
    activation: dict[str, Any] = field(default_factory=dict)  # mean, std, percentiles, hist_low, hist_high
    weight_norm: dict[str, float] = field(default_factory=dict)
    update_norm: dict[str, float] = field(default_factory=dict)  # ||w - w_previous|| per role, when known
    grad: dict[str, dict[str, Any]] = field(default_factory=dict)  # per role: tensor_stats and log_hist_counts
    output_grad_norm: float | None = None


@dataclass
class ReducedCapture:
    """What the device-reducing probe pass returns for one snapshot: everything a snapshot stores, reduced."""

    kind: str
    epoch: int
    step: int
    batch: int | None
    logs: dict
    predictions: np.ndarray | list[np.ndarray]  # (n, classes); a list of them, one per output, for several outputs
    loss: float | None
    layers: list[ReducedLayer]
    cka: np.ndarray  # (L, L) linear CKA between the layers, as `measures.cka_matrix` of their features
    measured: bool  # gradients were taken (the probe has labels)
    plane_predictions: np.ndarray | list[np.ndarray] | None = None

    def nbytes(self) -> int:
        """Bytes of the arrays it holds: what crossed from the device to the host for this snapshot."""
        total = _nbytes(self.predictions) + self.cka.nbytes + _nbytes(self.plane_predictions)
        for layer in self.layers:
            total += layer.coords.nbytes + layer.extra_coords.nbytes + layer.variance.nbytes
            total += 0 if layer.probe_features is None else layer.probe_features.nbytes
            total += 0 if layer.spectrum is None else layer.spectrum.nbytes
            total += sum(a.nbytes for a in layer.arrays.values())
            total += sum(np.asarray(s["log_hist_counts"]).nbytes for s in layer.grad.values())
        return int(total)


def _nbytes(arrays: np.ndarray | list[np.ndarray] | None) -> int:
    return 0 if arrays is None else sum(a.nbytes for a in (arrays if isinstance(arrays, list) else [arrays]))


def build_reduced(builder: SnapshotBuilder, reduced: ReducedCapture) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) for `RunWriter.write_snapshot`, as `SnapshotBuilder.build` makes them from a raw capture."""
    arrays: dict[str, np.ndarray] = {}
    layers = [_layer_record(builder, index, layer, arrays) for index, layer in enumerate(reduced.layers)]
    meta = builder.snapshot_meta(reduced, layers, arrays)
    meta["cka"] = np.asarray(reduced.cka, np.float64).tolist()
    return meta, arrays


def _layer_record(builder: SnapshotBuilder, index: int, layer: ReducedLayer, arrays: dict):
    prefix = f"L{index}/"
    record: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    n = layer.features_shape[0]
    if layer.nonfinite_rows:
        skipped["projection"] = f"the output holds NaN or Inf on {layer.nonfinite_rows} of {n} probe samples"
    else:
        builder._guarded(record, arrays, skipped, "projection", lambda out: _projection(builder, index, layer, out))
    builder._guarded(record, arrays, skipped, "activation", lambda out: _activation(prefix, layer, out))
    builder._guarded(record, arrays, skipped, "gradients", lambda out: _gradients(builder, index, layer, out))
    if not layer.nonfinite_rows:
        arrays[prefix + "unit_top"], arrays[prefix + "unit_bottom"] = (
            layer.arrays["unit_top"],
            layer.arrays["unit_bottom"],
        )
    if skipped:
        record["skipped"] = skipped
    return record


def _projection(builder: SnapshotBuilder, index: int, layer: ReducedLayer, arrays: dict) -> dict:
    prefix = f"L{index}/"
    k = layer.coords.shape[1]
    arrays[prefix + "pca"] = layer.coords.astype(np.float32)
    arrays[prefix + "cka_sketch"] = layer.arrays["cka_sketch"].astype(np.float32)
    if "plane_pca" in layer.arrays:
        arrays[prefix + "plane_pca"] = layer.arrays["plane_pca"].astype(np.float32)
        arrays[prefix + "plane_units"] = layer.arrays["plane_units"].astype(np.float16)
    total = float(layer.total_variance)
    variance = np.asarray(layer.variance, np.float64)
    ratio = variance / total if total > 0 else np.zeros_like(variance)
    n, d = layer.features_shape
    fitted = measures.PCAResult(
        coords=layer.coords,
        components=np.broadcast_to(np.float32(0), (len(variance), d)),  # only its width is read
        mean=np.zeros(0, np.float32),
        explained_variance=variance,
        explained_variance_ratio=ratio,
        total_variance=total,
        method=layer.method,
        spectrum=None if layer.spectrum is None else np.asarray(layer.spectrum, np.float64),
    )
    record: dict[str, Any] = {
        "pca": {
            "explained_variance_ratio": ratio[:k].tolist(),
            "order": list(range(k)),
            "method": layer.method,
            "total_variance": total,
        },
        "dimensionality": measures.effective_dimensionality(fitted),
    }
    if layer.grid is not None:
        record["pca"]["pooled"] = layer.grid
    if builder.labels is not None or builder.output_labels:
        features = layer.probe_features
        if features is None:  # a wide layer: its top principal coordinates are all of it that reached the host
            features = np.hstack([layer.coords, layer.extra_coords.astype(np.float32)])
            record["probe_components"] = int(features.shape[1])
        record.update(builder.class_probes(index, features, layer.coords))
    return record


def _activation(prefix: str, layer: ReducedLayer, arrays: dict) -> dict:
    stats = layer.activation
    for key in ("act_hist_counts", "dead_units", "saturated_units", "unit_mean"):
        arrays[prefix + key] = layer.arrays[key]
    arrays[prefix + "act_hist_counts"] = layer.arrays["act_hist_counts"].astype(np.int64)
    arrays[prefix + "act_hist_edges"] = np.linspace(
        float(stats["hist_low"]), float(stats["hist_high"]), ACTIVATION_BINS + 1
    )  # float64, as the numpy analysis spans them
    dead, saturated = layer.arrays["dead_units"], layer.arrays["saturated_units"]
    return {
        "activation": {
            "mean": float(stats["mean"]),
            "std": float(stats["std"]),
            "percentiles": np.asarray(stats["percentiles"], np.float64).tolist(),
            "dead_fraction": float(dead.mean()) if dead.size else 0.0,
            "saturated_fraction": float(saturated.mean()) if saturated.size else 0.0,
        }
    }


def _gradients(builder: SnapshotBuilder, index: int, layer: ReducedLayer, arrays: dict) -> dict:
    prefix = f"L{index}/"
    record: dict[str, Any] = {"weight_norm": {}, "update_ratio": {}}
    for role, norm in layer.weight_norm.items():
        record["weight_norm"][role] = float(norm)
        if role in layer.update_norm:
            record["update_ratio"][role] = float(layer.update_norm[role]) / norm if norm > 0 else None
    if "kernel" in layer.arrays:
        arrays[prefix + "kernel"] = layer.arrays["kernel"].astype(np.float32)
    if layer.grad or layer.output_grad_norm is not None:
        record["grad"] = {}
        for role, stats in layer.grad.items():
            stats = dict(stats)
            arrays[f"{prefix}grad_{role}_log_hist"] = np.asarray(stats.pop("log_hist_counts"), np.int64)
            record["grad"][role] = {key: (int(v) if key == "nonfinite" else float(v)) for key, v in stats.items()}
        if layer.output_grad_norm is not None:
            record["grad"]["output"] = {"norm": float(layer.output_grad_norm)}
    return record
