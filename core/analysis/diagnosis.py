"""Names what goes wrong while a network trains, read off a recorded run: vanishing or exploding gradients, dead
or saturated units, a learning rate far outside its band, a network that does not learn, overfits, or is too small
for its data. Numpy-only: it reads `core.store.Run`, never TensorFlow.

Every criterion compares numbers the recorder already stored per epoch snapshot (see FORMAT.md) with a
threshold from `Thresholds`; the criteria and the measurements behind each default are in `core/DIAGNOSIS.md`,
and `bench/bench_diagnosis.py` measures hits and false alarms on labelled training scenarios. A healthy run must
produce no finding at all, so a condition counts only when it holds for `persistence` consecutive snapshots, or
when a second signal confirms it (a learning rate is "too high" only if the loss also rose above where it started,
or kept jumping up while the weights took large steps). Every message quotes the numbers that triggered it.

Example:

```python
from core.store import RunStore
from core.analysis.diagnosis import diagnose, Thresholds

for finding in diagnose(RunStore("runs").run(run_id), Thresholds(vanishing_ratio=1e-3)):
    print(finding.kind, finding.layer, finding.epoch, finding.message)
```
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from core.analysis.metrics import output_series
from core.store import Run, Snapshot, StoreError, main_weight

KINDS = (
    "vanishing_gradients",
    "exploding_gradients",
    "dead_units",
    "saturation",
    "learning_rate",
    "not_learning",
    "overfitting",
    "capacity",
)
SEVERE_KINDS = frozenset({"exploding_gradients"})  # training is broken, not merely slow: shown as errors
SATURATING_ACTIVATIONS = frozenset({"sigmoid", "hard_sigmoid", "sparse_sigmoid", "tanh", "hard_tanh", "softsign"})


@dataclass(frozen=True)
class Thresholds:
    """Where each finding starts. Every default is documented, with the runs it was measured on, in DIAGNOSIS.md."""

    # Gradient norm of the first hidden layer over the last hidden layer's (kernel gradient and error signal
    # alike). Measured: 6 x 64 sigmoid + SGD on digits 7e-4 (error signal 1e-3); ReLU + He 0.7-1.2; healthy
    # runs never below 0.5. Two orders of magnitude is "vanishing".
    vanishing_ratio: float = 1e-2
    # The same ratio above this: the error signal grows on its way to the input. Healthy runs stay below 6.
    exploding_ratio: float = 1e2
    # A layer's gradient norm this many times its value before training. Healthy runs grow at most ~2x.
    exploding_growth: float = 1e2
    # Fraction of a layer's units that are zero on every probe sample. Healthy deep ReLU + He runs reach 0.19; the
    # demo (32-unit layers on 2-D data, seed 1) holds 0.50-0.66 for 8 epochs and ends at 0.97 accuracy; Adam 0.1 0.91+.
    dead_fraction: float = 0.75
    # Fraction of a layer's units within 2% of their activation's bounds on 95% of the samples.
    saturated_fraction: float = 0.5
    # Kernel update ‖Δw‖/‖w‖ per epoch, median over layers, above which a loss that stays up is blamed on the
    # learning rate (oscillating). Healthy runs reach 0.35 per epoch, but while the loss falls.
    update_ratio_high: float = 1e-1
    # "Too high, oscillating": while the probe loss never beats its lowest so far, it jumps up by (1 + this) x
    # its previous value at least `oscillations` times, and the weights move faster than `update_ratio_high`
    # (median over that stretch). Adam 0.05 on digits: 4-5 such jumps at 0.22-0.25 per epoch; the demo: at most 2,
    # at 0.05-0.06.
    loss_rise: float = 0.25
    oscillations: int = 3
    # "Too high, diverged": the probe loss stays more than this fraction above its value before training, for
    # `persistence` snapshots. No healthy bench run goes above 0.96x after epoch 0; diverged runs reach 1.3x to 56x.
    divergence: float = 0.05
    # Kernel update per epoch of the fastest layer below which the learning rate is too low (while the loss
    # has not fallen by `min_loss_drop`). lr 1e-6 measures 1e-6; a converging SGD run at lr 0.01 1e-3.
    update_ratio_low: float = 1e-5
    # "Still untrained": the probe loss is above (1 - this) x its value before training.
    min_loss_drop: float = 0.5
    # "Not learning": the probe loss is still "untrained" (above) and the probe accuracy has come less than this
    # share of the way from chance to 100%. README's spiral example ends at 0.23-0.31; healthy bench runs at 0.90+.
    chance_gap: float = 0.5
    # Optimizer steps a run must have taken before "not learning" or "too little capacity" is judged: every run
    # starts at its starting loss. The demo leaves its plateau after ~250 steps.
    learning_steps: int = 200
    # "Overfitting": the validation loss (Keras's `val_loss`) stays at least (1 + this) x its lowest, up to the last
    # snapshot, while the training loss has fallen by at least `train_loss_drop` since that lowest point.
    val_loss_rise: float = 0.1
    train_loss_drop: float = 0.3
    # "Too little capacity": the training accuracy has come less than this share of the way from chance to 100%,
    # the loss has fallen by `min_loss_drop` (so it is learning) and it has stopped falling: by less than `plateau`
    # of its value per snapshot, up to the last one. A 2-unit bottleneck on digits: 0.47-0.49; healthy runs 0.92+.
    capacity_fit: float = 0.7
    plateau: float = 0.02
    # Consecutive snapshots a condition must hold (all of them when a run has fewer).
    persistence: int = 3

    def __post_init__(self):
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"Threshold `{item.name}` must be a finite number >= 0. Received: {item.name}={value!r}"
                )
        if int(self.persistence) != self.persistence or self.persistence < 1:
            raise ValueError(
                f"Threshold `persistence` must be a whole number >= 1. Received: persistence={self.persistence!r}"
            )
        for name in ("learning_steps", "oscillations"):
            if int(getattr(self, name)) != getattr(self, name):
                raise ValueError(f"Threshold `{name}` must be a whole number. Received: {name}={getattr(self, name)!r}")

    @classmethod
    def names(cls) -> list[str]:
        return [item.name for item in fields(cls)]

    def with_overrides(self, pairs: list[str] | None) -> Thresholds:
        """A copy with `name=value` pairs applied (as given on the command line); ValueError names a bad pair."""
        changes: dict[str, Any] = {}  # floats, and ints for the whole-number thresholds
        for pair in pairs or []:
            name, sep, text = pair.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in self.names():
                raise ValueError(
                    f"--threshold takes name=value with a name among {', '.join(self.names())}. Received: {pair!r}"
                )
            try:
                value = float(text)
            except ValueError:
                raise ValueError(
                    f"--threshold {name} needs a number, e.g. {name}={getattr(self, name)!r}. Received: {pair!r}"
                ) from None
            changes[name] = (
                int(value)
                if name in ("persistence", "learning_steps", "oscillations") and value.is_integer()
                else value
            )
        return replace(self, **changes)


@dataclass(frozen=True)
class Finding:
    """One named problem: where (layer) and when (first epoch) it starts, the numbers behind it and what to try."""

    kind: str  # one of KINDS
    layer: str | None  # the layer the finding is about (the worst or first affected one)
    epoch: int  # the first captured epoch of the problem (0 = before training)
    message: str  # one paragraph naming the layer, the epoch and the evidence, ending with the fix
    evidence: dict = field(default_factory=dict)  # the measured values, JSON-ready
    fix: str = ""
    output: str | None = None  # the model output it is about, named only for a model of several outputs

    @property
    def severe(self) -> bool:
        return self.kind in SEVERE_KINDS

    @property
    def title(self) -> str:
        """The message's opening words, such as "Learning rate too high" or "Not learning": every kind has one."""
        head, sep, _ = self.message.partition(": ")
        return head if sep else self.kind.replace("_", " ").capitalize()

    def brief(self) -> dict:
        """The `{kind, layer, epoch, message}` record of `show RUN --json`, with `output` for a finding about one
        output of a model of several."""
        brief = {"kind": self.kind, "layer": self.layer, "epoch": self.epoch, "message": self.message}
        return brief if self.output is None else {**brief, "output": self.output}


