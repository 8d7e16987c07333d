"""Labelled training scenarios for `core.analysis.diagnosis`: trains each one, diagnoses it, and counts hits, misses and
false alarms.

Run from the repository root:

    python bench/bench_diagnosis.py [--seeds 0,1,2] [--only NAME,NAME] [--runs DIR] [--train-only] [--series]

Each scenario is a real small Keras model trained and recorded with `Recorder(budget=None)` (through
`core.training.trainer.train` with every setting passed, or a model built here), with the findings it must produce and
those it must not. A healthy scenario must produce none at all. The goals (issue 17): no finding on any healthy
run, and every pathology found in at least 2 of 3 seeds. The table in `bench/README.md` is this script's output.

This module imports TensorFlow only inside the training functions, so the tests can read `SCENARIOS` without it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from core.analysis.diagnosis import KINDS  # noqa: E402  (numpy only)

PROBE_SIZE = 500  # probe samples per run: enough for stable losses, small enough for ~10 s per run
EVERY_KIND = frozenset(KINDS)


@dataclass(frozen=True)
class Scenario:
    """One labelled training: how to train it, and the findings it must and must not produce."""

    name: str
    what: str  # one line, for the table
    train: Callable[[int, str, str], None]  # train(seed, root, run_id) records one run into the store at root
    must: frozenset = frozenset()
    must_not: frozenset = EVERY_KIND  # a healthy run: nothing at all
    quick: bool = False  # part of the fast subset the tests train (seconds, not tens of seconds)

    @property
    def healthy(self) -> bool:
        return not self.must


# ----------------------------------------------------------------------------------------------------------
# How scenarios train


def mlp(
    *,
    dataset: str,
    noise: float,
    hidden: tuple,
    activation: str,
    init: str,
    optimizer: str,
    lr: float,
    batch_size: int,
    epochs: int,
    l2: float = 0.0,
    dropout: float = 0.0,
) -> Callable[[int, str, str], None]:
    """A `python -m core train` run with every setting given here (TrainingSpec's defaults are not relied on)."""

    def train(seed: int, root: str, run_id: str) -> None:
        from core.training.trainer import TrainingSpec
        from core.training.trainer import train as train_spec

        train_spec(
            TrainingSpec(
                dataset=dataset,
                noise=noise,
                label_column=None,
                hidden=tuple(hidden),
                activation=activation,
                init=init,
                optimizer=optimizer,
                lr=lr,
                batch_size=batch_size,
                epochs=epochs,
                l2=l2,
                dropout=dropout,
                batch_norm=False,
                seed=seed,
                probe_size=PROBE_SIZE,
                every=1,
                batch_every=None,
                grad_every=None,
                budget=None,
                runs=root,
                name=run_id,
                run_id=run_id,
            )
        )

    return train


def digits_cnn(*, lr: float, epochs: int, batch_size: int = 32) -> Callable[[int, str, str], None]:
    """A small Conv2D net on scikit-learn's digits as 8x8x1 images, recorded with `Recorder` directly."""

    def train(seed: int, root: str, run_id: str) -> None:
        import keras

        from core import Recorder
        from core.training.datasets import load_dataset, split

        data = load_dataset("digits")
        x_train, y_train, x_val, y_val = split(data, seed=seed)
        images = lambda x: x.reshape(-1, 8, 8, 1)  # noqa: E731  (n, 8, 8, 1)
        keras.utils.set_random_seed(seed)
        model = keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(8, 3, activation="relu", name="conv_0"),  # (n, 6, 6, 8)
                keras.layers.Conv2D(16, 3, activation="relu", name="conv_1"),  # (n, 4, 4, 16)
                keras.layers.Flatten(name="flatten"),
                keras.layers.Dense(10, activation="softmax", name="output"),
            ]
        )
        model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy", metrics=["accuracy"])
        recorder = Recorder(
            root,
            probe=(images(data.x), data.y),
            name=run_id,
            run_id=run_id,
            probe_size=PROBE_SIZE,
            seed=seed,
            budget=None,
            config={"lr": lr, "optimizer": "adam", "batch_size": batch_size},
        )
        model.fit(
            images(x_train),
            y_train,
            validation_data=(images(x_val), y_val),
            epochs=epochs,
            batch_size=batch_size,
            callbacks=[recorder],
            verbose=0,
        )
        recorder.wait()

    return train


