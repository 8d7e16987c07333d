"""Per-layer analysis math (PCA, activation and gradient statistics, linear probes, CKA), numpy only.

Everything here runs in a background worker while the model trains, so it avoids copies of the
activation matrix: large inputs are reduced in row chunks, and the randomized PCA centres implicitly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "ACTIVATION_BOUNDS",
    "LOG_HIST_EDGES",
    "PCAResult",
    "activation_stats",
    "accuracy_interval",
    "align_pca",
    "cka_matrix",
    "class_separation",
    "effective_dimensionality",
    "held_out_size",
    "linear_cka",
    "linear_probe_accuracy",
    "pca",
    "tensor_stats",
]

# ---------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------

# Exact PCA costs an eigendecomposition of a min(n, d)-sized matrix: ~0.2 s at 1024 on 2 cores, but
# ~1.5 s at 2048, so wider problems (and ones whose covariance/Gram product is too costly) go randomized.
EXACT_MAX_DIM = 1024
EXACT_MAX_FLOPS = 2e10
# Halko et al. 2011: oversampling ~10 columns and one power iteration give near-exact leading
# components when the spectrum decays. Each iteration is one more fused pass over x (~0.25 s at
# 10,000 x 16,384); a second would push that case past its 1 s budget.
RANDOMIZED_OVERSAMPLES = 10
RANDOMIZED_POWER_ITERATIONS = 1
# Row chunks stay cache-sized, so fused multiply passes and centred temporaries never copy all of x.
# Statistics work in float64 with several temporaries per chunk, hence smaller chunks.
CHUNK_BYTES = 16 * 2**20
STATS_CHUNK_BYTES = 4 * 2**20
# Directions whose singular value is below this fraction of the largest are float32 round-off.
RANK_TOLERANCE = 1e-5
# Implicit centring in float32 cancels when the mean dwarfs the spread (measured: relative error 4e-7
# at |mean|^2 / spread = 30, 1e-4 at 3000). Past this ratio the randomized PCA subtracts a rough mean
# from every chunk, which costs a single-threaded pass per product (~+0.5 s at 10,000 x 16,384).
SHIFT_RATIO = 100.0

# Activations whose dead units output exactly zero for every input.
ZERO_FLOOR_ACTIVATIONS = frozenset({"relu", "relu6", "hard_silu", "hard_swish", "sparse_plus"})
# Output range of saturating activations. relu6 is left out: its "dead" state (always 0) is the
# interesting one, and it is counted by ZERO_FLOOR_ACTIVATIONS.
ACTIVATION_BOUNDS = {
    "sigmoid": (0.0, 1.0),
    "hard_sigmoid": (0.0, 1.0),
    "sparse_sigmoid": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
    "hard_tanh": (-1.0, 1.0),
    "softsign": (-1.0, 1.0),
}
# A value is "at a bound" within 2% of the output range (0.02 for sigmoid, 0.04 for tanh), and a unit
# is saturated when at least 95% of its values (all samples and positions) are at a bound.
SATURATION_MARGIN = 0.02
SATURATION_MIN_FRACTION = 0.95
ACTIVATION_PERCENTILES = (2, 25, 50, 75, 98)
# Histograms and percentiles of activations use at most this many values, picked with a fixed seed. From 32,768
# values a 2nd percentile is off by ~0.08 percentile points (one standard error); sorting out five percentiles
# from all 128,000 values of a 128-unit layer on a 1,000-sample probe cost 2 ms of every 40 ms snapshot.
HIST_MAX_VALUES = 32_768

# Gradient histograms use fixed bins in log10|g| so epochs can be compared bin by bin.
LOG_HIST_EDGES = np.linspace(-12.0, 2.0, 57)
_LOG_HIST_FLOOR = 1e-12

# Johnson–Lindenstrauss: a Gaussian random projection to a few hundred dimensions approximately
# preserves distances and inner products, hence linear separability (probe) and Gram matrices (CKA).
PROBE_MAX_DIM = 512
CKA_PROJECTION_THRESHOLD = 2048
CKA_PROJECTION_DIM = 1024
_PROJECTION_SEED = 1234  # fixed so every epoch of a layer is projected the same way

# L2 strength of the probe, in scikit-learn's convention (loss summed over samples + ||W||^2 / (2C)).
PROBE_C = 1.0
PROBE_MAX_ITER = 100
PROBE_TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------------------
# PCA
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PCAResult:
    """Leading principal components of one layer's activations on the probe set."""

    coords: np.ndarray  # (n, k) float32, projections of the centred samples
    components: np.ndarray  # (k, d) float32, orthonormal rows
    mean: np.ndarray  # (d,) float32
    explained_variance: np.ndarray  # (k,) float64, with ddof=1 like scikit-learn
    explained_variance_ratio: np.ndarray  # (k,) float64, of the TOTAL variance of x
    total_variance: float
    method: str  # "covariance", "gram" or "randomized"
    spectrum: np.ndarray | None = None  # (min(n, d),) float64 all eigenvalues, descending; exact only


