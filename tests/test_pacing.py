"""Pacing: while training runs, recording work beside it takes at most `budget` of its wall time; the snapshots
held back for it are written after `fit` returns, each with the weights of its own moment."""

import os
import textwrap
import threading
import time

import numpy as np
import pytest
from conftest import run_python

from core.capture import worker
from core.capture.worker import Pacer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_pacer_lets_work_take_its_share_of_the_time_since_training_began():
    clock = _Clock()
    pacer = Pacer(0.1, clock)
    assert pacer.delay() == 0  # no training: nothing waits
    pacer.training(True)
    pacer.spend(0.05)  # 50 ms of work at once: earned after 0.5 s at 10%
    assert pacer.delay() == pytest.approx(0.5)
    clock.now += 0.2
    assert pacer.delay() == pytest.approx(0.3)
    clock.now += 0.3
    assert pacer.delay() == 0
    pacer.training(True)  # still the same training: the account carries on
    pacer.spend(0.02)
    assert pacer.delay() == pytest.approx(0.2)
    pacer.training(False)  # training over: the backlog runs at once
    assert pacer.delay() == 0
    pacer.training(True)  # a new training starts a new account
    assert pacer.delay() == 0
    assert Pacer(None, clock).delay() == 0


class _ListWorker(worker._QueuedWorker):
    def __init__(self, budget):
        self.delivered = []
        super().__init__("test-worker", budget)

    def _deliver(self, message, entry):
        self.delivered.append(message)


@pytest.fixture
def busy_training(monkeypatch):
    """Training runs in this process, and counts as using the CPU however idle the test process is; calling the
    fixture's value ends it."""
    monkeypatch.setattr(worker, "_idle_seconds", lambda: None)  # idle time unknown: only the budget applies
    running = [True]
    worker.TRAINING.began()

    def end():
        if running:
            running.clear()
            worker.TRAINING.ended()

    yield end
    end()


def _slow(name, seconds=0.02):
    def work():
        time.sleep(seconds)
        return ("snapshot", name)

    return work


def test_work_beyond_the_budget_waits_for_training_to_end_and_plain_messages_never_wait(busy_training):
    pool = _ListWorker(budget=0.001)  # 20 ms of work earns the next piece after 20 s of training
    try:
        pool.submit(_slow("a"))
        pool.submit(_slow("b"))
        pool.submit(("epoch", 1))
        deadline = time.monotonic() + 5
        while len(pool.delivered) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        # "b" is held back; the epoch's loss is not (it may overtake "a", which it does not depend on).
        assert sorted(pool.delivered) == [("epoch", 1), ("snapshot", "a")]
        assert pool.waiting == 1
        busy_training()  # training ends: what was held back runs, in order, before the last message
    finally:
        pool.finish(("end", "finished"))  # a failed assertion must not leave the worker to the wait at exit
    assert pool.wait(5)
    assert pool.delivered[2:] == [("snapshot", "b"), ("end", "finished")]


def test_held_back_work_runs_anyway_once_it_holds_too_much_memory(busy_training, monkeypatch):
    monkeypatch.setattr(worker, "MAX_DEFERRED_BYTES", 250)
    pool = _ListWorker(budget=0.001)
    for name in "abcd":
        pool.submit(_slow(name), nbytes=100)
    deadline = time.monotonic() + 5
    while len(pool.delivered) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    try:
        # "a" ran within the budget; holding b, c, d (300 bytes) is over the cap, so "b" ran too; c, d fit in it.
        assert pool.delivered == [("snapshot", "a"), ("snapshot", "b")] and pool.deferred_bytes == 200
    finally:
        pool.finish()
        busy_training()
    assert pool.wait(5) and [name for _, name in pool.delivered] == list("abcd")


def test_when_training_leaves_the_cpu_idle_held_back_work_runs(monkeypatch):
    # Training that waits on data, a GPU or a sleep leaves the machine idle: work beside it then costs nothing.
    # The machine's idle counter is injected (every core idle, however loaded the machine running the test is).
    monkeypatch.setattr(worker, "_idle_seconds", lambda: time.monotonic() * 4)
    worker.TRAINING.began()
    pool = _ListWorker(budget=0.001)
    try:
        for name in "abc":
            pool.submit(_slow(name))
        deadline = time.monotonic() + 30
        while len(pool.delivered) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # this process idles, as a training thread blocked on input would
        assert [name for _, name in pool.delivered] == list("abc")
    finally:
        worker.TRAINING.ended()
        pool.finish()
    assert pool.wait(5)