def diagnose(run: Run, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """Every finding for `run`, most severe first, then by epoch. Empty for a healthy run (or one with no snapshots)."""
    series = _Series.of(run)
    if not series.epochs:
        return []
    checks = (_exploding, _vanishing, _dead_units, _saturation, _learning_rate, _not_learning, _overfitting)
    findings = [finding for check in checks for finding in check(series, thresholds)]
    if any(f.kind == "learning_rate" and f.evidence.get("mode") in ("diverged", "oscillating") for f in findings):
        # a validation loss that rises while the steps are too large is the learning rate's doing, not overfitting
        findings = [f for f in findings if f.kind != "overfitting"]
    if not findings:  # too little capacity is the verdict only when nothing else explains the plateau
        findings = _capacity(series, thresholds)
    return sorted(findings, key=lambda f: (not f.severe, f.epoch, KINDS.index(f.kind)))


# ----------------------------------------------------------------------------------------------------------
# What the checks read: per snapshot and layer, as (snapshots, layers) arrays


@dataclass
class _Series:
    names: list[str]
    activations: list[str | None]
    units: list[int | None]  # the last dimension of each layer's output (units or channels)
    kernel_layers: list[int]  # layers with a kernel, input side first
    output_layers: list[int]  # the recorded layers that give the model's outputs (`RunInfo.output_layers`)
    epochs: list[int]
    kernel_grad: np.ndarray  # (S, L) ‖∂loss/∂kernel‖ on the probe set
    error_signal: np.ndarray  # (S, L) ‖∂loss/∂output‖: the error signal each layer receives
    nonfinite_grad: np.ndarray  # (S, L) count of NaN/Inf gradient entries
    dead: np.ndarray  # (S, L) fraction of dead units
    saturated: np.ndarray  # (S, L)
    update_per_epoch: np.ndarray  # (S, L) kernel ‖Δw‖/‖w‖ since the previous snapshot, divided by the epochs between
    loss: np.ndarray  # (S,) probe loss, NaN when missing or non-finite
    nonfinite: np.ndarray  # (S,) bool: predictions or loss held NaN/Inf
    accuracy: np.ndarray  # (S,) the model's accuracy on the probe set
    steps: np.ndarray  # (S,) optimizer steps taken by each snapshot (NaN when not recorded)
    train_loss: np.ndarray  # (S,) Keras's `loss` log of the epoch (NaN before training)
    train_accuracy: np.ndarray  # (S,) Keras's `accuracy` log
    val_loss: np.ndarray  # (S,) Keras's `val_loss` log (NaN without validation data)
    chance: float  # the accuracy of always answering the probe's most common class (NaN without labels)
    nan_epoch: int | None
    config: dict
    heads: list[_Head]  # per model output, what the checks of how it learns read (one, unnamed, for one output)

    @classmethod
    def of(cls, run: Run) -> _Series:
        snapshots = run.epoch_snapshots()
        layers = run.layers
        series = cls(
            names=[str(layer.get("name", f"layer {i}")) for i, layer in enumerate(layers)],
            activations=[layer.get("activation") for layer in layers],
            units=[_units(layer) for layer in layers],
            kernel_layers=[i for i, layer in enumerate(layers) if main_weight(layer)],
            output_layers=run.info.output_layers(),
            epochs=[int(s.epoch) for s in snapshots],
            kernel_grad=run.layer_series("grad", main_weight, "norm", snapshots=snapshots),
            error_signal=run.layer_series("grad", "output", "norm", snapshots=snapshots),
            nonfinite_grad=np.nan_to_num(run.layer_series("grad", main_weight, "nonfinite", snapshots=snapshots)),
            dead=run.layer_series("activation", "dead_fraction", snapshots=snapshots),
            saturated=run.layer_series("activation", "saturated_fraction", snapshots=snapshots),
            update_per_epoch=update_ratios_per_epoch(run, snapshots),
            loss=np.array([_finite_or_nan(s.meta.get("probe_loss")) for s in snapshots]),
            nonfinite=np.array([bool(s.meta.get("nonfinite")) for s in snapshots]),
            accuracy=np.array([_finite_or_nan(s.meta.get("probe_model_accuracy")) for s in snapshots]),
            steps=np.array([_finite_or_nan(s.meta.get("step")) for s in snapshots]),
            train_loss=_log_series(snapshots, "loss"),
            train_accuracy=_log_series(snapshots, "accuracy"),
            val_loss=_log_series(snapshots, "val_loss"),
            chance=_chance(run),
            nan_epoch=run.meta.get("nan_epoch"),
            config=run.meta.get("config") or {},
            heads=[],
        )
        series.heads = _heads(run, snapshots, series)
        return series

    @property
    def several(self) -> bool:
        """Whether the model has several outputs: findings about one of them name it."""
        return any(head.name is not None for head in self.heads)

    @property
    def loss_text(self) -> str:
        """ "probe loss", which for a model of several outputs is their compiled loss together."""
        return "probe loss (all outputs together)" if self.several else "probe loss"

    @property
    def hidden(self) -> list[int]:
        """Every recorded layer but the output layers (whose confident or zero outputs are no problem)."""
        return [i for i in range(len(self.names)) if i not in self.output_layers]

    @property
    def hidden_kernel_layers(self) -> list[int]:
        return [i for i in self.kernel_layers if i not in self.output_layers]

    def untrained(self, thresholds: Thresholds) -> np.ndarray:
        """(S,) bool: the probe loss is still above (1 - min_loss_drop) x its value before training."""
        return _untrained(self.loss, thresholds)


@dataclass
class _Head:
    """One model output, as the checks of whether it learns read it: (S,) series like `_Series`'s."""

    name: str | None  # None for the only output of a model (messages then name none)
    layer: str | None  # the recorded layer that gives it (None: not recorded, or the only output)
    loss: np.ndarray  # its probe loss: the probe loss for one output, its own cross-entropy for one of several
    accuracy: np.ndarray  # its probe accuracy (NaN when its targets are not classes)
    chance: float
    train_loss: np.ndarray  # Keras's `loss` log, or `<name>_loss` for one of several outputs
    train_accuracy: np.ndarray  # `accuracy`, or `<name>_accuracy`
    val_loss: np.ndarray  # `val_loss`, or `val_<name>_loss`

    @property
    def of(self) -> str:
        """ " of output `cls`" for one of several outputs, else nothing."""
        return "" if self.name is None else f" of output `{self.name}`"


def _heads(run: Run, snapshots: list[Snapshot], series: _Series) -> list[_Head]:
    """The model's outputs: for one, the probe loss and accuracy the snapshots record and Keras's logs; for
    several, each one's own cross-entropy and accuracy on the probe (from its stored predictions and truth) and
    its own Keras logs (`<name>_loss`, `<name>_accuracy`, `val_<name>_loss`)."""
    outputs = run.info.outputs
    if len(outputs) <= 1:
        only = _Head(
            None,
            None,
            series.loss,
            series.accuracy,
            series.chance,
            series.train_loss,
            series.train_accuracy,
            series.val_loss,
        )
        return [only]
    heads = []
    for output in outputs:
        measured = output_series(run, output.index, snapshots)
        accuracy = measured.accuracy
        if output.index == run.info.probe.primary_output:  # what the snapshots record, where they hold no predictions
            accuracy = np.where(np.isfinite(accuracy), accuracy, series.accuracy)
        layer = run.info.output_layer(output)
        heads.append(
            _Head(
                name=output.name,
                layer=None if layer is None else layer.name,
                loss=measured.crossentropy,
                accuracy=accuracy,
                chance=measured.chance,
                train_loss=_log_series(snapshots, f"{output.name}_loss"),
                train_accuracy=_log_series(snapshots, f"{output.name}_accuracy"),
                val_loss=_log_series(snapshots, f"val_{output.name}_loss"),
            )
        )
    return heads


def _untrained(loss: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """(S,) bool: `loss` is still above (1 - min_loss_drop) x its value before training."""
    start = loss[0] if loss.size else math.nan
    with np.errstate(invalid="ignore"):
        return np.isfinite(loss) & np.isfinite(start) & (loss > (1 - thresholds.min_loss_drop) * start)


def _units(layer: dict) -> int | None:
    shape = layer.get("output_shape") or []
    return int(shape[-1]) if shape and isinstance(shape[-1], int) else None


def _log_series(snapshots: list[Snapshot], key: str) -> np.ndarray:
    return np.array([_finite_or_nan((s.meta.get("logs") or {}).get(key)) for s in snapshots])


def _chance(run: Run) -> float:
    """The share of the probe's most common class: what always answering it scores (1/classes when balanced)."""
    try:
        labels = run.probe().y
    except StoreError:
        return math.nan
    if labels is None or not len(labels):
        return math.nan
    return float(np.bincount(np.asarray(labels, dtype=np.int64).ravel()).max() / len(labels))


def _finite_or_nan(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def update_ratios_per_epoch(run: Run, snapshots: list[Snapshot] | None = None, role=main_weight) -> np.ndarray:
    """(snapshots, layers) ‖Δw‖/‖w‖ of `role` per epoch: each snapshot's ratio divided by the epochs since the one
    before. `role` names the weight, or picks it per layer (by default each layer's kernel, see `main_weight`).

    NaN before training and where a layer has no such weight. Taking a snapshot every 5 epochs then reads on the
    same scale as every epoch (exactly so when the weights drift steadily, as they do early in training).
    """
    snapshots = run.epoch_snapshots() if snapshots is None else snapshots
    return run.layer_series("update_ratio", role, snapshots=snapshots) / _epochs_between(run, snapshots)[:, None]


def _epochs_between(run: Run, snapshots: list[Snapshot]) -> np.ndarray:
    """(S,) epochs since the previous snapshot of any kind (the one each update ratio is measured against).

    Uses optimizer steps when both snapshots record them (batch snapshots make the gap a fraction of an epoch).
    """
    previous_by_seq = {s.seq: s for s in run.snapshots()}
    steps_per_epoch = run.meta.get("steps_per_epoch") or 0
    gaps = []
    for snapshot in snapshots:
        previous = previous_by_seq.get(snapshot.seq - 1)
        gap = math.nan
        if previous is not None:
            step, before = snapshot.meta.get("step"), previous.meta.get("step")
            if steps_per_epoch and isinstance(step, int) and isinstance(before, int) and step > before:
                gap = (step - before) / steps_per_epoch
            elif snapshot.epoch > previous.epoch:
                gap = snapshot.epoch - previous.epoch
        gaps.append(gap)
    return np.asarray(gaps, dtype=np.float64)


def _first_stretch(mask: np.ndarray, length: int) -> tuple[int, int] | None:
    """(start, end) positions of the first run of at least `length` consecutive True values, extended to its end."""
    length = max(1, min(length, int(mask.size)))
    count = 0
    for position, value in enumerate(mask):
        count = count + 1 if value else 0
        if count == length:
            start = position - length + 1
            end = position
            while end + 1 < mask.size and mask[end + 1]:
                end += 1
            return start, end
    return None


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = numerator / denominator
    ratio[~np.isfinite(ratio)] = np.nan
    return ratio


def _lr_text(series: _Series) -> str:
    lr = series.config.get("lr")
    return f" (now {lr:g})" if isinstance(lr, (int, float)) else ""


def _others(series: _Series, layers: list[int], main: int) -> str:
    rest = [series.names[i] for i in layers if i != main]
    return f" Also affected: {', '.join(f'`{name}`' for name in rest)}." if rest else ""


# ----------------------------------------------------------------------------------------------------------
# The checks: each returns at most one finding


def _depth_ratios(series: _Series) -> tuple[np.ndarray, np.ndarray] | None:
    """(kernel-gradient ratio, error-signal ratio) of the first over the last hidden layer, per snapshot."""
    hidden = series.hidden_kernel_layers
    if len(hidden) < 2:
        return None
    first, last = hidden[0], hidden[-1]
    return (
        _ratio(series.kernel_grad[:, first], series.kernel_grad[:, last]),
        _ratio(series.error_signal[:, first], series.error_signal[:, last]),
    )


def _dead_blocked(series: _Series, thresholds: Thresholds) -> np.ndarray:
    """(S,) bool: some hidden layer is mostly dead, which zeroes the gradient below it (a dead-units finding)."""
    hidden = series.hidden
    if not hidden:
        return np.zeros(len(series.epochs), bool)
    return np.nan_to_num(series.dead[:, hidden]).max(axis=1) >= thresholds.dead_fraction


def _saturated_blocked(series: _Series, thresholds: Thresholds) -> np.ndarray:
    """(S,) bool: some hidden layer is mostly saturated (a saturation finding), which also zeroes its gradient."""
    hidden = series.hidden
    if not hidden:
        return np.zeros(len(series.epochs), bool)
    return np.nan_to_num(series.saturated[:, hidden]).max(axis=1) >= thresholds.saturated_fraction


def _vanishing(series: _Series, thresholds: Thresholds) -> list[Finding]:
    ratios = _depth_ratios(series)
    if ratios is None:
        return []
    kernel_ratio, signal_ratio = ratios
    smaller = np.fmin(kernel_ratio, signal_ratio)  # NaN only when both are unknown
    blocked = _dead_blocked(series, thresholds)
    hidden = series.hidden_kernel_layers
    first, last = hidden[0], hidden[-1]
    with np.errstate(invalid="ignore"):
        deep = (smaller < thresholds.vanishing_ratio) & ~blocked
        shrunk = _ratio(series.kernel_grad[:, first], np.full(len(series.epochs), series.kernel_grad[0, first]))
        shrinking = (shrunk < thresholds.vanishing_ratio) & series.untrained(thresholds) & ~blocked
    stretch = _first_stretch(deep, thresholds.persistence)
    fix = _vanishing_fix(series, first)
    if stretch is not None:
        start, end = stretch
        worst = int(start + np.nanargmin(smaller[start : end + 1]))
        evidence = {
            "first_layer": series.names[first],
            "last_layer": series.names[last],
            "kernel_gradient_ratio": float(kernel_ratio[start]),
            "error_signal_ratio": float(signal_ratio[start]),
            "smallest_ratio": float(smaller[worst]),
            "smallest_at_epoch": series.epochs[worst],
            "threshold": thresholds.vanishing_ratio,
            "epochs": [series.epochs[start], series.epochs[end]],
        }
        first_name, last_name = series.names[first], series.names[last]
        kernel_text = f"the kernel gradient norm of `{first_name}` is {_g(kernel_ratio[start])} of `{last_name}`'s"
        signal_text = f"the error signal `{first_name}` receives is {_g(signal_ratio[start])} of `{last_name}`'s"
        kernel_first = np.fmin(kernel_ratio[start], np.inf) <= np.fmin(
            signal_ratio[start], np.inf
        )  # the smaller one leads
        texts = (kernel_text, signal_text) if kernel_first else (signal_text, kernel_text)
        message = (
            f"Vanishing gradients: from epoch {series.epochs[start]} to {series.epochs[end]}, {texts[0]} "
            f"(below {_g(thresholds.vanishing_ratio)}; {texts[1]}). The early layers barely learn. {fix}"
        )
        return [Finding("vanishing_gradients", series.names[first], series.epochs[start], message, evidence, fix)]
    stretch = _first_stretch(shrinking, thresholds.persistence)
    if stretch is None:
        return []
    start, end = stretch
    evidence = {
        "first_layer": series.names[first],
        "shrink_factor": float(shrunk[start]),
        "gradient_norm": float(series.kernel_grad[start, first]),
        "gradient_norm_before_training": float(series.kernel_grad[0, first]),
        "probe_loss": float(series.loss[start]),
        "probe_loss_before_training": float(series.loss[0]),
        "threshold": thresholds.vanishing_ratio,
        "epochs": [series.epochs[start], series.epochs[end]],
    }
    message = (
        f"Vanishing gradients: from epoch {series.epochs[start]}, the gradient of `{series.names[first]}` has shrunk "
        f"to {_g(shrunk[start])} of its value before training ({_g(series.kernel_grad[start, first])}), while the "
        f"{series.loss_text} is still {series.loss[start]:.3g} (it started at {series.loss[0]:.3g}). {fix}"
    )
    return [Finding("vanishing_gradients", series.names[first], series.epochs[start], message, evidence, fix)]


def _vanishing_fix(series: _Series, layer: int) -> str:
    activation = series.activations[layer] or series.config.get("activation")
    if activation in SATURATING_ACTIVATIONS:
        return (
            f"Try: ReLU-family activations with He initialization (`--activation relu --init he_normal`) instead of "
            f"{activation}, batch normalization (`--batch-norm`), fewer layers or residual connections."
        )
    return (
        "Try: He initialization for ReLU layers (`--init he_normal`), batch normalization (`--batch-norm`), "
        "residual connections, or fewer layers."
    )


def _exploding(series: _Series, thresholds: Thresholds) -> list[Finding]:
    fix = (
        f"Try: a lower learning rate{_lr_text(series)}, gradient clipping (`clipnorm=1.0` on the optimizer), "
        "batch normalization (`--batch-norm`), and Glorot or He initialization instead of large random weights."
    )
    broken = series.nonfinite | (series.nonfinite_grad.sum(axis=1) > 0)
    if broken.any() or series.nan_epoch is not None:
        position = int(np.argmax(broken)) if broken.any() else len(series.epochs) - 1
        if broken.any():
            epoch = series.epochs[position]
        else:
            assert series.nan_epoch is not None  # nothing non-finite was captured, so training recorded a NaN epoch
            epoch = int(series.nan_epoch)
        if series.nan_epoch is not None:
            epoch = min(epoch, int(series.nan_epoch))
        counts = series.nonfinite_grad[position]
        layer = int(np.argmax(counts > 0)) if (counts > 0).any() else (series.kernel_layers or [0])[0]
        finite_before = series.loss[:position][np.isfinite(series.loss[:position])]
        evidence: dict[str, Any] = {
            "nan_epoch": series.nan_epoch,
            "first_nonfinite_snapshot": series.epochs[position] if broken.any() else None,
            "nonfinite_gradient_entries": {series.names[i]: int(c) for i, c in enumerate(counts) if c > 0},
            "last_finite_loss": float(finite_before[-1]) if finite_before.size else None,
        }
        message = (
            f"Exploding gradients: training diverged to NaN/Inf at epoch {epoch}"
            + (
                f"; `{series.names[layer]}` has {int(counts[layer])} non-finite gradient entries"
                if counts[layer] > 0
                else ""
            )
            + f". Every update after that is lost. {fix}"
        )
        return [Finding("exploding_gradients", series.names[layer], epoch, message, evidence, fix)]
    growth = _ratio(series.kernel_grad, np.broadcast_to(series.kernel_grad[:1], series.kernel_grad.shape).copy())
    for layer in series.kernel_layers:
        with np.errstate(invalid="ignore"):
            stretch = _first_stretch(growth[:, layer] >= thresholds.exploding_growth, thresholds.persistence)
        if stretch is not None and len(series.epochs) > 1:
            start, end = stretch
            evidence = {
                "growth": float(growth[start, layer]),
                "gradient_norm": float(series.kernel_grad[start, layer]),
                "gradient_norm_before_training": float(series.kernel_grad[0, layer]),
                "threshold": thresholds.exploding_growth,
                "epochs": [series.epochs[start], series.epochs[end]],
            }
            message = (
                f"Exploding gradients: from epoch {series.epochs[start]}, the gradient norm of "
                f"`{series.names[layer]}` is {growth[start, layer]:.3g}x its value before training "
                f"({_g(series.kernel_grad[0, layer])} → {_g(series.kernel_grad[start, layer])}) and stays above "
                f"{thresholds.exploding_growth:g}x. {fix}"
            )
            return [Finding("exploding_gradients", series.names[layer], series.epochs[start], message, evidence, fix)]
    ratios = _depth_ratios(series)
    if ratios is None:
        return []
    larger = np.fmax(*ratios)
    with np.errstate(invalid="ignore"):
        stretch = _first_stretch(larger > thresholds.exploding_ratio, thresholds.persistence)
    if stretch is None:
        return []
    start, end = stretch
    first, last = series.hidden_kernel_layers[0], series.hidden_kernel_layers[-1]
    evidence = {
        "first_layer": series.names[first],
        "last_layer": series.names[last],
        "kernel_gradient_ratio": float(ratios[0][start]),
        "error_signal_ratio": float(ratios[1][start]),
        "threshold": thresholds.exploding_ratio,
        "epochs": [series.epochs[start], series.epochs[end]],
    }
    message = (
        f"Exploding gradients: from epoch {series.epochs[start]}, the gradient reaching `{series.names[first]}` is "
        f"{larger[start]:.3g}x that of `{series.names[last]}`: it grows on its way back to the input. {fix}"
    )
    return [Finding("exploding_gradients", series.names[first], series.epochs[start], message, evidence, fix)]


def _unit_finding(series: _Series, thresholds: Thresholds, kind: str) -> list[Finding]:
    """Dead or saturated units: the layer whose problem starts first (the larger fraction on a tie)."""
    fractions = series.dead if kind == "dead_units" else series.saturated
    limit = thresholds.dead_fraction if kind == "dead_units" else thresholds.saturated_fraction
    if kind == "saturation":
        layers = [i for i in series.hidden if series.activations[i] in SATURATING_ACTIVATIONS]
    else:
        layers = series.hidden
    stretches = {}
    for layer in layers:
        with np.errstate(invalid="ignore"):
            stretch = _first_stretch(fractions[:, layer] >= limit, thresholds.persistence)
        if stretch is not None:
            stretches[layer] = stretch
    if not stretches:
        return []
    main = min(
        stretches, key=lambda i: (stretches[i][0], -np.nanmax(fractions[stretches[i][0] : stretches[i][1] + 1, i]))
    )
    start, end = stretches[main]
    fraction = float(fractions[end, main])
    affected = sorted(stretches)
    evidence = {
        "fraction": fraction,
        "fraction_at_start": float(fractions[start, main]),
        "threshold": limit,
        "epochs": [series.epochs[start], series.epochs[end]],
        "layers": {series.names[i]: float(fractions[stretches[i][1], i]) for i in affected},
    }
    until = "the last snapshot" if end == len(series.epochs) - 1 else f"epoch {series.epochs[end]}"
    if kind == "dead_units":
        fix = (
            f"Try: a lower learning rate{_lr_text(series)}, He initialization (`--init he_normal`), or an activation "
            "without a flat zero side (`leaky_relu`, `elu`, `gelu`); batch normalization also helps."
        )
        message = (
            f"Dead units: from epoch {series.epochs[start]} to {until}, {fraction:.0%} of the units of "
            f"`{series.names[main]}` output zero on every probe sample, so they pass no gradient and rarely "
            f"recover.{_others(series, affected, main)} {fix}"
        )
    else:
        fix = (
            f"Try: standardized inputs, a lower learning rate{_lr_text(series)}, Glorot initialization, batch "
            "normalization (`--batch-norm`), or ReLU-family activations."
        )
        message = (
            f"Saturation: from epoch {series.epochs[start]} to {until}, {fraction:.0%} of the units of "
            f"`{series.names[main]}` ({series.activations[main]}) sit at their bounds on nearly every sample, "
            f"where their gradient is about zero.{_others(series, affected, main)} {fix}"
        )
    return [Finding(kind, series.names[main], series.epochs[start], message, evidence, fix)]


def _dead_units(series: _Series, thresholds: Thresholds) -> list[Finding]:
    return _unit_finding(series, thresholds, "dead_units")


def _saturation(series: _Series, thresholds: Thresholds) -> list[Finding]:
    return _unit_finding(series, thresholds, "saturation")


def _learning_rate(series: _Series, thresholds: Thresholds) -> list[Finding]:
    layers = series.kernel_layers
    if not layers or len(series.epochs) < 2:
        return []
    updates = series.update_per_epoch[:, layers]  # (S, K); row 0 (before training) is NaN
    known = np.isfinite(updates).any(axis=1)
    with np.errstate(all="ignore"):
        median = np.where(known, np.nanmedian(np.where(known[:, None], updates, 0.0), axis=1), np.nan)
        fastest = np.where(known, np.nanmax(np.where(known[:, None], updates, -np.inf), axis=1), np.nan)
    too_high = _diverged(series, thresholds, median) or _oscillating(series, thresholds, median)
    if too_high:
        return [too_high]
    with np.errstate(invalid="ignore"):
        blocked = _dead_blocked(series, thresholds) | _saturated_blocked(
            series, thresholds
        )  # zero gradient at any rate
        too_low = known & (fastest < thresholds.update_ratio_low) & series.untrained(thresholds) & ~blocked
    count = int(known.sum())
    stretch = _first_stretch(too_low, min(thresholds.persistence, count) if count else thresholds.persistence)
    if stretch is None:
        return []
    start, end = stretch
    layer = layers[int(np.nanargmax(updates[start]))]
    evidence = {
        "fastest_update_ratio_per_epoch": float(fastest[start]),
        "threshold": thresholds.update_ratio_low,
        "probe_loss": _json_number(series.loss[end]),
        "probe_loss_before_training": _json_number(series.loss[0]),
        "epochs": [series.epochs[start], series.epochs[end]],
    }
    fix = (
        f"Try: a learning rate 10 to 100 times higher{_lr_text(series)}, or Adam, whose steps do not shrink with the "
        "gradient."
    )
    message = (
        f"Learning rate too low: from epoch {series.epochs[start]} to {series.epochs[end]}, even the fastest-moving "
        f"layer, `{series.names[layer]}`, changes its weights by only {_g(fastest[start])} of their norm per epoch "
        f"(below {_g(thresholds.update_ratio_low)}; healthy runs move ~1e-3 or more), and the {series.loss_text} is "
        f"still {series.loss[end]:.3g} (it started at {series.loss[0]:.3g}). {fix}"
    )
    return [Finding("learning_rate", series.names[layer], series.epochs[start], message, evidence, fix)]


def _too_high_fix(series: _Series) -> str:
    return f"Try: a learning rate 3 to 10 times lower{_lr_text(series)}, or a schedule with warm-up."


def _fastest_layer(series: _Series, start: int, end: int) -> int:
    """The kernel layer whose weights moved most over snapshots start..end (the first one if none is known)."""
    updates = series.update_per_epoch[start : end + 1, series.kernel_layers]
    if not np.isfinite(updates).any():
        return series.kernel_layers[0]
    return series.kernel_layers[int(np.nanargmax(np.nanmax(updates, axis=0)))]


def _moved(series: _Series, layer: int, start: int, end: int) -> str:
    """ ", and `dense_0` moved most: 0.91x its norm per epoch", or nothing when the updates were not recorded."""
    updates = series.update_per_epoch[start : end + 1, layer]
    if not np.isfinite(updates).any():
        return f"; the layer that moved most is `{series.names[layer]}`"
    return f"; `{series.names[layer]}` moved most, by up to {_g(np.nanmax(updates))}x its norm per epoch"


def _diverged(series: _Series, thresholds: Thresholds, median_update: np.ndarray) -> Finding | None:
    """The probe loss stays above its value before training: the steps make the network worse than untrained."""
    start_loss = series.loss[0]
    if not np.isfinite(start_loss) or start_loss <= 0:
        return None
    limit = (1 + thresholds.divergence) * start_loss
    with np.errstate(invalid="ignore"):
        stretch = _first_stretch(series.loss > limit, thresholds.persistence)
    if stretch is None:
        return None
    start, end = stretch
    stretch_loss = series.loss[start : end + 1]
    updates = median_update[start : end + 1]
    layer = _fastest_layer(series, start, end)
    fix = _too_high_fix(series)
    evidence = {
        "mode": "diverged",
        "probe_loss_before": float(start_loss),
        "reference_epoch": series.epochs[0],
        "probe_loss_after": float(stretch_loss.min()),
        "probe_loss_peak": float(stretch_loss.max()),
        "threshold": thresholds.divergence,
        "median_update_ratio_per_epoch": float(np.nanmax(updates)) if np.isfinite(updates).any() else None,
        "epochs": [series.epochs[start], series.epochs[end]],
    }
    message = (
        f"Learning rate too high: from epoch {series.epochs[start]} to {series.epochs[end]}, the {series.loss_text} "
        f"stayed between {stretch_loss.min():.3g} and {stretch_loss.max():.3g}, above its {start_loss:.3g} before "
        f"training (more than {thresholds.divergence:.0%} above): training made the network worse than "
        f"untrained{_moved(series, layer, start, end)}. {fix}"
    )
    return Finding("learning_rate", series.names[layer], series.epochs[start], message, evidence, fix)


def _stalls(loss: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each stretch of snapshots after training began in which the loss never went below the
    lowest it had reached before the stretch."""
    lowest_before = np.fmin.accumulate(np.r_[np.inf, loss[:-1]])
    with np.errstate(invalid="ignore"):
        stalled = ~(loss < lowest_before)  # a NaN loss is no progress
    stalled[0] = False
    stalls, start = [], None
    for position, value in enumerate(np.r_[stalled, False]):
        if value and start is None:
            start = position
        elif not value and start is not None:
            stalls.append((start, position - 1))
            start = None
    return stalls


def _oscillating(series: _Series, thresholds: Thresholds, median_update: np.ndarray) -> Finding | None:
    """While the loss makes no progress, it jumps up again and again, and the weights still take large steps."""
    loss = series.loss
    if not np.isfinite(loss).any():
        return None
    for start, end in _stalls(loss):
        with np.errstate(invalid="ignore"):
            jumps = [t for t in range(start, end + 1) if loss[t] >= (1 + thresholds.loss_rise) * loss[t - 1]]
        updates = median_update[start : end + 1]
        typical_update = float(np.nanmedian(updates)) if np.isfinite(updates).any() else math.nan
        if len(jumps) >= thresholds.oscillations and typical_update > thresholds.update_ratio_high:
            break
    else:
        return None
    reference = int(np.nanargmin(loss[:start]))  # the lowest loss before the stall, which it never beat
    layer = _fastest_layer(series, start, end)
    fix = _too_high_fix(series)
    evidence = {
        "mode": "oscillating",
        "probe_loss_before": float(loss[reference]),
        "reference_epoch": series.epochs[reference],
        "probe_loss_peak": float(np.nanmax(loss[start : end + 1])),
        "rises": len(jumps),
        "jumps": [{"epoch": series.epochs[t], "from": float(loss[t - 1]), "to": float(loss[t])} for t in jumps],
        "threshold": thresholds.loss_rise,
        "median_update_ratio_per_epoch": typical_update,
        "update_threshold": thresholds.update_ratio_high,
        "epochs": [series.epochs[start], series.epochs[end]],
    }
    jump_text = ", ".join(f"{loss[t - 1]:.3g} to {loss[t]:.3g} at epoch {series.epochs[t]}" for t in jumps)
    message = (
        f"Learning rate too high: the {series.loss_text} reached {loss[reference]:.3g} at epoch "
        f"{series.epochs[reference]} and from epoch {series.epochs[start]} to {series.epochs[end]} never went below "
        f"it, jumping up by {thresholds.loss_rise:.0%} or more {len(jumps)} times ({jump_text}), while the weights "
        f"moved by {_g(typical_update)}x their norm per epoch (median over layers and epochs; above "
        f"{_g(thresholds.update_ratio_high)}){_moved(series, layer, start, end)}. {fix}"
    )
    return Finding("learning_rate", series.names[layer], series.epochs[start], message, evidence, fix)


# ----------------------------------------------------------------------------------------------------------
# Whether the network learns at all, learns the training set only, or cannot fit it: read off the losses and
# accuracies at the end of the run


def _gap_closed(accuracy: float, chance: float) -> float:
    """How much of the way from chance to a perfect score an accuracy has come: 0 at chance, 1 at 100%."""
    return (accuracy - chance) / (1 - chance) if chance < 1 else math.nan


def _ending(series: _Series, thresholds: Thresholds, condition: np.ndarray) -> tuple[int, int] | None:
    """(start, end): the stretch of snapshots up to the last one over which `condition` holds, when it spans at
    least `persistence` snapshots after training began and the run has taken `learning_steps` optimizer steps."""
    last = len(series.epochs) - 1
    steps = series.steps[last] - series.steps[0] if last > 0 else math.nan
    if last < 1 or not (steps >= thresholds.learning_steps) or not condition[last]:
        return None
    start = last
    while start > 1 and condition[start - 1]:
        start -= 1
    return (start, last) if last - start + 1 >= thresholds.persistence else None


def _accuracy_text(accuracy: float, chance: float) -> str:
    return f"{accuracy:.3g} (chance: {chance:.3g}, the share of the most common class)"


def _not_learning(series: _Series, thresholds: Thresholds) -> list[Finding]:
    """Per output of classes: its probe loss is still at its starting level and its accuracy near chance."""
    return [finding for head in series.heads for finding in _head_not_learning(series, head, thresholds)]


def _head_not_learning(series: _Series, head: _Head, thresholds: Thresholds) -> list[Finding]:
    start_loss, chance = head.loss[0] if head.loss.size else math.nan, head.chance
    if not (np.isfinite(start_loss) and np.isfinite(chance)):
        return []
    with np.errstate(invalid="ignore"):
        near_chance = np.array([_gap_closed(a, chance) for a in head.accuracy]) < thresholds.chance_gap
        level = _untrained(head.loss, thresholds) & (head.loss <= (1 + thresholds.divergence) * start_loss)
        stuck = level & near_chance
    stretch = _ending(series, thresholds, stuck)
    if stretch is None:
        return []
    start, end = stretch
    loss, accuracy = head.loss[end], head.accuracy[end]
    steps = int(series.steps[end] - series.steps[0])
    evidence = {
        "probe_loss": float(loss),
        "probe_loss_before_training": float(start_loss),
        "loss_drop": float(1 - loss / start_loss),
        "probe_accuracy": float(accuracy),
        "chance_accuracy": chance,
        "gap_closed": float(_gap_closed(accuracy, chance)),
        "steps": steps,
        "loss_threshold": thresholds.min_loss_drop,
        "accuracy_threshold": thresholds.chance_gap,
        "epochs": [series.epochs[start], series.epochs[end]],
        **({"output": head.name} if head.name is not None else {}),
    }
    layer = head.layer  # the whole network (None), or the layer of the output that does not learn
    fix = (
        f"Try: a higher learning rate{_lr_text(series)} or more epochs if the loss is creeping down; otherwise check "
        "that the labels match the inputs and that the inputs are scaled (standardized, or pixels in [0, 1])."
    )
    if head.name is not None:
        fix = f"{fix} For one output of several, also check its targets and its weight in `loss_weights`."
    loss_text = "probe loss" if head.name is None else "probe loss (its cross-entropy)"
    message = (
        f"Not learning: from epoch {series.epochs[start]} to {series.epochs[end]} ({steps} optimizer steps in all), "
        f"the {loss_text}{head.of} is {loss:.3g}, against {start_loss:.3g} before training (less than the "
        f"{thresholds.min_loss_drop:.0%} drop that learning brings), and the probe accuracy{head.of} is "
        f"{_accuracy_text(accuracy, chance)}, less than {thresholds.chance_gap:.0%} of the way from chance to 100%. "
        f"{fix}"
    )
    return [Finding("not_learning", layer, series.epochs[start], message, evidence, fix, head.name)]


def _overfitting(series: _Series, thresholds: Thresholds) -> list[Finding]:
    """Of each output whose validation loss Keras logs apart (`val_<name>_loss`, several outputs), else of the
    model's validation loss."""
    named = [head for head in series.heads if head.name is not None and np.isfinite(head.val_loss).any()]
    if named:
        return [finding for head in named for finding in _overfitting_of(series, thresholds, head)]
    return _overfitting_of(series, thresholds, None)


def _overfitting_of(series: _Series, thresholds: Thresholds, head: _Head | None) -> list[Finding]:
    val, train = (series.val_loss, series.train_loss) if head is None else (head.val_loss, head.train_loss)
    if not np.isfinite(val).any():
        return []
    best = int(np.nanargmin(val))
    with np.errstate(invalid="ignore"):
        rising = (np.arange(len(val)) > best) & (val >= (1 + thresholds.val_loss_rise) * val[best])
        train_falling = train <= (1 - thresholds.train_loss_drop) * train[best]
    stretch = _ending(series, thresholds, rising)
    if stretch is None or not train_falling[stretch[1]]:
        return []
    start, end = stretch
    name = None if head is None else head.name
    layer = None if head is None else head.layer  # the whole network, or the output's layer
    of = "" if head is None else head.of
    evidence = {
        "val_loss_lowest": float(val[best]),
        "lowest_at_epoch": series.epochs[best],
        "val_loss": float(val[end]),
        "train_loss_at_lowest": float(train[best]),
        "train_loss": float(train[end]),
        "val_loss_threshold": thresholds.val_loss_rise,
        "train_loss_threshold": thresholds.train_loss_drop,
        "epochs": [series.epochs[start], series.epochs[end]],
        **({"output": name} if name is not None else {}),
    }
    fix = (
        "Try: stopping at the lowest validation loss (`keras.callbacks.EarlyStopping(restore_best_weights=True)`), "
        "more training data or augmentation, dropout (`--dropout 0.2`), weight decay (`--l2 1e-4`), or a smaller "
        "network."
    )
    message = (
        f"Overfitting: the validation loss{of} was lowest at epoch {series.epochs[best]} ({val[best]:.3g}); from "
        f"epoch {series.epochs[start]} to {series.epochs[end]} it stayed {thresholds.val_loss_rise:.0%} or more above "
        f"that and ended at {val[end]:.3g}, while the training loss{of} fell from {train[best]:.3g} to "
        f"{train[end]:.3g} ({1 - train[end] / train[best]:.0%} lower). The network learns its training samples, not "
        f"the task. {fix}"
    )
    return [Finding("overfitting", layer, series.epochs[start], message, evidence, fix, name)]


def _capacity(series: _Series, thresholds: Thresholds) -> list[Finding]:
    """Per output of classes: it learns, but its training accuracy stops short of fitting the training data."""
    return [finding for head in series.heads for finding in _head_capacity(series, head, thresholds)]


def _head_capacity(series: _Series, head: _Head, thresholds: Thresholds) -> list[Finding]:
    train_loss = head.train_loss if np.isfinite(head.train_loss).any() else series.train_loss
    train_accuracy = np.where(np.isfinite(head.train_accuracy), head.train_accuracy, head.accuracy)
    chance = head.chance
    if not np.isfinite(chance):
        return []
    with np.errstate(invalid="ignore"):
        short = np.array([_gap_closed(a, chance) for a in train_accuracy]) < thresholds.capacity_fit
        learned = ~_untrained(head.loss, thresholds) & np.isfinite(head.loss)
        plateau = np.r_[False, train_loss[1:] > (1 - thresholds.plateau) * train_loss[:-1]]
    stretch = _ending(series, thresholds, short & learned & plateau)
    if stretch is None:
        return []
    start, end = stretch
    accuracy, loss = train_accuracy[end], train_loss[end]
    narrowest = min(
        series.hidden_kernel_layers or series.kernel_layers or [0], key=lambda i: series.units[i] or math.inf
    )
    layer = series.names[narrowest]
    width = f" (its narrowest layer, `{layer}`, has {series.units[narrowest]} units)" if series.units[narrowest] else ""
    evidence = {
        "train_accuracy": float(accuracy),
        "chance_accuracy": chance,
        "gap_closed": float(_gap_closed(accuracy, chance)),
        "train_loss": float(loss),
        "train_loss_at_start_of_plateau": float(train_loss[start - 1]),
        "narrowest_layer_units": series.units[narrowest],
        "probe_loss_before_training": float(head.loss[0]),
        "accuracy_threshold": thresholds.capacity_fit,
        "plateau_threshold": thresholds.plateau,
        "epochs": [series.epochs[start], series.epochs[end]],
        **({"output": head.name} if head.name is not None else {}),
    }
    fix = (
        "Try: wider or more hidden layers (`--hidden`), less regularization (`--l2`, `--dropout`), or a less "
        "restrictive architecture; the gradients reach every layer, so the optimizer is not the problem."
    )
    data = "this data" if head.name is None else f"the targets of output `{head.name}`"
    message = (
        f"Too little capacity: from epoch {series.epochs[start]} to {series.epochs[end]}, the training loss{head.of} "
        f"fell by less than {thresholds.plateau:.0%} per epoch ({train_loss[start - 1]:.3g} to {loss:.3g}) while the "
        f"training accuracy{head.of} stayed at {_accuracy_text(accuracy, chance)}, less than "
        f"{thresholds.capacity_fit:.0%} of the way from chance to fitting the training data. No other finding "
        f"explains it: the network{width} cannot represent {data}. {fix}"
    )
    return [Finding("capacity", layer, series.epochs[start], message, evidence, fix, head.name)]


def _g(value) -> str:
    """A ratio for people: 7.4e-04, 0.012, 3.1."""
    value = float(value)
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.2g}" if 1e-2 <= abs(value) < 1e3 or value == 0 else f"{value:.1e}"


def _json_number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
