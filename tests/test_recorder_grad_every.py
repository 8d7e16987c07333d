"""`Recorder(grad_every=N)`: per-batch gradient norms, checked against tf.GradientTape, and how the store keeps them."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from core import Recorder  # noqa: E402
from core.store import RunStore, RunWriter  # noqa: E402


def toy(seed=0, middle=None):
    """A two-layer model; `middle` (such as a BatchNormalization layer) goes between its layers."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            *([middle] if middle else []),
            keras.layers.Dense(2, activation="softmax", name="out"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    return model, x, y


def test_norms_every_n_batches_match_gradient_tape(tmp_path):
    # With batch normalization the norms are training's: batch statistics of the probe, moving ones untouched.
    model, x, y = toy(middle=keras.layers.BatchNormalization(name="norm"))
    recorder = Recorder(str(tmp_path), probe=(x, y), grad_every=2, analysis="thread")
    model.fit(x, y, epochs=3, batch_size=16, callbacks=[recorder], verbose=0)  # 4 batches per epoch
    recorder.wait()

    run = RunStore(str(tmp_path)).run(recorder.run_id)
    steps, norms = run.batch_gradient_norms()
    assert run.meta["grad_every"] == 2
    assert steps.tolist() == [2, 4, 6, 8, 10, 12] and norms.shape == (6, 3)
    with tf.GradientTape() as tape:  # the last measurement saw the final weights
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=True), training=True)
    gradients = tape.gradient(loss, model.trainable_weights)  # hidden kernel, bias; norm gamma, beta; out kernel, bias
    expected = [
        np.sqrt(sum(float(tf.reduce_sum(g**2)) for g in pair))
        for pair in (gradients[:2], gradients[2:4], gradients[4:])
    ]
    assert np.allclose(norms[-1], expected, rtol=1e-4)
    assert len(run.epoch_snapshots()) == 4  # measuring norms takes no snapshots


class _GradientWitness(keras.callbacks.Callback):
    """Measures, at every second batch, what the recorder should: each layer's gradient norm on the live weights."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y, self.norms = x, y, []

    def on_train_batch_end(self, batch, logs=None):
        if (len(self.norms) + 1) * 2 != self._step(batch):
            return
        with tf.GradientTape() as tape:
            loss = self.model.compute_loss(
                x=self.x, y=self.y, y_pred=self.model(self.x, training=False), training=False
            )
        gradients = tape.gradient(loss, self.model.trainable_weights)
        self.norms.append(
            [np.sqrt(sum(float(tf.reduce_sum(g**2)) for g in pair)) for pair in (gradients[:2], gradients[2:])]
        )

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _step(self, batch):
        return self.epoch * self.params["steps"] + batch + 1


def test_each_measurement_holds_its_own_step_while_training_runs_on(tmp_path, monkeypatch):
    # The pass runs on the worker's thread on the weights read at its step, late on purpose here, as on a busy
    # machine: the optimizer has moved on by then, and every norm must still be the one of its own step.
    import threading
    import time

    from core.capture import recorder as recorder_module

    threads = set()
    measure = recorder_module.Recorder._gradient_norms_on

    def late(self, *args):
        threads.add(threading.current_thread().name)
        time.sleep(0.02)
        return measure(self, *args)

    monkeypatch.setattr(recorder_module.Recorder, "_gradient_norms_on", late)
    model, x, y = toy()
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")  # large steps: the norms move
    recorder = Recorder(str(tmp_path), probe=(x, y), grad_every=2, analysis="thread")
    witness = _GradientWitness(x, y)
    model.fit(x, y, epochs=3, batch_size=16, callbacks=[recorder, witness], verbose=0)
    recorder.wait()

    steps, norms = RunStore(str(tmp_path)).run(recorder.run_id).batch_gradient_norms()
    assert steps.tolist() == [2, 4, 6, 8, 10, 12]
    np.testing.assert_allclose(norms, witness.norms, rtol=1e-4)
    assert not np.allclose(norms[0], norms[-1], rtol=0.05)  # training did change them
    assert threads == {"strata-sink"}  # never the training thread


def test_grad_every_is_validated_and_off_by_default(tmp_path):
    _, x, y = toy()
    with pytest.raises(ValueError, match="grad_every=0"):
        Recorder(str(tmp_path), probe=(x, y), grad_every=0)
    plain = Recorder(str(tmp_path), probe=(x, y))
    assert "on_train_batch_end" not in vars(plain)  # no batch hook: Keras keeps dispatching callbacks asynchronously


def test_without_labels_nothing_is_measured(tmp_path):
    model, x, y = toy()
    recorder = Recorder(str(tmp_path), probe=x, grad_every=1, analysis="thread")
    model.fit(x, y, epochs=1, batch_size=16, callbacks=[recorder], verbose=0)
    recorder.wait()
    run = RunStore(str(tmp_path)).run(recorder.run_id)
    assert run.meta["grad_every"] is None and run.batch_gradient_norms()[0].size == 0


def test_reader_skips_a_half_written_epoch_file(tmp_path):
    writer = RunWriter(str(tmp_path), "r", {"layers": [{"name": "a"}, {"name": "b"}]})
    writer.write_batch_gradients(1, np.array([1, 2]), np.ones((2, 2)))
    (tmp_path / "r" / "batch_gradients" / "e000002.npz").write_bytes(b"PK\x03\x04 not finished")
    run = RunStore(str(tmp_path)).run("r")
    steps, norms = run.batch_gradient_norms()
    assert steps.tolist() == [1, 2] and norms.dtype == np.float32
    writer.write_batch_gradients(2, np.array([3]), np.zeros((1, 2)))  # finished later: read on the next call
    assert run.batch_gradient_norms()[0].tolist() == [1, 2, 3]