def pca(x, k=10, method="auto", seed=0) -> PCAResult:
    """Top-k PCA of the rows of x (n, d); `method` is "auto", "covariance", "gram" or "randomized".

    x is used as C-contiguous float32 (a copy only if it is not already). k is clipped to min(k, n, d).
    "auto" takes an exact method when cheap (see EXACT_MAX_DIM, EXACT_MAX_FLOPS), else "randomized".
    Components are sign-fixed like scikit-learn's svd_flip: the largest-|value| entry is positive.
    """
    x = _float32_matrix(x)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"pca needs at least 2 samples, received x with shape {x.shape}")
    if k < 1:
        raise ValueError(f"pca needs k >= 1. Received: k={k}")
    k = min(int(k), n, d)
    if method == "auto":
        method = _pca_method_for(n, d)
    if method == "covariance":
        return _pca_covariance(x, k)
    if method == "gram":
        return _pca_gram(x, k)
    if method == "randomized":
        return _pca_randomized(x, k, seed)
    raise ValueError(
        f"Unknown PCA method. Received: method={method!r}; use 'auto', 'covariance', 'gram' or 'randomized'"
    )


def _pca_method_for(n, d):
    """The exact method on the smaller side when its eigendecomposition and product are cheap."""
    smaller = min(n, d)
    if smaller <= EXACT_MAX_DIM and 2.0 * n * d * smaller <= EXACT_MAX_FLOPS:
        return "covariance" if d <= n else "gram"
    return "randomized"


def _pca_covariance(x, k):
    n, d = x.shape
    mean = _column_mean(x)
    covariance = np.zeros((d, d), np.float32)  # (d, d), accumulated from centred chunks for precision
    for rows in _row_chunks(x):
        centred = x[rows] - mean
        covariance += centred.T @ centred
    covariance = covariance.astype(np.float64) / (n - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    top = eigenvectors[:, ::-1][:, :k].T.astype(np.float32)  # (k, d)
    components = _flip_signs(top)
    coords = x @ components.T - mean @ components.T  # (n, k)
    spectrum = _clean_spectrum(eigenvalues[::-1][: min(n, d)])
    return _pca_result(coords, components, mean, spectrum[:k], np.trace(covariance), "covariance", spectrum)


def _pca_gram(x, k):
    n, d = x.shape
    mean = _column_mean(x)
    gram = np.zeros((n, n), np.float32)  # (n, n), centred x x^T accumulated over column blocks
    block = max(1, CHUNK_BYTES // (4 * n))
    for start in range(0, d, block):
        centred = x[:, start : start + block] - mean[start : start + block]  # (n, block)
        gram += centred @ centred.T
    gram = gram.astype(np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh(gram)  # ascending
    eigenvalues, eigenvectors = np.maximum(eigenvalues[::-1], 0.0), eigenvectors[:, ::-1]
    singular_values = np.sqrt(eigenvalues[:k])
    left = eigenvectors[:, :k].astype(np.float32)  # (n, k)
    # Right singular vectors are x_c^T u / s. A float32 Gram resolves variances only down to ~1e-6 of
    # the largest, so directions below that (zero variance included) are completed to an orthonormal set.
    unscaled = (x.T @ left - np.outer(mean, left.sum(axis=0))).T  # (k, d)
    resolved = singular_values > 1e-3 * max(singular_values[0], 1e-30)
    with np.errstate(divide="ignore", invalid="ignore"):
        components = (unscaled / singular_values[:, None]).astype(np.float32)
    components = _flip_signs(_orthonormal_completion(components, resolved))
    coords = x @ components.T - mean @ components.T  # (n, k), exact projections even if degenerate
    spectrum = _clean_spectrum(eigenvalues[: min(n, d)] / (n - 1))
    return _pca_result(coords, components, mean, spectrum[:k], np.trace(gram) / (n - 1), "gram", spectrum)


def _pca_randomized(x, k, seed):
    """Randomized PCA (Halko et al. 2011) on the row space, centring implicitly: x - mean is never built.

    Each power iteration multiplies a (d, l) block by x_c^T x_c in one fused pass over row chunks. All
    blocks together span a block Krylov space (Musco & Musco 2015) that contains the plain power-
    iteration subspace, at no extra pass: one more product x_c P costs about the same for 2l columns as
    for l. Since the components lie in span(P), the small matrix x_c P gives their exact projections and
    variances through an eigendecomposition of (x_c P)^T (x_c P).
    """
    n, d = x.shape
    size = min(k + RANDOMIZED_OVERSAMPLES, n, d)
    shift = _rough_mean_if_needed(x)
    basis = np.random.default_rng(seed).standard_normal((d, size), dtype=np.float32)  # (d, l)
    product, column_sum, square_sum = _fused_normal_product(x, basis, shift, with_stats=True)
    mean_shifted = (column_sum / n).astype(np.float32)  # mean of x - shift
    total_variance = (square_sum - n * float(mean_shifted.astype(np.float64) @ mean_shifted)) / (n - 1)
    if not np.isfinite(total_variance):
        raise ValueError("pca received x with NaN or Inf values")
    blocks = [_orthonormal_columns(product - _mean_term(n, mean_shifted, basis))]
    for _ in range(RANDOMIZED_POWER_ITERATIONS):
        product, _, _ = _fused_normal_product(x, blocks[-1], shift)
        blocks.append(_orthonormal_columns(product - _mean_term(n, mean_shifted, blocks[-1])))
    basis = _at_least_columns(_orthonormal_columns(np.hstack(blocks)), k, seed)  # (d, <= l (q + 1))
    projected = _shifted_product(x, basis, shift) - mean_shifted @ basis  # (n, l (q + 1)), x_c P
    squares = projected.astype(np.float64)
    eigenvalues, rotation = np.linalg.eigh(squares.T @ squares)  # ascending
    rotation = rotation[:, ::-1][:, :k].astype(np.float32)  # (l (q + 1), k)
    rotation *= _sign_convention((basis @ rotation).T)
    components = (basis @ rotation).T  # (k, d)
    coords = projected @ rotation  # (n, k), exactly x_c components^T since components lie in span(P)
    variance = np.maximum(eigenvalues[::-1][:k], 0.0) / (n - 1)
    mean = mean_shifted if shift is None else mean_shifted + shift
    return _pca_result(coords, components, mean, variance, max(total_variance, 0.0), "randomized", None)


def _fused_normal_product(x, basis, shift, with_stats=False):
    """x^T x basis (d, l) in one pass over row chunks, plus column sums and total sum of squares."""
    n, d = x.shape
    product = np.zeros((d, basis.shape[1]), np.float32)
    column_sum = np.zeros(d, np.float64)
    square_sum = 0.0
    for chunk in _shifted_chunks(x, shift):
        product += chunk.T @ (chunk @ basis)
        if with_stats:
            column_sum += np.ones(len(chunk), np.float32) @ chunk
            square_sum += float(np.einsum("ij,ij->i", chunk, chunk).sum(dtype=np.float64))
    return product, column_sum, square_sum


def _shifted_product(x, basis, shift):
    if shift is None:
        return x @ basis
    return np.concatenate([chunk @ basis for chunk in _shifted_chunks(x, shift)])


def _shifted_chunks(x, shift):
    """Row chunks of x, minus `shift` when given, written into one reused buffer (no page faults)."""
    if shift is None:
        yield from (x[rows] for rows in _row_chunks(x))
        return
    buffer = None
    for rows in _row_chunks(x):
        chunk = x[rows]
        if buffer is None:
            buffer = np.empty_like(chunk)
        yield np.subtract(chunk, shift, out=buffer[: len(chunk)])


def _mean_term(n, mean, basis):
    """n mean mean^T basis, the correction that turns x^T x basis into x_c^T x_c basis."""
    return n * np.outer(mean, mean @ basis)


def _rough_mean_if_needed(x):
    """The mean of ~128 evenly spaced rows when it dominates their spread, else None."""
    rows = np.unique(np.linspace(0, len(x) - 1, min(len(x), 128)).astype(np.int64))
    sample = x[rows]  # (m, d)
    rough_mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
    deviation = sample - rough_mean
    spread = np.einsum("ij,ij->i", deviation, deviation).mean(dtype=np.float64)
    if float(rough_mean.astype(np.float64) @ rough_mean) > SHIFT_RATIO * spread:
        return rough_mean
    return None


def _pca_result(coords, components, mean, variance, total_variance, method, spectrum):
    total_variance = float(total_variance)
    variance = np.asarray(variance, np.float64)
    ratio = variance / total_variance if total_variance > 0 else np.zeros_like(variance)
    return PCAResult(
        coords=np.ascontiguousarray(coords, dtype=np.float32),
        components=np.ascontiguousarray(components, dtype=np.float32),
        mean=np.asarray(mean, np.float32),
        explained_variance=variance,
        explained_variance_ratio=ratio,
        total_variance=total_variance,
        method=method,
        spectrum=spectrum,
    )


def _flip_signs(components):
    """Components with the largest-|value| entry of each row positive, like scikit-learn's svd_flip."""
    return components * _sign_convention(components)[:, None]


def _sign_convention(components):
    """(k,) signs that make the largest-|value| entry of each row positive."""
    largest = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), largest])
    signs[signs == 0] = 1
    return signs.astype(components.dtype)