def memorized_digits(
    *, train_samples: int, wrong_labels: float, hidden: tuple, lr: float, epochs: int, batch_size: int = 16
) -> Callable[[int, str, str], None]:
    """A large MLP on a few digits, a share of whose training labels are wrong: it memorizes them (Zhang et al.
    2017), so the validation loss rises while the training loss falls. A snapshot every 2 epochs keeps it fast."""

    def train(seed: int, root: str, run_id: str) -> None:
        import keras
        import numpy as np

        from core import Recorder
        from core.training.datasets import load_dataset, split, stratified_subset

        data = load_dataset("digits")
        x_train, y_train, x_val, y_val = split(data, seed=seed)
        keep = stratified_subset(y_train, train_samples, seed=seed)
        x_train, y_train = x_train[keep], y_train[keep].copy()
        rng = np.random.default_rng(seed)
        wrong = rng.random(len(y_train)) < wrong_labels
        y_train[wrong] = (y_train[wrong] + rng.integers(1, 10, wrong.sum())) % 10  # always a different class
        keras.utils.set_random_seed(seed)
        model = keras.Sequential(
            [keras.Input((64,))]
            + [keras.layers.Dense(units, activation="relu", name=f"dense_{i}") for i, units in enumerate(hidden)]
            + [keras.layers.Dense(10, activation="softmax", name="output")]
        )
        model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy", metrics=["accuracy"])
        recorder = Recorder(
            root,
            probe=(x_val, y_val),
            every=2,
            name=run_id,
            run_id=run_id,
            probe_size=PROBE_SIZE,
            seed=seed,
            budget=None,
            config={"lr": lr, "optimizer": "adam", "batch_size": batch_size},
        )
        model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            epochs=epochs,
            batch_size=batch_size,
            callbacks=[recorder],
            verbose=0,
        )
        recorder.wait()

    return train


# ----------------------------------------------------------------------------------------------------------
# The scenarios


def _kinds(*names: str) -> frozenset:
    unknown = set(names) - EVERY_KIND
    if unknown:
        raise ValueError(f"Unknown finding kind(s) {sorted(unknown)}; known: {', '.join(KINDS)}")
    return frozenset(names)


GRADIENT_FLOW = _kinds("vanishing_gradients", "exploding_gradients", "dead_units", "saturation")

