"""What the Layers page's linear probe reads, checked where the truth is planted: a 64-unit layer whose classes are
told apart by one direction, either its largest-variance direction or one of its smallest.

The host path probes the layer's features themselves, so it finds the classes either way. A run reduced on the
device ships only the top 32 principal coordinates of a layer this wide (`FEATURE_COMPONENTS`), so its probe
finds the classes in the first case and is at chance in the second; its snapshot says how many components the
probe read (`probe_components`), and the page's caption says what that leaves out.
"""

import numpy as np
import pytest
from captures import outputs_capture

from core.capture.reduced import FEATURE_COMPONENTS, ReducedCapture, ReducedLayer, build_reduced
from core.capture.snapshot import SnapshotBuilder
from dashboard.views import layers as views

SAMPLES, WIDTH = 800, 64


def planted(signal_rank: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, 64), labels): per-direction standard deviations falling from 8 to 0.5, with the two classes
    shifted apart by 4 standard deviations along the direction of variance rank `signal_rank` (0 = largest; the
    shift adds variance, which moves rank 62 up to about 44: still outside the top 32)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, SAMPLES)
    scales = np.geomspace(8.0, 0.5, WIDTH)
    scores = rng.standard_normal((SAMPLES, WIDTH)) * scales
    scores[:, signal_rank] += (labels - 0.5) * 4.0 * scales[signal_rank]
    rotation = np.linalg.qr(rng.standard_normal((WIDTH, WIDTH)))[0]
    return (scores @ rotation.T).astype(np.float32), labels


def builder(labels) -> SnapshotBuilder:
    return SnapshotBuilder(activations=["linear"], labels=labels, components=10, seed=0)


def host_record(features, labels) -> dict:
    meta, _ = builder(labels).build(outputs_capture([features]))
    return meta["layers"][0]


def device_record(features, labels) -> dict:
    """The record `build_reduced` writes from what the device ships of this layer: its exact top principal
    coordinates (the device's PCA is checked against numpy's in tests/test_reductions.py)."""
    centred = features.astype(np.float64) - features.mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred / (len(features) - 1))
    order = np.argsort(values)[::-1]
    coords = (centred @ vectors[:, order[:FEATURE_COMPONENTS]]).astype(np.float32)
    layer = ReducedLayer(
        coords=coords[:, :10],
        extra_coords=coords[:, 10:].astype(np.float16),
        probe_features=None,
        variance=values[order[:FEATURE_COMPONENTS]],
        total_variance=float(values.sum()),
        spectrum=values[order],
        method="covariance",
        grid=None,
        features_shape=features.shape,
        nonfinite_rows=0,
        arrays={
            name: np.zeros(1, np.float32)
            for name in ("cka_sketch", "act_hist_counts", "dead_units", "saturated_units", "unit_mean")
        }
        | {"unit_top": np.zeros((1, 1), np.int32), "unit_bottom": np.zeros((1, 1), np.int32)},
        activation={"mean": 0.0, "std": 1.0, "percentiles": [0.0] * 5, "hist_low": -1.0, "hist_high": 1.0},
    )
    reduced = ReducedCapture(
        kind="epoch",
        epoch=0,
        step=0,
        batch=None,
        logs={},
        predictions=np.full((len(features), 2), 0.5, np.float32),
        loss=None,
        layers=[layer],
        cka=np.ones((1, 1)),
        measured=False,
    )
    meta, _ = build_reduced(builder(labels), reduced)
    return meta["layers"][0]


def test_a_class_direction_of_large_variance_is_found_by_both_probes():
    features, labels = planted(signal_rank=0)
    host, device = host_record(features, labels), device_record(features, labels)
    assert host["linear_probe"] > 0.9 and device["linear_probe"] > 0.9
    assert "probe_components" not in host and device["probe_components"] == FEATURE_COMPONENTS


def test_a_class_direction_of_small_variance_is_found_only_on_the_features_and_the_page_says_so():
    features, labels = planted(signal_rank=WIDTH - 2)  # variance rank 62 of 64: outside the top 32
    host, device = host_record(features, labels), device_record(features, labels)
    assert host["linear_probe"] > 0.9
    assert device["linear_probe"] == pytest.approx(0.5, abs=0.08)  # chance, on 400 held-out samples
    caption = views.probe_reliability(400, SAMPLES, device["linear_probe"], 0, device["probe_components"])
    assert f"top {FEATURE_COMPONENTS} principal components" in caption and "not counted" in caption
    assert "principal components" not in views.probe_reliability(400, SAMPLES, host["linear_probe"], 0)