def _clean_spectrum(eigenvalues):
    """Eigenvalues as float64 with round-off negatives set to zero."""
    return np.maximum(np.asarray(eigenvalues, np.float64), 0.0)


def _orthonormal_columns(matrix):
    """An orthonormal basis (d, <= l) of the columns of `matrix` (d, l), dropping numerically null directions.

    Uses the eigendecomposition of the small Gram matrix, twice (like CholeskyQR2): two matrix products
    and an l x l eigh. LAPACK's Householder QR is as accurate but, multithreaded on a busy 2-core machine,
    took up to seconds for a (16384, 20) matrix.
    """
    basis = matrix
    for _ in range(2):
        wide = basis.astype(np.float64)
        eigenvalues, eigenvectors = np.linalg.eigh(wide.T @ wide)  # (l,), (l, l) ascending
        kept = eigenvalues > RANK_TOLERANCE**2 * max(eigenvalues[-1], 1e-300)
        scaling = eigenvectors[:, kept] / np.sqrt(eigenvalues[kept])  # (l, r)
        basis = (wide @ scaling).astype(matrix.dtype)  # (d, r)
    return basis


def _at_least_columns(basis, k, seed):
    """`basis` (d, r) completed by random orthonormal directions to at least k columns."""
    if basis.shape[1] >= k:
        return basis
    extra = np.random.default_rng(seed).standard_normal((len(basis), k - basis.shape[1]))
    completed = np.linalg.qr(np.hstack([basis.astype(np.float64), extra]))[0]  # rare: rank(x_c) < k
    return completed.astype(basis.dtype)


