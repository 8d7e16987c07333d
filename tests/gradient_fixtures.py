"""Real runs for the diagnosis and the Gradients page, trained once per test run in one subprocess.

Healthy and pathological, few epochs each and a 300-sample probe, so the whole set trains in well under a minute.
The runs are made with conftest's `made_once`, so every test module that imports `gradient_runs` shares one training
(pytest would otherwise build a session fixture once per importing module), and so do all xdist workers.

    vanishing   digits, 6 x 64 sigmoid, SGD lr 0.01          (Glorot & Bengio 2010: the classic vanishing case)
    relu_he     the same with ReLU + He initialization, and per-batch gradient norms every 5 batches
    iris        iris, 32-32-32 ReLU, Adam                    (healthy)
    exploding   digits, 64-64-64 linear, SGD lr 1            (diverges to NaN in the first epoch)
    dead        digits, 64-64-64 ReLU, Adam lr 0.1           (most units die in the first epoch)
    saturated   digits, 64-64-64 sigmoid, SGD lr 20          (units pinned at 0 or 1; loss rises)
    slow        digits, 32-32 ReLU, SGD lr 1e-6              (the weights barely move)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import last_line, made_once, run_python

# batch_size is given, not left to TrainingSpec's default: the step counts behind these runs' findings depend on it.
SPECS = {
    "vanishing": dict(
        dataset="digits", hidden=(64,) * 6, activation="sigmoid", optimizer="sgd", lr=0.01, epochs=3, batch_size=32
    ),
    "relu_he": dict(
        dataset="digits",
        hidden=(64,) * 6,
        activation="relu",
        init="he_normal",
        optimizer="sgd",
        lr=0.01,
        epochs=3,
        batch_size=32,
        grad_every=5,
    ),
    "iris": dict(
        dataset="iris", hidden=(32, 32, 32), activation="relu", optimizer="adam", lr=1e-3, epochs=8, batch_size=32
    ),
    "exploding": dict(
        dataset="digits", hidden=(64, 64, 64), activation="linear", optimizer="sgd", lr=1.0, epochs=2, batch_size=32
    ),
    "dead": dict(
        dataset="digits", hidden=(64, 64, 64), activation="relu", optimizer="adam", lr=0.1, epochs=4, batch_size=32
    ),
    "saturated": dict(
        dataset="digits", hidden=(64, 64, 64), activation="sigmoid", optimizer="sgd", lr=20.0, epochs=3, batch_size=32
    ),
    "slow": dict(
        dataset="digits", hidden=(32, 32), activation="relu", optimizer="sgd", lr=1e-6, epochs=3, batch_size=32
    ),
}

_TRAIN = """
import json, sys
from core.training.trainer import TrainingSpec, train
root, specs = sys.argv[1], json.loads(sys.argv[2])
ids = {name: train(TrainingSpec(**{**spec, "hidden": tuple(spec["hidden"])},
                                probe_size=300, runs=root, run_id=name, name=name))
       for name, spec in specs.items()}
print(json.dumps(ids))
"""


@pytest.fixture(scope="session")
def gradient_runs(tmp_path_factory) -> str:
    """The root of a store holding every run of SPECS, under its SPECS name as run id."""
    return str(made_once(tmp_path_factory, "gradient-runs", make)[0])


def make(root: Path) -> str:
    return last_line(run_python(_TRAIN, str(root), json.dumps(SPECS), timeout=400))
