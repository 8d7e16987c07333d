"""Every training and recording setting, declared once: name, type, default, help, choices or bounds, CLI flag.

`TrainingSpec`, the `python -m core train` parser, `ModelConfig`, the `Recorder`'s keywords and the dashboard's
New run form (`TrainForm` and its widgets) all loop over `SETTINGS`, as TensorFlow Playground's `state.ts` loops
over its table of properties. Adding a setting is one row here. No Keras and no TensorFlow: the dashboard
imports this module. The data set names come from `core.training.datasets` (numpy and scikit-learn only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from core.training.datasets import DATASETS

__all__ = [
    "ACTIVATIONS",
    "DATASETS",
    "INITIALIZERS",
    "OPTIMIZERS",
    "RECORDER_DEFAULTS",
    "SETTINGS",
    "Setting",
    "Widget",
    "dataclass_fields",
    "form_settings",
    "model_settings",
    "spec_settings",
    "text",
]

# The names the form offers and error messages suggest. The CLI and ModelConfig take any name Keras knows.
ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "selu", "gelu", "swish", "leaky_relu", "linear")
INITIALIZERS = ("glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "lecun_normal", "random_normal")
OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamw", "adagrad", "nadam")

MAX_EPOCHS = 10_000

# What `core.training.trainer.train` does before its first epoch, in order; `python -m core train` prints each as it
# begins, as STAGE_PREFIX + name on stderr, and the dashboard shows them while a job it started gets going.
TRAINING_STAGES = ("loading TensorFlow and Keras", "loading the data set", "building the model", "training")
STAGE_PREFIX = "strata: stage: "
_SAME = object()  # a Recorder default that is the table's own


@dataclass(frozen=True)
class Widget:
    """How the dashboard's New run form shows a setting: its label and the range it offers (within the setting's
    own bounds). The kind follows from the setting: choices -> selectbox, bool -> checkbox, text -> text input,
    number -> number input, or a slider when `slider`."""

    label: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    format: str | None = None
    slider: bool = False
    help: str | None = None


@dataclass(frozen=True)
class Setting:
    """One setting of a training run or a recording.

    Args:
        name: the field of `TrainingSpec` (and of `TrainForm`, `ModelConfig`, `Recorder` where they take it).
        type: `int`, `float`, `str`, `bool` (a switch) or `tuple` (layer sizes, written "32,32,32").
        default: the default everywhere, or None for "not set".
        help: the CLI's help text.
        choices: the values the form offers and checks; empty for free values.
        bounds: inclusive (low, high) that `TrainingSpec.validate` enforces on integers.
        metavar: the CLI's placeholder for the value.
        form: how the New run form shows it; None keeps it off the form.
        model: a field of `ModelConfig` too.
        spec: a field of `TrainingSpec` and a `python -m core train` flag.
        recorder: a keyword of `Recorder` too.
        recorder_default: the `Recorder`'s default where it deliberately differs (say why beside it).
        public: listed in the CLI's help.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    bounds: tuple[int, int] | None = None
    metavar: str | None = None
    form: Widget | None = None
    model: bool = False
    spec: bool = True
    recorder: bool = False
    recorder_default: Any = _SAME
    public: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def annotation(self) -> Any:
        kind = tuple[int, ...] if self.type is tuple else self.type
        return kind | None if self.default is None else kind

    @property
    def for_recorder(self) -> Any:
        return self.default if self.recorder_default is _SAME else self.recorder_default