def _orthonormal_completion(rows, keep):
    """Rows where `keep` (a leading run) is true, re-orthonormalised, and the others replaced by
    directions that make all rows orthonormal."""
    filled = rows.astype(np.float64)
    filled[~keep] = np.random.default_rng(0).standard_normal(filled[~keep].shape)
    basis = np.linalg.qr(filled.T)[0].T  # (k, d); kept rows come back unchanged up to sign
    basis[keep] *= np.sign(np.sum(basis[keep] * filled[keep], axis=1))[:, None]
    return basis.astype(rows.dtype)


def _column_mean(x):
    return (np.ones(len(x), np.float32) @ x / len(x)).astype(np.float32)  # BLAS pass, no temporary


def _row_chunks(x, chunk_bytes=CHUNK_BYTES):
    rows_per_chunk = max(1, chunk_bytes // max(1, x.itemsize * int(np.prod(x.shape[1:]))))
    for start in range(0, len(x), rows_per_chunk):
        yield slice(start, start + rows_per_chunk)


def _float32_matrix(x):
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"Expected a 2-D array (samples, features). Received: shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------
# Alignment of successive PCA snapshots
# ---------------------------------------------------------------------------------------------------


def align_pca(result: PCAResult, previous: np.ndarray | None) -> tuple[PCAResult, np.ndarray]:
    """`result` with each component's sign chosen to follow `previous` (k_prev, d) components; never reordered.

    Column j stays the (j+1)-th largest-variance direction of this snapshot, so an axis labelled PC1 always is
    PC1 and its share of variance is true. Only orientation is aligned, so the cloud does not mirror-flip
    between snapshots: each component takes the sign that makes its dot product with the previous component
    it overlaps most non-negative (that follows a direction even when two components swap rank). Returns the
    aligned result and `order`, the rank of each column: always 0, 1, ..., k-1 (stored for readers of older
    runs, whose columns were permuted to follow the previous snapshot).
    """
    k = len(result.components)
    order = np.arange(k)
    if previous is None:
        return result, order
    previous = np.asarray(previous, np.float64)
    if previous.ndim != 2 or previous.shape[1] != result.components.shape[1]:
        raise ValueError(
            f"previous components must have shape (k, {result.components.shape[1]}). Received: shape {previous.shape}"
        )
    if not len(previous):
        return result, order
    overlap = np.nan_to_num(result.components.astype(np.float64) @ previous.T)  # (k, k_prev)
    closest = overlap[np.arange(k), np.abs(overlap).argmax(axis=1)]
    signs = np.where(closest < 0, -1.0, 1.0)
    aligned = replace(
        result,
        components=(result.components * signs[:, None]).astype(np.float32),
        coords=(result.coords * signs).astype(np.float32),
    )
    return aligned, order


# ---------------------------------------------------------------------------------------------------
# Activation and gradient statistics
# ---------------------------------------------------------------------------------------------------


def activation_stats(a, activation=None, bins=40) -> dict:
    """Summary of one layer's output `a` on the probe set, per unit and overall.

    `a` is (n, units), or channels-last (n, ..., channels) such as a conv map (n, h, w, channels) or a sequence
    (n, steps, features), whose units are its channels, as in the snapshot's unit rankings.
    `activation` is the Keras activation name; only zero-floor activations report dead units and only
    bounded ones report saturated units. Histogram and percentiles use at most HIST_MAX_VALUES values.
    """
    values = _unit_matrix(np.asarray(a))  # (rows, units)
    rows, units = values.shape
    name = _activation_name(activation)
    bounds = ACTIVATION_BOUNDS.get(name)
    moments = _unit_moments(values, bounds)
    unit_mean = moments["mean"]
    overall_mean = float(unit_mean.mean()) if units else float("nan")
    spread = moments["square_deviation"].sum() + rows * ((unit_mean - overall_mean) ** 2).sum()
    dead = _dead_units(moments, name)
    saturated = moments["near_bound"] >= SATURATION_MIN_FRACTION * rows if bounds else np.zeros(units, bool)
    sample = _finite_sample(values)
    counts, edges = _histogram(sample, moments, bins)
    return {
        "mean": overall_mean,
        "std": float(np.sqrt(spread / max(rows * units, 1))),
        "percentiles": _percentiles(sample),
        "hist_counts": counts,
        "hist_edges": edges,
        "dead_units": dead,
        "dead_fraction": float(dead.mean()) if units else 0.0,
        "saturated_units": saturated,
        "saturated_fraction": float(saturated.mean()) if units else 0.0,
        "unit_mean": unit_mean.astype(np.float32),
        "nonfinite": moments["nonfinite"],
    }


def _unit_matrix(a):
    """(rows, units): outputs with positions (conv maps, sequences) keep their last axis as units."""
    if a.ndim > 2:
        return a.reshape(-1, a.shape[-1])
    return a.reshape(len(a), -1)


def _activation_name(activation):
    if activation is None:
        return None
    name = str(getattr(activation, "__name__", activation)).lower()
    return {"swish": "silu", "hard_swish": "hard_silu"}.get(name, name)


@np.errstate(invalid="ignore")  # NaN/Inf make their unit's moments NaN, which is the honest answer
def _unit_moments(values, bounds):
    """Per-unit mean, squared deviation, min, max and count at a bound, merged over row chunks (Chan)."""
    units = values.shape[1]
    count = 0
    mean = np.zeros(units)
    square_deviation = np.zeros(units)
    minimum = np.full(units, np.inf)
    maximum = np.full(units, -np.inf)
    near_bound = np.zeros(units, np.int64)
    for rows in _row_chunks(values, STATS_CHUNK_BYTES):
        chunk = values[rows].astype(np.float64, copy=False)
        chunk_mean = chunk.mean(axis=0)
        chunk_square_deviation = ((chunk - chunk_mean) ** 2).sum(axis=0)
        merged = count + len(chunk)
        delta = chunk_mean - mean
        square_deviation += chunk_square_deviation + delta**2 * count * len(chunk) / merged
        mean += delta * len(chunk) / merged
        count = merged
        minimum = np.minimum(minimum, chunk.min(axis=0))
        maximum = np.maximum(maximum, chunk.max(axis=0))
        if bounds:
            low, high = bounds
            margin = SATURATION_MARGIN * (high - low)
            near_bound += ((chunk <= low + margin) | (chunk >= high - margin)).sum(axis=0)
    nonfinite = 0 if np.isfinite(mean).all() else int(values.size - np.isfinite(values).sum())
    return {
        "mean": mean,
        "square_deviation": square_deviation,
        "min": minimum,
        "max": maximum,
        "near_bound": near_bound,
        "nonfinite": nonfinite,
    }


def _dead_units(moments, name):
    """Units that output exactly zero on every sample and position (NaN never counts as dead)."""
    if name not in ZERO_FLOOR_ACTIVATIONS:
        return np.zeros(len(moments["mean"]), bool)
    return (moments["max"] <= 0) & (moments["min"] >= 0)


def _finite_sample(values):
    """Up to HIST_MAX_VALUES finite values, picked with a fixed seed so snapshots are reproducible."""
    flat = values.reshape(-1)
    if flat.size > HIST_MAX_VALUES:
        flat = flat[_sample_positions(flat.size)]
    if flat.dtype not in (np.float32, np.float64):
        flat = flat.astype(np.float64)  # float32 stays: a float64 copy would double the sort's memory traffic
    return flat[np.isfinite(flat)]


@functools.lru_cache(maxsize=16)  # a few layer sizes, the same at every snapshot
def _sample_positions(size):
    positions = np.sort(np.random.default_rng(0).integers(0, size, HIST_MAX_VALUES))
    positions.flags.writeable = False
    return positions


def _histogram(sample, moments, bins):
    """Counts of the sample over `bins` equal bins spanning the finite range of ALL values."""
    low, high = float(np.min(moments["min"], initial=np.inf)), float(np.max(moments["max"], initial=-np.inf))
    if not (np.isfinite(low) and np.isfinite(high)):
        low, high = (float(sample.min()), float(sample.max())) if sample.size else (0.0, 1.0)
    if low == high:
        low, high = low - 0.5, high + 0.5  # np.histogram's convention for a constant input
    # In float64: a nearly constant float32 layer (every output within a few ulps) has fewer representable float32
    # steps in its range than bins, and np.histogram refuses to cut it ("Too many bins for data range").
    values = np.clip(np.asarray(sample, np.float64), low, high)
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    return counts.astype(np.int64), edges.astype(np.float64)


def _percentiles(sample):
    if sample.size == 0:
        return np.full(len(ACTIVATION_PERCENTILES), np.nan)
    return np.percentile(sample, ACTIVATION_PERCENTILES)


def tensor_stats(g) -> dict:
    """Norm, spread and a fixed-bin log10|g| histogram of a gradient (or any) tensor.

    Statistics are over the finite entries; NaN and Inf are only counted in `nonfinite`. Entries with
    |g| < 1e-12 (zeros included) fall in the first histogram bin, entries above 1e2 in the last.
    """
    flat = np.asarray(g).reshape(-1)
    size = flat.size
    totals = {"sum": 0.0, "square": 0.0, "abs": 0.0, "max_abs": 0.0, "zeros": 0, "finite": 0}
    counts = np.zeros(len(LOG_HIST_EDGES) - 1, np.int64)
    for rows in _row_chunks(flat.reshape(-1, 1), STATS_CHUNK_BYTES):
        chunk = flat[rows].astype(np.float64)
        chunk = chunk[np.isfinite(chunk)]
        magnitude = np.abs(chunk)
        totals["sum"] += chunk.sum()
        totals["square"] += chunk @ chunk
        totals["abs"] += magnitude.sum()
        totals["max_abs"] = max(totals["max_abs"], float(magnitude.max(initial=0.0)))
        totals["zeros"] += int(np.count_nonzero(chunk == 0))
        totals["finite"] += chunk.size
        counts += _log_hist_counts(magnitude)
    finite = max(totals["finite"], 1)
    mean = totals["sum"] / finite
    return {
        "norm": float(np.sqrt(totals["square"])),
        "mean_abs": float(totals["abs"] / finite),
        "std": float(np.sqrt(max(totals["square"] / finite - mean**2, 0.0))),
        "max_abs": float(totals["max_abs"]),
        "zero_fraction": float(totals["zeros"] / max(size, 1)),
        "log_hist_counts": counts,
        "nonfinite": int(size - totals["finite"]),
    }


def _log_hist_counts(magnitude):
    """Counts of log10|g| over LOG_HIST_EDGES, values outside the range clipped into the end bins."""
    low, high = LOG_HIST_EDGES[0], LOG_HIST_EDGES[-1]
    bins = len(LOG_HIST_EDGES) - 1
    logs = np.log10(np.maximum(magnitude, _LOG_HIST_FLOOR))
    index = np.floor((logs - low) / (high - low) * bins).astype(np.int64)
    return np.bincount(np.clip(index, 0, bins - 1), minlength=bins)


# ---------------------------------------------------------------------------------------------------
# Linear probe
# ---------------------------------------------------------------------------------------------------


def linear_probe_accuracy(features, labels, seed=0) -> float:
    """Held-out accuracy of a multinomial logistic regression on `features` (Alain & Bengio 2016).

    Trains on one stratified half and scores on the other. Features wider than PROBE_MAX_DIM are first
    reduced by a fixed Gaussian random projection (Johnson–Lindenstrauss), which approximately preserves
    linear separability. Returns nan with fewer than 2 classes or non-finite features.
    """
    return linear_probe(features, labels, seed)[0]


def linear_probe(features, labels, seed=0, start=None) -> tuple[float, np.ndarray | None]:
    """(held-out accuracy, fitted weights) of `linear_probe_accuracy`, optionally warm-started.

    `start` is a previous fit's weights on features of the same shape, such as the same layer one snapshot
    earlier: the solver then begins near the optimum and needs a fraction of the iterations. The weights live
    in standardised feature space, so they carry over as the layer's scale drifts. A `start` of another shape
    is ignored.
    """
    x = np.asarray(features).reshape(len(features), -1)
    classes = _class_indices(labels)
    if len(x) != len(classes):
        raise ValueError(f"features and labels disagree on the number of samples: {len(x)} vs {len(classes)}")
    if classes.max(initial=0) < 1:
        return float("nan"), None
    if x.shape[1] > PROBE_MAX_DIM:
        x = _random_projection(x, PROBE_MAX_DIM)
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        return float("nan"), None
    train, test = _cached_halves(classes, seed)
    if len(test) == 0:
        return float("nan"), None
    location, scale = x[train].mean(axis=0), x[train].std(axis=0)
    scale[scale < 1e-12] = 1.0
    standardised = (x - location) / scale
    n_classes = classes.max() + 1
    if start is not None and (np.shape(start) != (x.shape[1] + 1, n_classes) or not np.isfinite(start).all()):
        start = None
    weights = _fit_logistic_regression(standardised[train], classes[train], n_classes, start)
    predictions = np.argmax(_logits(standardised[test], weights), axis=1)
    return float(np.mean(predictions == classes[test])), weights


# The last few splits: a recording probes every layer of every snapshot on the same labels, one set per output of
# classes for a model of several outputs.
_halves_cache: dict = {}
HALVES_CACHED = 8


def _cached_halves(classes, seed):
    key = (seed, classes.tobytes())
    halves = _halves_cache.get(key)
    if halves is None:  # recorders in threads may interleave here: each keeps the split it computed
        halves = stratified_halves(classes, seed)
        if len(_halves_cache) >= HALVES_CACHED:
            _halves_cache.clear()
        _halves_cache[key] = halves
    return halves


def held_out_size(labels) -> int:
    """How many probe samples each linear probe is scored on: the second half of every class (`stratified_halves`)."""
    classes = _class_indices(labels)
    return int(sum(np.count_nonzero(classes == label) // 2 for label in range(classes.max(initial=-1) + 1)))


def accuracy_interval(accuracy: float, samples: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of an accuracy measured on `samples` independent samples: (low, high).

    Unlike accuracy ± 1.96 standard errors it stays inside [0, 1] and does not shrink to nothing at 0% or 100%,
    which a small probe reaches easily. NaN in gives (nan, nan); no samples give (0, 1), knowing nothing."""
    if not math.isfinite(accuracy):
        return math.nan, math.nan
    if samples <= 0:
        return 0.0, 1.0
    p = min(max(float(accuracy), 0.0), 1.0)
    denominator = 1 + z * z / samples
    centre = (p + z * z / (2 * samples)) / denominator
    half = z * math.sqrt(p * (1 - p) / samples + z * z / (4 * samples * samples)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def stratified_halves(labels, seed):
    """Two sorted index arrays splitting every class in half at random; odd classes give the first half
    the extra sample, so a class with one sample can still be learned."""
    classes = _class_indices(labels)
    rng = np.random.default_rng(seed)
    first, second = [], []
    for label in range(classes.max(initial=-1) + 1):
        members = rng.permutation(np.flatnonzero(classes == label))
        cut = (len(members) + 1) // 2
        first.append(members[:cut])
        second.append(members[cut:])
    empty = np.zeros(0, np.int64)
    return np.sort(np.concatenate(first or [empty])), np.sort(np.concatenate(second or [empty]))


def _class_indices(labels):
    """Labels (integer, string or one-hot) as class indices 0..K-1."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)
    return np.unique(labels.reshape(len(labels)), return_inverse=True)[1].astype(np.int64)


def _fit_logistic_regression(x, classes, n_classes, start=None):
    """Weights (d + 1, K) minimising mean cross-entropy + ||W||^2 / (2 C n), intercept unpenalised; the search
    begins at `start` (zeros by default)."""
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))])  # (n, d + 1)
    targets = np.eye(n_classes)[classes]  # (n, K)
    penalty = np.ones((d + 1, 1)) / (PROBE_C * n)
    penalty[-1] = 0.0

    def loss_and_gradient(flat):
        weights = flat.reshape(d + 1, n_classes)
        logits = design @ weights
        logits -= logits.max(axis=1, keepdims=True)
        log_normaliser = np.log(np.exp(logits).sum(axis=1, keepdims=True))
        log_probabilities = logits - log_normaliser
        loss = -np.sum(targets * log_probabilities) / n + 0.5 * np.sum(penalty * weights**2)
        gradient = design.T @ (np.exp(log_probabilities) - targets) / n + penalty * weights
        return loss, gradient.reshape(-1)

    begin = np.zeros((d + 1) * n_classes) if start is None else np.asarray(start, np.float64).reshape(-1).copy()
    flat = _minimise_lbfgs(loss_and_gradient, begin)
    return flat.reshape(d + 1, n_classes)


