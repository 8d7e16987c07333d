"""core/capture/snapshot.py on its own: `analysis_features` pooling and `SnapshotBuilder` on synthetic outputs whose
structure is known (numpy only)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.capture.snapshot import MAX_FEATURES, TOP_SAMPLES, RawCapture, SnapshotBuilder, analysis_features

N, CLASSES = 240, 3


def _labels() -> np.ndarray:
    return np.arange(N) % CLASSES


def _plane_in_10d(seed: int = 0) -> np.ndarray:
    """(N, 10) points that all lie on a 2-D plane through the origin of a 10-D space."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(N, 2)) * [3.0, 1.0] @ rng.normal(size=(2, 10))).astype(np.float32)


def _probs(labels: np.ndarray, right: int) -> np.ndarray:
    """Class probabilities that are right on the first `right` samples and wrong on the rest."""
    predicted = labels.copy()
    predicted[right:] = (labels[right:] + 1) % CLASSES
    return (np.eye(CLASSES)[predicted] * 0.7 + 0.1).astype(np.float32)


def _raw(outputs, predictions=None, weights=None, grads=None, epoch=0, **extra) -> RawCapture:
    count = len(outputs)
    return RawCapture(
        kind="epoch",
        epoch=epoch,
        step=10 * epoch,
        batch=None,
        logs={"loss": 0.5, "lr": np.float32(0.25), "history": [1.0]},
        outputs=outputs,
        predictions=_probs(_labels(), N) if predictions is None else predictions,
        loss=0.25,
        weights=weights if weights is not None else [{} for _ in range(count)],
        weight_grads=grads if grads is not None else [],
        output_grad_norms=[0.5] * count,
        **extra,
    )


def _builder(count: int, **options) -> SnapshotBuilder:
    options.setdefault("labels", _labels())
    return SnapshotBuilder(activations=[None] * (count - 1) + ["softmax"], components=4, **options)


# ----------------------------------------------------------------------------------------------------------------
# analysis_features


def test_a_narrow_output_is_used_as_it_is():
    dense = np.arange(12.0).reshape(3, 4)
    flat, grid = analysis_features(dense)
    assert grid is None and flat.shape == (3, 4)
    np.testing.assert_array_equal(flat, dense)
    conv = np.arange(3 * 4 * 4 * 8.0).reshape(3, 4, 4, 8)  # 128 values a sample
    flat, grid = analysis_features(conv)
    assert grid is None and flat.shape == (3, 128)
    np.testing.assert_array_equal(flat, conv.reshape(3, -1))
    wide_dense = np.ones((2, MAX_FEATURES * 3))  # no positions to pool over
    assert analysis_features(wide_dense)[0].shape == (2, MAX_FEATURES * 3)


def test_a_wide_feature_map_is_averaged_over_regions_to_at_most_max_features():
    rng = np.random.default_rng(0)
    n = 3
    output = rng.normal(size=(n, 48, 48, 96)).astype(np.float32)  # 221,184 values a sample
    flat, grid = analysis_features(output)
    assert grid == [6, 6]  # 48 -> 24 -> 12 -> 6: 6 x 6 x 96 = 3,456 <= 4,096
    assert flat.shape == (n, 6 * 6 * 96) and flat.shape[1] <= MAX_FEATURES
    cells = flat.reshape(n, 6, 6, 96)
    np.testing.assert_allclose(cells[:, 2, 5], output[:, 16:24, 40:48].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cells.mean(axis=(1, 2)), output.mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)


def test_uneven_sides_pool_into_uneven_regions():
    rng = np.random.default_rng(1)
    output = rng.normal(size=(2, 7, 5, 200))  # 7,000 values a sample
    flat, grid = analysis_features(output)
    assert grid == [3, 2] and flat.shape == (2, 3 * 2 * 200)
    cells = flat.reshape(2, 3, 2, 200)
    rows, cols = [0, 2, 5, 7], [0, 2, 5]  # np.linspace(0, size, cells + 1).round()
    for r in range(3):
        for c in range(2):
            expected = output[:, rows[r] : rows[r + 1], cols[c] : cols[c + 1]].mean(axis=(1, 2))
            np.testing.assert_allclose(cells[:, r, c], expected, rtol=1e-5, atol=1e-6)


