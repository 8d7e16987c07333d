"""Tests for core.training.datasets: built-in sets, user files, splits, subsets, errors, and staying free of
TensorFlow."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.training.datasets import (
    DATASETS,
    PLANE_DATASETS,
    Dataset,
    load_dataset,
    plane_bounds,
    split,
    stratified_subset,
)

REPO = Path(__file__).resolve().parents[1]

EXPECTED = {  # name: (input shape, kind, classes)
    "moons": ((2,), "plane", 2),
    "circles": ((2,), "plane", 2),
    "spiral": ((2,), "plane", 2),
    "xor": ((2,), "plane", 2),
    "blobs": ((2,), "plane", 4),
    "digits": ((64,), "image", 10),
    "iris": ((4,), "tabular", 3),
    "wine": ((13,), "tabular", 3),
    "breast_cancer": ((30,), "tabular", 2),
}


def test_names_in_documented_order():
    assert DATASETS == tuple(EXPECTED)
    assert PLANE_DATASETS == DATASETS[:5]


@pytest.mark.parametrize("name", DATASETS)
def test_builtin_shapes_kinds_and_classes(name):
    shape, kind, n_classes = EXPECTED[name]
    dataset = load_dataset(name)
    assert dataset.x.shape[1:] == shape and dataset.input_shape == shape
    assert dataset.x.dtype == np.float32 and dataset.y.dtype == np.int64
    assert dataset.kind == kind and dataset.source == "builtin"
    assert dataset.n_classes == n_classes
    assert set(np.unique(dataset.y)) == set(range(n_classes))
    assert len(dataset.feature_names) == shape[0]
    assert np.all(np.isfinite(dataset.x))


@pytest.mark.parametrize("name", PLANE_DATASETS)
def test_plane_sets_are_balanced_and_near_unit_square(name):
    dataset = load_dataset(name, n_samples=1001, noise=0.0)
    counts = np.bincount(dataset.y)
    assert len(dataset.y) == 1001 and counts.max() - counts.min() <= 1
    assert np.abs(dataset.x).max() <= 1.6  # blobs' gaussian tails may poke out of [-1, 1]
    xmin, xmax, ymin, ymax = plane_bounds(dataset)
    assert xmin < dataset.x[:, 0].min() and dataset.x[:, 0].max() < xmax
    assert ymin < dataset.x[:, 1].min() and dataset.x[:, 1].max() < ymax


def test_plane_bounds_pad_by_ten_percent():
    x = np.array([[0, 0], [10, 20]], np.float32)
    dataset = Dataset("square", x, np.array([0, 1]), ("a", "b"), ("u", "v"), "plane")
    assert plane_bounds(dataset) == pytest.approx((-1.0, 11.0, -2.0, 22.0))


def test_plane_bounds_rejects_non_plane_data():
    with pytest.raises(ValueError, match="exactly 2 features.*moons"):
        plane_bounds(load_dataset("iris"))


def test_xor_labels_follow_quadrant_signs():
    dataset = load_dataset("xor", noise=0.0)
    same_sign = (dataset.x[:, 0] * dataset.x[:, 1]) > 0
    assert np.array_equal(dataset.y, np.where(same_sign, 0, 1))


def test_digits_are_scaled_images():
    dataset = load_dataset("digits")
    assert dataset.image_shape == (8, 8)
    assert dataset.class_names == tuple(str(d) for d in range(10))
    assert dataset.x.min() == 0.0 and dataset.x.max() == 1.0


@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer"])
def test_tabular_sets_are_standardized_with_sklearn_names(name):
    dataset = load_dataset(name)
    assert np.allclose(dataset.x.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(dataset.x.std(axis=0), 1, atol=1e-4)
    assert dataset.image_shape is None
    if name == "iris":
        assert dataset.class_names == ("setosa", "versicolor", "virginica")
        assert dataset.feature_names[0] == "sepal length (cm)"


@pytest.mark.parametrize("name", PLANE_DATASETS)
def test_same_seed_same_data_other_seed_other_data(name):
    first, again, other = load_dataset(name, seed=1), load_dataset(name, seed=1), load_dataset(name, seed=2)
    assert np.array_equal(first.x, again.x) and np.array_equal(first.y, again.y)
    assert not np.array_equal(first.x, other.x)


def test_noise_changes_the_data():
    quiet, noisy = load_dataset("moons", noise=0.0), load_dataset("moons", noise=0.3)
    assert not np.allclose(quiet.x, noisy.x)
    assert np.array_equal(quiet.y, noisy.y)  # the same seed draws the same labels and underlying points


def test_n_samples_subsets_real_sets_by_class():
    dataset = load_dataset("digits", n_samples=100, seed=3)
    assert len(dataset.y) == 100
    assert np.bincount(dataset.y, minlength=10).min() >= 9


def test_npz_round_trip_with_string_labels(tmp_path):
    path = tmp_path / "points.npz"
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    np.savez(path, x=x, y=np.array(["dog", "cat", "dog", "cat", "bird", "bird"]))
    dataset = load_dataset(path)
    assert dataset.class_names == ("bird", "cat", "dog")
    assert dataset.y.tolist() == [2, 1, 2, 1, 0, 0]
    assert dataset.x.dtype == np.float32 and np.array_equal(dataset.x, x)
    assert dataset.kind == "plane" and dataset.name == "points" and dataset.source == str(path)


def test_npz_images_keep_their_shape(tmp_path):
    path = tmp_path / "images.npz"
    x = np.full((4, 5, 5, 3), 255, dtype=np.uint8)
    np.savez(path, x=x, y=np.array([3, 7, 3, 7]))
    dataset = load_dataset(str(path))
    assert dataset.kind == "image" and dataset.image_shape == (5, 5, 3)
    assert dataset.x.shape == (4, 5, 5, 3) and dataset.x.max() == 1.0  # uint8 scaled to [0, 1]
    assert dataset.class_names == ("3", "7") and dataset.y.tolist() == [0, 1, 0, 1]
    assert len(dataset.feature_names) == 75


def test_csv_round_trip_with_label_column(tmp_path):
    path = tmp_path / "flowers.csv"
    path.write_text("Label,width,height,depth\nrose,1,2,3\ntulip,4,5,6\nrose,7,8,9\n")
    dataset = load_dataset(path)
    assert dataset.feature_names == ("width", "height", "depth")
    assert dataset.class_names == ("rose", "tulip") and dataset.y.tolist() == [0, 1, 0]
    assert dataset.x.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert dataset.kind == "tabular"


def test_csv_label_defaults_to_last_column_and_sorts_numbers(tmp_path):
    path = tmp_path / "numbers.csv"
    path.write_text("a,b,outcome\n0.5,1,10\n1.5,2,9\n2.5,3,10\n")
    dataset = load_dataset(path)
    assert dataset.feature_names == ("a", "b") and dataset.kind == "plane"
    assert dataset.class_names == ("9", "10") and dataset.y.tolist() == [1, 0, 1]


def test_csv_explicit_label_column(tmp_path):
    path = tmp_path / "explicit.csv"
    path.write_text("kind,f1,f2,y\nA,1,2,0\nB,3,4,1\n")
    dataset = load_dataset(path, label_column="kind")
    assert dataset.feature_names == ("f1", "f2", "y") and dataset.class_names == ("A", "B")


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError) as error:
        load_dataset("foo")
    assert str(error.value) == (
        "Unknown dataset 'foo'. Choose one of: moons, circles, spiral, xor, blobs, digits, iris, wine, "
        "breast_cancer or pass a path to a .npz (arrays x, y) or .csv file."
    )


def _write_npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "make_source, kwargs, message",
    [
        (lambda tmp: "moons", {"noise": -0.1}, r"noise must be >= 0.*Received: noise=-0.1"),
        (lambda tmp: "moons", {"n_samples": 3}, r"at least 4 samples.*Received: n_samples=3"),
        (lambda tmp: "moons", {"n_samples": 0}, r"Received: n_samples=0"),
        (lambda tmp: str(tmp / "absent.npz"), {}, r"No such file: '.*absent.npz'"),
        (lambda tmp: _write_npz(tmp, x=np.zeros((3, 2))), {}, r"lacks array\(s\) y.*Found: x"),
        (lambda tmp: _write_npz(tmp, x=np.zeros((3, 2)), y=np.array([0, 1])), {}, r"3 samples in x but 2 labels"),
        (lambda tmp: _write_npz(tmp, x=np.zeros((3, 2)), y=np.zeros(3)), {}, r"at least 2 classes"),
        (lambda tmp: _write_npz(tmp, x=np.zeros(3), y=np.array([0, 1, 0])), {}, r"Received: x.shape=\(3,\)"),
        (lambda tmp: _write_npz(tmp, x=np.zeros((2, 2)), y=np.array([0.5, 1.0])), {}, r"not fractional"),
    ],
)
def test_documented_errors(tmp_path, make_source, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(make_source(tmp_path), **kwargs)


def test_csv_errors_name_the_problem(tmp_path):
    text_feature = tmp_path / "text.csv"
    text_feature.write_text("color,size,label\n1,2,a\nred,3,b\n")
    with pytest.raises(ValueError, match=r"Column 'color' .* not numeric \(row 3: 'red'\)"):
        load_dataset(text_feature)
    with pytest.raises(ValueError, match=r"label_column 'kind' is not a column.*color, size, label"):
        load_dataset(text_feature, label_column="kind")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,label\n1,2,x\n3,y\n")
    with pytest.raises(ValueError, match=r"Row 3 .* 2 fields but the header has 3"):
        load_dataset(ragged)
    one_class = tmp_path / "one.csv"
    one_class.write_text("a,label\n1,x\n2,x\n")
    with pytest.raises(ValueError, match=r"1 distinct label.*at least 2 classes"):
        load_dataset(one_class)
    header_only = tmp_path / "empty.csv"
    header_only.write_text("a,label\n")
    with pytest.raises(ValueError, match="header row and at least one data row"):
        load_dataset(header_only)


def test_split_is_stratified_and_deterministic():
    dataset = load_dataset("breast_cancer")
    x_train, y_train, x_val, y_val = split(dataset, validation_fraction=0.25, seed=5)
    assert len(y_train) + len(y_val) == len(dataset.y)
    assert len(y_val) == pytest.approx(0.25 * len(dataset.y), abs=2)
    assert np.bincount(y_val) / len(y_val) == pytest.approx(np.bincount(dataset.y) / len(dataset.y), abs=0.01)
    again = split(dataset, validation_fraction=0.25, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip((x_train, y_train, x_val, y_val), again))
    assert not np.array_equal(x_val, split(dataset, validation_fraction=0.25, seed=6)[2])


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match=r"Received: validation_fraction=1.0"):
        split(load_dataset("iris"), validation_fraction=1.0)


def test_stratified_subset_keeps_proportions():
    y = np.repeat([0, 1, 2], [600, 300, 100])
    indices = stratified_subset(y, 200, seed=1)
    assert len(indices) == 200 and np.all(np.diff(indices) > 0)
    assert np.bincount(y[indices]).tolist() == [120, 60, 20]
    assert np.array_equal(indices, stratified_subset(y, 200, seed=1))
    assert stratified_subset(y, 5000).tolist() == list(range(1000))


def test_stratified_subset_quotas_add_up_when_shares_are_fractional():
    y = np.repeat([0, 1, 2], [5, 3, 2])
    assert len(stratified_subset(y, 7)) == 7
    with pytest.raises(ValueError, match="Received: size=0"):
        stratified_subset(y, 0)


def test_importing_datasets_does_not_import_tensorflow():
    code = (
        "import core.training.datasets, sys; "
        "core.training.datasets.load_dataset('digits'); core.training.datasets.load_dataset('moons'); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
