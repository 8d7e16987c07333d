"""Names what goes wrong while a network trains, read off a recorded run: vanishing or exploding gradients, dead
or saturated units, a learning rate far outside its band. Numpy-only: it reads `core.store.Run`, never TensorFlow.

Every criterion compares numbers the recorder already stored per epoch snapshot (see FORMAT.md) with a
threshold from `Thresholds`; the criteria and the measurements behind each default are in `core/DIAGNOSIS.md`.
A healthy run must produce no finding at all, so a condition counts only when it holds for `persistence`
consecutive snapshots, or when a second signal confirms it (a learning rate is "too high" only if the loss
also failed to improve).

Example:

```python
from core.store import RunStore
from core.diagnosis import diagnose, Thresholds

for finding in diagnose(RunStore("runs").run(run_id), Thresholds(vanishing_ratio=1e-3)):
    print(finding.kind, finding.layer, finding.epoch, finding.message)
```
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import numpy as np

from core.store import Run, Snapshot, main_weight

KINDS = ("vanishing_gradients", "exploding_gradients", "dead_units", "saturation", "learning_rate")
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
    # Fraction of a layer's units that are zero on every probe sample. Healthy deep ReLU + He runs reach 0.19.
    dead_fraction: float = 0.5
    # Fraction of a layer's units within 2% of their activation's bounds on 95% of the samples.
    saturated_fraction: float = 0.5
    # Kernel update ‖Δw‖/‖w‖ per epoch, median over layers, above which an epoch whose probe loss did not
    # improve is blamed on the learning rate. Healthy runs reach 0.35 per epoch, but while the loss falls.
    update_ratio_high: float = 1e-1
    # Kernel update per epoch of the fastest layer below which the learning rate is too low (while the loss
    # has not fallen by `min_loss_drop`). lr 1e-6 measures 1e-6; a converging SGD run at lr 0.01 1e-3.
    update_ratio_low: float = 1e-5
    # "Still untrained": the probe loss is above (1 - this) x its value before training.
    min_loss_drop: float = 0.5
    # Consecutive snapshots a condition must hold (all of them when a run has fewer).
    persistence: int = 3

    def __post_init__(self):
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Threshold `{item.name}` must be a finite number >= 0. Received: {item.name}={value!r}")
        if int(self.persistence) != self.persistence or self.persistence < 1:
            raise ValueError(f"Threshold `persistence` must be a whole number >= 1. Received: persistence={self.persistence!r}")

    @classmethod
    def names(cls) -> list[str]:
        return [item.name for item in fields(cls)]

    def with_overrides(self, pairs: list[str] | None) -> "Thresholds":
        """A copy with `name=value` pairs applied (as given on the command line); ValueError names a bad pair."""
        changes: dict[str, float] = {}
        for pair in pairs or []:
            name, sep, text = pair.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in self.names():
                raise ValueError(f"--threshold takes name=value with a name among {', '.join(self.names())}. Received: {pair!r}")
            try:
                value = float(text)
            except ValueError:
                raise ValueError(
                    f"--threshold {name} needs a number, e.g. {name}={getattr(self, name)!r}. Received: {pair!r}"
                ) from None
            changes[name] = int(value) if name == "persistence" and value.is_integer() else value
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

    @property
    def severe(self) -> bool:
        return self.kind in SEVERE_KINDS

    def brief(self) -> dict:
        """The `{kind, layer, epoch, message}` record of `show RUN --json`."""
        return {"kind": self.kind, "layer": self.layer, "epoch": self.epoch, "message": self.message}


def diagnose(run: Run, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """Every finding for `run`, most severe first, then by epoch. Empty for a healthy run (or one with no snapshots)."""
    series = _Series.of(run)
    if not series.epochs:
        return []
    checks = (_exploding, _vanishing, _dead_units, _saturation, _learning_rate)
    findings = [finding for check in checks for finding in check(series, thresholds)]
    return sorted(findings, key=lambda f: (not f.severe, f.epoch, KINDS.index(f.kind)))


# ----------------------------------------------------------------------------------------------------------
# What the checks read: per snapshot and layer, as (snapshots, layers) arrays


@dataclass
class _Series:
    names: list[str]
    activations: list[str | None]
    kernel_layers: list[int]  # layers with a kernel, input side first (the output layer is the last one)
    epochs: list[int]
    kernel_grad: np.ndarray  # (S, L) ‖∂loss/∂kernel‖ on the probe set
    error_signal: np.ndarray  # (S, L) ‖∂loss/∂output‖: the error signal each layer receives
    nonfinite_grad: np.ndarray  # (S, L) count of NaN/Inf gradient entries
    dead: np.ndarray  # (S, L) fraction of dead units
    saturated: np.ndarray  # (S, L)
    update_per_epoch: np.ndarray  # (S, L) kernel ‖Δw‖/‖w‖ since the previous snapshot, divided by the epochs between
    loss: np.ndarray  # (S,) probe loss, NaN when missing or non-finite
    nonfinite: np.ndarray  # (S,) bool: predictions or loss held NaN/Inf
    nan_epoch: int | None
    config: dict

    @classmethod
    def of(cls, run: Run) -> "_Series":
        snapshots = run.epoch_snapshots()
        layers = run.layers
        return cls(
            names=[str(layer.get("name", f"layer {i}")) for i, layer in enumerate(layers)],
            activations=[layer.get("activation") for layer in layers],
            kernel_layers=[i for i, layer in enumerate(layers) if main_weight(layer)],
            epochs=[int(s.epoch) for s in snapshots],
            kernel_grad=run.layer_series("grad", main_weight, "norm", snapshots=snapshots),
            error_signal=run.layer_series("grad", "output", "norm", snapshots=snapshots),
            nonfinite_grad=np.nan_to_num(run.layer_series("grad", main_weight, "nonfinite", snapshots=snapshots)),
            dead=run.layer_series("activation", "dead_fraction", snapshots=snapshots),
            saturated=run.layer_series("activation", "saturated_fraction", snapshots=snapshots),
            update_per_epoch=update_ratios_per_epoch(run, snapshots),
            loss=np.array([_finite_or_nan(s.meta.get("probe_loss")) for s in snapshots]),
            nonfinite=np.array([bool(s.meta.get("nonfinite")) for s in snapshots]),
            nan_epoch=run.meta.get("nan_epoch"),
            config=run.meta.get("config") or {},
        )

    @property
    def hidden(self) -> list[int]:
        """Every recorded layer but the last (the output, whose confident or zero outputs are no problem)."""
        return list(range(len(self.names) - 1))

    @property
    def hidden_kernel_layers(self) -> list[int]:
        return [i for i in self.kernel_layers if i != len(self.names) - 1]

    def untrained(self, thresholds: Thresholds) -> np.ndarray:
        """(S,) bool: the probe loss is still above (1 - min_loss_drop) x its value before training."""
        start = self.loss[0] if self.loss.size else math.nan
        with np.errstate(invalid="ignore"):
            return np.isfinite(self.loss) & np.isfinite(start) & (self.loss > (1 - thresholds.min_loss_drop) * start)


def _finite_or_nan(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def update_ratios_per_epoch(run: Run, snapshots: list[Snapshot] | None = None, role=main_weight) -> np.ndarray:
    """(snapshots, layers) ‖Δw‖/‖w‖ of `role` per epoch: each snapshot's ratio divided by the epochs since the one before.
    `role` names the weight, or picks it per layer (by default each layer's kernel, see `main_weight`).

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
            "first_layer": series.names[first], "last_layer": series.names[last],
            "kernel_gradient_ratio": float(kernel_ratio[start]), "error_signal_ratio": float(signal_ratio[start]),
            "smallest_ratio": float(smaller[worst]), "smallest_at_epoch": series.epochs[worst],
            "threshold": thresholds.vanishing_ratio, "epochs": [series.epochs[start], series.epochs[end]],
        }
        first_name, last_name = series.names[first], series.names[last]
        kernel_text = f"the kernel gradient norm of `{first_name}` is {_g(kernel_ratio[start])} of `{last_name}`'s"
        signal_text = f"the error signal `{first_name}` receives is {_g(signal_ratio[start])} of `{last_name}`'s"
        kernel_first = np.fmin(kernel_ratio[start], np.inf) <= np.fmin(signal_ratio[start], np.inf)  # the smaller one leads
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
        "first_layer": series.names[first], "shrink_factor": float(shrunk[start]),
        "gradient_norm": float(series.kernel_grad[start, first]),
        "gradient_norm_before_training": float(series.kernel_grad[0, first]),
        "probe_loss": float(series.loss[start]), "probe_loss_before_training": float(series.loss[0]),
        "threshold": thresholds.vanishing_ratio,
        "epochs": [series.epochs[start], series.epochs[end]],
    }
    message = (
        f"Vanishing gradients: from epoch {series.epochs[start]}, the gradient of `{series.names[first]}` has shrunk to "
        f"{_g(shrunk[start])} of its value before training ({_g(series.kernel_grad[start, first])}), while the probe loss "
        f"is still {series.loss[start]:.3g} (it started at {series.loss[0]:.3g}). {fix}"
    )
    return [Finding("vanishing_gradients", series.names[first], series.epochs[start], message, evidence, fix)]