def test_a_sequence_output_pools_along_its_one_position_axis():
    output = np.broadcast_to(np.arange(1000.0)[None, :, None], (2, 1000, 8))
    flat, grid = analysis_features(output)
    assert math.prod(grid) * 8 <= MAX_FEATURES and len(grid) == 1 and flat.shape == (2, grid[0] * 8)
    assert flat[0, 0] < flat[0, -1]  # regions stay in position order


def test_more_channels_than_max_features_pool_to_one_cell():
    output = np.ones((2, 4, 4, MAX_FEATURES + 4), np.float32)
    flat, grid = analysis_features(output)
    assert grid == [1, 1] and flat.shape == (2, MAX_FEATURES + 4)  # as few as it can be: one cell per channel


@pytest.mark.parametrize("limit", [64, 500])
def test_the_limit_is_a_parameter(limit):
    flat, grid = analysis_features(np.zeros((5, 16, 16, 4)), limit=limit)
    assert flat.shape[0] == 5 and flat.shape[1] <= limit and math.prod(grid) * 4 == flat.shape[1]


# ----------------------------------------------------------------------------------------------------------------
# SnapshotBuilder: projections


def test_a_plane_inside_ten_dimensions_has_two_principal_components():
    outputs = [_plane_in_10d(), _probs(_labels(), N)]
    meta, arrays = _builder(2).build(_raw(outputs))
    record = meta["layers"][0]
    ratios = record["pca"]["explained_variance_ratio"]
    assert len(ratios) == 4 and ratios == sorted(ratios, reverse=True)
    assert sum(ratios[:2]) == pytest.approx(1.0, abs=1e-5) and ratios[0] > ratios[1] > 0.05
    assert record["pca"]["order"] == [0, 1, 2, 3]
    assert record["dimensionality"]["n90"] == 2
    total = float(outputs[0].astype(np.float64).var(axis=0, ddof=1).sum())  # the sample variance
    assert record["pca"]["total_variance"] == pytest.approx(total, rel=1e-4)
    coords = arrays["L0/pca"]
    assert coords.shape == (N, 4) and coords.dtype == np.float32
    shares = coords.var(axis=0) / coords.var(axis=0).sum()
    np.testing.assert_allclose(shares, ratios, atol=1e-4)
    assert abs(np.corrcoef(coords[:, 0], coords[:, 1])[0, 1]) < 1e-3  # principal axes are uncorrelated
    assert arrays["L0/cka_sketch"].shape == (min(256, N), 10)


def _turning(direction) -> np.ndarray:
    """(N, 2) points spread along `direction`, a little across it."""
    rng = np.random.default_rng(5)
    along, across = rng.normal(size=(N, 1)) * 3.0, rng.normal(size=(N, 1)) * 0.3
    direction = np.asarray(direction, np.float64) / np.linalg.norm(direction)
    return (along * direction + across * [direction[1], -direction[0]]).astype(np.float32)


def test_axes_keep_their_sign_from_one_snapshot_to_the_next():
    """PC1 turns from (1, -0.9) to (0.9, -1): on its own, PCA's sign convention (largest entry positive) flips it
    there; a builder that saw the first snapshot keeps it pointing the same way, so the cloud does not mirror."""
    first, second = _turning([1.0, -0.9]), _turning([0.9, -1.0])
    builder = _builder(2)
    before = builder.build(_raw([first, _probs(_labels(), N)]))[1]["L0/pca"]
    after = builder.build(_raw([second, _probs(_labels(), N)], epoch=1))[1]["L0/pca"]
    alone = _builder(2).build(_raw([second, _probs(_labels(), N)]))[1]["L0/pca"]
    assert np.corrcoef(before[:, 0], after[:, 0])[0, 1] > 0.99
    assert np.corrcoef(before[:, 0], alone[:, 0])[0, 1] < -0.99  # what the alignment undid
    assert np.corrcoef(before[:, 1], after[:, 1])[0, 1] > 0.9


