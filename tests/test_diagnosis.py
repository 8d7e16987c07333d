"""The diagnosis on real trained runs (healthy and pathological), its criteria on written runs, and its CLI."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from gradient_fixtures import gradient_runs  # noqa: F401  (a fixture)

from core.analysis.diagnosis import KINDS, Finding, Thresholds, diagnose
from core.store import RunStore, RunWriter


@pytest.fixture(scope="module")
def store(gradient_runs):  # noqa: F811
    return RunStore(gradient_runs)


def kinds(findings: list[Finding]) -> list[str]:
    return [f.kind for f in findings]


def depth_ratio(run) -> np.ndarray:
    """Kernel gradient norm of the first hidden layer over the last hidden layer's, per snapshot."""
    norms = run.layer_series("grad", "kernel", "norm")
    return norms[:, 0] / norms[:, -2]


# ----------------------------------------------------------------------------------------------------------
# Real runs


def test_deep_sigmoid_sgd_is_vanishing_and_relu_he_is_not(store):
    sigmoid, relu = store.run("vanishing"), store.run("relu_he")
    # The measurement: the first layer gets ~1e-3 of the last hidden layer's gradient; ReLU + He ~1.
    assert 1e-4 < depth_ratio(sigmoid)[0] < 3e-3 and np.all(depth_ratio(sigmoid) < 1e-2)
    assert np.all((depth_ratio(relu) > 0.3) & (depth_ratio(relu) < 3))

    [finding] = diagnose(sigmoid)
    assert (finding.kind, finding.layer, finding.epoch) == ("vanishing_gradients", "dense_0", 0)
    assert 1e-4 < finding.evidence["kernel_gradient_ratio"] < 3e-3
    assert 1e-4 < finding.evidence["error_signal_ratio"] < 3e-3
    assert finding.evidence["last_layer"] == "dense_5"
    assert "`dense_0`" in finding.message and "epoch 0" in finding.message and "he_normal" in finding.fix
    assert diagnose(relu) == []


@pytest.mark.parametrize("name", ["relu_he", "iris"])
def test_healthy_runs_have_no_findings(store, name):
    assert diagnose(store.run(name)) == []


def test_the_shared_fixture_runs_are_healthy_too(recorded_runs):
    root, ids = recorded_runs
    for run_id in ids.values():
        assert diagnose(RunStore(root).run(run_id)) == [], run_id


def test_divergence_to_nan_is_exploding_and_comes_first(store):
    findings = diagnose(store.run("exploding"))
    assert kinds(findings)[0] == "exploding_gradients" and findings[0].severe
    assert findings[0].epoch == 1 and findings[0].evidence["nan_epoch"] == 1
    assert "NaN" in findings[0].message and "learning rate" in findings[0].fix


def test_a_very_high_learning_rate_kills_relu_units(store):
    findings = diagnose(store.run("dead"))
    dead = next(f for f in findings if f.kind == "dead_units")
    assert dead.layer == "dense_0" and dead.epoch == 1 and dead.evidence["fraction"] > 0.8
    assert "vanishing_gradients" not in kinds(
        findings
    )  # zero gradient through dead units is their finding, not this one


def test_saturated_sigmoid_units_and_the_learning_rate_that_pinned_them(store):
    findings = diagnose(store.run("saturated"))
    assert {"saturation", "learning_rate"} <= set(kinds(findings))
    saturation = next(f for f in findings if f.kind == "saturation")
    assert saturation.epoch == 1 and saturation.evidence["fraction"] >= 0.5
    rate = next(f for f in findings if f.kind == "learning_rate")
    assert "too high" in rate.message and rate.evidence["median_update_ratio_per_epoch"] > 0.5
    assert rate.evidence["probe_loss_after"] > rate.evidence["probe_loss_before"]


def test_a_tiny_learning_rate_is_too_low(store):
    [finding] = diagnose(store.run("slow"))
    assert finding.kind == "learning_rate" and "too low" in finding.message and finding.epoch == 1
    assert finding.evidence["fastest_update_ratio_per_epoch"] < 1e-5


def test_every_message_names_layer_epoch_evidence_and_fix(store):
    for name in ("vanishing", "exploding", "dead", "saturated", "slow"):
        for finding in diagnose(store.run(name)):
            assert finding.kind in KINDS
            assert finding.layer is None or f"`{finding.layer}`" in finding.message, finding.message
            assert f"epoch {finding.epoch}" in finding.message, finding.message
            assert finding.fix and finding.message.endswith(finding.fix) and finding.evidence
            json.dumps(finding.evidence)  # JSON-ready


