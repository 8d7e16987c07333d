"""Built-in and user-supplied classification data sets as plain numpy arrays, with stratified splits and subsets.

This module uses numpy and scikit-learn only: the dashboard imports it to list choices and draw the input plane,
so it must never pull in TensorFlow.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

PLANE_DATASETS = ("moons", "circles", "spiral", "xor", "blobs")
DATASETS = PLANE_DATASETS + ("digits", "iris", "wine", "breast_cancer")
__all__ = ["DATASETS", "PLANE_DATASETS", "Dataset", "load_dataset", "plane_bounds", "split", "stratified_subset"]

KINDS = ("plane", "image", "tabular")
LABEL_COLUMN_NAMES = ("label", "target", "class", "y")  # tried in this order, case-insensitively

DEFAULT_PLANE_SAMPLES = 1000
BLOB_SPREAD = 0.15  # cluster standard deviation before `noise` is added, so blobs stay blobs at noise=0
XOR_AXIS_GAP = 0.06  # keeps points off the axes, as Playground does, so the quadrant label is unambiguous


@dataclass(frozen=True)
class Dataset:
    """A labelled classification data set.

    `x` is float32 with shape (n, features), or (n, *image_shape) for image files; digits stay flat (n, 64)
    with `image_shape=(8, 8)` so an MLP can take them as they are. `y` is int64 with labels 0..C-1 that index
    `class_names`.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    kind: str  # "plane" (2 features), "image" or "tabular"
    image_shape: tuple[int, ...] | None = None
    source: str = "builtin"  # "builtin" or the path the data was read from

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(
                f"Dataset '{self.name}' has {len(self.x)} samples in x but {len(self.y)} labels in y: "
                "they must have the same length."
            )
        if len(self.class_names) < 2:
            raise ValueError(
                f"Dataset '{self.name}' has {len(self.class_names)} class(es) {list(self.class_names)}: "
                "classification needs at least 2 distinct labels."
            )
        if self.kind not in KINDS:
            raise ValueError(f"Dataset kind must be one of {', '.join(KINDS)}. Received: kind={self.kind!r}")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def check_dataset(name_or_path: str) -> str:
    """The data set's name as `load_dataset` reads it (a built-in name in lower case, or a path), or a ValueError
    that says what to pass instead. Cheap: it reads no data, so a command checks its arguments before it loads any."""
    text = str(name_or_path)
    name = text.strip().lower()
    if name in PLANE_DATASETS or name in DATASETS:
        return name
    if name.endswith((".npz", ".csv")):
        if not Path(text.strip()).expanduser().is_file():
            raise ValueError(f"No such file: '{text}'. Check the path (relative paths start at {Path.cwd()}).")
        return name
    raise ValueError(
        f"Unknown dataset {text!r}. Choose one of: {', '.join(DATASETS)} "
        "or pass a path to a .npz (arrays x, y) or .csv file."
    )


def load_dataset(name_or_path, *, noise=0.1, n_samples=None, seed=0, label_column=None) -> Dataset:
    """Returns a built-in data set by name, or one read from a `.npz` (arrays `x`, `y`) or `.csv` file.

    Args:
        name_or_path: one of `DATASETS`, or a path to a `.npz` or `.csv` file.
        noise: standard deviation of Gaussian noise added to the 2-D sets, in units of their [-1, 1] plane.
            Ignored by the other sets.
        n_samples: sample count of a 2-D set (default 1000); for any other set, a stratified subset of at most
            this many samples (default: all).
        seed: seeds generation of the 2-D sets and the choice of the subset.
        label_column: name of the label column of a `.csv` file (default: `label`, `target`, `class` or `y`,
            else the last column).
    """
    if noise < 0:
        raise ValueError(f"noise must be >= 0 (it is a standard deviation). Received: noise={noise!r}")
    if n_samples is not None and n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer or None. Received: n_samples={n_samples!r}")

    text = str(name_or_path)
    name = check_dataset(text)
    if name in PLANE_DATASETS:
        return _plane_dataset(name, noise, n_samples or DEFAULT_PLANE_SAMPLES, seed)
    if name in DATASETS:
        dataset = _sklearn_dataset(name)
    else:
        path = Path(text.strip()).expanduser()
        dataset = _npz_dataset(path) if name.endswith(".npz") else _csv_dataset(path, label_column)
    if n_samples is not None and n_samples < len(dataset.y):
        _check_enough_samples(dataset.name, n_samples, dataset.n_classes)
        keep = stratified_subset(dataset.y, n_samples, seed=seed)
        dataset = replace(dataset, x=dataset.x[keep], y=dataset.y[keep])
    return dataset


