"""The recovery journal and `python -m core recover`: snapshots a budget held back survive a SIGKILL of training.

`killed_runs` (conftest) records a deterministic fit twice in one subprocess: live (`budget=None`, the reference)
and with the default budget, SIGKILLed as soon as `fit` returns, while its snapshots are still held back in
memory. Recovering the killed run must give the reference's snapshots.
"""

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import CORE, KILLED_EPOCHS, run_python

from core import cli
from core.store import RunStore, RunWriter, StoreError
from core.store.journal import JOURNAL_DIR, Journal

REPO = Path(__file__).resolve().parents[1]
EPOCHS = KILLED_EPOCHS


@pytest.fixture
def killed_root(killed_runs, tmp_path) -> str:
    """A private copy of the store, for a test that recovers the killed run."""
    shutil.copytree(killed_runs, tmp_path / "runs")
    return str(tmp_path / "runs")


def _assert_same_snapshots(recovered, reference):
    assert [s.meta["epoch"] for s in recovered] == [s.meta["epoch"] for s in reference]
    for mine, theirs in zip(recovered, reference):
        assert mine.meta["step"] == theirs.meta["step"]
        np.testing.assert_allclose(mine.array("L0/kernel"), theirs.array("L0/kernel"), atol=1e-6)
        for index in range(3):
            # Axes aligned as the live run's were: no sign flip or swap, at the boundary of a resumed recovery too.
            np.testing.assert_allclose(mine.array(f"L{index}/pca"), theirs.array(f"L{index}/pca"), atol=1e-4)
            np.testing.assert_allclose(
                mine.array(f"L{index}/unit_mean"), theirs.array(f"L{index}/unit_mean"), atol=1e-5
            )
            for key in ("update_ratio", "weight_norm"):
                assert mine.layer(index)[key] == pytest.approx(theirs.layer(index)[key], rel=1e-4)
            assert mine.layer(index)["grad"]["kernel"]["norm"] == pytest.approx(
                theirs.layer(index)["grad"]["kernel"]["norm"], rel=1e-4
            )
        assert mine.meta["logs"] == pytest.approx(theirs.meta["logs"])


def test_a_killed_fit_leaves_its_held_back_snapshots_in_the_journal(killed_runs, capsys):
    run = RunStore(str(killed_runs)).run("killed")
    assert run.status == "interrupted"
    written = len(run.snapshots())
    assert run.unwritten_captures() + written >= EPOCHS  # at most the capture in progress at the kill is missing
    assert run.unwritten_captures() >= EPOCHS - 1 - written
    assert cli.main(["runs", "--runs", str(killed_runs)]) == 0
    out = capsys.readouterr().out
    assert f"interrupted ({run.unwritten_captures()} unwritten)" in out
    assert f"python -m core recover killed --runs {killed_runs}" in out
    assert not (killed_runs / "live" / JOURNAL_DIR).exists()  # recorded live: nothing held back, no journal


def test_recover_writes_exactly_the_snapshots_the_live_run_wrote(killed_root):
    # On a loaded machine training is slow enough that the budget lets a snapshot or two be written before the kill.
    written_before = len(RunStore(killed_root).run("killed").snapshots())
    result = run_python(CORE, "recover", "killed", "--runs", killed_root)
    store = RunStore(killed_root)
    run, reference = store.run("killed"), store.run("live")
    # The kill comes as `fit` returns: whether its end had reached the journal by then depends on the machine's load,
    # and recovery sets the status the journal names ("finished") or else "interrupted". Either way, it says which.
    assert run.status in ("finished", "interrupted")
    assert f"held-back snapshot(s); the run is {run.status}" in result.stdout
    assert "recovering killed: snapshot 1 of" in result.stderr  # progress on long work
    recovered = run.snapshots()
    _assert_same_snapshots(recovered, reference.snapshots()[: len(recovered)])
    assert len(recovered) >= EPOCHS  # every epoch but the capture in progress at the kill
    assert run.history()["loss"] == pytest.approx(reference.history()["loss"][: len(run.history()["loss"])])
    # The last epoch's log goes to the recording thread's queue just before its capture, so a kill that takes the
    # capture can take the log too: then the run says one epoch fewer, as its snapshots do.
    assert len(recovered) - 1 <= run.meta["epochs_done"] <= EPOCHS
    assert run.probe().size == reference.probe().size
    assert run.meta["recovered_snapshots"] == run.meta["snapshots"] - written_before
    assert not (Path(killed_root) / "killed" / JOURNAL_DIR).exists() and run.unwritten_captures() == 0
    assert cli.main(["recover", "killed", "--runs", killed_root]) == cli.EXIT_USAGE  # nothing left to do: a clear error


def test_an_interrupted_recovery_goes_on_where_it_stopped(killed_root):
    from core.capture.recover import recover

    def stop_after_three(done, total, entry):
        if done == 3:
            raise KeyboardInterrupt

    store = RunStore(killed_root)
    written_before = len(store.run("killed").snapshots())  # on a loaded machine, the budget may have let some through
    with pytest.raises(KeyboardInterrupt):
        recover(killed_root, "killed", stop_after_three)
    assert store.run("killed").status == "interrupted"
    assert len(store.run("killed").snapshots()) == written_before + 3
    # Resumed: its first snapshot's axes follow the third's stored coordinates, its update ratios the third's
    # journaled weights, which the journal kept until the fourth was written.
    result = recover(killed_root, "killed")
    assert result.written == len(store.run("killed").snapshots()) - written_before - 3
    recovered = store.run("killed").snapshots()
    _assert_same_snapshots(recovered, store.run("live").snapshots()[: len(recovered)])