def _logits(x, weights):
    return x @ weights[:-1] + weights[-1]


def _minimise_lbfgs(loss_and_gradient, start, memory=10):
    """A deterministic L-BFGS with backtracking (Armijo) line search."""
    point = start
    loss, gradient = loss_and_gradient(point)
    steps, changes = [], []
    for _ in range(PROBE_MAX_ITER):
        if np.max(np.abs(gradient)) < PROBE_TOLERANCE:
            break
        direction = -_lbfgs_direction(gradient, steps, changes)
        slope = gradient @ direction
        if slope >= 0:  # lost descent through curvature round-off: restart from steepest descent
            steps, changes = [], []
            direction, slope = -gradient, -(gradient @ gradient)
        step = 1.0 if steps else 1.0 / max(np.linalg.norm(gradient), 1e-12)
        for _ in range(30):
            candidate = point + step * direction
            candidate_loss, candidate_gradient = loss_and_gradient(candidate)
            if candidate_loss <= loss + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break
        step_vector, change = candidate - point, candidate_gradient - gradient
        if step_vector @ change > 1e-12:
            steps, changes = (steps + [step_vector])[-memory:], (changes + [change])[-memory:]
        point, loss, gradient = candidate, candidate_loss, candidate_gradient
    return point


def _lbfgs_direction(gradient, steps, changes):
    """The two-loop recursion: approximate inverse Hessian times gradient."""
    direction = gradient.copy()
    alphas = []
    for step, change in zip(reversed(steps), reversed(changes)):
        alpha = (step @ direction) / (change @ step)
        direction -= alpha * change
        alphas.append(alpha)
    if steps:
        direction *= (steps[-1] @ changes[-1]) / (changes[-1] @ changes[-1])
    for (step, change), alpha in zip(zip(steps, changes), reversed(alphas)):
        beta = (change @ direction) / (change @ step)
        direction += (alpha - beta) * step
    return direction