def plane_bounds(dataset: Dataset) -> tuple[float, float, float, float]:
    """Returns (xmin, xmax, ymin, ymax) of a 2-feature data set, each axis padded by 10% of its range."""
    if dataset.x.ndim != 2 or dataset.x.shape[1] != 2:
        raise ValueError(
            f"plane_bounds needs a data set with exactly 2 features, but '{dataset.name}' has inputs of shape "
            f"{dataset.input_shape}. Use one of: {', '.join(PLANE_DATASETS)}."
        )
    low, high = dataset.x.min(axis=0), dataset.x.max(axis=0)
    pad = 0.1 * np.maximum(high - low, 1e-6)  # a constant feature still gets a visible band
    return float(low[0] - pad[0]), float(high[0] + pad[0]), float(low[1] - pad[1]), float(high[1] + pad[1])


def split(dataset: Dataset, validation_fraction=0.2, seed=0):
    """Returns (x_train, y_train, x_val, y_val), stratified by class and fixed by `seed`.

    Every class with at least 2 samples lands in both parts. Samples keep their order within each part.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(
            "validation_fraction must be strictly between 0 and 1. "
            f"Received: validation_fraction={validation_fraction!r}"
        )
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(dataset.y), dtype=bool)
    for label in np.unique(dataset.y):
        members = rng.permutation(np.flatnonzero(dataset.y == label))
        n_val = int(round(validation_fraction * len(members)))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        is_val[members[:n_val]] = True
    return dataset.x[~is_val], dataset.y[~is_val], dataset.x[is_val], dataset.y[is_val]


def stratified_subset(y, size, seed=0) -> np.ndarray:
    """Returns the sorted indices of at most `size` samples of `y`, keeping each class's share.

    Class quotas are rounded by largest remainder, so they add up to exactly `size`.
    """
    y = np.asarray(y)
    if size < 1:
        raise ValueError(f"size must be a positive integer. Received: size={size!r}")
    if size >= len(y):
        return np.arange(len(y))
    labels, counts = np.unique(y, return_counts=True)
    exact = size * counts / len(y)
    quotas = np.floor(exact).astype(int)
    by_remainder = np.argsort(-(exact - quotas), kind="stable")
    quotas[by_remainder[: size - quotas.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(y == label), q, replace=False) for label, q in zip(labels, quotas)]
    return np.sort(np.concatenate(chosen))


# --- 2-D sets, generated like TensorFlow Playground's but scaled to the [-1, 1] plane ------------------------


def _plane_dataset(name, noise, n_samples, seed) -> Dataset:
    generate, class_names = _PLANE_GENERATORS[name]
    _check_enough_samples(name, n_samples, len(class_names))
    rng = np.random.default_rng(seed)
    sizes = _class_sizes(n_samples, len(class_names))
    points = [generate(rng, label, size) for label, size in enumerate(sizes)]
    x = np.concatenate(points) + rng.normal(0.0, noise, size=(n_samples, 2))  # (n, 2)
    y = np.repeat(np.arange(len(sizes)), sizes)
    order = rng.permutation(n_samples)
    return Dataset(name, x[order].astype(np.float32), y[order].astype(np.int64), class_names, ("x1", "x2"), "plane")


def _check_enough_samples(name, n_samples, n_classes):
    if n_samples < 2 * n_classes:  # fewer and a stratified split cannot put every class on both sides
        raise ValueError(
            f"'{name}' needs at least {2 * n_classes} samples (2 per class). Received: n_samples={n_samples}"
        )


def _class_sizes(n_samples, n_classes) -> list[int]:
    base, extra = divmod(n_samples, n_classes)
    return [base + (label < extra) for label in range(n_classes)]


def _moon_points(rng, label, size):
    angle = rng.uniform(0.0, np.pi, size)
    if label == 0:
        x, y = np.cos(angle), np.sin(angle)
    else:
        x, y = 1.0 - np.cos(angle), 0.5 - np.sin(angle)
    return np.column_stack([(x - 0.5) / 1.5, (y - 0.25) / 1.5])  # sklearn's moons span [-1, 2] x [-0.5, 1]


def _circle_points(rng, label, size):
    radius = rng.uniform(0.7, 1.0, size) if label == 0 else rng.uniform(0.0, 0.5, size)  # ring, then disc
    angle = rng.uniform(0.0, 2 * np.pi, size)
    return np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])


def _spiral_points(rng, label, size):
    step = np.arange(size) / size
    angle = 1.75 * 2 * np.pi * step + np.pi * label  # the second arm is the first turned by half a turn
    return np.column_stack([step * np.sin(angle), step * np.cos(angle)])


def _xor_points(rng, label, size):
    magnitude = rng.uniform(XOR_AXIS_GAP, 1.0, size=(size, 2))
    sign_x = rng.choice([-1.0, 1.0], size)
    sign_y = sign_x if label == 0 else -sign_x
    return magnitude * np.column_stack([sign_x, sign_y])


_BLOB_CENTERS = np.array([[-0.5, 0.5], [0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])


def _blob_points(rng, label, size):
    return _BLOB_CENTERS[label] + rng.normal(0.0, BLOB_SPREAD, size=(size, 2))


_PLANE_GENERATORS = {
    "moons": (_moon_points, ("upper moon", "lower moon")),
    "circles": (_circle_points, ("outer ring", "inner disc")),
    "spiral": (_spiral_points, ("arm A", "arm B")),
    "xor": (_xor_points, ("same sign", "opposite sign")),
    "blobs": (_blob_points, ("blob 0", "blob 1", "blob 2", "blob 3")),
}


# --- scikit-learn's bundled sets (shipped with the package, no download) -------------------------------------


def _sklearn_dataset(name) -> Dataset:
    from sklearn import datasets as sk

    loaders = {
        "digits": sk.load_digits,
        "iris": sk.load_iris,
        "wine": sk.load_wine,
        "breast_cancer": sk.load_breast_cancer,
    }
    bunch = loaders[name]()
    y = bunch.target.astype(np.int64)
    features = tuple(str(f) for f in bunch.feature_names)
    if name == "digits":
        x = (bunch.data / 16.0).astype(np.float32)  # pixel intensities run 0..16
        return Dataset(name, x, y, tuple(str(d) for d in range(10)), features, "image", (8, 8))
    return Dataset(name, _standardized(bunch.data), y, tuple(str(c) for c in bunch.target_names), features, "tabular")


def _standardized(x) -> np.ndarray:
    std = x.std(axis=0)
    return ((x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


# --- user files ---------------------------------------------------------------------------------------------


def _npz_dataset(path: Path) -> Dataset:
    with np.load(path, allow_pickle=False) as archive:
        missing = [key for key in ("x", "y") if key not in archive.files]
        if missing:
            raise ValueError(
                f"'{path}' lacks array(s) {', '.join(missing)}: a .npz data set needs arrays named x and y "
                f"(np.savez(path, x=..., y=...)). Found: {', '.join(archive.files) or 'no arrays'}."
            )
        try:
            x, raw_y = archive["x"], archive["y"]
        except ValueError as error:  # object arrays need pickle, which we refuse for safety
            raise ValueError(
                f"Could not read '{path}': {error}. Save labels as numbers or fixed-width strings "
                "(np.asarray(labels, dtype=str)), not Python objects."
            ) from error
    if x.ndim not in (2, 3, 4):
        raise ValueError(
            f"x in '{path}' must have shape (n, features) or (n, height, width[, channels]). "
            f"Received: x.shape={x.shape}"
        )
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"x in '{path}' must be numeric. Received: x.dtype={x.dtype}")
    if raw_y.ndim == 2 and raw_y.shape[1] == 1:
        raw_y = raw_y[:, 0]
    if raw_y.ndim != 1:
        raise ValueError(f"y in '{path}' must be one label per sample, shape (n,). Received: y.shape={raw_y.shape}")
    if len(x) != len(raw_y):
        raise ValueError(
            f"'{path}' has {len(x)} samples in x but {len(raw_y)} labels in y: they must have the same length."
        )
    y, class_names = _encoded_labels(raw_y, path)
    scaled = x / 255.0 if x.dtype == np.uint8 else x  # 8-bit images arrive as 0..255
    if x.ndim == 2:
        features = tuple(f"x{i + 1}" for i in range(x.shape[1]))
        return Dataset(path.stem, scaled.astype(np.float32), y, class_names, features, _flat_kind(x), None, str(path))
    image_shape = tuple(int(d) for d in x.shape[1:])
    features = tuple("pixel_" + "_".join(map(str, index)) for index in np.ndindex(*image_shape))
    return Dataset(path.stem, scaled.astype(np.float32), y, class_names, features, "image", image_shape, str(path))


def _csv_dataset(path: Path, label_column) -> Dataset:
    with open(path, newline="", encoding="utf-8-sig") as file:
        rows = [row for row in csv.reader(file) if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise ValueError(f"'{path}' needs a header row and at least one data row; it has {len(rows)} row(s).")
    header = [name.strip() for name in rows[0]]
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ValueError(f"Row {number} of '{path}' has {len(row)} fields but the header has {len(header)}.")
    label_index = _label_column_index(header, label_column, path)
    columns = list(zip(*rows[1:]))
    feature_indices = [i for i in range(len(header)) if i != label_index]
    if not feature_indices:
        raise ValueError(f"'{path}' has only a label column; add at least one numeric feature column.")
    x = np.column_stack([_numeric_column(columns[i], header[i], path) for i in feature_indices])
    y, class_names = _encoded_labels(np.array([cell.strip() for cell in columns[label_index]]), path)
    features = tuple(header[i] for i in feature_indices)
    return Dataset(path.stem, x.astype(np.float32), y, class_names, features, _flat_kind(x), None, str(path))


def _label_column_index(header, label_column, path) -> int:
    if label_column is not None:
        if label_column not in header:
            raise ValueError(
                f"label_column {label_column!r} is not a column of '{path}'. Columns: {', '.join(header)}."
            )
        return header.index(label_column)
    lowered = [name.lower() for name in header]
    for candidate in LABEL_COLUMN_NAMES:
        if candidate in lowered:
            return lowered.index(candidate)
    return len(header) - 1


def _numeric_column(cells, name, path) -> np.ndarray:
    try:
        return np.array([float(cell) for cell in cells], dtype=np.float64)
    except ValueError:
        row, bad = next((row, cell) for row, cell in enumerate(cells, start=2) if not _is_number(cell))
        raise ValueError(
            f"Column {name!r} of '{path}' is not numeric (row {row}: {bad!r}). Only the label column may hold "
            "text: encode or drop that column, or pass label_column= if it is the label."
        ) from None


def _is_number(text) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _encoded_labels(raw, path) -> tuple[np.ndarray, tuple[str, ...]]:
    """Returns labels mapped to 0..C-1 and the class names, in sorted order of the original values."""
    values = np.asarray(raw).ravel()
    if values.dtype.kind in "US" and all(_is_number(v) for v in values):
        values = values.astype(np.float64)  # "10" sorts after "9" once it is a number
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise ValueError(f"Labels in '{path}' must be class labels (integers or strings), not fractional numbers.")
        values = values.astype(np.int64)
    classes, y = np.unique(values, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"'{path}' has {len(classes)} distinct label(s) {[str(c) for c in classes]}: "
            "classification needs at least 2 classes."
        )
    return y.astype(np.int64), tuple(str(c) for c in classes)


def _flat_kind(x) -> str:
    return "plane" if x.shape[1] == 2 else "tabular"
