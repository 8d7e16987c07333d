"""Tests for core.analysis.measures, checked against scikit-learn (and naive formulas) within tolerances."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler

from core.analysis import measures
from core.analysis.measures import (
    LOG_HIST_EDGES,
    accuracy_interval,
    activation_stats,
    align_pca,
    cka_matrix,
    class_separation,
    effective_dimensionality,
    held_out_size,
    linear_cka,
    linear_probe_accuracy,
    pca,
    stratified_halves,
    tensor_stats,
)

ROOT = Path(__file__).resolve().parents[1]


def planted(n, d, rank=5, offset=3.0, seed=0):
    """(n, d) float32: a rank-`rank` signal with well-separated variances, unit noise and an offset."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(12.0, 4.0, rank)
    signal = (rng.standard_normal((n, rank)) * scales) @ np.linalg.qr(rng.standard_normal((d, rank)))[0].T
    return (signal + rng.standard_normal((n, d)) + offset * rng.random(d)).astype(np.float32)


def sklearn_pca(x, k):
    return PCA(n_components=k, svd_solver="full").fit(x.astype(np.float64))


def spirals(n=1000, seed=0):
    """Two interleaved spirals in 2-D, labels 0/1."""
    rng = np.random.default_rng(seed)
    angle = np.sqrt(rng.random(n // 2)) * 3 * np.pi
    arm = np.c_[angle * np.cos(angle), angle * np.sin(angle)]
    points = np.r_[arm, -arm] + rng.normal(0, 0.3, (n, 2))
    return points, np.r_[np.zeros(n // 2), np.ones(n // 2)].astype(int)


# ---------------------------------------------------------------------------------------------------
# Module hygiene
# ---------------------------------------------------------------------------------------------------


def test_import_is_numpy_only():
    code = (
        "import sys, core.analysis.measures; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'sklearn', 'scipy'}))"
    )
    output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------
# PCA
# ---------------------------------------------------------------------------------------------------

PCA_CASES = [("covariance", 400, 60), ("gram", 120, 700), ("randomized", 400, 600)]


@pytest.mark.parametrize("method, n, d", PCA_CASES)
def test_pca_matches_sklearn_full(method, n, d):
    x = planted(n, d)
    reference = sklearn_pca(x, 5)
    result = pca(x, k=5, method=method)
    assert result.method == method
    assert result.coords.shape == (n, 5) and result.coords.dtype == np.float32
    assert result.components.shape == (5, d) and result.components.dtype == np.float32
    assert result.explained_variance.dtype == np.float64
    # Randomized PCA is approximate: with this flat noise tail its 5th variance is ~0.2% low.
    tolerance = 1e-2 if method == "randomized" else 1e-4
    np.testing.assert_allclose(result.mean, reference.mean_, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.explained_variance, reference.explained_variance_, rtol=tolerance)
    np.testing.assert_allclose(
        result.explained_variance_ratio, reference.explained_variance_ratio_, atol=tolerance / 10
    )
    total = reference.explained_variance_[0] / reference.explained_variance_ratio_[0]
    assert result.total_variance == pytest.approx(total, rel=1e-5)
    overlap = np.abs(np.sum(result.components * reference.components_, axis=1))
    np.testing.assert_allclose(overlap, 1.0, atol=tolerance)  # sign-insensitive
    signs = np.sign(np.sum(result.components * reference.components_, axis=1))
    scale = np.abs(result.coords).max()
    np.testing.assert_allclose(result.coords, reference.transform(x) * signs, atol=tolerance * scale)
    np.testing.assert_allclose(result.components @ result.components.T, np.eye(5), atol=1e-5)


@pytest.mark.parametrize("method", ["covariance", "gram", "randomized"])
def test_sign_convention_is_sklearns(method):
    x = planted(150, 300)
    result = pca(x, k=4, method=method)
    largest = np.abs(result.components).argmax(axis=1)
    assert (result.components[np.arange(4), largest] > 0).all()
    np.testing.assert_allclose(result.components, sklearn_pca(x, 4).components_, atol=1e-3)


def test_randomized_evr_on_low_rank_plus_noise():
    x = planted(400, 1200, rank=8, offset=10.0, seed=3)
    reference = sklearn_pca(x, 10)
    result = pca(x, k=10, method="randomized")
    np.testing.assert_allclose(result.explained_variance_ratio, reference.explained_variance_ratio_, atol=1e-2)
    assert result.spectrum is None


def test_randomized_with_a_dominant_mean_shifts_before_centring():
    centred = planted(200, 800, offset=0.0)
    x = centred + np.float32(1e4)
    assert measures._rough_mean_if_needed(x) is not None
    assert measures._rough_mean_if_needed(centred) is None
    result, unshifted = pca(x, k=5, method="randomized"), pca(centred, k=5, method="randomized")
    np.testing.assert_allclose(result.explained_variance_ratio, unshifted.explained_variance_ratio, rtol=1e-4)
    np.testing.assert_allclose(np.abs(np.sum(result.components * unshifted.components, axis=1)), 1.0, atol=1e-4)
    np.testing.assert_allclose(result.mean, x.mean(axis=0, dtype=np.float64), rtol=1e-6)


@pytest.mark.parametrize("method, n, d", [("covariance", 200, 40), ("gram", 40, 200)])
def test_exact_spectrum_is_sklearns_full_spectrum(method, n, d):
    x = planted(n, d)
    result = pca(x, k=3, method=method)
    full = PCA(svd_solver="full").fit(x.astype(np.float64)).explained_variance_
    assert result.spectrum.shape == (min(n, d),)
    np.testing.assert_allclose(result.spectrum, full, rtol=1e-4, atol=1e-5 * full[0])
    assert result.spectrum.sum() == pytest.approx(result.total_variance, rel=1e-6)


@pytest.mark.parametrize("n, d, expected", [(500, 50, "covariance"), (100, 800, "gram"), (3000, 3000, "randomized")])
def test_auto_picks_method_by_shape(n, d, expected):
    assert measures._pca_method_for(n, d) == expected


def test_auto_runs_the_picked_method():
    assert pca(planted(100, 800), k=3).method == "gram"


def test_k_is_clipped_and_degenerate_components_stay_orthonormal():
    x = planted(6, 50, rank=2)
    for method in ("covariance", "gram", "randomized"):
        result = pca(x, k=10, method=method)
        assert result.components.shape == (6, 50)  # clipped to n; centred rank is only 5
        np.testing.assert_allclose(result.components @ result.components.T, np.eye(6), atol=1e-4)
        assert result.explained_variance[-1] == pytest.approx(0.0, abs=1e-4)


def test_pca_is_deterministic_for_a_seed():
    x = planted(300, 500)
    first, second = pca(x, 5, "randomized", seed=7), pca(x, 5, "randomized", seed=7)
    np.testing.assert_array_equal(first.components, second.components)


def test_pca_rejects_bad_input():
    x = planted(50, 20)
    x[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pca(x, method="randomized")
    with pytest.raises(ValueError, match="method"):
        pca(planted(50, 20), method="svd")
    with pytest.raises(ValueError, match="2 samples"):
        pca(np.ones((1, 5)))


# ---------------------------------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------------------------------


def negated(result, signs):
    """`result` with its components sign-flipped, as a fresh snapshot of the same layer could return it."""
    return replace(result, components=result.components * signs[:, None], coords=result.coords * signs)


def test_align_undoes_sign_flips_and_keeps_the_rank_order():
    original = pca(planted(200, 80, rank=6), k=6)
    signs = np.array([-1, 1, -1, -1, 1, -1], np.float32)
    aligned, order = align_pca(negated(original, signs), original.components)
    np.testing.assert_array_equal(aligned.components, original.components)
    np.testing.assert_array_equal(aligned.coords, original.coords)
    np.testing.assert_array_equal(aligned.explained_variance_ratio, original.explained_variance_ratio)
    np.testing.assert_array_equal(order, np.arange(6))


def test_align_never_reorders_components_even_when_they_swapped_rank():
    """Two directions trade places between snapshots: the columns stay in variance order (PC1 is the largest
    now), and each keeps the orientation of the direction it continues, not of the column it had."""
    original = pca(planted(200, 80, rank=6), k=6)
    previous = original.components[[1, 0, 2, 3, 4, 5]] * np.array([-1, 1, 1, 1, 1, 1], np.float32)[:, None]
    aligned, order = align_pca(original, previous)
    np.testing.assert_array_equal(order, np.arange(6))
    assert np.all(np.diff(aligned.explained_variance_ratio) <= 0)
    np.testing.assert_array_equal(aligned.components[0], original.components[0])  # matches previous[1], sign +
    np.testing.assert_array_equal(aligned.components[1], -original.components[1])  # matches previous[0], sign -


def test_align_without_previous_is_identity():
    result = pca(planted(50, 20), k=4)
    aligned, order = align_pca(result, None)
    assert aligned is result
    np.testing.assert_array_equal(order, np.arange(4))


def test_align_with_different_k_keeps_rank_order():
    original = pca(planted(200, 80, rank=6), k=6)
    aligned, order = align_pca(original, original.components[[2, 0]] * -1)
    np.testing.assert_array_equal(order, np.arange(6))
    np.testing.assert_array_equal(aligned.components[0], -original.components[0])
    np.testing.assert_array_equal(aligned.components[2], -original.components[2])
    fewer, order = align_pca(pca(planted(200, 80, rank=6), k=2), original.components[[4, 1, 0]])
    np.testing.assert_array_equal(order, [0, 1])


def test_align_rejects_mismatched_width():
    with pytest.raises(ValueError, match="shape"):
        align_pca(pca(planted(50, 20), k=3), np.eye(3, 21))


# ---------------------------------------------------------------------------------------------------
# Activation statistics
# ---------------------------------------------------------------------------------------------------


def test_activation_stats_match_numpy_on_dense_relu():
    rng = np.random.default_rng(0)
    a = np.maximum(rng.standard_normal((300, 8)), 0).astype(np.float32)
    a[:, [2, 5]] = 0.0
    stats = activation_stats(a, "relu", bins=20)
    assert stats["mean"] == pytest.approx(a.mean(dtype=np.float64), rel=1e-6)
    assert stats["std"] == pytest.approx(a.std(dtype=np.float64), rel=1e-6)
    np.testing.assert_allclose(stats["percentiles"], np.percentile(a, [2, 25, 50, 75, 98]), rtol=1e-6)
    counts, edges = np.histogram(a, bins=20)
    np.testing.assert_array_equal(stats["hist_counts"], counts)
    np.testing.assert_allclose(stats["hist_edges"], edges, rtol=1e-6)
    assert stats["hist_counts"].dtype == np.int64 and stats["hist_edges"].dtype == np.float64
    np.testing.assert_array_equal(stats["dead_units"], np.isin(np.arange(8), [2, 5]))
    assert stats["dead_fraction"] == 0.25
    np.testing.assert_allclose(stats["unit_mean"], a.mean(axis=0), rtol=1e-6)
    assert stats["unit_mean"].dtype == np.float32
    assert not stats["saturated_units"].any()


def test_dead_units_of_conv_maps_need_zero_at_every_position():
    rng = np.random.default_rng(1)
    a = np.maximum(rng.standard_normal((20, 5, 5, 4)), 0).astype(np.float32)
    a[..., 1] = 0.0
    a[..., 3] = 0.0
    a[7, 2, 3, 3] = 0.5  # one live position keeps channel 3 alive
    stats = activation_stats(a, "relu6")
    np.testing.assert_array_equal(stats["dead_units"], [False, True, False, False])
    assert stats["unit_mean"].shape == (4,)


@pytest.mark.parametrize("activation", [None, "linear", "tanh", "leaky_relu", "elu"])
def test_dead_units_only_for_zero_floor_activations(activation):
    assert not activation_stats(np.zeros((10, 3)), activation)["dead_units"].any()


def test_saturation_thresholds():
    n = 100
    sigmoid = np.full((n, 4), 0.5, np.float32)
    sigmoid[:, 0] = 0.001  # at the lower bound
    sigmoid[:96, 1] = 0.99  # 96% within 0.02 of the upper bound
    sigmoid[:90, 2] = 0.995  # only 90%
    sigmoid[:, 3] = 0.97  # 0.03 from the bound: outside sigmoid's 0.02 margin
    stats = activation_stats(sigmoid, "sigmoid")
    np.testing.assert_array_equal(stats["saturated_units"], [True, True, False, False])
    assert stats["saturated_fraction"] == 0.5
    tanh = np.full((n, 2), -0.97, np.float32)  # within tanh's 0.04 margin of -1
    tanh[:, 1] = 0.0
    np.testing.assert_array_equal(activation_stats(tanh, "tanh")["saturated_units"], [True, False])
    assert not activation_stats(sigmoid, "relu")["saturated_units"].any()


def test_activation_stats_take_channels_as_units_and_subsample():
    a = np.random.default_rng(2).standard_normal((1000, 30, 10)).astype(np.float32)  # a sequence: 30 steps of 10
    stats = activation_stats(a)
    assert stats["unit_mean"].shape == (10,)  # as many units as the snapshot ranks samples for
    np.testing.assert_allclose(stats["unit_mean"], a.mean(axis=(0, 1)), atol=1e-6)
    assert stats["hist_counts"].sum() == measures.HIST_MAX_VALUES
    assert stats["hist_edges"][0] == pytest.approx(a.min()) and stats["hist_edges"][-1] == pytest.approx(a.max())
    np.testing.assert_array_equal(activation_stats(a)["hist_counts"], stats["hist_counts"])
    # Sampled percentiles: each sits at its rank among ALL values to within four standard errors of the sample.
    share_below = np.array([np.mean(a <= value) for value in stats["percentiles"]])
    wanted = np.array([2, 25, 50, 75, 98]) / 100
    np.testing.assert_array_less(
        np.abs(share_below - wanted), 4 * np.sqrt(wanted * (1 - wanted) / measures.HIST_MAX_VALUES)
    )


def test_activation_stats_survive_nan_and_inf():
    a = np.maximum(np.random.default_rng(3).standard_normal((50, 6)), 0)
    a[0, 0], a[1, 1] = np.nan, np.inf
    a[:, 5] = 0.0
    stats = activation_stats(a, "relu")
    assert stats["nonfinite"] == 2
    assert np.isfinite(stats["hist_edges"]).all() and stats["hist_counts"].sum() == a.size - 2
    np.testing.assert_array_equal(stats["dead_units"], [False] * 5 + [True])


# ---------------------------------------------------------------------------------------------------
# Tensor (gradient) statistics
# ---------------------------------------------------------------------------------------------------


def test_tensor_stats_match_numpy():
    g = np.random.default_rng(4).standard_normal((64, 32)).astype(np.float32) * 1e-3
    g[0, :8] = 0.0
    stats = tensor_stats(g)
    g64 = g.astype(np.float64)
    assert stats["norm"] == pytest.approx(np.linalg.norm(g64), rel=1e-9)
    assert stats["mean_abs"] == pytest.approx(np.abs(g64).mean(), rel=1e-9)
    assert stats["std"] == pytest.approx(g64.std(), rel=1e-6)
    assert stats["max_abs"] == pytest.approx(np.abs(g64).max())
    assert stats["zero_fraction"] == 8 / g.size
    assert stats["nonfinite"] == 0
    assert stats["log_hist_counts"].dtype == np.int64 and stats["log_hist_counts"].sum() == g.size


def test_log_histogram_uses_fixed_edges_and_clips_the_ends():
    assert len(LOG_HIST_EDGES) == 57 and LOG_HIST_EDGES[0] == -12 and LOG_HIST_EDGES[-1] == 2
    counts = tensor_stats(np.array([0.0, 1e-15, -1e-3 * 1.1, 1e5, 1.0]))["log_hist_counts"]
    expected = np.zeros(56, np.int64)
    expected[0] = 2  # exact zero and below 1e-12
    expected[np.searchsorted(LOG_HIST_EDGES, np.log10(1.1e-3)) - 1] += 1
    expected[48] += 1  # log10(1) = 0 starts bin 48
    expected[-1] += 1  # above the top edge
    np.testing.assert_array_equal(counts, expected)


def test_tensor_stats_count_nan_and_inf_without_crashing():
    stats = tensor_stats(np.array([1.0, np.nan, -np.inf, 3.0, 0.0]))
    assert stats["nonfinite"] == 2
    assert stats["norm"] == pytest.approx(np.sqrt(10.0))
    assert stats["log_hist_counts"].sum() == 3
    assert tensor_stats(np.full(4, np.nan))["nonfinite"] == 4
    assert tensor_stats(np.zeros(0))["norm"] == 0.0


# ---------------------------------------------------------------------------------------------------
# Linear probe
# ---------------------------------------------------------------------------------------------------


def test_stratified_halves_split_every_class_in_half():
    labels = np.repeat([0, 1, 2], [10, 7, 1])
    first, second = stratified_halves(labels, seed=0)
    assert np.intersect1d(first, second).size == 0
    np.testing.assert_array_equal(np.sort(np.r_[first, second]), np.arange(18))
    np.testing.assert_array_equal(np.bincount(labels[first]), [5, 4, 1])
    np.testing.assert_array_equal(np.bincount(labels[second], minlength=3), [5, 3, 0])
    np.testing.assert_array_equal(stratified_halves(labels, 0)[0], first)
    assert not np.array_equal(stratified_halves(labels, 1)[0], first)


def sklearn_probe_accuracy(features, labels, seed=0):
    train, test = stratified_halves(labels, seed)
    scaler = StandardScaler().fit(features[train])
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(features[train]), labels[train])
    return model.score(scaler.transform(features[test]), labels[test])


def test_probe_matches_sklearn_on_digits():
    features, labels = load_digits(return_X_y=True)
    accuracy = linear_probe_accuracy(features, labels)
    assert accuracy == pytest.approx(sklearn_probe_accuracy(features, labels), abs=0.03)
    assert accuracy > 0.9


def test_probe_matches_sklearn_on_2d_blobs():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 600)
    features = rng.standard_normal((600, 2)) + np.array([[0, 0], [2, 0], [0, 2]])[labels]
    assert linear_probe_accuracy(features, labels) == pytest.approx(sklearn_probe_accuracy(features, labels), abs=0.03)


def test_probe_cannot_separate_spirals_in_input_space():
    features, labels = spirals()
    assert 0.55 <= linear_probe_accuracy(features, labels) <= 0.75


def test_probe_projects_wide_features_and_still_separates():
    features, labels = load_digits(return_X_y=True)
    wide = features @ np.random.default_rng(6).standard_normal((64, 1500))  # (n, 1500) > PROBE_MAX_DIM
    assert linear_probe_accuracy(wide, labels) > 0.9


def test_probe_is_deterministic():
    rng = np.random.default_rng(7)
    features = rng.standard_normal((2000, 128)).astype(np.float32)
    labels = np.argmax(features @ rng.standard_normal((128, 10)) + 3 * rng.standard_normal((2000, 10)), axis=1)
    assert linear_probe_accuracy(features, labels) == linear_probe_accuracy(features, labels)


def test_a_warm_started_probe_finds_the_same_accuracy_with_fewer_evaluations(monkeypatch):
    """Consecutive snapshots of a layer differ a little: the previous fit is a good start."""
    from core.analysis import measures

    features, labels = load_digits(return_X_y=True)
    later = features + np.random.default_rng(8).normal(0, 0.5, features.shape)  # the "next snapshot"
    cold, weights = measures.linear_probe(features, labels)
    evaluations = []
    fit = measures._minimise_lbfgs

    def counting(loss_and_gradient, start, memory=10):
        def counted(point):
            evaluations[-1] += 1
            return loss_and_gradient(point)

        evaluations.append(0)
        return fit(counted, start, memory)

    monkeypatch.setattr(measures, "_minimise_lbfgs", counting)
    from_scratch, _ = measures.linear_probe(later, labels)
    warm, _ = measures.linear_probe(later, labels, start=weights)
    assert warm == pytest.approx(from_scratch, abs=0.01) and warm > 0.9
    assert evaluations[1] < 0.7 * evaluations[0], evaluations
    ignored, _ = measures.linear_probe(later, labels, start=np.zeros((3, 3)))  # another shape: a cold start
    assert ignored == from_scratch and evaluations[2] == evaluations[0]


def test_probe_degenerate_inputs_give_nan():
    assert np.isnan(linear_probe_accuracy(np.ones((10, 3)), np.zeros(10)))
    features = np.random.default_rng(8).standard_normal((10, 3))
    features[0, 0] = np.nan
    assert np.isnan(linear_probe_accuracy(features, np.arange(10) % 2))


def test_probe_accepts_one_hot_labels():
    features, labels = load_digits(return_X_y=True)
    assert linear_probe_accuracy(features, np.eye(10)[labels]) == linear_probe_accuracy(features, labels)


# ---------------------------------------------------------------------------------------------------
# CKA
# ---------------------------------------------------------------------------------------------------


def naive_cka(x, y):
    """CKA from the HSIC definition: HSIC(K, L) = tr(K H L H) / (n - 1)^2 with linear kernels."""
    n = len(x)
    centring = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ centring @ b @ centring) / (n - 1) ** 2

    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.mark.parametrize("dx, dy", [(5, 8), (80, 120), (10, 150)])  # feature form, Gram form, mixed
def test_cka_matches_the_hsic_definition(dx, dy):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((60, dx))
    y = np.tanh(x @ rng.standard_normal((dx, dy))) + 0.5 * rng.standard_normal((60, dy))
    assert linear_cka(x, y) == pytest.approx(naive_cka(x, y), rel=1e-9)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), rel=1e-12)
    assert 0.0 <= linear_cka(x, y) <= 1.0


