"""Layer metrics: CKA against its definition (beyond test_analysis.py), CKA of a layer with its own last snapshot from
the stored sketches, and linear-probe accuracy rising with depth on a really trained spiral network."""

import json

import numpy as np
import pytest
from conftest import run_python

from core.analysis import measures, metrics
from core.capture.snapshot import CKA_SKETCH_POINTS, SnapshotBuilder
from core.store import RunStore

# test_analysis.py already checks linear_cka against the HSIC formula (feature, Gram and mixed forms), symmetry
# and [0, 1] on those pairs, CKA(X, X) = 1 and invariance to rotation + isotropic scaling + translation of one
# argument in the feature form. Below: each invariance on its own, on both arguments, in the Gram form too (the
# path wide layers take), and a transform CKA must NOT be invariant to, so the invariance checks can fail.

SHAPES = [(120, 12, 20), (60, 90, 150)]  # (n, dx, dy): features narrower than n, then wider (Gram form)


def pair(n, dx, dy, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dx))
    y = np.tanh(x @ rng.standard_normal((dx, dy))) + 0.3 * rng.standard_normal((n, dy))
    return x, y


def rotation(d, seed):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]


@pytest.mark.parametrize("n, dx, dy", SHAPES)
def test_cka_of_a_representation_with_itself_is_one(n, dx, dy):
    x, y = pair(n, dx, dy)
    assert measures.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert measures.linear_cka(y, y) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n, dx, dy", SHAPES)
def test_cka_is_invariant_to_orthogonal_transforms_of_either_side(n, dx, dy):
    x, y = pair(n, dx, dy)
    reference = measures.linear_cka(x, y)
    assert measures.linear_cka(x @ rotation(dx, 1), y) == pytest.approx(reference, rel=1e-9)
    assert measures.linear_cka(x, y @ rotation(dy, 2)) == pytest.approx(reference, rel=1e-9)


@pytest.mark.parametrize("n, dx, dy", SHAPES)
def test_cka_is_invariant_to_isotropic_scaling_of_either_side(n, dx, dy):
    x, y = pair(n, dx, dy)
    reference = measures.linear_cka(x, y)
    assert measures.linear_cka(1e-3 * x, y) == pytest.approx(reference, rel=1e-9)
    assert measures.linear_cka(x, 250.0 * y) == pytest.approx(reference, rel=1e-9)


def test_cka_is_not_invariant_to_anisotropic_scaling():
    x, y = pair(*SHAPES[0])
    stretched = x * np.geomspace(1, 100, x.shape[1])  # an invertible linear map that is not orthogonal
    assert abs(measures.linear_cka(stretched, y) - measures.linear_cka(x, y)) > 0.05


def test_cka_is_symmetric_and_in_the_unit_interval_for_many_pairs():
    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(10, 80))
        x = rng.standard_normal((n, int(rng.integers(1, 100))))
        y = rng.standard_normal((n, int(rng.integers(1, 100)))) + (x[:, :1] if trial % 2 else 0)
        forward, backward = measures.linear_cka(x, y), measures.linear_cka(y, x)
        assert forward == pytest.approx(backward, rel=1e-12, abs=1e-15)
        assert 0.0 <= forward <= 1.0


# ------------------------------------------------------------------------------------------------------------
# CKA with the layer's own last snapshot, from the stored sketches


def sketch(features, seed=0):
    """The `L{i}/cka_sketch` the recorder stores for `features` (a fresh builder picks the same probe rows)."""
    builder = SnapshotBuilder(activations=[None], labels=None, seed=seed)
    return builder._sketch(np.asarray(features, np.float32).reshape(len(features), -1))


@pytest.mark.parametrize("width", [24, 400])  # stored as centred features, and as a Gram matrix
def test_sketch_cka_equals_linear_cka_on_the_sketched_rows(width):
    rng = np.random.default_rng(4)
    early = rng.standard_normal((700, width)).astype(np.float32)
    late = early + 0.8 * rng.standard_normal((700, width)).astype(np.float32)
    rows = SnapshotBuilder(activations=[None], labels=None)
    rows._sketch(early)
    picked = rows._sketch_rows
    gram = width > CKA_SKETCH_POINTS
    assert sketch(early).shape == ((CKA_SKETCH_POINTS,) * 2 if gram else (CKA_SKETCH_POINTS, width))
    expected = measures.linear_cka(early[picked], late[picked])
    assert metrics.sketch_cka(sketch(early), sketch(late), gram) == pytest.approx(expected, rel=1e-4)


def test_sketch_cka_to_final_matches_cka_on_full_activations():
    """256 sketched probe rows estimate the CKA of the full probe set (2,000 rows) within 0.05."""
    rng = np.random.default_rng(5)
    inputs = rng.standard_normal((2000, 10))
    final = np.maximum(inputs @ rng.standard_normal((10, 64)), 0)  # a ReLU layer at the end of training
    for noise in (0.2, 1.0, 3.0):  # earlier snapshots: the same layer further from its final state
        earlier = np.maximum(
            inputs @ rng.standard_normal((10, 64)) * 0.3 + final + noise * rng.standard_normal((2000, 64)), 0
        )
        full = measures.linear_cka(earlier, final)
        estimate = metrics.sketch_cka(sketch(earlier), sketch(final), gram=False)
        assert estimate == pytest.approx(full, abs=0.05), noise