def test_thresholds_are_configurable(store):
    vanishing = store.run("vanishing")
    assert diagnose(vanishing, Thresholds(vanishing_ratio=1e-4)) == []
    assert Thresholds().with_overrides(["vanishing_ratio=1e-4", "persistence=2"]) == Thresholds(
        vanishing_ratio=1e-4, persistence=2
    )
    with pytest.raises(ValueError, match="vanishing_ratio"):
        Thresholds().with_overrides(["vanishing=1"])
    with pytest.raises(ValueError, match="needs a number"):
        Thresholds().with_overrides(["dead_fraction=half"])
    with pytest.raises(ValueError, match="persistence"):
        Thresholds(persistence=0)


# ----------------------------------------------------------------------------------------------------------
# Criteria on hand-written runs: persistence, and dead units do not read as vanishing


def write_run(root, run_id, kernel_norms, dead=None, losses=None, update=1e-2):
    """A 4-layer run (3 hidden + output) with the given per-snapshot kernel gradient norms (S, 4)."""
    layers = [
        {
            "index": i,
            "name": name,
            "type": "Dense",
            "activation": "relu" if i < 3 else "softmax",
            "weights": ["kernel", "bias"],
        }
        for i, name in enumerate(["dense_0", "dense_1", "dense_2", "output"])
    ]
    writer = RunWriter(root, run_id, {"layers": layers, "steps_per_epoch": 10})
    for seq, norms in enumerate(kernel_norms):
        records = [
            {
                "grad": {"kernel": {"norm": n, "nonfinite": 0}, "output": {"norm": n}},
                "activation": {"dead_fraction": (dead[seq][i] if dead else 0.0), "saturated_fraction": 0.0},
                "update_ratio": {"kernel": update} if seq else {},
            }
            for i, n in enumerate(norms)
        ]
        loss = losses[seq] if losses else 1.0 / (seq + 1)
        writer.write_snapshot(
            seq, {"kind": "epoch", "epoch": seq, "step": 10 * seq, "layers": records, "probe_loss": loss}, {}
        )
    return RunStore(root).run(run_id)


def test_a_condition_must_persist(tmp_path):
    blip = write_run(str(tmp_path), "blip", [[1, 1, 1, 1], [1e-4, 1, 1, 1], [1e-4, 1, 1, 1], [1, 1, 1, 1]])
    assert diagnose(blip) == []  # two snapshots < persistence 3
    assert kinds(diagnose(blip, Thresholds(persistence=2))) == ["vanishing_gradients"]
    lasting = write_run(str(tmp_path), "lasting", [[1, 1, 1, 1]] + [[1e-4, 1, 1, 1]] * 3)
    [finding] = diagnose(lasting)
    assert finding.epoch == 1 and finding.evidence["epochs"] == [1, 3]


def test_dead_layers_are_dead_units_not_vanishing_gradients(tmp_path):
    dead = [[0, 0, 0, 0]] + [[0.9, 0.9, 0.9, 0]] * 3
    run = write_run(str(tmp_path), "dead", [[1, 1, 1, 1]] + [[0, 1e-6, 1, 1]] * 3, dead=dead)
    assert kinds(diagnose(run)) == ["dead_units"]


def test_a_flat_loss_with_large_steps_is_not_a_learning_rate_too_high(tmp_path):
    # Issue 17: the demo converged (loss "0.348 to 0.348") while Adam still moved its weights by 0.13 per epoch.
    flat = [0.69, 0.5, 0.4, 0.348, 0.348, 0.349, 0.348]
    assert diagnose(write_run(str(tmp_path), "flat", [[1, 1, 1, 1]] * 7, losses=flat, update=0.13)) == []
    spike = [
        0.69,
        0.3,
        0.14,
        0.25,
        0.22,
        0.12,
        0.11,
    ]  # the demo's worst stretch (seed 0): back to its best in two epochs
    assert diagnose(write_run(str(tmp_path), "spike", [[1, 1, 1, 1]] * 7, losses=spike, update=0.13)) == []


def test_a_loss_that_stays_up_is_too_high_only_with_large_steps(tmp_path):
    bouncing = [2.4, 0.4, 0.2, 0.31, 0.45, 0.38, 0.55, 0.42]
    [finding] = diagnose(write_run(str(tmp_path), "bouncing", [[1, 1, 1, 1]] * 8, losses=bouncing, update=0.3))
    assert finding.kind == "learning_rate" and finding.evidence["mode"] == "oscillating" and finding.epoch == 3
    assert finding.evidence["probe_loss_before"] == 0.2 and finding.evidence["probe_loss_peak"] == 0.55
    assert [jump["epoch"] for jump in finding.evidence["jumps"]] == [3, 4, 6]
    assert (
        "reached 0.2 at epoch 2" in finding.message
        and "3 times (0.2 to 0.31 at epoch 3, 0.31 to 0.45" in finding.message
    )
    assert diagnose(write_run(str(tmp_path), "small-steps", [[1, 1, 1, 1]] * 8, losses=bouncing, update=0.01)) == []
    diverged = [0.7, 0.9, 1.4, 2.0, 1.8]
    [finding] = diagnose(write_run(str(tmp_path), "diverged", [[1, 1, 1, 1]] * 5, losses=diverged, update=0.01))
    assert finding.evidence["mode"] == "diverged" and finding.evidence["probe_loss_after"] == 0.9
    assert "between 0.9 and 2," in finding.message and "its 0.7 before training" in finding.message