SCENARIOS = [
    # Healthy: nothing at all.
    Scenario(
        "healthy_spiral_demo",
        "spiral (noise 0.05), 32-32-32 ReLU, Adam 0.01, batch 16, 30 epochs: the dashboard demo",
        mlp(
            dataset="spiral",
            noise=0.05,
            hidden=(32, 32, 32),
            activation="relu",
            init="glorot_uniform",
            optimizer="adam",
            lr=0.01,
            batch_size=16,
            epochs=30,
        ),
    ),
    Scenario(
        "healthy_moons_tanh",
        "moons (noise 0.1), 16-16 tanh, Adam 0.01, batch 32, 20 epochs",
        mlp(
            dataset="moons",
            noise=0.1,
            hidden=(16, 16),
            activation="tanh",
            init="glorot_uniform",
            optimizer="adam",
            lr=0.01,
            batch_size=32,
            epochs=20,
        ),
        quick=True,
    ),
    Scenario(
        "healthy_digits_mlp",
        "digits, 64-32 ReLU + He, Adam 1e-3, batch 32, 15 epochs",
        mlp(
            dataset="digits",
            noise=0.0,
            hidden=(64, 32),
            activation="relu",
            init="he_normal",
            optimizer="adam",
            lr=1e-3,
            batch_size=32,
            epochs=15,
        ),
    ),
    Scenario(
        "healthy_wine_sgd",
        "wine, 32-32 tanh, SGD 0.05, batch 16, 30 epochs",
        mlp(
            dataset="wine",
            noise=0.0,
            hidden=(32, 32),
            activation="tanh",
            init="glorot_uniform",
            optimizer="sgd",
            lr=0.05,
            batch_size=16,
            epochs=30,
        ),
    ),
    Scenario(
        "healthy_digits_cnn",
        "digits as 8x8x1, conv 8-16 ReLU + dense, Adam 3e-3, batch 32, 12 epochs",
        digits_cnn(lr=3e-3, epochs=12),
    ),
    # Pathologies.
    Scenario(
        "vanishing_deep_sigmoid",
        "digits, 6x64 sigmoid, SGD 0.01, batch 32, 5 epochs (Glorot & Bengio 2010)",
        mlp(
            dataset="digits",
            noise=0.0,
            hidden=(64,) * 6,
            activation="sigmoid",
            init="glorot_uniform",
            optimizer="sgd",
            lr=0.01,
            batch_size=32,
            epochs=5,
        ),
        must=_kinds("vanishing_gradients"),
        must_not=_kinds("exploding_gradients", "dead_units"),
    ),
    Scenario(
        "exploding_linear_sgd",
        "digits, 64-64-64 linear, SGD lr 1, batch 32, 3 epochs (NaN)",
        mlp(
            dataset="digits",
            noise=0.0,
            hidden=(64, 64, 64),
            activation="linear",
            init="glorot_uniform",
            optimizer="sgd",
            lr=1.0,
            batch_size=32,
            epochs=3,
        ),
        must=_kinds("exploding_gradients"),
        must_not=_kinds("vanishing_gradients"),
    ),
    Scenario(
        "dead_relu_adam",
        "digits, 64-64-64 ReLU, Adam 0.1, batch 32, 5 epochs",
        mlp(
            dataset="digits",
            noise=0.0,
            hidden=(64, 64, 64),
            activation="relu",
            init="glorot_uniform",
            optimizer="adam",
            lr=0.1,
            batch_size=32,
            epochs=5,
        ),
        must=_kinds("dead_units"),
        must_not=_kinds("vanishing_gradients", "saturation"),
    ),
    Scenario(
        "lr_high_divergence",
        "moons (noise 0.1), 32-32 tanh, SGD lr 3, batch 32, 15 epochs",
        mlp(
            dataset="moons",
            noise=0.1,
            hidden=(32, 32),
            activation="tanh",
            init="glorot_uniform",
            optimizer="sgd",
            lr=3.0,
            batch_size=32,
            epochs=15,
        ),
        must=_kinds("learning_rate"),
        must_not=_kinds("dead_units", "overfitting", "capacity"),
        quick=True,
    ),
    Scenario(
        "lr_high_oscillation",
        "digits, 64-32 tanh, Adam 0.05, batch 32, 15 epochs",
        mlp(
            dataset="digits",
            noise=0.0,
            hidden=(64, 32),
            activation="tanh",
            init="glorot_uniform",
            optimizer="adam",
            lr=0.05,
            batch_size=32,
            epochs=15,
        ),
        must=_kinds("learning_rate"),
        must_not=_kinds("vanishing_gradients", "dead_units", "overfitting", "capacity"),
        quick=True,
    ),
    Scenario(
        "lr_too_low_sgd",
        "digits, 32-32 ReLU, SGD lr 1e-6, batch 32, 5 epochs",
        mlp(
            dataset="digits",
            noise=0.0,
            hidden=(32, 32),
            activation="relu",
            init="glorot_uniform",
            optimizer="sgd",
            lr=1e-6,
            batch_size=32,
            epochs=5,
        ),
        must=_kinds("learning_rate"),
        must_not=GRADIENT_FLOW | _kinds("overfitting", "capacity"),
    ),
    Scenario(
        "not_learning_readme",
        "spiral (noise 0.1), 32-32-32 ReLU, Adam 1e-3, batch 32, 40 epochs: README's CLI example",
        mlp(
            dataset="spiral",
            noise=0.1,
            hidden=(32, 32, 32),
            activation="relu",
            init="glorot_uniform",
            optimizer="adam",
            lr=1e-3,
            batch_size=32,
            epochs=40,
        ),
        must=_kinds("not_learning"),
        must_not=GRADIENT_FLOW | _kinds("overfitting", "capacity"),
    ),
    Scenario(
        "not_learning_sgd_slow",
        "circles (noise 0.1), 16-16 tanh, SGD 1e-3, batch 32, 20 epochs",
        mlp(
            dataset="circles",
            noise=0.1,
            hidden=(16, 16),
            activation="tanh",
            init="glorot_uniform",
            optimizer="sgd",
            lr=1e-3,
            batch_size=32,
            epochs=20,
        ),
        must=_kinds("not_learning"),
        must_not=GRADIENT_FLOW | _kinds("overfitting", "capacity"),
        quick=True,
    ),
    Scenario(
        "saturated_sigmoid",
        "digits, 64-64-64 sigmoid, SGD lr 20, batch 32, 4 epochs",
        mlp(
            dataset="digits",
            noise=0.0,
            hidden=(64, 64, 64),
            activation="sigmoid",
            init="glorot_uniform",
            optimizer="sgd",
            lr=20.0,
            batch_size=32,
            epochs=4,
        ),
        must=_kinds("saturation"),
        must_not=_kinds("dead_units"),
    ),
    Scenario(
        "overfitting_memorize",
        "200 digits, a quarter of their labels wrong, 256-256 ReLU, Adam 1e-3, batch 16, 50 epochs",
        memorized_digits(train_samples=200, wrong_labels=0.25, hidden=(256, 256), lr=1e-3, epochs=50),
        must=_kinds("overfitting"),
        must_not=GRADIENT_FLOW | _kinds("not_learning", "capacity"),
        quick=True,
    ),
    Scenario(
        "capacity_bottleneck",
        "digits, one hidden layer of 2 tanh units, Adam 0.01, batch 32, 25 epochs",
        mlp(
            dataset="digits",
            noise=0.0,
            hidden=(2,),
            activation="tanh",
            init="glorot_uniform",
            optimizer="adam",
            lr=0.01,
            batch_size=32,
            epochs=25,
        ),
        must=_kinds("capacity"),
        must_not=GRADIENT_FLOW | _kinds("not_learning", "overfitting", "learning_rate"),
        quick=True,
    ),
]
BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}