def test_cka_invariances():
    rng = np.random.default_rng(10)
    x, y = rng.standard_normal((100, 20)), rng.standard_normal((100, 30))
    rotation = np.linalg.qr(rng.standard_normal((20, 20)))[0]
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x @ rotation * 3.5 + 7.0, y) == pytest.approx(linear_cka(x, y), rel=1e-9)


def test_cka_matrix_is_symmetric_with_unit_diagonal():
    rng = np.random.default_rng(11)
    base = rng.standard_normal((50, 10))
    layers = [base, np.maximum(base @ rng.standard_normal((10, 80)), 0), rng.standard_normal((50, 4, 4, 2))]
    matrix = cka_matrix(layers)
    assert matrix.shape == (3, 3) and matrix.dtype == np.float64
    np.testing.assert_array_equal(matrix, matrix.T)
    np.testing.assert_array_equal(np.diag(matrix), 1.0)
    assert matrix[0, 1] == pytest.approx(naive_cka(layers[0], layers[1]), rel=1e-9)
    assert matrix[1, 2] == pytest.approx(naive_cka(layers[1], layers[2].reshape(50, -1)), rel=1e-9)


def test_cka_projects_very_wide_layers_approximately():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((100, 8))
    wide = np.tanh(x @ rng.standard_normal((8, 3000)))  # (n, 3000) > CKA_PROJECTION_THRESHOLD
    assert linear_cka(x, wide) == pytest.approx(naive_cka(x, wide), abs=0.05)