def test_a_mirrored_output_mirrors_the_picture():
    """Signs follow the previous directions in feature space, not the points: -X is drawn as the mirror of X."""
    builder = _builder(2)
    plane = _plane_in_10d()
    first = builder.build(_raw([plane, _probs(_labels(), N)]))[1]["L0/pca"]
    second = builder.build(_raw([-plane, _probs(_labels(), N)], epoch=1))[1]["L0/pca"]
    np.testing.assert_allclose(second[:, :2], -first[:, :2], atol=1e-3)


def test_resume_matches_the_axes_of_stored_coordinates_and_the_weights_given():
    plane = _plane_in_10d()
    weights = [{"kernel": np.full((2, 2), 2.0)}, {}]
    first_meta, first = _builder(2, kernel_layer=0).build(_raw([plane, _probs(_labels(), N)], weights=weights))
    resumed = _builder(2, kernel_layer=0)
    resumed.resume({0: first["L0/pca"]}, weights)
    later = [{"kernel": np.full((2, 2), 3.0)}, {}]
    meta, arrays = resumed.build(_raw([-plane, _probs(_labels(), N)], weights=later, epoch=1))
    np.testing.assert_allclose(arrays["L0/pca"][:, :2], first["L0/pca"][:, :2], atol=1e-3)
    assert meta["layers"][0]["update_ratio"]["kernel"] == pytest.approx(2.0 / 6.0)  # |3-2| * 2 / (3 * 2)
    assert first_meta["layers"][0]["update_ratio"] == {}