def run_id(scenario: Scenario, seed: int) -> str:
    return f"{scenario.name}-s{seed}"


# ----------------------------------------------------------------------------------------------------------
# Scoring


@dataclass
class Score:
    scenario: Scenario
    seed: int
    given: list[str] = field(default_factory=list)

    @property
    def hits(self) -> list[str]:
        return sorted(self.scenario.must & set(self.given))

    @property
    def misses(self) -> list[str]:
        return sorted(self.scenario.must - set(self.given))

    @property
    def false_alarms(self) -> list[str]:
        return sorted(self.scenario.must_not & set(self.given))


def score(scenario: Scenario, seed: int, root: str) -> Score:
    from core.analysis.diagnosis import diagnose
    from core.store import RunStore

    findings = diagnose(RunStore(root).run(run_id(scenario, seed)))
    return Score(scenario, seed, [finding.kind for finding in findings])


def _cell(kinds) -> str:
    return ", ".join(sorted(kinds)) or "–"


def table(scores: list[Score]) -> str:
    rows = [
        "| scenario | seed | expected | given | hits | misses | false alarms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in scores:
        expected = "nothing" if s.scenario.healthy else _cell(s.scenario.must)
        rows.append(
            f"| {s.scenario.name} | {s.seed} | {expected} | {_cell(set(s.given))} | {_cell(s.hits)} | "
            f"{_cell(s.misses)} | {_cell(s.false_alarms)} |"
        )
    return "\n".join(rows)


def summary(scores: list[Score]) -> str:
    rows = ["| scenario | what | result |", "| --- | --- | --- |"]
    for scenario in dict.fromkeys(s.scenario for s in scores):
        mine = [s for s in scores if s.scenario is scenario]
        if scenario.healthy:
            clean = sum(not s.given for s in mine)
            result = f"{clean} of {len(mine)} seeds without any finding"
        else:
            found = sum(not s.misses for s in mine)
            alarms = sum(bool(s.false_alarms) for s in mine)
            result = f"found in {found} of {len(mine)} seeds" + (f"; false alarms in {alarms}" if alarms else "")
        rows.append(f"| {scenario.name} | {scenario.what} | {result} |")
    return "\n".join(rows)


def goals_met(scores: list[Score]) -> bool:
    """No finding on any healthy run; every pathology found, without a false alarm, in at least 2 of 3 seeds."""
    for scenario in dict.fromkeys(s.scenario for s in scores):
        mine = [s for s in scores if s.scenario is scenario]
        if scenario.healthy and any(s.given for s in mine):
            return False
        if not scenario.healthy and 3 * sum(not s.misses and not s.false_alarms for s in mine) < 2 * len(mine):
            return False
    return True


# ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--only", default="", help=f"comma-separated scenario names, among: {', '.join(BY_NAME)}")
    parser.add_argument("--quick", action="store_true", help="only the fast subset the tests train")
    parser.add_argument(
        "--runs",
        default=None,
        help="store to record into (default: a temporary folder, deleted after); "
        "runs already there under the same id are diagnosed again, not retrained",
    )
    parser.add_argument("--train-only", action="store_true", help="record the runs, print nothing else")
    parser.add_argument("--series", action="store_true", help="also print each run's per-epoch numbers")
    args = parser.parse_args(argv)
    names = [name for name in args.only.split(",") if name]
    unknown = [name for name in names if name not in BY_NAME]
    if unknown:
        parser.error(f"--only: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    scenarios = [BY_NAME[name] for name in names] if names else [s for s in SCENARIOS if s.quick or not args.quick]
    seeds = [int(seed) for seed in args.seeds.split(",") if seed]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    root = args.runs or tempfile.mkdtemp(prefix="strata-diagnosis-bench-")
    started = time.perf_counter()
    scores = []
    try:
        for scenario in scenarios:
            for seed in seeds:
                if not os.path.exists(os.path.join(root, run_id(scenario, seed), "run.json")):
                    scenario.train(seed, root, run_id(scenario, seed))
                if args.train_only:
                    continue
                scores.append(score(scenario, seed, root))
                if args.series:
                    print(series_text(root, run_id(scenario, seed)), flush=True)
                print(f"{run_id(scenario, seed)}: {_cell(scores[-1].given)}", file=sys.stderr, flush=True)
    finally:
        if args.runs is None:
            shutil.rmtree(root, ignore_errors=True)
    if args.train_only:
        return 0
    print(table(scores), "", summary(scores), "", sep="\n")
    met = goals_met(scores)
    print(f"{len(scores)} runs in {time.perf_counter() - started:.0f} s; goals {'met' if met else 'NOT met'}.")
    return 0 if met else 1


def series_text(root: str, run: str) -> str:
    """Each epoch's losses, accuracies, update sizes and unit fractions, to see why a run got its findings."""
    import numpy as np

    from core.analysis.diagnosis import diagnose, update_ratios_per_epoch
    from core.store import RunStore, main_weight

    recorded = RunStore(root).run(run)
    snapshots = recorded.epoch_snapshots()
    kernels = [i for i, layer in enumerate(recorded.layers) if main_weight(layer)]
    updates = update_ratios_per_epoch(recorded, snapshots)[:, kernels]
    dead = recorded.layer_series("activation", "dead_fraction", snapshots=snapshots)[:, :-1]
    saturated = recorded.layer_series("activation", "saturated_fraction", snapshots=snapshots)[:, :-1]
    number = lambda v: f"{v:7.3f}" if isinstance(v, (int, float)) and np.isfinite(v) else "      -"  # noqa: E731
    lines = [f"== {run}", "epoch    loss     acc  v_loss   v_acc  p_loss   p_acc  upd med  upd max  dead  sat"]
    for row, snapshot in enumerate(snapshots):
        logs = snapshot.meta.get("logs", {})
        known = np.isfinite(updates[row]).any()
        lines.append(
            f"{int(snapshot.epoch):5d} "
            + " ".join(number(logs.get(key)) for key in ("loss", "accuracy", "val_loss", "val_accuracy"))
            + " "
            + number(snapshot.meta.get("probe_loss"))
            + " "
            + number(snapshot.meta.get("probe_model_accuracy"))
            + (
                f"  {np.nanmedian(updates[row]):7.1e}  {np.nanmax(updates[row]):7.1e}"
                if known
                else "        -        -"
            )
            + f"  {np.nanmax(np.r_[dead[row], 0]):.2f}  {np.nanmax(np.r_[saturated[row], 0]):.2f}"
        )
    lines += [f"   {finding.kind}: {finding.message}" for finding in diagnose(recorded)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