def test_cka_with_a_constant_layer_is_nan_even_with_itself():
    """0/0: a constant layer's Gram matrix is zero, so no similarity is defined; a heatmap must not show 1.00."""
    matrix = cka_matrix([np.ones((10, 3)), np.random.default_rng(13).standard_normal((10, 3))])
    assert np.isnan(matrix[0, 1]) and np.isnan(matrix[0, 0]) and matrix[1, 1] == 1.0


def test_cka_rejects_different_samples():
    with pytest.raises(ValueError, match="same samples"):
        cka_matrix([np.ones((10, 3)), np.ones((11, 3))])


# ---------------------------------------------------------------------------------------------------
# Class separation
# ---------------------------------------------------------------------------------------------------


def test_class_separation_matches_sklearn_silhouette():
    rng = np.random.default_rng(14)
    labels = rng.integers(0, 4, 300)
    coords = rng.standard_normal((300, 3)) + labels[:, None]
    assert class_separation(coords, labels) == pytest.approx(silhouette_score(coords, labels), abs=1e-6)


def test_class_separation_subsamples_like_sklearn():
    rng = np.random.default_rng(15)
    labels = rng.integers(0, 3, 2500)
    coords = (rng.standard_normal((2500, 2)) + labels[:, None]).astype(np.float32)
    expected = silhouette_score(coords, labels, sample_size=400, random_state=3)
    assert class_separation(coords, labels, max_points=400, seed=3) == pytest.approx(expected, abs=1e-6)