def _random_projection(x, dim):
    """x (n, d) times a fixed Gaussian (d, dim) matrix scaled by 1/sqrt(dim) (Johnson–Lindenstrauss)."""
    x = np.asarray(x, np.float32)
    return x @ _projection_matrix(x.shape[1], dim)


@functools.lru_cache(maxsize=4)  # a few layers' matrices, at most 32 MB each for d = 16384
def _projection_matrix(d, dim):
    rng = np.random.default_rng(_PROJECTION_SEED)
    return rng.standard_normal((d, dim), dtype=np.float32) / np.float32(np.sqrt(dim))


# ---------------------------------------------------------------------------------------------------
# Representation similarity (CKA) and class separation
# ---------------------------------------------------------------------------------------------------


def linear_cka(x, y) -> float:
    """Linear CKA (Kornblith et al. 2019) between two layers' features on the same samples.

    Layers wider than CKA_PROJECTION_THRESHOLD are first reduced to CKA_PROJECTION_DIM by a fixed
    Gaussian random projection, which approximately preserves their Gram matrices (Johnson–Lindenstrauss).
    """
    return float(cka_matrix([x, y])[0, 1])


def cka_matrix(features: list) -> np.ndarray:
    """(L, L) symmetric linear CKA between every pair of layers, ones on the diagonal but for constant layers.

    Each layer is centred once and kept as its centred Gram matrix K = X_c X_c^T when it is wider than the
    number of samples, else as its centred features X_c; every pair then costs one product on the
    smaller side. Pairs involving a constant layer are nan, its pair with itself included.
    """
    layers = [_cka_representation(f) for f in features]
    if len({len(matrix) for _, matrix in layers}) > 1:
        shapes = [np.shape(f) for f in features]
        raise ValueError(f"cka_matrix needs the same samples for every layer. Received shapes: {shapes}")
    norms = [np.sqrt(_hsic(layer, layer)) for layer in layers]
    size = len(layers)
    similarity = np.diag([1.0 if norm > 0 else np.nan for norm in norms])  # a constant layer is like nothing
    for i in range(size):
        for j in range(i + 1, size):
            denominator = norms[i] * norms[j]
            value = _hsic(layers[i], layers[j]) / denominator if denominator > 0 else np.nan
            similarity[i, j] = similarity[j, i] = value
    return similarity


