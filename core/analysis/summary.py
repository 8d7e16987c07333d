"""A run as one JSON-ready dict: what `python -m core show RUN --json` prints. Numpy-only."""

from __future__ import annotations

import numpy as np

from core.analysis.diagnosis import diagnose
from core.store import Run, main_weight, to_json_safe, variance_ratios


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
        # Per model output: its name and kind of targets; `primary` the one the linear probes and diagnosis read.
        "outputs": [
            {"name": output.name, "kind": output.kind, "primary": output.index == run.info.probe.primary_output}
            for output in run.info.outputs
        ],
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