def test_class_separation_singletons_and_single_class():
    coords = np.array([[0.0], [0.1], [5.0], [5.2], [9.0]])
    labels = np.array([0, 0, 1, 1, 2])
    assert class_separation(coords, labels) == pytest.approx(silhouette_score(coords, labels), abs=1e-6)
    assert np.isnan(class_separation(coords, np.zeros(5)))


# ---------------------------------------------------------------------------------------------------
# Effective dimensionality
# ---------------------------------------------------------------------------------------------------


def test_effective_dimensionality_from_the_exact_spectrum():
    x = planted(300, 40, rank=3)
    result = pca(x, k=2, method="covariance")
    full = PCA(svd_solver="full").fit(x.astype(np.float64)).explained_variance_
    dims = effective_dimensionality(result)
    assert dims["participation_ratio_exact"]
    assert dims["participation_ratio"] == pytest.approx(full.sum() ** 2 / (full**2).sum(), rel=1e-5)
    assert dims["n90"] == int(np.searchsorted(np.cumsum(full) / full.sum(), 0.9) + 1)


def test_effective_dimensionality_bounds_without_a_spectrum():
    x = planted(300, 200, rank=3)
    exact = effective_dimensionality(pca(x, k=10, method="covariance"))
    estimate = effective_dimensionality(pca(x, k=10, method="randomized"))
    assert not estimate["participation_ratio_exact"]
    assert estimate["participation_ratio"] <= exact["participation_ratio"] * (1 + 1e-6)
    assert exact["participation_ratio"] <= estimate["participation_ratio_upper"] * (1 + 1e-6)
    assert estimate["n90"] is None  # isotropic noise holds most of the variance beyond the top 10