def _vanishing_fix(series: _Series, layer: int) -> str:
    activation = series.activations[layer] or series.config.get("activation")
    if activation in SATURATING_ACTIVATIONS:
        return (f"Try: ReLU-family activations with He initialization (`--activation relu --init he_normal`) instead of "
                f"{activation}, batch normalization (`--batch-norm`), fewer layers or residual connections.")
    return ("Try: He initialization for ReLU layers (`--init he_normal`), batch normalization (`--batch-norm`), "
            "residual connections, or fewer layers.")


def _exploding(series: _Series, thresholds: Thresholds) -> list[Finding]:
    fix = (f"Try: a lower learning rate{_lr_text(series)}, gradient clipping (`clipnorm=1.0` on the optimizer), "
           "batch normalization (`--batch-norm`), and Glorot or He initialization instead of large random weights.")
    broken = series.nonfinite | (series.nonfinite_grad.sum(axis=1) > 0)
    if broken.any() or series.nan_epoch is not None:
        position = int(np.argmax(broken)) if broken.any() else len(series.epochs) - 1
        epoch = series.epochs[position] if broken.any() else int(series.nan_epoch)
        if series.nan_epoch is not None:
            epoch = min(epoch, int(series.nan_epoch))
        counts = series.nonfinite_grad[position]
        layer = int(np.argmax(counts > 0)) if (counts > 0).any() else (series.kernel_layers or [0])[0]
        finite_before = series.loss[:position][np.isfinite(series.loss[:position])]
        evidence = {
            "nan_epoch": series.nan_epoch, "first_nonfinite_snapshot": series.epochs[position] if broken.any() else None,
            "nonfinite_gradient_entries": {series.names[i]: int(c) for i, c in enumerate(counts) if c > 0},
            "last_finite_loss": float(finite_before[-1]) if finite_before.size else None,
        }
        message = (
            f"Exploding gradients: training diverged to NaN/Inf at epoch {epoch}"
            + (f"; `{series.names[layer]}` has {int(counts[layer])} non-finite gradient entries" if counts[layer] > 0 else "")
            + f". Every update after that is lost. {fix}"
        )
        return [Finding("exploding_gradients", series.names[layer], epoch, message, evidence, fix)]
    growth = _ratio(series.kernel_grad, np.broadcast_to(series.kernel_grad[:1], series.kernel_grad.shape).copy())
    for layer in series.kernel_layers:
        with np.errstate(invalid="ignore"):
            stretch = _first_stretch(growth[:, layer] >= thresholds.exploding_growth, thresholds.persistence)
        if stretch is not None and len(series.epochs) > 1:
            start, end = stretch
            evidence = {"growth": float(growth[start, layer]), "gradient_norm": float(series.kernel_grad[start, layer]),
                        "gradient_norm_before_training": float(series.kernel_grad[0, layer]),
                        "threshold": thresholds.exploding_growth, "epochs": [series.epochs[start], series.epochs[end]]}
            message = (
                f"Exploding gradients: from epoch {series.epochs[start]}, the gradient norm of `{series.names[layer]}` is "
                f"{growth[start, layer]:.3g}x its value before training ({_g(series.kernel_grad[0, layer])} → "
                f"{_g(series.kernel_grad[start, layer])}) and stays above {thresholds.exploding_growth:g}x. {fix}"
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
    evidence = {"first_layer": series.names[first], "last_layer": series.names[last], "kernel_gradient_ratio": float(ratios[0][start]),
                "error_signal_ratio": float(ratios[1][start]), "threshold": thresholds.exploding_ratio,
                "epochs": [series.epochs[start], series.epochs[end]]}
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
    main = min(stretches, key=lambda i: (stretches[i][0], -np.nanmax(fractions[stretches[i][0] : stretches[i][1] + 1, i])))
    start, end = stretches[main]
    fraction = float(fractions[end, main])
    affected = sorted(stretches)
    evidence = {
        "fraction": fraction, "fraction_at_start": float(fractions[start, main]), "threshold": limit,
        "epochs": [series.epochs[start], series.epochs[end]],
        "layers": {series.names[i]: float(fractions[stretches[i][1], i]) for i in affected},
    }
    until = "the last snapshot" if end == len(series.epochs) - 1 else f"epoch {series.epochs[end]}"
    if kind == "dead_units":
        fix = (f"Try: a lower learning rate{_lr_text(series)}, He initialization (`--init he_normal`), or an activation "
               "without a flat zero side (`leaky_relu`, `elu`, `gelu`); batch normalization also helps.")
        message = (f"Dead units: from epoch {series.epochs[start]} to {until}, {fraction:.0%} of the units of "
                   f"`{series.names[main]}` output zero on every probe sample, so they pass no gradient and rarely "
                   f"recover.{_others(series, affected, main)} {fix}")
    else:
        fix = (f"Try: standardized inputs, a lower learning rate{_lr_text(series)}, Glorot initialization, batch "
               "normalization (`--batch-norm`), or ReLU-family activations.")
        message = (f"Saturation: from epoch {series.epochs[start]} to {until}, {fraction:.0%} of the units of "
                   f"`{series.names[main]}` ({series.activations[main]}) sit at their bounds on nearly every sample, "
                   f"where their gradient is about zero.{_others(series, affected, main)} {fix}")
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
        not_improving = np.r_[False, ~(series.loss[1:] < series.loss[:-1])]  # NaN loss counts as not improving
        too_high = known & (median > thresholds.update_ratio_high) & not_improving
        too_low = known & (fastest < thresholds.update_ratio_low) & series.untrained(thresholds)
    if too_high.any():
        position = int(np.argmax(too_high))
        layer = layers[int(np.nanargmax(updates[position]))]
        evidence = {"median_update_ratio_per_epoch": float(median[position]), "threshold": thresholds.update_ratio_high,
                    "probe_loss_before": _json_number(series.loss[position - 1]),
                    "probe_loss_after": _json_number(series.loss[position]),
                    "layers": {series.names[i]: _json_number(updates[position, k]) for k, i in enumerate(layers)}}
        fix = f"Try: a learning rate 3 to 10 times lower{_lr_text(series)}, or a schedule with warm-up."
        loss = "became non-finite" if not np.isfinite(series.loss[position]) else (
            f"went from {series.loss[position - 1]:.3g} to {series.loss[position]:.3g} instead of falling")
        message = (
            f"Learning rate too high: by epoch {series.epochs[position]}, the weights moved by {_g(median[position])}x "
            f"their norm per epoch (median over layers; `{series.names[layer]}` {_g(np.nanmax(updates[position]))}x; "
            f"above {_g(thresholds.update_ratio_high)}), and the probe loss {loss}. {fix}"
        )
        return [Finding("learning_rate", series.names[layer], series.epochs[position], message, evidence, fix)]
    count = int(known.sum())
    stretch = _first_stretch(too_low, min(thresholds.persistence, count) if count else thresholds.persistence)
    if stretch is None:
        return []
    start, end = stretch
    layer = layers[int(np.nanargmax(updates[start]))]
    evidence = {"fastest_update_ratio_per_epoch": float(fastest[start]), "threshold": thresholds.update_ratio_low,
                "probe_loss": _json_number(series.loss[end]), "probe_loss_before_training": _json_number(series.loss[0]),
                "epochs": [series.epochs[start], series.epochs[end]]}
    fix = f"Try: a learning rate 10 to 100 times higher{_lr_text(series)}, or Adam, whose steps do not shrink with the gradient."
    message = (
        f"Learning rate too low: from epoch {series.epochs[start]} to {series.epochs[end]}, even the fastest-moving "
        f"layer, `{series.names[layer]}`, changes its weights by only {_g(fastest[start])} of their norm per epoch "
        f"(below {_g(thresholds.update_ratio_low)}; healthy runs move ~1e-3 or more), and the probe loss is still "
        f"{series.loss[end]:.3g} (it started at {series.loss[0]:.3g}). {fix}"
    )
    return [Finding("learning_rate", series.names[layer], series.epochs[start], message, evidence, fix)]


def _g(value) -> str:
    """A ratio for people: 7.4e-04, 0.012, 3.1."""
    value = float(value)
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.2g}" if 1e-2 <= abs(value) < 1e3 or value == 0 else f"{value:.1e}"


def _json_number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