def _cka_representation(features):
    """("gram", K (n, n)) for layers wider than n samples, else ("features", X_c (n, d)); float64."""
    x = np.asarray(features).reshape(len(features), -1)
    if x.shape[1] > CKA_PROJECTION_THRESHOLD:
        x = _random_projection(x, CKA_PROJECTION_DIM)
    x = x.astype(np.float64)
    x -= x.mean(axis=0)
    if x.shape[1] > len(x):
        return "gram", x @ x.T
    return "features", x


def _hsic(first, second):
    """<K_first, K_second>_F = ||Y_c^T X_c||_F^2, the unnormalised linear HSIC, on the cheaper side."""
    (first_kind, a), (second_kind, b) = first, second
    if first_kind == second_kind == "gram":
        return float(np.vdot(a, b))
    if first_kind == second_kind == "features":
        return float(np.sum((b.T @ a) ** 2))
    gram, x = (a, b) if first_kind == "gram" else (b, a)
    return float(np.sum(x * (gram @ x)))  # tr(X^T K X)


def class_separation(coords, labels, max_points=1000, seed=0) -> float:
    """Mean silhouette (Euclidean) of the labels in `coords` (n, k); nan with fewer than 2 classes.

    Above `max_points` samples it scores the subset scikit-learn's silhouette_score(sample_size=
    max_points, random_state=seed) would pick, so the two agree exactly.
    """
    points = np.asarray(coords, np.float64).reshape(len(coords), -1)
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)
    if len(points) > max_points:
        picks = _silhouette_subset(len(points), max_points, seed)
        points, labels = points[picks], labels[picks]
    classes = _class_indices(labels)
    n_classes = classes.max(initial=-1) + 1
    if n_classes < 2 or n_classes > len(points) - 1 or not np.isfinite(points).all():
        return float("nan")
    distances = _euclidean_distances(points)  # (m, m)
    sizes = np.bincount(classes, minlength=n_classes)
    mean_distance = distances @ np.eye(n_classes)[classes] / sizes  # (m, C), distance to each class
    own = np.arange(len(points)), classes
    intra = mean_distance[own] * sizes[classes] / np.maximum(sizes[classes] - 1, 1)
    mean_distance[own] = np.inf
    nearest = mean_distance.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        silhouette = (nearest - intra) / np.maximum(intra, nearest)
    silhouette[sizes[classes] == 1] = 0.0  # scikit-learn's convention for singleton classes
    return float(np.mean(np.nan_to_num(silhouette)))