def test_a_process_never_hangs_at_exit_on_work_that_does_not_finish(monkeypatch, capsys):
    pool = _ListWorker(budget=None)
    release = threading.Event()
    pool.submit(lambda: release.wait(60) and None)  # a write stuck on a dead disk, say
    try:
        worker.wait_for_all(report_after=0.05, timeout=0.2)  # returns: the journal keeps the rest
        assert "gave up waiting" in capsys.readouterr().err
    finally:
        release.set()
        pool.finish()
    assert pool.wait(10)


keras = pytest.importorskip("keras")

from core import Recorder  # noqa: E402
from core.store import RunStore  # noqa: E402


class _Kernels(keras.callbacks.Callback):
    """The first layer's kernel whenever the recorder captures an epoch: before training and after each epoch."""

    def __init__(self):
        super().__init__()
        self.kernels = []

    def on_train_begin(self, logs=None):
        self.kernels.append(self.model.layers[0].kernel.numpy().copy())

    def on_epoch_end(self, epoch, logs=None):
        self.kernels.append(self.model.layers[0].kernel.numpy().copy())


def _model_and_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2, activation="softmax")]
    )
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy", metrics=["accuracy"])  # weights move
    return model, x, y


def test_snapshots_held_back_during_fit_are_written_after_it_each_with_its_own_weights(tmp_path, busy_training):
    model, x, y = _model_and_data()
    recorder = Recorder(str(tmp_path), probe=(x, y), budget=0.0001, analysis="thread")
    kernels = _Kernels()
    model.fit(x, y, epochs=4, batch_size=16, callbacks=[recorder, kernels], verbose=0)

    # Another training still runs in this process (the fixture's), so the backlog keeps waiting for the budget.
    at_return = RunStore(str(tmp_path)).run(recorder.run_id)
    deadline = time.monotonic() + 10
    while at_return.history().get("epoch") != [1, 2, 3, 4] and time.monotonic() < deadline:
        time.sleep(0.05)  # the last epoch's message is handed over as fit returns
    assert at_return.history()["epoch"] == [1, 2, 3, 4]  # each epoch's loss is written at once...
    assert (
        at_return.refresh() is not None and at_return.status == "running" and len(at_return.snapshots()) <= 1
    )  # ...snapshots held back
    busy_training()
    assert recorder.wait(60)

    run = RunStore(str(tmp_path)).run(recorder.run_id)
    assert run.status == "finished" and run.epochs() == [0, 1, 2, 3, 4]
    norms = [s.layer(0)["weight_norm"]["kernel"] for s in run.epoch_snapshots()]
    assert norms == pytest.approx([np.linalg.norm(k) for k in kernels.kernels], rel=1e-5)
    assert len(set(np.round(norms, 4))) == 5  # the weights did move: each snapshot shows its own epoch


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys
    import keras, numpy as np
    from core import Recorder
    from core.capture import worker
    from core.store import RunStore
    worker._idle_seconds = lambda: None  # idle time unknown: this fit counts as busy, its snapshots wait for the budget

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32"); y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    recorder = Recorder({root!r}, probe=(x, y), run_id="exit", budget=0.0001)
    model.fit(x, y, epochs=6, batch_size=16, verbose=0, callbacks=[recorder])
    print("AT RETURN", len(RunStore({root!r}).run("exit").snapshots()), flush=True)
    """
)


def test_the_process_waits_at_exit_for_the_snapshots_held_back(tmp_path):
    script = EXIT_SCRIPT.format(repo=REPO, root=str(tmp_path))
    result = run_python(script)
    at_return = int(result.stdout.split("AT RETURN")[1])
    run = RunStore(str(tmp_path)).run("exit")
    assert at_return < 7 and run.status == "finished" and run.epochs() == list(range(7))
