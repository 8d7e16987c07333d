"""Where the recording process spends its CPU: the numpy analysis and writes of one recorded `fit`, part by part.

Records the issue-2 workload once (digits, MLP 64-128-64-32-10, 30 epochs, a probe of 1,000 samples, a capture
every epoch) while keeping a copy of every message the Recorder sends its child process. Then replays those
messages through `RunSink` in this process, `--repeats` times, with a timer around each part of the analysis,
and prints each part's time per snapshot (epoch messages' writes spread over the snapshots too) and its share
of the time spent on all messages. One process, one thread (the child runs
with one BLAS thread too), so the shares compare like with like even on a noisy machine.

    python bench/bench_analysis.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"  # as in the recording process; must be set before numpy loads

from core import store  # noqa: E402
from core.analysis import measures  # noqa: E402
from core.capture import snapshot, worker  # noqa: E402
from core.capture.sink import RunSink  # noqa: E402

PARTS = [  # (owner, attribute, label): what the analysis of one snapshot is made of
    (measures, "linear_probe", "linear probes"),
    (measures, "class_separation", "class separation (silhouette)"),
    (measures, "activation_stats", "activation statistics"),
    (snapshot.SnapshotBuilder, "_unit_rankings", "top samples per unit"),
    (measures, "pca", "PCA"),
    (measures, "align_pca", "PCA alignment"),
    (measures, "cka_matrix", "CKA between layers"),
    (measures, "tensor_stats", "gradient statistics"),
    (store.RunWriter, "write_snapshot", "writing the snapshot"),
    (store.RunWriter, "update_meta", "rewriting run.json"),
    (store.RunWriter, "write_history", "writing history.json"),
]


def recorded_messages(epochs: int) -> list[tuple]:
    """Every message a Recorder sends while recording the workload, in order. TensorFlow is imported here only,
    for recording them; the replay is numpy-only."""
    from core import Recorder
    from core.training.datasets import load_dataset, stratified_subset
    from core.training.models import ModelConfig, build_model

    messages = []
    send = worker.write_frame

    def keeping(stream, message):
        messages.append(message)
        send(stream, message)

    worker.write_frame = keeping
    try:
        data = load_dataset("digits")
        rows = stratified_subset(data.y, 1000, seed=0)
        model = build_model((64,), 10, ModelConfig(hidden=(128, 64, 32), activation="relu", optimizer="adam", seed=0))
        with tempfile.TemporaryDirectory() as root:
            recorder = Recorder(root, probe=(data.x[rows], data.y[rows]), name="bench", analysis="process")
            model.fit(data.x, data.y, epochs=epochs, batch_size=32, callbacks=[recorder], verbose=0)
    finally:
        worker.write_frame = send
    return messages


def timed_parts(spent: dict) -> None:
    """Wrap each part so the time spent in it adds up in `spent[label]`."""
    for owner, name, label in PARTS:
        function = getattr(owner, name)

        @functools.wraps(function)
        def timed(*args, _function=function, _label=label, **kwargs):
            start = time.perf_counter()
            try:
                return _function(*args, **kwargs)
            finally:
                spent[_label] += time.perf_counter() - start

        setattr(owner, name, timed)


def replay(messages: list[tuple], spent: dict) -> None:
    with tempfile.TemporaryDirectory() as root:
        sink = RunSink()
        for kind, payload in messages:
            if kind == "start":
                payload = dict(payload, root=root)
            start = time.perf_counter()
            sink.handle((kind, payload))
            spent[f"all '{kind}' messages"] += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    messages = recorded_messages(args.epochs)
    snapshots = sum(kind == "snapshot" for kind, _ in messages)
    spent: dict[str, float] = collections.defaultdict(float)
    replay(messages, spent)  # warm-up: caches, first-touch allocations
    spent.clear()
    timed_parts(spent)
    for _ in range(args.repeats):
        replay(messages, spent)
    total = sum(seconds for label, seconds in spent.items() if label.startswith("all "))
    print(
        f"digits MLP 64-128-64-32-10, {args.epochs} epochs, probe 1000: {len(messages)} messages, {snapshots} "
        f"snapshots, replayed {args.repeats} times in one thread"
    )
    print(f"{'part':<32} {'ms per snapshot':>15} {'share':>6}")
    for label, seconds in sorted(spent.items(), key=lambda item: (item[0].startswith("all "), -item[1])):
        print(f"{label:<32} {seconds / args.repeats / snapshots * 1000:>15.2f} {seconds / total:>6.0%}")
    print(f"\nPer recorded fit: {total / args.repeats:.2f} s of analysis and writes, in one thread.")


if __name__ == "__main__":
    main()
