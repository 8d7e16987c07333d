"""Format-valid synthetic runs written with `core.store.RunWriter`, for benchmarks and large-scale tests (no TF).

Classes start mixed and separate with depth and with training, so the pictures look like a real run's.
"""

from __future__ import annotations

import numpy as np

from core.store import RunWriter


def synthetic_run(
    root: str,
    run_id: str = "synthetic",
    layers: int = 8,
    snapshots: int = 50,
    points: int = 2000,
    classes: int = 10,
    components: int = 10,
    width: int = 64,
    seed: int = 0,
) -> str:
    """Write a finished run of `layers` Dense layers x `snapshots` epoch snapshots (0..snapshots-1) on `points`
    probe samples; returns its id."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, points)  # (n,)
    centres = rng.normal(size=(classes, components)) * 3  # where each class ends up
    noise = rng.normal(size=(points, components)).astype(np.float32)  # (n, k), fixed so frames move smoothly
    layer_names = [f"dense_{i}" for i in range(layers - 1)] + ["output"]
    writer = RunWriter(
        root,
        run_id,
        {
            "name": f"synthetic {layers}x{snapshots}x{points}",
            "dataset": {
                "name": "synthetic",
                "kind": "tabular",
                "class_names": [f"class {c}" for c in range(classes)],
                "feature_names": [f"f{i}" for i in range(8)],
                "image_shape": None,
                "n_classes": classes,
                "n_samples": points,
            },
            "config": {
                "dataset": "synthetic",
                "hidden": [width] * (layers - 1),
                "activation": "relu",
                "epochs": snapshots - 1,
            },
            "layers": [
                {
                    "index": i,
                    "name": name,
                    "type": "Dense",
                    "output_shape": [None, width],
                    "params": width * width,
                    "activation": "relu",
                    "weights": ["kernel", "bias"],
                }
                for i, name in enumerate(layer_names)
            ],
            "model": {"name": "synthetic", "params": layers * width * width},
            "probe": {"size": points, "has_labels": True, "input_shape": [8], "plane": False},
            "input": {"explained_variance_ratio": _ratios(components, 0.3).tolist()},
            "every": 1,
            "batch_every": None,
            "components": components,
            "seed": seed,
            "epochs_planned": snapshots - 1,
            "epochs_done": 0,
            "snapshots": 0,
        },
    )
    x = (np.tile(centres[labels], (1, -(-8 // components)))[:, :8] * 0.2 + rng.normal(size=(points, 8))).astype(
        np.float32
    )
    writer.write_probe(
        {
            "indices": np.arange(points),
            "y": labels,
            "x": x,
            "input/pca": (noise + 0.2 * centres[labels]).astype(np.float32),
        }
    )
    history: dict[str, list] = {"epoch": [], "loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    for epoch in range(snapshots):
        progress = epoch / max(1, snapshots - 1)
        arrays: dict[str, np.ndarray] = {}
        records: list[dict] = []
        for index in range(layers):
            separation = (0.2 + 0.8 * (index + 1) / layers) * (0.1 + 0.9 * progress)  # deeper and later: apart
            arrays[f"L{index}/pca"] = (noise + separation * centres[labels]).astype(np.float32)
            arrays[f"L{index}/cka_sketch"] = rng.normal(size=(256, width)).astype(np.float32)
            arrays[f"L{index}/act_hist_counts"] = rng.integers(0, 100, 50)
            arrays[f"L{index}/act_hist_edges"] = np.linspace(0, 5, 51)
            ratios = _ratios(components, 0.3 + 0.5 * separation)
            records.append(
                {
                    "pca": {
                        "explained_variance_ratio": ratios.tolist(),
                        "order": list(range(components)),
                        "method": "exact",
                        "total_variance": 1.0,
                    },
                    "dimensionality": {
                        "n90": int(np.searchsorted(np.cumsum(ratios), 0.9) + 1),
                        "participation_ratio": 3.0,
                    },
                    "activation": {
                        "mean": 0.5,
                        "std": 0.5,
                        "percentiles": [0, 0.1, 0.4, 0.9, 2.0],
                        "dead_fraction": 0.1,
                        "saturated_fraction": 0.0,
                    },
                    "linear_probe": 0.1 + 0.9 * separation,
                    "separation": separation,
                }
            )
        logits = (1 + 6 * progress) * np.eye(classes)[labels] + rng.normal(size=(points, classes))
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        arrays["pred/probs"] = probs.astype(np.float32)
        loss, accuracy = float(2.3 * (1 - progress) + 0.1), float(0.1 + 0.85 * progress)
        logs = (
            {}
            if epoch == 0
            else {"loss": loss, "accuracy": accuracy, "val_loss": loss * 1.1, "val_accuracy": accuracy * 0.95}
        )
        writer.write_snapshot(
            epoch,
            {
                "kind": "epoch",
                "epoch": epoch,
                "step": epoch * 10,
                "batch": None,
                "logs": logs,
                "probe_loss": loss,
                "probe_model_accuracy": accuracy,
                "layers": records,
                "cka": np.eye(layers).tolist(),
                "nonfinite": False,
            },
            arrays,
        )
        if epoch:
            history["epoch"].append(epoch)
            for key, value in logs.items():
                history[key].append(value)
    writer.write_history(history)
    writer.update_meta(epochs_done=snapshots - 1, snapshots=snapshots)
    writer.set_status("finished")
    return run_id


def _ratios(count: int, top: float) -> np.ndarray:
    """Explained variance ratios that decay geometrically from `top` and sum to at most 1."""
    ratios = top * (1 - top) ** np.arange(count)
    return ratios / max(1.0, ratios.sum())