def test_a_wide_map_is_pooled_and_says_to_what_grid():
    rng = np.random.default_rng(2)
    conv = rng.normal(size=(40, 16, 16, 32)).astype(np.float32)  # 8,192 values a sample -> 8 x 8 x 32 = 2,048
    labels = np.arange(40) % CLASSES
    predictions = (np.eye(CLASSES)[labels] * 0.9 + 0.03).astype(np.float32)
    meta, arrays = SnapshotBuilder(activations=["relu", "softmax"], labels=labels, components=3).build(
        RawCapture("epoch", 0, 0, None, {}, [conv, predictions], predictions, None, [{}, {}], [], [None, None])
    )
    record = meta["layers"][0]
    assert record["pca"]["pooled"] == [8, 8]
    assert "pooled" not in meta["layers"][1]["pca"]
    assert arrays["L0/pca"].shape == (40, 3)
    assert arrays["L0/unit_mean"].shape == (32,)  # activation statistics are of the output itself, per channel
    np.testing.assert_allclose(arrays["L0/unit_mean"], conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    assert meta["probe_model_accuracy"] == 1.0


def test_plane_outputs_are_projected_on_the_same_axes():
    plane = _plane_in_10d()
    grid = plane[:25]  # the grid's points, here some probe points themselves
    grid_probs = _probs(_labels(), N)[:25]
    meta, arrays = _builder(2).build(
        _raw([plane, _probs(_labels(), N)], plane_outputs=[grid, grid_probs], plane_predictions=grid_probs)
    )
    np.testing.assert_allclose(arrays["L0/plane_pca"], arrays["L0/pca"][:25], atol=1e-3)
    assert arrays["L0/plane_units"].shape == (25, 10) and arrays["L0/plane_units"].dtype == np.float16
    assert arrays["pred/plane_probs"].dtype == np.float16 and arrays["pred/plane_probs"].shape == (25, CLASSES)


# ----------------------------------------------------------------------------------------------------------------
# SnapshotBuilder: statistics, weights, gradients, predictions


def test_unit_rankings_are_the_most_and_least_activating_rows():
    ramp = np.arange(N, dtype=np.float32)[:, None] * np.array([1.0, -1.0, 2.0], np.float32)  # unit 1 falls
    meta, arrays = _builder(2).build(_raw([ramp, _probs(_labels(), N)]))
    top, bottom = arrays["L0/unit_top"], arrays["L0/unit_bottom"]
    assert top.shape == bottom.shape == (3, TOP_SAMPLES) and top.dtype == np.int32
    highest, lowest = list(range(N - 1, N - 1 - TOP_SAMPLES, -1)), list(range(TOP_SAMPLES))
    assert top[0].tolist() == highest and bottom[0].tolist() == lowest
    assert top[1].tolist() == lowest and bottom[1].tolist() == highest
    assert top[2].tolist() == highest


def test_activation_statistics_of_a_known_output():
    relu = np.zeros((N, 4), np.float32)
    relu[:, 0] = np.linspace(0.0, 1.0, N)  # units 1..3 never fire: dead
    meta, arrays = SnapshotBuilder(activations=["relu", "softmax"], labels=_labels(), components=3).build(
        _raw([relu, _probs(_labels(), N)])
    )
    activation = meta["layers"][0]["activation"]
    assert activation["mean"] == pytest.approx(float(relu.mean()), rel=1e-5)
    assert activation["dead_fraction"] == pytest.approx(0.75)
    assert arrays["L0/dead_units"].tolist() == [False, True, True, True]
    assert arrays["L0/act_hist_counts"].sum() == relu.size
    assert len(arrays["L0/act_hist_edges"]) == len(arrays["L0/act_hist_counts"]) + 1


def test_weight_norms_update_ratios_gradients_and_the_stored_kernel():
    rng = np.random.default_rng(3)
    kernel, bias = rng.normal(size=(10, 3)), rng.normal(size=3)
    outputs = [_plane_in_10d(), _probs(_labels(), N)]
    grads = [{"kernel": np.full((10, 3), 0.5), "bias": np.zeros(3)}, {}]
    builder = _builder(2, kernel_layer=0)
    meta, arrays = builder.build(_raw(outputs, weights=[{"kernel": kernel, "bias": bias}, {}], grads=grads))
    record = meta["layers"][0]
    assert record["weight_norm"]["kernel"] == pytest.approx(float(np.linalg.norm(kernel)))
    assert record["update_ratio"] == {}  # nothing to compare with yet
    assert record["grad"]["kernel"]["norm"] == pytest.approx(0.5 * math.sqrt(30))
    assert record["grad"]["kernel"]["max_abs"] == pytest.approx(0.5)
    assert record["grad"]["bias"]["norm"] == 0.0
    assert record["grad"]["output"] == {"norm": 0.5}
    assert arrays["L0/grad_kernel_log_hist"].shape == (56,) and arrays["L0/grad_kernel_log_hist"].sum() == 30
    np.testing.assert_array_equal(arrays["L0/kernel"], kernel.astype(np.float32))
    assert "L1/kernel" not in arrays
    moved = kernel + 0.1
    meta, arrays = builder.build(_raw(outputs, weights=[{"kernel": moved, "bias": bias}, {}], grads=grads, epoch=1))
    ratios = meta["layers"][0]["update_ratio"]
    assert ratios["kernel"] == pytest.approx(0.1 * math.sqrt(30) / float(np.linalg.norm(moved)))
    assert ratios["bias"] == 0.0


def test_without_labels_there_are_no_probes_gradients_or_accuracy():
    outputs = [_plane_in_10d(), _probs(_labels(), N)]
    meta, _ = _builder(2, labels=None).build(_raw(outputs))
    assert meta["probe_model_accuracy"] is None
    assert "linear_probe" not in meta["layers"][0] and "separation" not in meta["layers"][0]
    assert "grad" not in meta["layers"][0]


def test_meta_carries_the_capture_and_the_model_accuracy():
    labels = _labels()
    meta, arrays = _builder(2).build(
        _raw([_plane_in_10d(), _probs(labels, N)], predictions=_probs(labels, 180), epoch=3)
    )
    assert (meta["kind"], meta["epoch"], meta["step"], meta["batch"]) == ("epoch", 3, 30, None)
    assert meta["logs"] == {"loss": 0.5, "lr": 0.25}  # only scalars are kept
    assert meta["probe_loss"] == 0.25 and meta["nonfinite"] is False
    assert meta["probe_model_accuracy"] == pytest.approx(180 / N)
    cka = np.asarray(meta["cka"])
    assert cka.shape == (2, 2)
    np.testing.assert_allclose(np.diag(cka), 1.0, atol=1e-6)
    np.testing.assert_allclose(cka, cka.T, atol=1e-9)
    assert "skipped" not in meta
    np.testing.assert_array_equal(arrays["pred/probs"], _probs(labels, 180))


@pytest.mark.parametrize(
    "logits, activation, given, expected",
    [
        (True, None, [[0.0, np.log(3.0)]], [[0.25, 0.75]]),  # softmax
        (True, None, [[0.0], [np.log(3.0)]], [[0.5, 0.5], [0.25, 0.75]]),  # sigmoid, then two columns
        (False, "sigmoid", [[0.2], [0.9]], [[0.8, 0.2], [0.1, 0.9]]),  # P(1) given: P(0), P(1) stored
        (False, None, [[3.5], [-1.0]], [[3.5], [-1.0]]),  # a regression's values, as they are
        (False, "softmax", [[0.1, 0.9]], [[0.1, 0.9]]),
    ],
)
def test_predictions_are_stored_as_class_probabilities(logits, activation, given, expected):
    given = np.asarray(given, np.float32)
    labels = np.zeros(len(given), np.int64)
    builder = SnapshotBuilder(activations=[activation], labels=labels, components=1, logits=logits)
    _, arrays = builder.build(RawCapture("epoch", 0, 0, None, {}, [given], given, None, [{}], [], [None]))
    np.testing.assert_allclose(arrays["pred/probs"], expected, rtol=1e-5, atol=1e-6)
    assert arrays["pred/probs"].dtype == np.float32


# ----------------------------------------------------------------------------------------------------------------
# Degenerate layers


def test_a_layer_holding_nan_skips_its_projection_and_keeps_the_snapshot():
    broken = np.random.default_rng(4).normal(size=(N, 6)).astype(np.float32)
    broken[[3, 7], 2] = np.nan
    outputs = [_plane_in_10d(), broken, _probs(_labels(), N)]
    meta, arrays = _builder(3).build(_raw(outputs))
    record = meta["layers"][1]
    assert record["skipped"] == {"projection": f"the output holds NaN or Inf on 2 of {N} probe samples"}
    assert "pca" not in record and "L1/pca" not in arrays and "L1/unit_top" not in arrays
    assert "activation" in record and "L1/act_hist_counts" in arrays  # the statistics that can be taken are
    assert "skipped" not in meta["layers"][0] and "L0/pca" in arrays and "L2/pca" in arrays
    assert len(meta["layers"]) == 3


def test_a_constant_layer_keeps_the_snapshot_and_every_other_layer():
    constant = np.full((N, 5), -1.5, np.float32)
    outputs = [_plane_in_10d(), constant, _probs(_labels(), N)]
    meta, arrays = _builder(3).build(_raw(outputs))
    record = meta["layers"][1]
    assert record["activation"]["std"] == 0.0 and record["activation"]["mean"] == pytest.approx(-1.5)
    if "pca" in record:  # projected: there is no variance to share out
        assert record["pca"]["total_variance"] == 0.0
        assert not any(r > 0 for r in record["pca"]["explained_variance_ratio"])
    else:
        assert "projection" in record["skipped"]
    assert sum(meta["layers"][0]["pca"]["explained_variance_ratio"][:2]) == pytest.approx(1.0, abs=1e-5)
    assert "L0/pca" in arrays and "L2/pca" in arrays and np.asarray(meta["cka"]).shape == (3, 3)


def test_a_text_value_in_the_logs_costs_only_that_value():
    raw = _raw([_plane_in_10d(), _probs(_labels(), N)])
    raw.logs["note"] = "from a custom callback"
    raw.logs["flag"] = True
    meta, _ = _builder(2).build(raw)
    assert meta["logs"] == {"loss": 0.5, "lr": 0.25}


def test_nonfinite_predictions_mark_the_snapshot():
    predictions = _probs(_labels(), N)
    predictions[0, 0] = np.inf
    meta, _ = _builder(2).build(_raw([_plane_in_10d(), _probs(_labels(), N)], predictions=predictions))
    assert meta["nonfinite"] is True