def test_update_ratios_are_read_per_epoch(tmp_path):
    from core.analysis.diagnosis import update_ratios_per_epoch

    run = write_run(str(tmp_path), "every", [[1, 1, 1, 1]] * 3)
    assert np.isnan(update_ratios_per_epoch(run)[0]).all() and np.allclose(update_ratios_per_epoch(run)[1:], 1e-2)


# ----------------------------------------------------------------------------------------------------------
# The labelled scenarios of bench/bench_diagnosis.py (issue 17): its fast subset, trained once at seed 0


def _bench():
    spec = importlib.util.spec_from_file_location("bench_diagnosis", REPO / "bench" / "bench_diagnosis.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)  # imports TensorFlow only to train, which happens in the subprocess below
    return module


BENCH = _bench()
QUICK = [scenario for scenario in BENCH.SCENARIOS if scenario.quick]
TRAIN_QUICK = """
import runpy, sys
sys.argv = ["bench_diagnosis.py", "--quick", "--seeds", "0", "--train-only", "--runs", sys.argv[1]]
runpy.run_path("bench/bench_diagnosis.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def scenario_store(recorded):
    return RunStore(str(recorded(TRAIN_QUICK)))


def scenario_findings(store, name):
    return diagnose(store.run(BENCH.run_id(BENCH.BY_NAME[name], 0)))


def test_the_fast_subset_covers_healthy_runs_and_the_new_findings():
    assert any(s.healthy for s in QUICK)
    assert {"learning_rate", "not_learning", "overfitting", "capacity"} <= {kind for s in QUICK for kind in s.must}


@pytest.mark.parametrize("scenario", QUICK, ids=lambda s: s.name)
def test_each_scenario_gets_its_findings_and_no_false_alarm(scenario_store, scenario):
    given = set(kinds(scenario_findings(scenario_store, scenario.name)))
    assert scenario.must <= given and not (scenario.must_not & given), (scenario.name, given)


def test_oscillating_loss_evidence_supports_too_high(scenario_store):
    run = scenario_store.run(BENCH.run_id(BENCH.BY_NAME["lr_high_oscillation"], 0))
    [finding] = [f for f in diagnose(run) if f.kind == "learning_rate"]
    evidence, limits = finding.evidence, Thresholds()
    assert evidence["mode"] == "oscillating" and "too high" in finding.message
    losses = {int(s.epoch): s.meta["probe_loss"] for s in run.epoch_snapshots()}
    first, last = evidence["epochs"]
    assert losses[evidence["reference_epoch"]] == pytest.approx(evidence["probe_loss_before"])
    assert all(losses[epoch] >= evidence["probe_loss_before"] for epoch in range(first, last + 1))  # no progress
    assert (
        len(evidence["jumps"]) >= limits.oscillations
        and evidence["median_update_ratio_per_epoch"] > limits.update_ratio_high
    )
    for jump in evidence["jumps"]:  # each quoted jump is the run's, and a rise by the stated margin
        assert (losses[jump["epoch"] - 1], losses[jump["epoch"]]) == pytest.approx((jump["from"], jump["to"]))
        assert jump["to"] >= (1 + limits.loss_rise) * jump["from"]
        assert f"{jump['from']:.3g} to {jump['to']:.3g} at epoch {jump['epoch']}" in finding.message


def test_divergence_evidence_supports_too_high(scenario_store):
    [finding] = [f for f in scenario_findings(scenario_store, "lr_high_divergence") if f.kind == "learning_rate"]
    evidence = finding.evidence
    assert evidence["mode"] == "diverged"
    assert evidence["probe_loss_after"] > (1 + Thresholds().divergence) * evidence["probe_loss_before"]
    assert f"{evidence['probe_loss_before']:.3g} before training" in finding.message


def test_not_learning_quotes_a_loss_at_its_start_and_an_accuracy_at_chance(scenario_store):
    [finding] = [f for f in scenario_findings(scenario_store, "not_learning_sgd_slow") if f.kind == "not_learning"]
    evidence = finding.evidence
    assert evidence["probe_loss"] > 0.9 * evidence["probe_loss_before_training"]
    assert evidence["chance_accuracy"] == pytest.approx(0.5) and evidence["gap_closed"] < Thresholds().chance_gap
    assert evidence["steps"] >= Thresholds().learning_steps
    for number in (evidence["probe_loss"], evidence["probe_loss_before_training"], evidence["probe_accuracy"]):
        assert f"{number:.3g}" in finding.message


def test_overfitting_quotes_the_validation_loss_rising_while_the_training_loss_falls(scenario_store):
    run = scenario_store.run(BENCH.run_id(BENCH.BY_NAME["overfitting_memorize"], 0))
    [finding] = [f for f in diagnose(run) if f.kind == "overfitting"]
    evidence, history = finding.evidence, run.history()
    best = history["epoch"].index(evidence["lowest_at_epoch"])
    assert evidence["val_loss_lowest"] == pytest.approx(min(history["val_loss"]))
    assert evidence["val_loss_lowest"] == pytest.approx(history["val_loss"][best])
    assert evidence["val_loss"] == pytest.approx(history["val_loss"][-1])
    assert (
        evidence["val_loss"] >= (1 + Thresholds().val_loss_rise) * evidence["val_loss_lowest"]
    )  # it rose, by a margin
    assert evidence["train_loss"] == pytest.approx(history["loss"][-1])
    assert (
        evidence["train_loss"] <= (1 - Thresholds().train_loss_drop) * evidence["train_loss_at_lowest"]
    )  # while this fell
    assert f"epoch {evidence['lowest_at_epoch']}" in finding.message


def test_too_little_capacity_names_the_bottleneck(scenario_store):
    [finding] = scenario_findings(scenario_store, "capacity_bottleneck")
    evidence = finding.evidence
    assert finding.kind == "capacity" and finding.layer == "dense_0" and evidence["narrowest_layer_units"] == 2
    assert (
        evidence["gap_closed"] < Thresholds().capacity_fit
        and evidence["train_loss"] < 0.7 * evidence["probe_loss_before_training"]
    )
    assert f"{evidence['train_accuracy']:.3g}" in finding.message and "has 2 units" in finding.message


def test_every_new_kind_has_a_title_for_the_dashboard(scenario_store):
    for scenario in QUICK:
        for finding in scenario_findings(scenario_store, scenario.name):
            assert finding.title and finding.title != finding.kind and finding.message.startswith(finding.title + ": ")
            assert finding.fix and finding.message.endswith(finding.fix) and f"epoch {finding.epoch}" in finding.message
            json.dumps(finding.evidence)


# ----------------------------------------------------------------------------------------------------------
# Command line


def core(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", "core", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=120
    )


def test_diagnose_exit_codes(gradient_runs):  # noqa: F811
    healthy = core("diagnose", "relu_he", "--runs", gradient_runs)
    assert healthy.returncode == 0 and "no problems found" in healthy.stdout
    sick = core("diagnose", "vanishing", "--runs", gradient_runs)
    assert sick.returncode == 1 and "[vanishing_gradients] dense_0, from epoch 0" in sick.stdout
    relaxed = core("diagnose", "vanishing", "--runs", gradient_runs, "--threshold", "vanishing_ratio=1e-4", "--json")
    report = json.loads(relaxed.stdout)
    assert relaxed.returncode == 0 and report["healthy"] and report["thresholds"]["vanishing_ratio"] == 1e-4
    assert core("diagnose", "vanishing", "--runs", gradient_runs, "--threshold", "nonsense=1").returncode == 2
    assert core("diagnose", "no-such-run", "--runs", gradient_runs).returncode == 2
    assert core("diagnose", "--runs", gradient_runs).returncode == 2  # argparse: the run is required


def test_show_json_includes_the_diagnosis(gradient_runs):  # noqa: F811
    summary = json.loads(core("show", "saturated", "--runs", gradient_runs, "--json").stdout)
    assert {d["kind"] for d in summary["diagnosis"]} >= {"saturation", "learning_rate"}
    assert all(set(d) == {"kind", "layer", "epoch", "message"} for d in summary["diagnosis"])
    assert json.loads(core("show", "iris", "--runs", gradient_runs, "--json").stdout)["diagnosis"] == []


def test_diagnosis_and_show_never_import_tensorflow(gradient_runs):  # noqa: F811
    code = (
        "import sys; from core.cli import main; main(['show', 'vanishing', '--runs', sys.argv[1], '--json']); "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules), file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, gradient_runs], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.stderr.strip().splitlines()[-1] == "[]"