def test_sketch_form_follows_the_layer_width():
    assert metrics.layer_width({"output_shape": [None, 4, 4, 8]}) == 128
    assert metrics.layer_width({"output_shape": [None, None, 8]}) is None
    square = np.ones((256, 256), np.float32)
    assert metrics._is_gram(square, 300) and not metrics._is_gram(square, 256)
    assert not metrics._is_gram(np.arange(256 * 256, dtype=np.float32).reshape(256, 256), None)  # not symmetric


def test_cka_to_final_and_layer_metrics_of_a_recorded_run(spiral_run_dir):
    root, run_id = spiral_run_dir
    run = RunStore(root).run(run_id)
    epochs, values = metrics.cka_to_final(run)
    assert epochs == run.epochs() and values.shape == (len(epochs), len(run.layers))
    np.testing.assert_allclose(values[-1], 1.0, atol=1e-6)  # every layer is itself at the last epoch
    assert np.all((values >= 0) & (values <= 1))
    found = metrics.layer_metrics(run)
    assert found.layers == [layer["name"] for layer in run.layers]
    assert found.probe.shape == found.separation.shape == found.n90.shape == (len(epochs), len(run.layers))
    assert found.input_probe == run.meta["input"]["linear_probe"]
    assert found.at(None) == len(epochs) - 1 and found.epochs[found.at(10_000)] == epochs[-1]
    snapshot = run.epoch_snapshots()[-1]
    examples = metrics.unit_examples(snapshot, 0, 1)
    np.testing.assert_array_equal(examples.top, snapshot.array("L0/unit_top")[1])
    assert metrics.unit_examples(snapshot, 0, 10_000) is None


def test_cka_to_final_keeps_at_most_cap_epochs(spiral_run_dir):
    root, run_id = spiral_run_dir
    epochs, values = metrics.cka_to_final(RunStore(root).run(run_id), cap=2)
    assert len(epochs) == 2 and epochs[-1] == RunStore(root).run(run_id).epochs()[-1]


# ------------------------------------------------------------------------------------------------------------
# Linear probe accuracy rises with depth on a trained network

# Measured once with the CLI (see dashboard/LAYERS.md): `python -m core train --dataset spiral --noise 0 --hidden
# 32,32,32,32 --lr 0.01 --epochs 100` (then batches of 32) gives input 0.584, then 0.812, 0.966, 0.998, 0.998 (output
# 0.998). The test trains the same network faster (lr 0.02, 20 epochs, capturing only epochs 0 and 20): measured input
# 0.584, then 0.776, 0.990, 1.000, 1.000. Batches stay 32, as measured, whatever the CLI's default (16 since issue 17).
_TRAIN_SPIRAL = """
import json, sys
from core.training.trainer import TrainingSpec, train
from core.store import RunStore
root = sys.argv[1]
run_id = train(TrainingSpec(dataset="spiral", noise=0.0, hidden=(32, 32, 32, 32), lr=0.02, batch_size=32, epochs=20,
                            every=20, runs=root, name="probe depth"))
run = RunStore(root).run(run_id)
print(json.dumps({"input": run.meta["input"]["linear_probe"], "layers": run.layer_series("linear_probe")[-1].tolist(),
                  "names": [layer["name"] for layer in run.layers]}))
"""


def test_probe_accuracy_rises_with_depth_on_a_trained_spiral_network(tmp_path):
    result = run_python(_TRAIN_SPIRAL, str(tmp_path))
    found = json.loads(result.stdout.strip().splitlines()[-1])
    baseline, hidden = found["input"], found["layers"][:4]  # dense_0 .. dense_3; the softmax output is last
    assert found["names"][:4] == ["dense_0", "dense_1", "dense_2", "dense_3"]
    assert 0.5 <= baseline <= 0.7  # two interleaved arms: a line through the plane gets little more than chance
    assert baseline < hidden[0] < hidden[-1]
    assert all(later >= earlier - 0.02 for earlier, later in zip(hidden, hidden[1:]))  # never drops with depth
    assert hidden[-1] >= 0.95 and hidden[1] >= 0.9


def test_extreme_rows_match_a_full_sort_at_both_ends():
    from core.capture.snapshot import _extreme_rows

    values = np.random.default_rng(3).standard_normal((40, 1000)).astype(np.float32)
    top, bottom = _extreme_rows(values, 8)
    order = np.argsort(values, axis=1)
    np.testing.assert_array_equal(top, order[:, ::-1][:, :8])
    np.testing.assert_array_equal(bottom, order[:, :8])
    few_top, few_bottom = _extreme_rows(values[:, :10], 8)  # fewer samples than twice the count: a plain sort
    np.testing.assert_array_equal(few_top, np.argsort(values[:, :10], axis=1)[:, ::-1][:, :8])
    np.testing.assert_array_equal(few_bottom, np.argsort(values[:, :10], axis=1)[:, :8])
