"""`python -m core`: train prints the run id last, the read commands summarise it, bad input reads as a message."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import CORE, run_python

from core.store import RunStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _core(*args, check=True):
    if args[0] in ("train", "recover"):  # they load TensorFlow anyway: forked from a process that has
        result = run_python(CORE, *args, timeout=300, check=False)
    else:  # a fresh process, as the read commands' import of TensorFlow matters
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        result = subprocess.run(
            [sys.executable, "-m", "core", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
        )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cli_runs"))
    result = _core(
        "train", "--dataset", "moons", "--hidden", "8,8", "--epochs", "2", "--runs", root, "--name", "cli moons"
    )
    return root, result


def test_train_prints_the_run_id_last_and_progress_per_epoch(trained):
    root, result = trained
    run_id = result.stdout.strip().splitlines()[-1]
    assert os.path.isfile(os.path.join(root, run_id, "run.json"))
    assert "epoch 2/2" in result.stderr


def test_runs_lists_status_dataset_and_epochs(trained):
    root, result = trained
    listing = _core("runs", "--runs", root).stdout
    run_id = result.stdout.strip().splitlines()[-1]
    line = next(line for line in listing.splitlines() if line.startswith(run_id))
    assert "finished" in line and "moons" in line and "2/2" in line


def test_show_json_is_a_complete_machine_readable_summary(trained):
    root, result = trained
    run_id = result.stdout.strip().splitlines()[-1]
    summary = json.loads(_core("show", run_id, "--runs", root, "--json").stdout)
    assert summary["id"] == run_id and summary["status"] == "finished"
    assert [layer["name"] for layer in summary["layers"]] == ["dense_0", "dense_1", "output"]
    assert {"type", "output_shape", "params"} <= set(summary["layers"][0])
    assert summary["epochs"] == [0, 1, 2]
    assert len(summary["metrics"]["loss"]) == 2 and len(summary["metrics"]["val_accuracy"]) == 2
    dense = summary["per_layer"]["dense_0"]
    assert len(dense["gradient_norm"]) == 3 and all(g > 0 for g in dense["gradient_norm"])
    assert len(dense["explained_variance_ratio"][0]) == 8
    assert summary["probe_accuracy"]["input"] is not None
    assert np.asarray(summary["cka"]["matrix"]).shape == (3, 3)


def test_csv_data_set_with_a_label_column(tmp_path):
    rows = ["a,b,c,species"] + [f"{i % 7},{(i * 3) % 5},{i % 2},{'x' if i % 2 else 'y'}" for i in range(60)]
    path = tmp_path / "data.csv"
    path.write_text("\n".join(rows))
    result = _core(
        "train",
        "--dataset",
        str(path),
        "--label-column",
        "species",
        "--hidden",
        "4",
        "--epochs",
        "1",
        "--runs",
        str(tmp_path / "runs"),
        "--quiet",
        "--budget",
        "0.01",
    )
    run = RunStore(str(tmp_path / "runs")).run(result.stdout.strip().splitlines()[-1])
    # With a budget, snapshots may be written after training: the id is printed once they all are.
    assert run.status == "finished" and run.epochs() == [0, 1] and run.meta["config"]["budget"] == 0.01


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--dataset", "nope"], "Unknown dataset 'nope'"),
        (["train", "--activation", "relux", "--epochs", "1"], "relux"),
        (["train", "--hidden", "12,,x"], "hidden"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--budget", "2"], "--budget must be a share of training's time in (0, 1]"),
        (["show", "../etc"], "Invalid run id"),
        (["show", "no-such-run"], "No run 'no-such-run'"),
    ],
)
def test_bad_input_is_a_message_and_exit_code_2(tmp_path, args, message):
    result = _core(*args, "--runs", str(tmp_path), check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_read_commands_do_not_import_tensorflow(trained):
    root, _ = trained
    code = (
        "import sys, runpy; sys.argv = ['core', 'runs', '--runs', %r];"  # noqa: UP031
        "import core.cli; core.cli.main(sys.argv[1:]);"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'" % root
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)


@pytest.mark.parametrize("args", [["--dataset", "nope"], ["--hidden", "12,,x"], ["--epochs", "0"], ["--dropout", "1"]])
def test_bad_train_arguments_are_refused_before_tensorflow_loads(args):
    """A typo costs a fraction of a second, not the ten it takes to load TensorFlow first."""
    code = (
        "import sys, core.cli\n"
        f"code = core.cli.main(['train', *{args!r}])\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'Keras loaded before the check'\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "error:" in result.stderr and "Keras loaded" not in result.stderr
