"""core/capture/sink.py on its own: the frame format, and RunSink turning recorder messages into a run the reader
accepts.

The messages are built the way core/capture/recorder.py builds them (`attach`, `probe`, `snapshot` with a RawCapture,
`batch_gradients`, `epoch`, `end`), on a run created as the recorder creates it (`RunWriter`), with numpy only.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from core.capture.sink import CPU_REPORT, FRAME_HEADER, RunSink, read_frames, write_frame
from core.capture.snapshot import RawCapture
from core.store import RunStore, RunWriter

REPO = Path(__file__).resolve().parents[1]
N, FEATURES, CLASSES, COMPONENTS = 60, 4, 3, 3
WIDTHS = (5, CLASSES)  # a Dense(5, relu) then a Dense(3, softmax)


def _data():
    rng = np.random.default_rng(1)
    y = np.arange(N) % CLASSES
    x = (rng.normal(size=(N, FEATURES)) + 2.0 * np.eye(CLASSES, FEATURES)[y]).astype(np.float32)
    return x, y


def _create_run(root: str, run_id: str) -> None:
    """What the recorder writes at the start of `fit`, before the recording process takes the run over."""
    layers = [
        {
            "index": 0,
            "name": "dense",
            "type": "Dense",
            "output_shape": [None, WIDTHS[0]],
            "params": 25,
            "activation": "relu",
            "weights": ["kernel", "bias"],
        },
        {
            "index": 1,
            "name": "output",
            "type": "Dense",
            "output_shape": [None, WIDTHS[1]],
            "params": 18,
            "activation": "softmax",
            "weights": ["kernel", "bias"],
        },
    ]
    RunWriter(
        root,
        run_id,
        {
            "name": "sink unit",
            "layers": layers,
            "model": {"name": "m", "params": 43},
            "probe": {"size": N, "has_labels": True, "input_shape": [FEATURES], "plane": False},
            "every": 1,
            "batch_every": None,
            "grad_every": 2,
            "components": COMPONENTS,
            "seed": 0,
            "epochs_planned": 2,
            "epochs_done": 0,
            "snapshots": 0,
        },
    )


def _raw(epoch: int, x: np.ndarray) -> RawCapture:
    """A capture of a tiny MLP with weights that depend on the epoch, computed with numpy."""
    rng = np.random.default_rng(epoch)
    w1 = rng.normal(size=(FEATURES, WIDTHS[0])).astype(np.float32)
    w2 = rng.normal(size=(WIDTHS[0], WIDTHS[1])).astype(np.float32)
    hidden = np.maximum(x @ w1, 0.0)
    logits = hidden @ w2
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    weights = [
        {"kernel": w1, "bias": np.zeros(WIDTHS[0], np.float32)},
        {"kernel": w2, "bias": np.zeros(WIDTHS[1], np.float32)},
    ]
    grads = [{role: 0.01 * np.ones_like(value) for role, value in layer.items()} for layer in weights]
    logs = {} if epoch == 0 else {"loss": 1.0 / epoch, "accuracy": 0.5}
    return RawCapture(
        kind="epoch",
        epoch=epoch,
        step=4 * epoch,
        batch=None,
        logs=logs,
        outputs=[hidden, probs],
        predictions=probs,
        loss=0.9,
        weights=weights,
        weight_grads=grads,
        output_grad_norms=[0.5, 0.25],
    )


def _messages(root: str, run_id: str) -> list[tuple]:
    x, y = _data()
    builder = {
        "activations": ["relu", "softmax"],
        "labels": y,
        "components": COMPONENTS,
        "seed": 0,
        "kernel_layer": 0,
        "logits": False,
    }
    probe = {
        "arrays": {"indices": np.arange(N, dtype=np.int64), "y": y.astype(np.int64), "x": x},
        "x": x,
        "components": COMPONENTS,
        "seed": 0,
    }
    history = {"epoch": [1, 2], "loss": [1.0, 0.5], "accuracy": [0.5, 0.5]}
    return [
        ("attach", {"root": root, "run_id": run_id, "builder": builder}),
        ("probe", probe),
        ("snapshot", {"seq": 0, "raw": _raw(0, x)}),
        ("snapshot", {"seq": 1, "raw": _raw(1, x)}),
        ("batch_gradients", {"epoch": 1, "steps": np.array([2, 4]), "norms": np.array([[1.0, 2.0], [3.0, 4.0]])}),
        ("epoch", {"epoch": 1, "history": {k: v[:1] for k, v in history.items()}, "nan_epoch": None}),
        ("snapshot", {"seq": 2, "raw": _raw(2, x)}),
        ("epoch", {"epoch": 2, "history": history, "nan_epoch": None}),
        ("end", {"status": "finished", "fields": {}}),
    ]


def _check_written(root: str, run_id: str) -> None:
    """The run reads back whole: metadata, probe, baseline, three snapshots, history and batch gradients."""
    summaries = {s.id: s for s in RunStore(root).list_runs()}
    assert summaries[run_id].status == "finished" and not summaries[run_id].damaged
    run = RunStore(root).run(run_id)
    assert run.status == "finished"
    assert run.meta["snapshots"] == 3 and run.meta["epochs_done"] == 2 and run.meta["nan_epoch"] is None
    assert [s.seq for s in run.snapshots()] == [0, 1, 2]
    assert run.epochs() == [0, 1, 2]
    assert run.damaged_files() == {}
    assert not run.lost_snapshots()
    x, y = _data()
    probe = run.probe()
    np.testing.assert_array_equal(probe.y, y)
    np.testing.assert_array_equal(probe.x, x)
    assert probe.input_pca.shape == (N, COMPONENTS)
    baseline = run.meta["input"]
    assert len(baseline["explained_variance_ratio"]) == COMPONENTS
    assert 0.0 <= baseline["linear_probe"] <= 1.0 and "separation" in baseline
    assert run.history() == {"epoch": [1, 2], "loss": [1.0, 0.5], "accuracy": [0.5, 0.5]}
    steps, norms = run.batch_gradient_norms()
    np.testing.assert_array_equal(steps, [2, 4])
    np.testing.assert_array_equal(norms, np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    last = run.snapshots()[-1]
    assert last.meta["epoch"] == 2 and last.meta["step"] == 8 and last.meta["logs"] == {"loss": 0.5, "accuracy": 0.5}
    assert last.array("L0/pca").shape == (N, COMPONENTS)
    assert last.array("pred/probs").shape == (N, CLASSES)
    np.testing.assert_array_equal(last.array("L0/kernel"), _raw(2, x).weights[0]["kernel"])  # kernel_layer=0
    assert "L1/kernel" not in last.keys()
    record = last.layer(0)
    assert record["grad"]["kernel"]["norm"] == pytest.approx(0.01 * np.sqrt(FEATURES * WIDTHS[0]), rel=1e-5)
    assert record["grad"]["output"] == {"norm": 0.5}
    assert set(record["update_ratio"]) == {"kernel", "bias"}  # a previous snapshot's weights were known
    assert run.snapshots()[0].layer(0)["update_ratio"] == {}
    assert np.asarray(last.meta["cka"]).shape == (2, 2)


# ----------------------------------------------------------------------------------------------------------------
# Frames


def test_frames_round_trip_through_bytesio():
    messages = [("attach", {"a": 1}), ("snapshot", {"seq": 3, "raw": np.arange(5.0)}), ("end", {"fields": {}})]
    stream = io.BytesIO()
    for message in messages:
        write_frame(stream, message)
    stream.seek(0)
    back = list(read_frames(stream))
    assert [m[0] for m in back] == ["attach", "snapshot", "end"]
    assert back[0] == messages[0] and back[2] == messages[2]
    np.testing.assert_array_equal(back[1][1]["raw"], np.arange(5.0))
    # Each frame begins with the pickle's length and the count of its out-of-band buffers, little-endian.
    data = stream.getvalue()
    first, buffers = FRAME_HEADER.unpack(data[: FRAME_HEADER.size])
    assert FRAME_HEADER.size == 12 and 0 < first < len(data) and buffers == 0


def test_arrays_cross_out_of_band_and_are_read_without_a_copy():
    outputs = np.arange(250_000, dtype=np.float32).reshape(500, 500)  # 1 MB
    message = ("snapshot", {"outputs": [outputs, np.asfortranarray(outputs), outputs[::2, ::3]], "epoch": 1})
    stream = io.BytesIO()
    write_frame(stream, message)
    data = stream.getvalue()
    size, count = FRAME_HEADER.unpack_from(data)
    assert count == 2 and size < 200_000  # the contiguous arrays' memory is not in the pickle; the strided copy is
    assert data.endswith(outputs.tobytes() + np.asfortranarray(outputs).tobytes(order="A"))
    ((kind, payload),) = read_frames(io.BytesIO(data))
    assert kind == "snapshot" and payload["epoch"] == 1
    for back, sent in zip(payload["outputs"], message[1]["outputs"]):
        np.testing.assert_array_equal(back, sent)
    whole, fortran, strided = payload["outputs"]
    assert fortran.flags.f_contiguous and not whole.flags.owndata and not fortran.flags.owndata  # views of the read
    assert whole.flags.writeable  # the sink may work on them in place


def test_frames_round_trip_through_a_real_pipe():
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as writer:
        for i in range(20):
            write_frame(writer, ("epoch", {"epoch": i, "values": list(range(i))}))
    with os.fdopen(read_fd, "rb") as reader:
        back = list(read_frames(reader))
    assert [m[1]["epoch"] for m in back] == list(range(20))
    assert back[7] == ("epoch", {"epoch": 7, "values": list(range(7))})


# inside the second header; inside its buffer lengths; inside its pickle; inside its array's buffer
@pytest.mark.parametrize("cut", [3, FRAME_HEADER.size + 5, FRAME_HEADER.size + 20, -5])
def test_a_truncated_last_frame_ends_the_frames_quietly(cut):
    whole = io.BytesIO()
    write_frame(whole, ("probe", {"k": 1}))
    first = len(whole.getvalue())
    write_frame(whole, ("snapshot", {"seq": 0, "data": "x" * 100, "outputs": np.zeros(1000)}))
    cut = cut if cut > 0 else len(whole.getvalue()) - first + cut
    truncated = io.BytesIO(whole.getvalue()[: first + cut])
    assert list(read_frames(truncated)) == [("probe", {"k": 1})]


def test_an_empty_stream_has_no_frames():
    assert list(read_frames(io.BytesIO(b""))) == []


# ----------------------------------------------------------------------------------------------------------------
# RunSink


def test_run_sink_writes_a_valid_run_from_recorder_messages(tmp_path):
    root = str(tmp_path)
    _create_run(root, "r1")
    sink = RunSink(strict=True)
    stream = io.BytesIO()  # the messages go through the frame format, as to the child process
    for message in _messages(root, "r1"):
        write_frame(stream, message)
    stream.seek(0)
    for message in read_frames(stream):
        sink.handle(message)
    assert sink.writer is not None and sink.builder is not None
    _check_written(root, "r1")


def test_the_sink_child_process_writes_the_run_and_reports_cpu_once_per_message(tmp_path):
    root = str(tmp_path)
    _create_run(root, "child")
    stream = io.BytesIO()
    messages = _messages(root, "child")
    for message in messages:
        write_frame(stream, message)
    result = subprocess.run(
        [sys.executable, "-m", "core.capture.sink", "--report-cpu"],
        input=stream.getvalue(),
        capture_output=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert len(result.stdout) == CPU_REPORT.size * len(messages)
    seconds = [CPU_REPORT.unpack_from(result.stdout, i * CPU_REPORT.size)[0] for i in range(len(messages))]
    assert seconds == sorted(seconds) and seconds[0] >= 0.0  # CPU seconds so far: never decreasing
    _check_written(root, "child")
    assert RunStore(root).run("child").meta["pid"] != os.getpid()  # the child took the run over


def test_the_sink_child_process_finishes_what_it_received_when_input_is_cut(tmp_path):
    root = str(tmp_path)
    _create_run(root, "cut")
    stream = io.BytesIO()
    messages = _messages(root, "cut")[:3]  # attach, probe, snapshot 0
    for message in messages:
        write_frame(stream, message)
    data = stream.getvalue() + FRAME_HEADER.pack(1000, 0) + b"partial"  # a writer killed mid-frame
    result = subprocess.run(
        [sys.executable, "-m", "core.capture.sink"], input=data, capture_output=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout == b""  # no --report-cpu: nothing written back
    run = RunStore(root).run("cut")
    assert [s.seq for s in run.snapshots()] == [0] and run.meta["snapshots"] == 1
    assert run.meta["status"] == "running"  # no `end` arrived


def test_a_failing_message_warns_once_and_later_messages_still_apply(tmp_path):
    root = str(tmp_path)
    _create_run(root, "warn")
    messages = _messages(root, "warn")
    sink = RunSink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sink.handle(messages[2])  # a snapshot before `attach`: there is no builder yet
        sink.handle(("no_such_kind", {}))
        for message in messages:
            sink.handle(message)
    recorded = [
        w for w in caught if issubclass(w.category, RuntimeWarning) and "Strata could not record" in str(w.message)
    ]
    assert len(recorded) == 1
    assert "snapshot" in str(recorded[0].message) and "Training continues" in str(recorded[0].message)
    _check_written(root, "warn")


def test_a_strict_sink_raises_the_error(tmp_path):
    sink = RunSink(strict=True)
    with pytest.raises(AttributeError):
        sink.handle(("no_such_kind", {}))
    with pytest.raises(TypeError):
        sink.handle(("end", {"status": "finished"}))  # `fields` missing


def test_an_unknown_status_is_refused_by_the_writer(tmp_path):
    root = str(tmp_path)
    _create_run(root, "status")
    sink = RunSink(strict=True)
    sink.handle(_messages(root, "status")[0])
    with pytest.raises(ValueError, match="status must be one of"):
        sink.handle(("end", {"status": "done", "fields": {}}))
    assert RunStore(root).run("status").meta["status"] == "running"
