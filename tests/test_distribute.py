"""Recording under tf.distribute: MirroredStrategy on two logical CPU devices, and a MultiWorkerMirroredStrategy
job of two real worker processes on loopback (TF_CONFIG), where only the chief writes the run.

Each training runs in its own subprocess (a strategy, and TF_CONFIG, are per process). The reference is the same
seeded model recorded in one process without a strategy: the first snapshot (taken before any update, so on the
same weights) must hold the same values within float tolerance.

Keras 3's `fit` does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585: it fails converting a
PerReplica batch), so the multi-worker job trains with a custom loop, as Keras 3 users do there, and drives the
Recorder through `keras.callbacks.CallbackList` exactly as `fit` would.
"""

import os
import signal
import socket
import subprocess
import time
from subprocess import PIPE

import numpy as np
import pytest
from conftest import CORE, python_process, run_python

from core.store import RunStore

SCRIPT = r"""
import json, os, sys
mode, root = sys.argv[1], sys.argv[2]
if mode == "worker":
    index, ports = int(sys.argv[3]), sys.argv[4].split(",")
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                          "task": {"type": "worker", "index": index}})
import tensorflow as tf
if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from core import Recorder

EPOCHS = int(os.environ.get("EPOCHS", "3"))
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 4)).astype("float32")
y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")
strategy = {"single": None, "mirrored": lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
            "worker": tf.distribute.MultiWorkerMirroredStrategy}[mode]
strategy = strategy() if strategy else tf.distribute.get_strategy()
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(6, activation="relu"), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy", metrics=["accuracy"])
budget = None if os.environ.get("BUDGET") == "none" else float(os.environ.get("BUDGET", "0.03"))
recorder = Recorder(log_dir=root, probe=(x[:120], y[:120]), run_id=f"{mode}-run", budget=budget, seed=0)
if mode != "worker":
    model.fit(x, y, epochs=EPOCHS, batch_size=32, callbacks=[recorder], verbose=0, shuffle=False)
else:
    loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction="none")
    data = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(32))

    @tf.function
    def step(batch):
        def replica(xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.nn.compute_average_loss(loss_fn(yb, model(xb, training=True)), global_batch_size=32)
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss
        return strategy.reduce("SUM", strategy.run(replica, args=batch), axis=None)

    callbacks = keras.callbacks.CallbackList([recorder], model=model)
    callbacks.on_train_begin()
    for epoch in range(EPOCHS):
        callbacks.on_epoch_begin(epoch)
        losses = [float(step(batch)) for batch in data]
        callbacks.on_epoch_end(epoch, {"loss": float(np.mean(losses))})
        print(f"epoch {epoch} done", flush=True)
    callbacks.on_train_end()
print("done", flush=True)
"""

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "BUDGET": "none"}


def record(root, mode: str, *args: str, timeout: float = 300) -> None:
    run_python(SCRIPT, mode, str(root), *args, timeout=timeout, env=ENV)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def workers(root, extra_env=None) -> list[subprocess.Popen]:
    ports = ",".join(map(str, free_ports(2)))
    env = {**ENV, **(extra_env or {})}
    return [
        python_process(SCRIPT, "worker", str(root), str(index), ports, env=env, stdout=PIPE, stderr=PIPE)
        for index in range(2)
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    record(root, "single")
    return RunStore(str(root)).run("single-run")


def assert_same_first_snapshot(run, reference):
    mine, theirs = run.snapshots()[0], reference.snapshots()[0]
    assert mine.epoch == theirs.epoch == 0
    assert set(mine.keys()) == set(theirs.keys())
    for key in theirs.keys():  # every array: projections (up to sign), statistics, histograms, unit rankings
        a, b = mine.array(key), theirs.array(key)
        if key.endswith("/pca") or key.endswith("/plane_pca"):
            a, b = np.abs(a), np.abs(b)
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=key)
    for index in range(3):
        assert mine.layer(index)["grad"]["kernel"]["norm"] == pytest.approx(
            theirs.layer(index)["grad"]["kernel"]["norm"], rel=1e-4
        )
        assert mine.layer(index)["activation"]["dead_fraction"] == theirs.layer(index)["activation"]["dead_fraction"]


def test_mirrored_strategy_records_what_one_process_records(tmp_path, reference):
    record(tmp_path, "mirrored")
    run = RunStore(str(tmp_path)).run("mirrored-run")
    assert run.status == "finished" and run.epochs() == reference.epochs() == [0, 1, 2, 3]
    assert [layer["name"] for layer in run.layers] == [layer["name"] for layer in reference.layers]
    assert_same_first_snapshot(run, reference)


def test_in_a_multi_worker_job_only_the_chief_writes_the_run(tmp_path, reference):
    processes = workers(tmp_path)
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        assert "done" in out
    store = RunStore(str(tmp_path))
    assert [summary.id for summary in store.list_runs()] == ["worker-run"]  # one run: the chief's
    run = store.run("worker-run")
    assert run.status == "finished" and run.epochs() == [0, 1, 2, 3]
    assert_same_first_snapshot(run, reference)


def test_a_killed_chief_leaves_an_interrupted_run_that_recovers(tmp_path):
    """With the default budget, snapshots wait in the chief's memory and its journal; SIGKILL it (and so the
    job) after its second epoch: the run reads interrupted, and `recover` writes what the journal held."""
    processes = workers(tmp_path, {"EPOCHS": "200", "BUDGET": "0.03"})
    try:
        chief = processes[0]
        deadline = time.monotonic() + 240
        while "epoch 1 done" not in (line := chief.stdout.readline()):
            assert time.monotonic() < deadline and (line or chief.poll() is None), chief.stderr.read()[-3000:]
        chief.send_signal(signal.SIGKILL)
        chief.wait(30)
    finally:
        for process in processes:
            process.kill()
            process.wait(30)
    store = RunStore(str(tmp_path))
    deadline = time.monotonic() + 120  # the chief's recording process writes what it was handed, then exits
    while store.run("worker-run").status == "running":
        assert time.monotonic() < deadline, "the killed chief's recording process did not exit"
        time.sleep(0.1)
    run = store.run("worker-run")
    assert run.status == "interrupted" and [summary.id for summary in store.list_runs()] == ["worker-run"]
    assert run.unwritten_captures() + len(run.snapshots()) >= 2  # epochs 0 and 1: written, or held in the journal
    run_python(CORE, "recover", "worker-run", "--runs", str(tmp_path), env=ENV)
    run = RunStore(str(tmp_path)).run("worker-run")
    assert run.status == "interrupted" and run.epochs()[:2] == [0, 1] and run.unwritten_captures() == 0
