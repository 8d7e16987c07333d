"""Per-layer reductions written in keras.ops, so one implementation runs inside the compiled probe pass on
TensorFlow and on JAX, on the device that trains: PCA by warm-started subspace iteration, activation and gradient
statistics, unit rankings, the pooling of wide outputs and the CKA sketch. Only their small results need to
cross to the host.

`core.analysis.measures` and `core.capture.snapshot` hold the numpy reference of each reduction;
`tests/test_reductions.py` checks that both agree on known data under both backends. Shapes that these functions derive
at trace time (sample positions, pooling matrices, random starting blocks) are numpy constants computed exactly as the
numpy reference computes them.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from keras import ops

from core.analysis import measures
from core.capture.reduced import FEATURE_COMPONENTS  # noqa: F401  (components per layer the probe pass computes)

# Subspace iteration (Halko et al. 2011, alg. 4.4): l = k + OVERSAMPLES columns, POWER_ITERATIONS products with
# x_c^T x_c, each block orthonormalized by Cholesky-QR through its (l, l) Gram matrix. Warm-started from the
# previous snapshot's components, which are already close, so a few iterations keep the shares within 1 point.
OVERSAMPLES = 10
POWER_ITERATIONS = 4
# Layers whose smaller side is at most this get an exact eigendecomposition of their (d, d) covariance or (n, n)
# Gram: cheap on any device at this size, and it keeps a small model's snapshot equal to the numpy analysis's.
EXACT_MAX_DIM = 256
# Shifted Cholesky-QR (Fukaya et al. 2020): the first pass adds this share of the Gram's trace to its diagonal, so
# a rank-deficient block (dead units, a layer of lower rank than l) still factors; the span is unchanged by any
# shift, and two further passes with a tiny shift restore orthonormality.
FIRST_SHIFT = 1e-4
LATER_SHIFT = 1e-7
TINY = 1e-30
# Singular values below this share of the largest are round-off: such Gram-side directions get zero components.
RESOLVED = 1e-3
# Probe rows per block of the CKA's Gram products (`cka_matrix`): bounds its memory to L x block x n floats.
CKA_ROW_BLOCK = 256


# ---------------------------------------------------------------------------------------------------
# PCA
# ---------------------------------------------------------------------------------------------------


def pca(
    x,
    k: int,
    previous=None,
    *,
    anchor=None,
    start=None,
    seed: int = 0,
    iterations: int = POWER_ITERATIONS,
    exact_max: int = EXACT_MAX_DIM,
):
    """Top-k PCA of the rows of x (..., n, d), batched over any leading axes.

    `previous` (..., k_prev, d) are the components of the same layer one snapshot earlier, or None. They start the
    subspace iteration, and they orient the result as `measures.align_pca` does: each component takes the sign
    that makes its dot product with the previous component it overlaps most non-negative; without them, the
    largest-|value| entry of each component is positive (`measures.pca`). `anchor` (..., k_anchor, d), when
    given, orients instead of `previous` (the probe pass warm-starts from 32 components but orients by the 10 that
    are stored, as the numpy analysis does). Components are never reordered: column j is the (j+1)-th
    largest-variance direction found. `start` (d, l) replaces the fixed Gaussian block `gaussian_start` (a compiled
    caller passes it as an argument: a large constant inside the function costs seconds of compilation).

    Returns a dict of tensors: `coords` (..., n, k), `components` (..., k, d), `variance` (..., k) with ddof=1,
    `total_variance` (...) (the trace of the centred covariance, exact), `mean` (..., d), and `spectrum`
    (..., min(n, d)) every eigenvalue when the method is exact (`pca_method`), else absent.
    """
    n, d = int(x.shape[-2]), int(x.shape[-1])
    k = min(int(k), n, d)
    method = pca_method(n, d, exact_max)
    x = ops.cast(x, "float32")
    mean = ops.mean(x, axis=-2, keepdims=True)  # (..., 1, d)
    centred = x - mean
    total = ops.sum(ops.square(centred), axis=(-2, -1)) / (n - 1)
    if method == "covariance":
        result = _exact(centred, k)
    elif method == "gram":
        result = _exact_gram(centred, k)
    else:
        result = _subspace(centred, k, previous, seed, iterations, start)
    result["components"], signs = _oriented(result["components"], previous if anchor is None else anchor)
    result["coords"] = result["coords"] * signs[..., None, :]
    result["total_variance"] = total
    result["mean"] = mean[..., 0, :]
    return result


def pca_method(n: int, d: int, exact_max: int = EXACT_MAX_DIM) -> str:
    """ "covariance" or "gram" (exact, on the smaller side) when min(n, d) <= `exact_max`, else "subspace"."""
    if min(n, d) <= exact_max:
        return "covariance" if d <= n else "gram"
    return "subspace"


def _exact(centred, k):
    """The covariance route (d <= n): eigh of x_c^T x_c (d, d)."""
    n = int(centred.shape[-2])
    eigenvalues, eigenvectors = ops.eigh(_gram_of_columns(centred))  # ascending
    eigenvalues, eigenvectors = ops.flip(eigenvalues, axis=-1), ops.flip(eigenvectors, axis=-1)
    top = eigenvectors[..., :k]  # (..., d, k)
    spectrum = ops.maximum(eigenvalues, 0.0) / (n - 1)
    return {
        "coords": ops.matmul(centred, top),
        "components": ops.swapaxes(top, -1, -2),
        "variance": spectrum[..., :k],
        "spectrum": spectrum,
    }


def _exact_gram(centred, k):
    """The Gram route (n < d): eigh of x_c x_c^T (n, n); components x_c^T u / s, zero where s is round-off."""
    n = int(centred.shape[-2])
    gram = ops.matmul(centred, ops.swapaxes(centred, -1, -2))  # (..., n, n)
    eigenvalues, eigenvectors = ops.eigh(gram)
    eigenvalues = ops.maximum(ops.flip(eigenvalues, axis=-1), 0.0)
    left = ops.flip(eigenvectors, axis=-1)[..., :k]  # (..., n, k)
    singular = ops.sqrt(eigenvalues[..., :k])
    resolved = singular > RESOLVED * ops.maximum(singular[..., :1], TINY)
    scale = ops.where(resolved, 1.0 / ops.where(resolved, singular, 1.0), 0.0)
    components = ops.swapaxes(ops.matmul(ops.swapaxes(centred, -1, -2), left), -1, -2) * scale[..., None]
    spectrum = eigenvalues / (n - 1)
    return {
        "coords": ops.matmul(centred, ops.swapaxes(components, -1, -2)),
        "components": components,
        "variance": spectrum[..., :k],
        "spectrum": spectrum,
    }


def _subspace(centred, k, previous, seed, iterations, start=None):
    """Subspace iteration on x_c^T x_c from `previous` (topped up with fixed Gaussian columns), then Rayleigh-Ritz:
    the eigendecomposition of the small (l, l) matrix (x_c Q)^T (x_c Q) gives the components in span(Q), their
    exact projections and their variances."""
    n, d = int(centred.shape[-2]), int(centred.shape[-1])
    size = min(k + OVERSAMPLES, n, d)
    batch = tuple(int(s) for s in centred.shape[:-2])
    start = ops.convert_to_tensor(gaussian_start(d, size, seed) if start is None else start)  # (d, l)
    start = ops.broadcast_to(start, (*batch, d, size))
    if previous is not None:
        kept = min(int(previous.shape[-2]), size)
        warm = ops.swapaxes(ops.cast(previous[..., :kept, :], "float32"), -1, -2)  # (..., d, kept)
        start = ops.concatenate([warm, start[..., kept:]], axis=-1)
    basis = cholesky_qr(start)
    for _ in range(iterations):
        basis = cholesky_qr(ops.matmul(ops.swapaxes(centred, -1, -2), ops.matmul(centred, basis)))  # (..., d, l)
    projected = ops.matmul(centred, basis)  # (..., n, l)
    eigenvalues, rotation = ops.eigh(_gram_of_columns(projected))
    eigenvalues, rotation = ops.flip(eigenvalues, axis=-1), ops.flip(rotation, axis=-1)[..., :k]
    return {
        "coords": ops.matmul(projected, rotation),
        "components": ops.swapaxes(ops.matmul(basis, rotation), -1, -2),
        "variance": ops.maximum(eigenvalues[..., :k], 0.0) / (n - 1),
    }


def cholesky_qr(block):
    """An orthonormal basis (..., d, l) of the span of `block` (..., d, l): shifted Cholesky-QR, then Cholesky-QR2.

    Each pass factors the (l, l) Gram matrix G + s I = R^T R and solves Q = block R^-1: three small factorizations
    instead of a Householder QR of the tall block. Directions of the block that are numerically null come out
    with a tiny norm, never as NaN."""
    basis = block
    for shift in (FIRST_SHIFT, LATER_SHIFT, LATER_SHIFT):
        gram = _gram_of_columns(basis)  # (..., l, l)
        size = int(gram.shape[-1])
        trace = ops.sum(ops.diagonal(gram, axis1=-2, axis2=-1), axis=-1)
        shifted = gram + (shift * trace + TINY)[..., None, None] * ops.eye(size)
        lower = ops.cholesky(shifted)  # R^T
        # Q^T = R^-T block^T: one triangular solve on the (l, d) transposed block.
        basis = ops.swapaxes(ops.solve_triangular(lower, ops.swapaxes(basis, -1, -2), lower=True), -1, -2)
    return basis


def _gram_of_columns(matrix):
    return ops.matmul(ops.swapaxes(matrix, -1, -2), matrix)


def _oriented(components, previous):
    """(components, signs): each row's sign as `measures.pca` then `measures.align_pca` choose it."""
    largest = _largest_position(ops.abs(components))  # (..., k, 1)
    signs = _signs(ops.take_along_axis(components, largest, axis=-1)[..., 0])
    components = components * signs[..., None]
    if previous is not None:
        overlap = ops.matmul(components, ops.swapaxes(ops.cast(previous, "float32"), -1, -2))  # (..., k, k_prev)
        overlap = ops.where(ops.isfinite(overlap), overlap, 0.0)
        closest = ops.take_along_axis(overlap, _largest_position(ops.abs(overlap)), axis=-1)
        flips = ops.where(closest[..., 0] < 0, -1.0, 1.0)
        components, signs = components * flips[..., None], signs * flips
    return components, signs


