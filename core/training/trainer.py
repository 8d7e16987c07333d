"""Trains a built-in model on a built-in or user-supplied data set and records it: what `python -m core train` runs."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, make_dataclass

from core.settings import TRAINING_STAGES, dataclass_fields, model_settings, spec_settings
from core.training.datasets import check_dataset, load_dataset, split
from core.training.models import ModelConfig, parse_hidden


@dataclass
class TrainingSpec(make_dataclass("TrainingSettings", dataclass_fields(spec_settings()))):  # type: ignore[misc]
    """Everything that defines a training run; stored whole in the run's config, so a run can be repeated.

    One field per `python -m core train` flag, with the defaults, types and help declared in `core.settings`.
    """

    @classmethod
    def from_args(cls, args) -> TrainingSpec:
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        if isinstance(values.get("hidden"), str):
            values["hidden"] = parse_hidden(values["hidden"])
        return cls(**values).validate()

    def model_config(self) -> ModelConfig:
        values = {setting.name: getattr(self, setting.name) for setting in model_settings()}
        return ModelConfig(**{**values, "hidden": tuple(self.hidden)})

    def validate(self) -> TrainingSpec:
        for setting in spec_settings():
            if setting.bounds is None:
                continue
            low, high = setting.bounds
            value = getattr(self, setting.name)
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{setting.flag} must be an integer in [{low}, {high}]. Received: {value!r}")
        if self.batch_every is not None and self.batch_every < 1:
            raise ValueError(f"--batch-every must be >= 1. Received: {self.batch_every!r}")
        if self.grad_every is not None and self.grad_every < 1:
            raise ValueError(f"--grad-every must be >= 1. Received: {self.grad_every!r}")
        if self.budget is not None and not (isinstance(self.budget, (int, float)) and 0 < self.budget <= 1):
            raise ValueError(
                f"--budget must be a share of training's time in (0, 1], such as 0.03. Received: {self.budget!r}"
            )
        check_dataset(self.dataset)
        self.model_config().validate()  # last: only its check of Keras's names loads TensorFlow
        return self


def train(
    spec: TrainingSpec,
    progress: Callable[[int, int, dict], None] | None = None,
    stage: Callable[[str], None] | None = None,
) -> str:
    """Train and record one run; returns its id. The run is marked failed or interrupted if training stops early.
    `stage` hears each of `TRAINING_STAGES` as it begins (the dashboard shows them while a job starts)."""
    say = stage or (lambda name: None)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is not the user's business
    spec.validate()
    say(TRAINING_STAGES[0])
    import keras

    from core.capture.recorder import Recorder
    from core.training.models import build_model

    say(TRAINING_STAGES[1])
    data = load_dataset(spec.dataset, noise=spec.noise, seed=spec.seed, label_column=spec.label_column)
    x_train, y_train, x_val, y_val = split(data, seed=spec.seed)
    say(TRAINING_STAGES[2])
    model = build_model(data.x.shape[1:], data.n_classes, spec.model_config())
    say(TRAINING_STAGES[3])
    recorder = Recorder(
        spec.runs,
        probe=(data.x, data.y),
        every=spec.every,
        name=spec.name or f"{data.name} {'-'.join(map(str, spec.hidden))} {spec.activation}",
        batch_every=spec.batch_every,
        grad_every=spec.grad_every,
        probe_size=spec.probe_size,
        seed=spec.seed,
        image_shape=data.image_shape,
        class_names=list(data.class_names),
        feature_names=list(data.feature_names),
        dataset={
            "name": data.name,
            "kind": data.kind,
            "source": data.source,
            "n_samples": int(len(data.y)),
            "n_classes": data.n_classes,
        },
        config={**asdict(spec), "hidden": list(spec.hidden)},
        run_id=spec.run_id,
        budget=spec.budget,
        layers=layer_selection(spec.layers),
    )
    callbacks = [recorder]
    if progress:
        callbacks.append(
            keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: progress(e + 1, spec.epochs, dict(logs or {})))
        )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # a cancelled job ends as "interrupted"
    try:
        model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            epochs=spec.epochs,
            batch_size=spec.batch_size,
            callbacks=callbacks,
            verbose=0,
        )
    except KeyboardInterrupt:
        recorder.end("interrupted")
        raise
    except Exception as error:
        recorder.end("failed", error=f"{type(error).__name__}: {error}")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    recorder.wait()  # the id is printed once its run is completely written
    return recorder.run_id


def layer_selection(text: str | None) -> str | list[str] | None:
    """`--layers` as the Recorder takes it: None (auto), "all"/"auto", or the comma-separated items as a list."""
    if text is None or text.strip() in ("all", "auto"):
        return None if text is None else text.strip()
    return [item.strip() for item in text.split(",") if item.strip()] or text


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