def test_a_run_still_being_written_or_without_a_journal_is_refused(killed_runs, tmp_path):
    from core.capture.recover import recover

    with pytest.raises(StoreError, match="no journal"):
        recover(str(killed_runs), "live")
    root = str(tmp_path)
    RunWriter(root, "busy", {"epochs_planned": 2})  # run.json names this process, which is alive
    Journal(root, "busy").append("setup", {"x": np.zeros((2, 2))})
    with pytest.raises(StoreError, match="still being written by process"):
        recover(root, "busy")


CUSTOM_LAYERS = """
import keras

@keras.saving.register_keras_serializable(package="strata_test")
class Doubler(keras.layers.Layer):
    def call(self, inputs):
        return inputs * 2
"""


_BETWEEN = "--- the second attempt ---\n"
_TWO_RECOVERIES = f"""
import sys
from core.cli import main
print(f"exit {{main(['recover', 'custom', '--runs', sys.argv[1]])}}", flush=True)
sys.stdin.readline()
print({_BETWEEN!r}, end="", file=sys.stderr, flush=True)
print(f"exit {{main(['recover', 'custom', '--runs', sys.argv[1], '--import', 'strata_test_layers'])}}", flush=True)
"""


def test_custom_layers_need_their_module_named_and_then_recover(tmp_path, monkeypatch):
    import importlib

    import keras

    (tmp_path / "strata_test_layers.py").write_text(CUSTOM_LAYERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    layers = importlib.import_module("strata_test_layers")
    model = keras.Sequential([keras.Input((3,)), layers.Doubler(), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    root = str(tmp_path / "runs")
    writer = RunWriter(root, "custom", {"epochs_planned": 1})
    writer.update_meta(pid=2**22 + 12345)  # a process that is gone
    journal = Journal(root, "custom")
    builder = {
        "activations": [None, "softmax"],
        "labels": None,
        "components": 2,
        "seed": 0,
        "kernel_layer": 1,
        "logits": False,
    }
    journal.append(
        "setup",
        {
            "x": np.ones((4, 3), np.float32),
            "y": None,
            "grid": None,
            "builder": builder,
            "layers": 2,
            "variables": [[v.path, list(v.shape)] for v in model.weights],
            "model": model.to_json(),
            "compile": model.get_compile_config(),
        },
    )
    journal.append(
        "capture",
        {
            "kind": "epoch",
            "epoch": 0,
            "step": 0,
            "batch": None,
            "logs": {},
            "state": [np.asarray(v) for v in model.weights],
        },
    )

    # `recover` from the user's folder, where their module is: without naming it, then (once this test has read the
    # store) naming it; both in one process, which loads TensorFlow once. Each attempt's exit code comes on stdout.
    attempts = subprocess.Popen(
        [sys.executable, "-c", _TWO_RECOVERIES, root],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    try:
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(attempts.stdout.readline().strip()), daemon=True)
        reader.start()
        reader.join(240)
        if first != [f"exit {cli.EXIT_USAGE}"]:
            attempts.kill()
            pytest.fail(
                f"the first attempt gave {first} (within 240 s):\n{attempts.communicate(timeout=30)[1][-2000:]}"
            )
        assert RunStore(root).run("custom").unwritten_captures() == 1  # the journal stays for a later attempt
        out, err = attempts.communicate("go on\n", timeout=240)
    finally:
        if attempts.poll() is None:
            attempts.kill()
            attempts.wait(30)
    assert _BETWEEN in err, err[-2000:]
    failed = err.split(_BETWEEN)[0]  # what the first attempt wrote
    assert "--import MODULE" in failed and "register_keras_serializable" in failed
    assert attempts.returncode == 0 and out.strip().splitlines()[-1] == "exit 0", err[-2000:]
    run = RunStore(root).run("custom")
    assert run.unwritten_captures() == 0 and len(run.snapshots()) == 1
    np.testing.assert_allclose(
        run.snapshots()[0].array("pred/probs"), model.predict(np.ones((4, 3), np.float32), verbose=0), atol=1e-6
    )


def test_a_complete_run_leaves_no_journal_and_a_journal_failure_only_warns(tmp_path, monkeypatch):
    import keras

    from core import Recorder
    from core.store import journal

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")

    def fit(recorder):
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2, activation="softmax")]
        )
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(x, y, epochs=3, batch_size=16, callbacks=[recorder], verbose=0)
        assert recorder.wait(60)
        return RunStore(str(tmp_path)).run(recorder.run_id)

    for analysis in ("process", "thread"):
        run = fit(Recorder(str(tmp_path), probe=(x, y), analysis=analysis))
        assert run.status == "finished" and run.epochs() == [0, 1, 2, 3]
        assert not (tmp_path / run.id / JOURNAL_DIR).exists()

    def disk_full(self, kind, payload):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal.Journal, "append", disk_full)
    with pytest.warns(RuntimeWarning, match="recovery journal.*No space left"):
        run = fit(Recorder(str(tmp_path), probe=(x, y)))
    assert run.status == "finished" and run.epochs() == [0, 1, 2, 3]  # recorded all the same
    assert not (tmp_path / run.id / JOURNAL_DIR).exists()


def test_a_journal_that_outlived_a_complete_run_is_only_cleared(tmp_path):
    """The training process was killed after the recording process wrote everything, end included, but before it
    deleted the journal: recovering writes nothing and keeps the status."""
    from core.capture.recover import recover

    root = str(tmp_path)
    writer = RunWriter(root, "done", {"epochs_planned": 1})
    Journal(root, "done").append("setup", {"x": np.zeros((2, 2)), "builder": {"activations": [], "labels": None}})
    writer.set_status("finished", pid=2**22 + 12345)
    result = recover(root, "done")
    assert (result.written, result.status) == (0, "finished")
    assert RunStore(root).run("done").status == "finished" and not (tmp_path / "done" / JOURNAL_DIR).exists()