SETTINGS: tuple[Setting, ...] = (
    # Data
    Setting(
        "dataset",
        str,
        "spiral",
        f"{', '.join(DATASETS)}, or a .npz/.csv path",
        choices=DATASETS,
        form=Widget("Data set"),
    ),
    # Noise sets how well the spiral can be learned at all: the nearest point of a noise-free arm classifies the
    # validation split of seeds 0-2 at 0.98-0.995 with 0.03, 0.965-0.985 with 0.05 and 0.795-0.855 with 0.1. At 0.03
    # the README's spiral example ends above 0.95 on every seed (issue 17).
    Setting(
        "noise", float, 0.03, "noise of the 2-D data sets", form=Widget("Noise (2-D sets)", 0.0, 0.5, 0.01, slider=True)
    ),
    Setting("label_column", str, None, "label column of a .csv data set"),
    # Model
    Setting(
        "hidden",
        tuple,
        (32, 32, 32),
        "hidden layer sizes, e.g. 128,64,32",
        model=True,
        form=Widget("Hidden layers", help="Units per hidden layer, input side first."),
    ),
    Setting(
        "activation",
        str,
        "relu",
        f"any Keras activation name, e.g. {', '.join(ACTIVATIONS[1:4])}",
        choices=ACTIVATIONS,
        model=True,
        form=Widget("Activation"),
    ),
    Setting(
        "init",
        str,
        "glorot_uniform",
        "kernel initializer of every Dense layer: any Keras initializer name, e.g. he_normal (default: Keras's own)",
        choices=INITIALIZERS,
        model=True,
        form=Widget("Initializer"),
    ),
    Setting(
        "optimizer",
        str,
        "adam",
        f"any Keras optimizer name, e.g. {', '.join(OPTIMIZERS[1:3])}",
        choices=OPTIMIZERS,
        model=True,
        form=Widget("Optimizer"),
    ),
    # Adam at 1e-3 in batches of 32 (the CLI's old defaults) left the spiral at 0.575-0.665 validation accuracy after
    # 30 epochs (seeds 0-2), and at 0.655-0.735 with noise 0.03; 0.01 in batches of 16 reach 0.97-0.985 (issue 17).
    Setting("lr", float, 0.01, "learning rate", model=True, form=Widget("Learning rate", 1e-5, 1.0, format="%.4f")),
    Setting(
        "batch_size", int, 16, "samples per gradient step", bounds=(1, 1_000_000), form=Widget("Batch size", 1, 4096)
    ),
    Setting(
        "epochs", int, 30, "passes over the training data", bounds=(1, MAX_EPOCHS), form=Widget("Epochs", 1, MAX_EPOCHS)
    ),
    Setting(
        "l2",
        float,
        0.0,
        "kernel weight decay factor; 0 adds no regularizer at all",
        model=True,
        form=Widget("L2", 0.0, 1.0, format="%.4f"),
    ),
    Setting(
        "dropout",
        float,
        0.0,
        "dropout rate after each hidden layer; 0 adds no Dropout layer",
        model=True,
        form=Widget("Dropout", 0.0, 0.9, 0.05),
    ),
    Setting(
        "batch_norm",
        bool,
        False,
        "Dense -> BatchNormalization -> activation, so BN sees pre-activations",
        model=True,
        form=Widget("Batch norm"),
    ),
    Setting(
        "seed",
        int,
        0,
        "seeds the data, its split, the initial weights and the probe set, so a run repeats",
        model=True,
        recorder=True,
        form=Widget("Seed", 0, 2**31 - 1),
    ),
    # Recording
    Setting(
        "probe_size",
        int,
        2000,
        "samples the layers are observed on, picked stratified by label",
        bounds=(10, 1_000_000),
        recorder=True,
    ),
    Setting("every", int, 1, "capture every N epochs", bounds=(1, MAX_EPOCHS), recorder=True),
    Setting("batch_every", int, None, "also capture every N batches", recorder=True),
    Setting("grad_every", int, None, "also measure per-layer gradient norms every N batches (cheap)", recorder=True),
    Setting("components", int, 10, "principal components kept of each layer's output", spec=False, recorder=True),
    # None is "auto": every layer of a model with at most 32 recordable layers (so every built-in MLP), and a
    # readable set of a deeper one: its block outputs, where each stage ends, and the head (core/capture/graph.py).
    Setting(
        "layers",
        str,
        None,
        "the layers to record: all, or comma-separated names, patterns (block_*_add) or "
        "types (Conv2D) (default: all of a model with up to 32, the block outputs and stage ends of a deeper one)",
        metavar="SELECTION",
        recorder=True,
    ),
    # The one default that differs by entry point. The CLI and the dashboard's jobs record each snapshot as it is
    # taken (None), so a run can be watched epoch by epoch; a Recorder in someone's own `fit` keeps recording
    # within 3% of training's wall time, so it barely slows their training (bench/README.md).
    Setting(
        "budget",
        float,
        None,
        "let the recording use at most this share of training's time beside it, "
        "e.g. 0.03; snapshots beyond it are analysed after training (default: every snapshot live)",
        metavar="SHARE",
        recorder=True,
        recorder_default=0.03,
    ),
    # Where and as what
    Setting("runs", str, "runs", "run store: a folder or an fsspec URL (default ./runs)"),
    Setting(
        "name",
        str,
        None,
        "the run's display name (default: data set, layer sizes and activation)",
        form=Widget("Name (optional)"),
    ),
    Setting(
        "run_id",
        str,
        None,
        "the run's id, chosen by whoever needs to know it before the run exists (the dashboard's jobs)",
        public=False,
    ),
)

RECORDER_DEFAULTS = MappingProxyType({s.name: s.for_recorder for s in SETTINGS if s.recorder})


def spec_settings() -> tuple[Setting, ...]:
    """The fields of `TrainingSpec`, which are the `python -m core train` flags, in order."""
    return tuple(s for s in SETTINGS if s.spec)


def model_settings() -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if s.model)


def form_settings() -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if s.form is not None)


def text(setting: Setting, value: Any = _SAME) -> str:
    """`value` (default: the setting's default) as typed on a command line or in a form: (32, 32, 32) ->
    "32,32,32", None -> ""."""
    value = setting.default if value is _SAME else value
    if value is None:
        return ""
    if setting.type is tuple:
        return ",".join(str(units) for units in value)
    return repr(float(value)) if setting.type is float else str(value)


def dataclass_fields(settings: tuple[Setting, ...], as_text: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """(name, annotation, field) for `dataclasses.make_dataclass`, one per setting, defaulting to the table's.
    Settings named in `as_text` are strings, as a form holds them ("32,32,32", "" for None)."""
    return [
        (s.name, str, field(default=text(s))) if s.name in as_text else (s.name, s.annotation, field(default=s.default))
        for s in settings
    ]