@functools.lru_cache(maxsize=4)  # every layer of every snapshot scores the same subset
def _silhouette_subset(n, max_points, seed):
    picks = np.random.RandomState(seed).permutation(n)[:max_points]
    picks.flags.writeable = False
    return picks


def _euclidean_distances(points):
    squares = np.einsum("ij,ij->i", points, points)
    distances = points @ points.T  # worked in place: one (m, m) array instead of five temporaries
    distances *= -2.0
    distances += squares[:, None]
    distances += squares[None, :]
    np.fill_diagonal(distances, 0.0)
    np.maximum(distances, 0.0, out=distances)
    return np.sqrt(distances, out=distances)


# ---------------------------------------------------------------------------------------------------
# Effective dimensionality
# ---------------------------------------------------------------------------------------------------


def effective_dimensionality(result: PCAResult) -> dict:
    """How many directions a layer uses: components to reach 90% variance and the participation ratio.

    With an exact spectrum both are exact. Otherwise n90 comes from the top-k ratios (None when they do
    not reach 90%), and the participation ratio (sum l)^2 / sum l^2 is bounded using the total variance:
    the unseen eigenvalues sum to the remaining variance R and are each at most the k-th eigenvalue
    l_k. Concentrating R in as few eigenvalues as that allows gives the LOWER bound reported as
    `participation_ratio`; spreading it evenly over the other min(n - 1, d) - k gives
    `participation_ratio_upper`.
    """
    total = result.total_variance
    if result.spectrum is not None:
        eigenvalues = np.sort(result.spectrum)[::-1]
        total = float(eigenvalues.sum())
    else:
        eigenvalues = np.sort(result.explained_variance)[::-1]
    exact = result.spectrum is not None
    if total <= 0:
        return _dimensionality(None, float("nan"), float("nan"), exact)
    reached = np.flatnonzero(np.cumsum(eigenvalues) / total >= 0.9 - 1e-12)
    n90 = int(reached[0]) + 1 if reached.size else None
    squares = float(eigenvalues @ eigenvalues)
    if exact:
        return _dimensionality(n90, total**2 / squares, total**2 / squares, exact)
    n, d = result.coords.shape[0], result.components.shape[1]
    remaining = max(total - float(eigenvalues.sum()), 0.0)
    unseen = max(min(n - 1, d) - len(eigenvalues), 1)
    lower = total**2 / (squares + remaining * float(eigenvalues[-1]))  # tail packed into copies of l_k
    upper = total**2 / (squares + remaining**2 / unseen)  # tail spread evenly (Cauchy-Schwarz)
    return _dimensionality(n90, lower, upper, exact)


def _dimensionality(n90, participation_ratio, upper, exact):
    return {
        "n90": n90,
        "participation_ratio": float(participation_ratio),
        "participation_ratio_upper": float(upper),
        "participation_ratio_exact": exact,
    }
