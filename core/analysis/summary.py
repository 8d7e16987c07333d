"""A run as one JSON-ready dict: what `python -m core show RUN --json` prints. Numpy-only."""

from __future__ import annotations

import numpy as np

from core.analysis.diagnosis import diagnose
from core.analysis.metrics import output_series
from core.store import Run, main_weight, to_json_safe, variance_ratios
from core.store.run_info import OutputInfo


def run_summary(run: Run) -> dict:
    """id, status, layers, captured epochs, Keras metrics, and per layer and epoch the key statistics."""
    meta = run.meta
    snapshots = run.epoch_snapshots()
    lost = run.lost_snapshots()
    epochs = [int(s.epoch) for s in snapshots]
    layer_names = [layer["name"] for layer in run.layers]
    per_layer = {}
    for index, name in enumerate(layer_names):
        records = [s.layer(index) for s in snapshots]
        kernel = main_weight(run.layers[index])  # an embedding table stands in for a kernel
        per_layer[name] = {
            "gradient_norm": [_get(r, "grad", kernel, "norm") for r in records],
            "bias_gradient_norm": [_get(r, "grad", "bias", "norm") for r in records],
            "output_gradient_norm": [_get(r, "grad", "output", "norm") for r in records],
            "update_ratio": [_get(r, "update_ratio", kernel) for r in records],
            "explained_variance_ratio": [_ranked_ratios(r) for r in records],
            "dead_fraction": [_get(r, "activation", "dead_fraction") for r in records],
            "saturated_fraction": [_get(r, "activation", "saturated_fraction") for r in records],
            "linear_probe": [_get(r, "linear_probe") for r in records],
        }
    summary = {
        "id": run.id,
        "name": run.name,
        "status": run.status,
        "created": meta.get("created"),
        "updated": meta.get("updated"),
        "dataset": meta.get("dataset", {}),
        "config": meta.get("config", {}),
        "layers": [
            {k: layer.get(k) for k in ("name", "type", "output_shape", "params", "activation")} for layer in run.layers
        ],
        # Per model output: its name and kind of targets, `primary` the one `probe_accuracy` and each layer's
        # `linear_probe` are of, and how it did on the probe at each epoch (`_output_summary`).
        "outputs": [_output_summary(run, output, snapshots, layer_names) for output in run.info.outputs],
        "epochs": epochs,
        "epochs_done": meta.get("epochs_done", 0),
        "epochs_planned": meta.get("epochs_planned"),
        "nan_epoch": meta.get("nan_epoch"),
        "error": meta.get("error"),
        "unwritten_snapshots": run.unwritten_captures(),
        "lost_snapshots": {"epochs": list(lost.epochs), "files": lost.files},
        "damaged_files": run.damaged_files(),
        "metrics": run.history(),
        "per_layer": per_layer,
        "probe_accuracy": _probe_accuracy(run, snapshots, layer_names),
        "diagnosis": [finding.brief() for finding in diagnose(run)],
        "skipped": [
            {
                "epoch": int(s.epoch),
                "layer": layer_names[i] if i is not None and i < len(layer_names) else None,
                "piece": piece,
                "reason": reason,
            }
            for s in snapshots
            for i, piece, reason in s.skipped()
        ],
        "cka": {
            "layers": layer_names,
            "epoch": epochs[-1] if epochs else None,
            "matrix": snapshots[-1].meta.get("cka") if snapshots else None,
        },
    }
    return to_json_safe(summary)


def _probe_accuracy(run: Run, snapshots, layer_names: list[str]) -> dict:
    return {
        "input": run.meta.get("input", {}).get("linear_probe"),
        "epochs": [int(s.epoch) for s in snapshots],
        "layers": {name: [_get(s.layer(i), "linear_probe") for s in snapshots] for i, name in enumerate(layer_names)},
    }


def _output_summary(run: Run, output: OutputInfo, snapshots, layer_names: list[str]) -> dict:
    """One model output: `name`, `kind`, `primary`; `layer`, the recorded layer that gives it (None when not
    recorded); per captured epoch (`epochs` above), its probe `accuracy` and `crossentropy` (classes) or
    `squared_error` (regression values), from its stored predictions and truth; `chance_accuracy`; `probe_accuracy`,
    the linear probes of its classes as the top-level `probe_accuracy` gives the primary output's (None when it has
    none); and `metrics`, Keras's logs of it without the output's name (`cls_loss` as `loss`, `val_cls_accuracy`
    as `val_accuracy`; for a model of one output, every log)."""
    primary = output.index == run.info.probe.primary_output
    measured = output_series(run, output.index, snapshots)
    layer = run.info.output_layer(output)
    probes: dict | None
    if primary:
        probes = _probe_accuracy(run, snapshots, layer_names)
    else:
        key = str(output.index)
        baseline = (run.meta.get("input") or {}).get("linear_probes") or {}
        layers = {
            name: [_get(s.layer(i), "linear_probes", key) for s in snapshots] for i, name in enumerate(layer_names)
        }
        found = key in baseline or any(value is not None for values in layers.values() for value in values)
        probes = {"input": baseline.get(key), "epochs": measured.epochs, "layers": layers} if found else None
    if primary and not run.info.probe.has_labels:
        probes = None
    return {
        "name": output.name,
        "kind": output.kind,
        "primary": primary,
        "layer": None if layer is None else layer.name,
        "accuracy": _numbers(measured.accuracy) if output.kind == "classes" else None,
        "crossentropy": _numbers(measured.crossentropy) if output.kind == "classes" else None,
        "squared_error": _numbers(measured.squared_error) if output.kind == "values" else None,
        "chance_accuracy": None if np.isnan(measured.chance) else measured.chance,
        "probe_accuracy": probes,
        "metrics": _output_metrics(run.history(), output.name, [o.name for o in run.info.outputs]),
    }


def _output_metrics(history: dict[str, list], name: str, names: list[str]) -> dict[str, list]:
    """Keras's logs of output `name`, named as a model of one output names them (for one output, every log but
    `epoch`). A log of another output whose name starts with this one's (`cls_aux_loss` beside `cls`) is not its."""
    if len(names) <= 1:
        return {key: values for key, values in history.items() if key != "epoch"}
    longer = [other for other in names if other != name and other.startswith(f"{name}_")]
    found = {}
    for key, values in history.items():
        for prefix, kept in ((f"{name}_", ""), (f"val_{name}_", "val_")):
            rest = key[len(prefix) :]
            if key.startswith(prefix) and rest and not any(f"{name}_{rest}".startswith(f"{o}_") for o in longer):
                found[kept + rest] = values
    return found


def _numbers(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def _get(record: dict, *path: str | None):  # a None key (a layer without a kernel) is never found
    for key in path:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return record


def _ranked_ratios(record: dict) -> list[float | None] | None:
    """A layer's explained-variance ratios, PC1 first (older runs stored them in aligned column order)."""
    ratios = variance_ratios(record)
    return None if ratios is None else [None if np.isnan(r) else float(r) for r in ratios]