def test_effective_dimensionality_n90_from_top_ratios_and_after_alignment():
    x = planted(300, 200, rank=3, offset=0.0)
    x[:, :3] *= 50  # three dominant directions
    result = pca(x, k=5, method="randomized")
    exact = effective_dimensionality(pca(x, k=5, method="covariance"))
    assert effective_dimensionality(result)["n90"] == exact["n90"]
    aligned, _ = align_pca(result, result.components[::-1])
    assert effective_dimensionality(aligned) == effective_dimensionality(result)


# ---------------------------------------------------------------------------------------------------
# What a probe accuracy rests on
# ---------------------------------------------------------------------------------------------------


def test_held_out_size_is_the_second_half_of_every_class():
    labels = np.array([0] * 7 + [1] * 4 + [2])  # halves: 3 of 7, 2 of 4, 0 of 1
    assert held_out_size(labels) == 5
    train, test = stratified_halves(labels, seed=3)
    assert len(test) == held_out_size(labels)


def test_accuracy_interval_is_wilsons():
    # Reference values: Wilson score interval, z = 1.96 (e.g. statsmodels proportion_confint(method="wilson")).
    assert accuracy_interval(0.9, 100) == pytest.approx((0.8256, 0.9448), abs=1e-4)
    assert accuracy_interval(1.0, 20) == pytest.approx((0.8389, 1.0), abs=1e-4)  # never a zero-width interval
    low, high = accuracy_interval(0.9, 1000)
    assert high - low < 0.04 and low < 0.9 < high
    assert accuracy_interval(0.5, 0) == (0.0, 1.0)
    assert all(np.isnan(accuracy_interval(float("nan"), 50)))