def _largest_position(values):
    """(..., 1) the position of each row's largest value, the first of ties (np.argmax's), by top_k: TensorFlow's
    argmax has no batched form (`ops.vectorized_map` would loop over the layers of a group)."""
    return ops.top_k(values, 1, sorted=True)[1]


def _signs(values):
    return ops.where(values < 0, -1.0, 1.0)


def subspace_size(n: int, d: int, k: int) -> int:
    """The columns l of the subspace iteration's block for k components of an (n, d) matrix."""
    return min(min(k, n, d) + OVERSAMPLES, n, d)


@functools.lru_cache(maxsize=32)
def gaussian_start(d: int, columns: int, seed: int) -> np.ndarray:
    """The fixed Gaussian block (d, columns) the subspace iteration starts from, or tops the previous components up
    with."""
    return np.random.default_rng(seed).standard_normal((d, columns), dtype=np.float32)


def directions_along(centred, coords):
    """(k, d) unit directions that place the probe samples as `coords` (n, k), an earlier snapshot's stored
    coordinates, did (`core.capture.snapshot._components_along`): the alignment's previous components after a
    recovery."""
    directions = ops.matmul(ops.swapaxes(ops.cast(coords, "float32"), -1, -2), centred)  # (k, d)
    norms = ops.sqrt(ops.sum(ops.square(directions), axis=-1, keepdims=True))
    return directions / ops.where(norms > 0, norms, 1.0)


