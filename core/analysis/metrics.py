"""Layer metrics read back from a recorded run: per-layer series over epochs and CKA of each layer with its own latest
snapshot. Numpy-only, for the dashboard's Layers page and `show --json`; nothing here is computed at capture time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.store import Run, Snapshot, StoreError

__all__ = [
    "LayerMetrics",
    "OutputSeries",
    "UnitExamples",
    "cka_to_final",
    "layer_metrics",
    "layer_width",
    "output_series",
    "probed_outputs",
    "sketch_cka",
    "unit_examples",
]

MAX_CKA_EPOCHS = 60  # CKA-to-final reads one sketch per layer and epoch: longer runs use every k-th epoch


def sketch_cka(first: np.ndarray, second: np.ndarray, gram: bool) -> float:
    """Linear CKA between two `L{i}/cka_sketch` arrays of the same layer (same probe rows, same form).

    A sketch holds the centred features (m, d) of a fixed probe subsample, or their Gram matrix (m, m) when the
    layer is wider than m (`gram`). nan when either side is constant.
    """
    a, b = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"CKA needs sketches of the same probe rows. Received shapes {a.shape} and {b.shape}.")
    if gram:
        cross, norm_a, norm_b = float(np.vdot(a, b)), float(np.linalg.norm(a)), float(np.linalg.norm(b))
    else:
        cross = float(np.sum((b.T @ a) ** 2))  # ||B^T A||_F^2 = <A A^T, B B^T>_F
        norm_a, norm_b = float(np.linalg.norm(a.T @ a)), float(np.linalg.norm(b.T @ b))
    denominator = norm_a * norm_b
    return min(cross / denominator, 1.0) if denominator > 0 else math.nan


def layer_width(layer: dict) -> int | None:
    """Features per sample of a recorded layer (the product of its output shape without the batch axis)."""
    shape = layer.get("output_shape") or []
    dims = shape[1:] if shape and shape[0] is None else shape
    if not dims or any(d is None for d in dims):
        return None
    return int(np.prod(dims))


def _is_gram(sketch: np.ndarray, width: int | None) -> bool:
    """Which form the recorder chose (see `core.capture.snapshot.SnapshotBuilder._sketch`): Gram when wider than m."""
    if width is not None:
        return width > sketch.shape[0]
    return sketch.shape[0] == sketch.shape[1] and np.array_equal(sketch, sketch.T)


def _spread(count: int, cap: int) -> list[int]:
    """At most `cap` positions out of `count`, evenly spaced, always with the first and last."""
    if count <= cap:
        return list(range(count))
    return sorted(set(np.linspace(0, count - 1, cap).round().astype(int).tolist()))


def cka_to_final(
    run: Run, snapshots: list[Snapshot] | None = None, cap: int = MAX_CKA_EPOCHS
) -> tuple[list[int], np.ndarray]:
    """(epochs, (epochs, layers) array): linear CKA of every layer at each epoch with the same layer at the last one.

    Values near 1 mean the layer already represents the probe set as it will at the end of training; layers that
    converge bottom-up (Raghu et al. 2017) reach 1 earlier the closer they are to the input. At most `cap` epochs.
    """
    snapshots = run.epoch_snapshots() if snapshots is None else snapshots
    chosen = [snapshots[p] for p in _spread(len(snapshots), cap)]
    values = np.full((len(chosen), len(run.layers)), np.nan)
    if not chosen:
        return [], values
    final = chosen[-1]
    for index, layer in enumerate(run.layers):
        target = final.array(f"L{index}/cka_sketch")
        if target is None:
            continue
        gram = _is_gram(target, layer_width(layer))
        for row, snapshot in enumerate(chosen):
            sketch = snapshot.array(f"L{index}/cka_sketch")
            if sketch is not None and sketch.shape == target.shape and np.isfinite(sketch).all():
                values[row, index] = sketch_cka(sketch, target, gram)
    return [int(s.epoch) for s in chosen], values


@dataclass(frozen=True)
class LayerMetrics:
    """Per-layer scalars of every captured epoch, as (epochs, layers) arrays with NaN where missing."""

    epochs: list[int]
    layers: list[str]
    probe: np.ndarray  # linear probe accuracy (held-out half of the probe set)
    separation: np.ndarray  # silhouette of the classes in the layer's PCA space
    n90: np.ndarray  # principal components for 90% of the variance
    participation: np.ndarray  # participation ratio (sum l)^2 / sum l^2 of the PCA spectrum
    input_probe: float | None  # the same probe on the raw input: the baseline every layer is compared with
    input_separation: float | None

    def at(self, epoch: int | None) -> int:
        """Row of `epoch` (None or absent: the nearest captured one, the last by default)."""
        if not self.epochs:
            raise ValueError("This run has no captured epochs yet.")
        if epoch is None:
            return len(self.epochs) - 1
        return min(range(len(self.epochs)), key=lambda row: (abs(self.epochs[row] - epoch), self.epochs[row]))


def layer_metrics(run: Run, snapshots: list[Snapshot] | None = None, output: int | None = None) -> LayerMetrics:
    """Every layer's probe accuracy, separation and dimensionality over the captured epochs. The probes and
    separation are of the classes of model output `output` (None, or the primary output: `linear_probe` and
    `separation`); another output's are those a model of several outputs records per output of classes
    (`linear_probes`, `separations`), NaN where the run holds none."""
    snapshots = run.epoch_snapshots() if snapshots is None else snapshots
    baseline = run.meta.get("input") or {}
    probe: tuple[str, ...]
    separation: tuple[str, ...]
    if output is None or output == run.info.probe.primary_output:
        probe, separation = ("linear_probe",), ("separation",)
        input_probe, input_separation = baseline.get("linear_probe"), baseline.get("separation")
    else:
        probe, separation = ("linear_probes", str(output)), ("separations", str(output))
        input_probe = (baseline.get("linear_probes") or {}).get(str(output))
        input_separation = (baseline.get("separations") or {}).get(str(output))
    return LayerMetrics(
        epochs=[int(s.epoch) for s in snapshots],
        layers=[str(layer.get("name", f"layer {i}")) for i, layer in enumerate(run.layers)],
        probe=run.layer_series(*probe, snapshots=snapshots),
        separation=run.layer_series(*separation, snapshots=snapshots),
        n90=run.layer_series("dimensionality", "n90", snapshots=snapshots),
        participation=run.layer_series("dimensionality", "participation_ratio", snapshots=snapshots),
        input_probe=_number(input_probe),
        input_separation=_number(input_separation),
    )


def probed_outputs(run: Run, snapshot: Snapshot | None = None) -> list[int]:
    """The model outputs whose classes each layer has a linear probe of at `snapshot` (None: the latest): the
    primary output when the run has labels, and each output of classes a model of several outputs records."""
    snapshots = run.epoch_snapshots() if snapshot is None else [snapshot]
    found = {run.info.probe.primary_output} if run.info.probe.has_labels else set()
    for record in (snapshots[-1].meta.get("layers") or []) if snapshots else []:
        probes = record.get("linear_probes") if isinstance(record, dict) else None
        found.update(int(key) for key in probes or {})
    return sorted(found)


@dataclass(frozen=True)
class OutputSeries:
    """How one model output did on the probe set at each captured epoch, computed from its stored predictions and
    truth (`Snapshot.predictions(k)`, `Probe.targets[k]`): (epochs,) arrays, NaN where a snapshot holds no
    predictions or the output has no such measure."""

    epochs: list[int]
    accuracy: np.ndarray  # outputs of classes: the share of probe samples whose most probable class is the true one
    crossentropy: np.ndarray  # outputs of classes: the mean -log of the probability given to the true class
    squared_error: np.ndarray  # regression outputs: the mean squared error over samples and columns
    chance: float  # outputs of classes: the share of the probe's most common class (NaN otherwise)


def output_series(run: Run, output: int, snapshots: list[Snapshot] | None = None) -> OutputSeries:
    """Model output `output`'s probe accuracy and cross-entropy (classes) or squared error (regression values) per
    snapshot, against its own truth. Only a model of several outputs stores each one's predictions apart; for one
    output, `pred/probs` is its predictions."""
    snapshots = run.epoch_snapshots() if snapshots is None else snapshots
    kinds = {o.index: o.kind for o in run.info.outputs}
    kind = kinds.get(output, "classes" if run.info.probe.has_labels and output == 0 else None)
    count = len(snapshots)
    accuracy, crossentropy, squared = np.full(count, np.nan), np.full(count, np.nan), np.full(count, np.nan)
    truth = _output_truth(run, output)
    chance = math.nan
    if truth is not None and kind == "classes" and truth.ndim == 1 and truth.size:
        labels = truth.astype(np.int64)
        chance = float(np.bincount(labels).max() / labels.size) if labels.min() >= 0 else math.nan
    several = len(run.info.outputs) > 1
    for row, snapshot in enumerate(snapshots):
        # Of several outputs, each one's own (`predictions` falls back to the primary output's where it has none).
        predicted = snapshot.array(f"pred/{int(output)}/probs") if several else snapshot.predictions()
        if truth is None or predicted is None or predicted.ndim != 2 or predicted.shape[0] != truth.shape[0]:
            continue
        predicted = predicted.astype(np.float64)
        if kind == "classes" and not math.isnan(chance) and predicted.shape[1] >= 2:
            labels = truth.astype(np.int64)
            if labels.max() < predicted.shape[1]:
                accuracy[row] = float(np.mean(predicted.argmax(axis=1) == labels))
                with np.errstate(divide="ignore", invalid="ignore"):
                    chosen = np.clip(predicted[np.arange(labels.size), labels], 1e-7, 1.0)
                    crossentropy[row] = float(-np.mean(np.log(chosen)))
        elif kind == "values":
            values = truth.reshape(truth.shape[0], -1).astype(np.float64)
            if values.shape[1] == predicted.shape[1]:
                with np.errstate(over="ignore", invalid="ignore"):
                    squared[row] = float(np.mean((predicted - values) ** 2))
    for measure in (accuracy, crossentropy, squared):
        measure[~np.isfinite(measure)] = np.nan
    return OutputSeries([int(s.epoch) for s in snapshots], accuracy, crossentropy, squared, chance)


def _output_truth(run: Run, output: int) -> np.ndarray | None:
    """The probe's truth of `output` (its class ids or values); a run written before outputs were stored: `y`."""
    try:
        probe = run.probe()
    except StoreError:
        return None
    truth = probe.targets.get(output)
    if truth is None and not probe.targets and output == run.info.probe.primary_output:
        truth = probe.y
    return None if truth is None else np.asarray(truth)


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass(frozen=True)
class UnitExamples:
    """The probe rows that drive one unit most and least at one snapshot (most extreme first)."""

    unit: int
    top: np.ndarray  # (count,) probe rows, the most activating first
    bottom: np.ndarray  # (count,) probe rows, the least activating first


def unit_examples(snapshot: Snapshot, layer: int, unit: int) -> UnitExamples | None:
    """None when the snapshot ranked no samples for this unit (wide layers rank their first 256 units only)."""
    top, bottom = snapshot.array(f"L{layer}/unit_top"), snapshot.array(f"L{layer}/unit_bottom")
    if top is None or bottom is None or not 0 <= unit < len(top):
        return None
    return UnitExamples(unit, np.asarray(top[unit]), np.asarray(bottom[unit]))
