"""What recording costs: wall time of `fit` with `Recorder` against plain `fit`, side by side in one process.

Workload (issue 2): digits, MLP 64-128-64-32-10 ReLU, Adam, 30 epochs, batch 32, a probe of 1,000 samples,
a capture every epoch. `recorder` is the default `Recorder` (recording work beside training paced to 3% of its
wall time, the rest analysed after `fit` returns); `recorder-live` is `Recorder(budget=None)`, which analyses
every snapshot while training runs. References measured in the same rounds: Keras's `TensorBoard(histogram_freq=1)` and
a naive capture that rebuilds an extractor model, calls `predict` and runs scikit-learn's PCA every epoch.
`recorder+grad` adds per-batch gradient norms (`grad_every`, default every 10 batches) to the recorder;
`recorder-discard` (a diagnostic) records with a child process that discards what it is sent, which separates what the
training process pays from what the analysis running beside it costs; `recorder-nojournal` (a diagnostic) is the default
`Recorder` without its recovery journal, which shows what journaling costs. `plain-pinned` and `recorder-pinned` confine
every thread of the training process to CPU 0, and the recording process to CPU 1: what recording costs when the
analysis has a core training does not use (`recorder-pinned` is compared with `plain-pinned`). Unpinned, plain `fit`
here uses the second core too. Variants are interleaved round by round, in forward then reverse order on alternate
rounds, so machine noise and drift hit them alike; the wall-time ratios are medians over rounds of each round's time
over that round's plain `fit`, shown with their interquartile range and beside the mean ratio's 95% interval. Beside
them: the training process's own CPU time during `fit` and the CPU time of the recording child process, how busy the
machine's cores were, how long after `fit` returned the run was completely written ("written +": the snapshots held back
for the budget; the next fit starts only then), the wall time spent inside the Recorder's hooks on the training thread
(its direct cost, as a share of plain `fit`), and the time the probe passes took on the recorder's worker thread, beside
training.

    python bench/bench_overhead.py [--rounds 5] [--epochs 30] [--batch-every N] [--grad-every N] [--backend jax]
    [--strategy mirrored]

`--backend` (default: `KERAS_BACKEND`, else TensorFlow) runs everything on that Keras backend; `tensorboard` needs
TensorFlow. `--strategy mirrored` trains every variant under MirroredStrategy on two logical CPU devices.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keras fixes its backend when it is imported, so --backend is read before the imports below.
if "--backend" in sys.argv[:-1]:
    os.environ["KERAS_BACKEND"] = sys.argv[sys.argv.index("--backend") + 1]

# --strategy mirrored: every fit (plain and recorded) trains under tf.distribute.MirroredStrategy on two logical
# CPU devices, which must be declared before TensorFlow initializes them.
STRATEGY = None
if "--strategy" in sys.argv[:-1] and sys.argv[sys.argv.index("--strategy") + 1] == "mirrored":
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
    STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


import keras  # noqa: E402

from core import Recorder  # noqa: E402
from core.capture import worker  # noqa: E402
from core.store import RunStore  # noqa: E402
from core.training.datasets import load_dataset, stratified_subset  # noqa: E402
from core.training.models import ModelConfig, build_model  # noqa: E402


class NaiveCapture(keras.callbacks.Callback):
    """The obvious way: a new extractor model, `predict`, and scikit-learn PCA on every layer, every epoch."""

    def __init__(self, probe_x):
        super().__init__()
        self.probe_x = probe_x

    def on_epoch_end(self, epoch, logs=None):
        from sklearn.decomposition import PCA

        layers = [layer for layer in self.model.layers if not isinstance(layer, keras.layers.InputLayer)]
        extractor = keras.Model(self.model.inputs, [layer.output for layer in layers])
        for output in extractor.predict(self.probe_x, verbose=0):
            PCA(n_components=min(10, output.shape[1])).fit_transform(output.reshape(len(output), -1))


class TimedRecorder(Recorder):
    """`Recorder`, timing the wall time its Keras hooks take on the training thread: what recording adds to `fit`
    directly (reading the weights at each capture, handing data over, waiting for the last snapshot at the
    end), apart from any slowdown the work beside training causes. `off_thread` sums the probe passes, which
    run on the worker's thread (the first one includes tracing the compiled pass)."""

    spent = 0.0
    off_thread = 0.0

    def _timed(self, hook, *args):
        start = time.perf_counter()
        try:
            return hook(*args)
        finally:
            TimedRecorder.spent += time.perf_counter() - start

    def on_train_begin(self, logs=None):
        self._timed(super().on_train_begin, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._timed(super().on_epoch_end, epoch, logs)

    def on_train_end(self, logs=None):
        self._timed(super().on_train_end, logs)

    def _on_train_batch_end(self, batch, logs=None):
        self._timed(super()._on_train_batch_end, batch, logs)

    def _snapshot_message(self, *args):
        start = time.perf_counter()
        try:
            return super()._snapshot_message(*args)
        finally:
            TimedRecorder.off_thread += time.perf_counter() - start


DISCARD = "import sys\nwhile sys.stdin.buffer.read(1 << 20):\n    pass"


class UnjournaledRecorder(TimedRecorder):
    """For `recorder-nojournal`: the default Recorder, except that it writes no recovery journal."""

    def _open_journal(self):
        return None


@contextlib.contextmanager
def discarding_child():
    """For `recorder-discard`: the recording process reads what it is sent and throws it away, so the training
    process does all its usual work (captures, hand-over) while nothing is analysed or written beside it."""
    spawn = worker.subprocess.Popen

    def popen(args, *rest, **options):
        if "core.capture.sink" in args:
            args = [sys.executable, "-c", DISCARD]
        return spawn(args, *rest, **options)

    worker.subprocess.Popen = popen
    try:
        yield
    finally:
        worker.subprocess.Popen = spawn


ALL_CPUS = os.sched_getaffinity(0)


@contextlib.contextmanager
def pinned(training_cpu: int = 0, child_cpu: int = 1):
    """For the `-pinned` variants: every thread of this process (TensorFlow's thread pools included) runs on
    `training_cpu` only, and the recording process on `child_cpu`, as if the analysis had a core of its own."""
    if len(ALL_CPUS) < 2:
        raise SystemExit("the -pinned variants need two CPUs")
    spawn = worker.subprocess.Popen

    def popen(*args, **options):
        process = spawn(*args, **options)
        os.sched_setaffinity(process.pid, {child_cpu})
        return process

    _confine({training_cpu})
    worker.subprocess.Popen = popen
    try:
        yield
    finally:
        worker.subprocess.Popen = spawn
        _confine(ALL_CPUS)


def _confine(cpus: set[int]) -> None:
    for thread in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that has just ended
            os.sched_setaffinity(int(thread), cpus)


def baseline(variant: str) -> str:
    return "plain-pinned" if variant.endswith("-pinned") else "plain"


def measured_fit(
    variant: str, data, probe, epochs: int, root: str, batch_every: int | None, grad_every: int = 10
) -> dict:
    """Wall time, this process's CPU time, child processes' CPU time and machine busy share of one `fit`."""
    before, stat_before = os.times(), _cpu_ticks()
    TimedRecorder.spent = TimedRecorder.off_thread = 0.0
    setting = {"recorder-discard": discarding_child, "plain-pinned": pinned, "recorder-pinned": pinned}.get(
        variant, contextlib.nullcontext
    )
    with setting():
        wall, finishing, fit_cpu = fit_seconds(
            variant.removesuffix("-pinned"), data, probe, epochs, root, batch_every, grad_every
        )
    after, stat_after = os.times(), _cpu_ticks()
    ticks = [b - a for a, b in zip(stat_before, stat_after)]
    busy = 1 - (ticks[3] + ticks[4]) / sum(ticks) if sum(ticks) and len(ticks) > 4 else float("nan")  # idle + iowait
    return {
        "wall": wall,
        "finishing": finishing,
        "cpu": fit_cpu,
        "child_cpu": (after.children_user - before.children_user) + (after.children_system - before.children_system),
        "busy": busy,
        "hooks": TimedRecorder.spent,
        "off_thread": TimedRecorder.off_thread,
    }


def _cpu_ticks() -> list[int]:
    try:
        with open("/proc/stat") as stat:
            return [int(v) for v in stat.readline().split()[1:9]]
    except OSError:
        return []


def fit_seconds(
    variant: str, data, probe, epochs: int, root: str, batch_every: int | None, grad_every: int = 10
) -> tuple[float, float, float]:
    """Wall time of one `fit`, how much longer until its run was completely written (untimed in the ratios), and
    this process's CPU time during the `fit`."""
    with STRATEGY.scope() if STRATEGY is not None else contextlib.nullcontext():
        model = build_model((64,), 10, ModelConfig(hidden=(128, 64, 32), activation="relu", optimizer="adam", seed=0))
    callbacks = {
        "plain": [],
        "recorder": lambda: [TimedRecorder(root, probe=probe, every=1, name="bench", batch_every=batch_every)],
        "recorder-live": lambda: [
            TimedRecorder(root, probe=probe, every=1, name="bench", batch_every=batch_every, budget=None)
        ],
        "recorder-discard": lambda: [TimedRecorder(root, probe=probe, every=1, name="bench", batch_every=batch_every)],
        "recorder-nojournal": lambda: [
            UnjournaledRecorder(root, probe=probe, every=1, name="bench", batch_every=batch_every)
        ],
        "recorder+grad": lambda: [
            TimedRecorder(root, probe=probe, every=1, name="bench", batch_every=batch_every, grad_every=grad_every)
        ],
        "tensorboard": lambda: [keras.callbacks.TensorBoard(log_dir=tempfile.mkdtemp(dir=root), histogram_freq=1)],
        "naive": lambda: [NaiveCapture(probe[0])],
    }[variant]
    callbacks = callbacks() if callable(callbacks) else callbacks
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(data.x, data.y, epochs=epochs, batch_size=32, callbacks=callbacks, verbose=0)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    for recorder in callbacks:  # the next fit must not run beside this one's held-back snapshots
        if isinstance(recorder, Recorder):
            recorder.wait()
    return wall, time.perf_counter() - start - wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-every", type=int, default=None, help="also snapshot every N batches")
    parser.add_argument("--grad-every", type=int, default=10, help="recorder+grad: gradient norms every N batches")
    parser.add_argument("--variants", default="plain,recorder,recorder+grad,tensorboard,naive")
    parser.add_argument(
        "--backend", choices=("tensorflow", "jax"), help="the Keras backend (read before Keras is imported)"
    )
    parser.add_argument(
        "--strategy",
        choices=("none", "mirrored"),
        default="none",
        help="mirrored: every fit under MirroredStrategy on two logical CPU devices (TensorFlow)",
    )
    args = parser.parse_args()
    data = load_dataset("digits")
    rows = stratified_subset(data.y, 1000, seed=0)
    probe = (data.x[rows], data.y[rows])
    variants = args.variants.split(",")
    for base in dict.fromkeys(map(baseline, variants)):
        if base not in variants:
            variants.insert(0, base)
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as root:
        fit_seconds("plain", data, probe, 1, root, None)  # warm-up: the backend's first use pays one-off costs
        for round_index in range(args.rounds):
            order = variants if round_index % 2 == 0 else variants[::-1]
            for variant in order:
                results[variant].append(
                    measured_fit(variant, data, probe, args.epochs, root, args.batch_every, args.grad_every)
                )
            print(
                f"round {round_index + 1}: " + "  ".join(f"{v} {results[v][-1]['wall']:.2f}s" for v in variants),
                flush=True,
            )
        runs = RunStore(root).list_runs()
        snapshots = len(RunStore(root).run(runs[0].id).snapshots()) if runs else 0
    print(
        f"\n{keras.backend.backend()}{' MirroredStrategy(2 CPU devices)' if STRATEGY else ''}: digits MLP "
        f"64-128-64-32-10, {args.epochs} epochs, batch 32, probe 1000, capture every epoch"
        + (f", every {args.batch_every} batches" if args.batch_every else "")
        + f" ({snapshots} snapshots per run)"
    )
    if any(v.endswith("-pinned") for v in variants):
        print("(-pinned variants: training on CPU 0 and the recording process on CPU 1; ratios against plain-pinned)")
    print(
        f"{'variant':<16} {'median fit':>10} {'wall ratio':>10} {'(IQR)':>13} {'mean (95% CI)':>19} "
        f"{'own CPU ratio':>13}"
        f" {'child CPU':>9} {'busy':>5} {'written +':>9}"
        f" {'in hooks':>14} {'probe passes':>12}"
    )
    for variant in variants:
        rows, plain = results[variant], results[baseline(variant)]
        walls = [r["wall"] / p["wall"] for r, p in zip(rows, plain)]
        cpu = statistics.median(r["cpu"] / p["cpu"] for r, p in zip(rows, plain))
        print(
            f"{variant:<16} {statistics.median(r['wall'] for r in rows):>9.2f}s {ratio_columns(walls)} {cpu:>12.2f}x"
            f" {statistics.median(r['child_cpu'] for r in rows):>8.2f}s"
            f" {statistics.median(r['busy'] for r in rows):>5.0%}"
            f" {statistics.median(r['finishing'] for r in rows):>8.2f}s" + _hooks_column(rows, plain)
        )


def ratio_columns(ratios: list[float]) -> str:
    """The median ratio, its interquartile range, and the mean with a normal-approximation 95% interval (how far
    this machine's noise leaves the answer open), as the columns 'wall ratio', '(IQR)' and 'mean (95% CI)'."""
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    mean = statistics.mean(ratios)
    half = 1.96 * statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else 0.0
    return (
        f"{statistics.median(ratios):>9.2f}x {f'({quartiles[0]:.2f}-{quartiles[2]:.2f})':>13}"
        f" {f'{mean:.2f}x ({mean - half:.2f}-{mean + half:.2f})':>19}"
    )


def _hooks_column(rows: list[dict], plain: list[dict]) -> str:
    """Median wall time in the Recorder's hooks, that time over the same round's plain `fit`, and the probe
    passes' time on the worker's thread."""
    if not any(r["hooks"] for r in rows):
        return ""
    share = statistics.median(r["hooks"] / p["wall"] for r, p in zip(rows, plain))
    return (
        f" {statistics.median(r['hooks'] for r in rows):>6.2f}s ({share:.1%})"
        f" {statistics.median(r['off_thread'] for r in rows):>10.2f}s"
    )


if __name__ == "__main__":
    main()