# ---------------------------------------------------------------------------------------------------
# Features: the pooling of wide outputs, unit matrices, the CKA sketch
# ---------------------------------------------------------------------------------------------------


def pooling_grid(shape: tuple, limit: int) -> list[int] | None:
    """The grid `snapshot.analysis_features` averages an output of `shape` (n, *positions, channels) to, or None."""
    if len(shape) < 3 or math.prod(shape[1:]) <= limit:
        return None
    *positions, channels = shape[1:]
    grid = list(positions)
    while math.prod(grid) * channels > limit and max(grid) > 1:
        grid = [max(1, cells // 2) for cells in grid]
    return grid


def analysis_features(output, limit: int, averaging: list | None = None):
    """(n, d) features and the grid (or None), as `snapshot.analysis_features`: each position axis is averaged over
    the same uneven regions, as a product with a (size, cells) averaging matrix (`averaging_matrices`, which a
    compiled caller passes in)."""
    shape = tuple(int(s) for s in output.shape)
    grid = pooling_grid(shape, limit)
    pooled = ops.cast(output, "float32")
    if grid is not None:
        matrices = averaging_matrices(shape, limit) if averaging is None else averaging
        for axis, matrix in enumerate(matrices, start=1):
            moved = ops.moveaxis(pooled, axis, -1)
            pooled = ops.moveaxis(ops.matmul(moved, ops.convert_to_tensor(matrix)), -1, axis)  # (size, cells)
    return ops.reshape(pooled, (shape[0], -1)), grid


def averaging_matrices(shape: tuple, limit: int) -> list[np.ndarray]:
    """Per position axis of an output of `shape`, the (size, cells) matrix that averages it to the pooling grid."""
    grid = pooling_grid(shape, limit)
    return [] if grid is None else [_averaging_matrix(size, cells) for size, cells in zip(shape[1:-1], grid)]


@functools.lru_cache(maxsize=64)
def _averaging_matrix(size: int, cells: int) -> np.ndarray:
    edges = np.linspace(0, size, cells + 1).round().astype(np.int64)
    matrix = np.zeros((size, cells), np.float32)
    for cell in range(cells):
        matrix[edges[cell] : edges[cell + 1], cell] = 1.0 / (edges[cell + 1] - edges[cell])
    return matrix


def unit_means(output):
    """(n, units): an output with positions averaged over them, so a unit is a channel (`snapshot._unit_matrix`)."""
    if len(output.shape) > 2:
        return ops.mean(ops.reshape(output, (int(output.shape[0]), -1, int(output.shape[-1]))), axis=1)
    return output


def cka_sketch(features, rows: np.ndarray):
    """Centred features of the probe rows `rows` (or their Gram matrix when wider), as `SnapshotBuilder._sketch`."""
    picked = ops.take(
        ops.cast(features, "float32"), ops.convert_to_tensor(rows), axis=0
    )  # (m, d); rows: array or tensor
    picked = picked - ops.mean(picked, axis=0, keepdims=True)
    if int(picked.shape[1]) > int(picked.shape[0]):
        return ops.matmul(picked, ops.transpose(picked))  # (m, m)
    return picked


def extreme_rows(values, count: int):
    """(largest, smallest): (units, count) int32 column indices of the `count` largest values of each row of
    `values` (units, n), largest first, and of the smallest, smallest first (`snapshot._extreme_rows`)."""
    count = min(count, int(values.shape[-1]))
    top = ops.top_k(values, count, sorted=True)[1]
    bottom = ops.top_k(-values, count, sorted=True)[1]
    return ops.cast(top, "int32"), ops.cast(bottom, "int32")


# ---------------------------------------------------------------------------------------------------
# Activation and gradient statistics
# ---------------------------------------------------------------------------------------------------


def activation_stats(output, activation: str | None = None, bins: int = 40, positions=None) -> dict:
    """`measures.activation_stats` in keras.ops: a dict of tensors. Histogram edges are `hist_low`, `hist_high`
    (the host spans them with `np.linspace`, in float64 as the reference does). `positions`: the values the
    histogram and percentiles sample (`sample_positions`), which a compiled caller passes in."""
    shape = tuple(int(s) for s in output.shape)
    values = ops.reshape(ops.cast(output, "float32"), (-1, shape[-1]) if len(shape) > 2 else (shape[0], -1))
    rows = int(values.shape[0])
    name = measures._activation_name(activation)
    bounds = measures.ACTIVATION_BOUNDS.get(name)
    finite = ops.isfinite(values)
    unit_mean = ops.mean(values, axis=0)  # (units,), NaN where a unit holds NaN or Inf, as in the reference
    square_deviation = ops.sum(ops.square(values - unit_mean), axis=0)
    minimum, maximum = ops.min(values, axis=0), ops.max(values, axis=0)
    overall = ops.mean(unit_mean)
    spread = ops.sum(square_deviation) + rows * ops.sum(ops.square(unit_mean - overall))
    units = int(values.shape[1])
    if name in measures.ZERO_FLOOR_ACTIVATIONS:
        dead = ops.logical_and(maximum <= 0, minimum >= 0)
    else:
        dead = ops.zeros((units,), "bool")
    if bounds:
        low, high = bounds
        margin = measures.SATURATION_MARGIN * (high - low)
        near = ops.logical_or(values <= low + margin, values >= high - margin)
        saturated = ops.sum(ops.cast(near, "float32"), axis=0) >= measures.SATURATION_MIN_FRACTION * rows
    else:
        saturated = ops.zeros((units,), "bool")
    flat = ops.reshape(values, (-1,))
    size = rows * units
    if size > measures.HIST_MAX_VALUES:
        sample = ops.take(flat, ops.convert_to_tensor(sample_positions(size) if positions is None else positions))
    else:
        sample = flat
    sample_finite = ops.isfinite(sample)
    count = ops.sum(ops.cast(sample_finite, "int32"))
    ordered = ops.sort(ops.where(sample_finite, sample, np.inf))  # the finite values first, in order
    everything_finite = ops.all(finite)
    low = ops.where(everything_finite, ops.min(minimum), ordered[0])
    high = ops.where(everything_finite, ops.max(maximum), ops.take(ordered, ops.maximum(count - 1, 0)))
    nothing = count == 0
    low, high = ops.where(nothing, 0.0, low), ops.where(nothing, 1.0, high)
    constant = low == high
    low, high = ops.where(constant, low - 0.5, low), ops.where(constant, high + 0.5, high)
    position = (ops.clip(sample, low, high) - low) / (high - low) * bins
    index = ops.clip(ops.cast(ops.floor(ops.where(sample_finite, position, 0.0)), "int32"), 0, bins - 1)
    counts = ops.segment_sum(ops.cast(sample_finite, "int32"), index, num_segments=bins)
    return {
        "mean": overall,
        "std": ops.sqrt(spread / max(size, 1)),
        "percentiles": _percentiles(ordered, count),
        "hist_counts": counts,
        "hist_low": low,
        "hist_high": high,
        "dead_units": dead,
        "saturated_units": saturated,
        "unit_mean": unit_mean,
        "nonfinite": size - ops.sum(ops.cast(finite, "int32")),
    }


def _percentiles(ordered, count):
    """np.percentile's linear interpolation over the first `count` values of `ordered`; NaN when count is 0."""
    last = ops.cast(ops.maximum(count - 1, 0), "float32")
    results = []
    for q in measures.ACTIVATION_PERCENTILES:
        position = last * (q / 100.0)
        below = ops.floor(position)
        above = ops.minimum(below + 1, last)
        fraction = position - below
        low, high = ops.take(ordered, ops.cast(below, "int32")), ops.take(ordered, ops.cast(above, "int32"))
        results.append(low + (high - low) * fraction)
    stacked = ops.stack(results)
    return ops.where(count > 0, stacked, np.nan)


@functools.lru_cache(maxsize=16)
def sample_positions(size: int) -> np.ndarray:
    """The positions of the values `measures.activation_stats` samples from `size` values."""
    return np.asarray(measures._sample_positions(size), np.int32 if size < 2**31 else np.int64)


def tensor_stats(g) -> dict:
    """`measures.tensor_stats` in keras.ops (float32 sums): norm, mean |g|, std, max |g|, zero fraction, the
    log10|g| histogram over `measures.LOG_HIST_EDGES` and the count of NaN/Inf entries, as tensors."""
    flat = ops.reshape(ops.cast(g, "float32"), (-1,))
    size = int(flat.shape[0])
    finite = ops.isfinite(flat)
    values = ops.where(finite, flat, 0.0)
    magnitude = ops.abs(values)
    count = ops.sum(ops.cast(finite, "int32"))
    denominator = ops.cast(ops.maximum(count, 1), "float32")
    mean = ops.sum(values) / denominator
    square = ops.sum(ops.square(values))
    edges = measures.LOG_HIST_EDGES
    bins = len(edges) - 1
    logs = ops.log10(ops.maximum(magnitude, measures._LOG_HIST_FLOOR))
    index = ops.clip(ops.cast(ops.floor((logs - edges[0]) / (edges[-1] - edges[0]) * bins), "int32"), 0, bins - 1)
    counts = ops.segment_sum(ops.cast(finite, "int32"), index, num_segments=bins)
    return {
        "norm": ops.sqrt(square),
        "mean_abs": ops.sum(magnitude) / denominator,
        "std": ops.sqrt(ops.maximum(square / denominator - ops.square(mean), 0.0)),
        "max_abs": ops.max(magnitude) if size else ops.zeros(()),
        "zero_fraction": ops.sum(ops.cast(ops.logical_and(finite, flat == 0), "float32")) / max(size, 1),
        "log_hist_counts": counts,
        "nonfinite": size - count,
    }


# ---------------------------------------------------------------------------------------------------
# CKA between layers
# ---------------------------------------------------------------------------------------------------


def cka_matrix(features: list, projections: list | None = None, block: int = CKA_ROW_BLOCK):
    """(L, L) linear CKA between the layers' features (each (n, d_i)), as `measures.cka_matrix` computes it: a layer
    wider than `measures.CKA_PROJECTION_THRESHOLD` is first projected by the same fixed Gaussian matrix and centred;
    HSIC(X, Y) = <X X^T, Y Y^T>. Pairs with a constant layer are NaN, itself included; the other diagonal entries are
    ones. `projections`: per layer its matrix (`cka_projection`) or None, which a compiled caller passes in.

    Every pair at once, in a number of operations that does not grow with the layer count: layers of the same
    width are stacked, and for each block of `block` probe rows their Gram rows (layers, block, n) are flattened
    and multiplied with each other, (L, block * n) x (block * n, L), summed over the blocks. The memory beyond
    the features is one block's Gram rows of every layer."""
    projections = [cka_projection(int(f.shape[1])) for f in features] if projections is None else projections
    centred = [_cka_centred(f, p) for f, p in zip(features, projections)]
    widths: dict[int, list[int]] = {}
    for index, x in enumerate(centred):
        widths.setdefault(int(x.shape[1]), []).append(index)
    stacks = [(members, ops.stack([centred[i] for i in members])) for members in widths.values()]  # (g, n, w)
    order = [i for members, _ in stacks for i in members]
    n = int(centred[0].shape[0])
    hsic = None
    for start in range(0, n, block):
        rows = []
        for members, stacked in stacks:
            gram_rows = ops.matmul(stacked[:, start : start + block, :], ops.swapaxes(stacked, -1, -2))  # (g, b, n)
            rows.append(ops.reshape(gram_rows, (len(members), -1)))
        flat = ops.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]
        product = ops.matmul(flat, ops.transpose(flat))
        hsic = product if hsic is None else hsic + product
    inverse = np.argsort(np.asarray(order))  # back from the stacking order to the layers' order
    hsic = ops.take(ops.take(hsic, inverse, axis=0), inverse, axis=1)
    norms = ops.sqrt(ops.maximum(ops.diagonal(hsic), 0.0))
    denominator = norms[:, None] * norms[None, :]
    cka = ops.where(denominator > 0, hsic / ops.where(denominator > 0, denominator, 1.0), np.nan)
    return ops.where(ops.eye(len(features), dtype="bool"), ops.where(denominator > 0, 1.0, np.nan), cka)


def cka_projection(d: int) -> np.ndarray | None:
    """The fixed Gaussian matrix `measures.cka_matrix` projects a layer of width d with, or None (narrow enough)."""
    if d > measures.CKA_PROJECTION_THRESHOLD:
        return measures._projection_matrix(d, measures.CKA_PROJECTION_DIM)
    return None


def _cka_centred(features, projection):
    x = ops.cast(features, "float32")
    if projection is not None:
        x = ops.matmul(x, ops.convert_to_tensor(projection))
    return x - ops.mean(x, axis=0, keepdims=True)
