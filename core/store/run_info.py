"""The typed read model of a run: what `run.json` says about the run, its data set and its layers, and the names
of the arrays a snapshot keeps for each layer. Numpy-free and Keras-free.

Pages and commands read a run through these types instead of string keys and nested `.get` chains:

    info = run.info                          # RunInfo, built from run.json once it passed core/store/run_format.py
    info.dataset.class_names                 # ("setosa", "versicolor", "virginica")
    info.layers[2].name, info.layers[2].key("pca")   # "dense_2", "L2/pca"
    layer_key(2, "kernel") == "L2/kernel"; parse_layer_key("L2/kernel") == (2, "kernel")

Every field may be absent from a run written by an older version or by a user's own `Recorder`, so each one has
the value that absence means (an empty tuple, None), never a KeyError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_LAYER_KEY = re.compile(r"^L(\d+)/(.+)$")


def layer_key(index: int, name: str) -> str:
    """The snapshot array `name` of layer `index`: "L3/pca", "L3/kernel", "L3/unit_top"."""
    return f"L{int(index)}/{name}"


def parse_layer_key(key: str) -> tuple[int, str] | None:
    """(layer index, array name) of a layer's snapshot key; None for a key that is not a layer's."""
    match = _LAYER_KEY.match(key)
    return (int(match.group(1)), match.group(2)) if match else None


def _names(value: Any) -> tuple[str, ...]:
    return tuple(str(item) for item in value) if isinstance(value, list) else ()


def _shape(value: Any) -> tuple[int | None, ...] | None:
    return tuple(value) if isinstance(value, list) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class DatasetInfo:
    """run.json's `dataset`: what the probe samples are."""

    name: str | None = None
    kind: str | None = None  # "plane", "image", "tabular"; None for a user's own data
    class_names: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()
    image_shape: tuple[int, ...] | None = None
    n_classes: int | None = None
    n_samples: int | None = None

    @classmethod
    def from_meta(cls, record: dict | None) -> DatasetInfo:
        record = record or {}
        shape = _shape(record.get("image_shape"))
        return cls(
            name=_text(record.get("name")),
            kind=_text(record.get("kind")),
            class_names=_names(record.get("class_names")),
            feature_names=_names(record.get("feature_names")),
            image_shape=tuple(int(n) for n in shape if n is not None) if shape else None,
            n_classes=_int(record.get("n_classes")),
            n_samples=_int(record.get("n_samples")),
        )

    @property
    def classes(self) -> int:
        """How many classes the labels have, as run.json says (0 when it does not say)."""
        return self.n_classes or len(self.class_names)


@dataclass(frozen=True)
class LayerInfo:
    """One recorded layer, as run.json's `layers` lists it."""

    index: int
    name: str
    type: str | None = None
    output_shape: tuple[int | None, ...] | None = None
    params: int | None = None
    activation: str | None = None
    weights: tuple[str, ...] = ()  # roles: "kernel", "bias", "embeddings", ...
    stage: str | None = None  # the block or stage of a deep model the layer ends or belongs to

    @classmethod
    def from_meta(cls, position: int, record: dict) -> LayerInfo:
        return cls(
            index=position,  # snapshot keys count recorded layers in order, whatever `index` says
            name=str(record.get("name")),
            type=_text(record.get("type")),
            output_shape=_shape(record.get("output_shape")),
            params=_int(record.get("params")),
            activation=_text(record.get("activation")),
            weights=_names(record.get("weights")),
            stage=record.get("stage") if isinstance(record.get("stage"), str) else None,
        )

    def key(self, name: str) -> str:
        """This layer's snapshot array `name`: `layer.key("pca")` -> "L3/pca"."""
        return layer_key(self.index, name)


@dataclass(frozen=True)
class ProbeInfo:
    """run.json's `probe`: the fixed samples every snapshot is computed on."""

    size: int | None = None
    has_labels: bool = False
    input_shape: tuple[int | None, ...] | None = None
    plane: bool = False  # 2-D inputs: the dashboard can draw the input plane and its bending
    primary_output: int = 0  # the output whose classes `y`, the linear probes and the diagnosis are of
    input_names: tuple[str, ...] = ()  # per model input, in order (empty: runs written before December 2026)

    @classmethod
    def from_meta(cls, record: dict | None) -> ProbeInfo:
        record = record or {}
        inputs = record.get("inputs")
        inputs = inputs if isinstance(inputs, list) else []
        return cls(
            input_names=tuple(str(item.get("name")) if isinstance(item, dict) else "" for item in inputs),
            size=_int(record.get("size")),
            has_labels=record.get("has_labels") is True,
            input_shape=_shape(record.get("input_shape")),
            plane=record.get("plane") is True,
            primary_output=_int(record.get("primary_output")) or 0,
        )


@dataclass(frozen=True)
class OutputInfo:
    """One model output (run.json's `outputs`): its name and what its probe targets are: `classes`, `values`
    (regression), `multilabel`, or None (recorded without targets, or a run written before outputs were)."""

    index: int
    name: str
    kind: str | None = None
    shape: tuple[int | None, ...] | None = None
    layer: str | None = None  # the recorded layer that gives it (None: not recorded, or a run before 2026-12-05)

    @classmethod
    def from_meta(cls, index: int, record: dict) -> OutputInfo:
        return cls(
            index=index,
            name=str(record.get("name")),
            kind=_text(record.get("kind")),
            shape=_shape(record.get("shape")),
            layer=_text(record.get("layer")),
        )


@dataclass(frozen=True)
class RunInfo:
    """A run as run.json describes it (after core/store/run_format.py checked it)."""

    id: str
    name: str
    status: str
    dataset: DatasetInfo = field(default_factory=DatasetInfo)
    probe: ProbeInfo = field(default_factory=ProbeInfo)
    layers: tuple[LayerInfo, ...] = ()
    outputs: tuple[OutputInfo, ...] = ()  # empty for runs written before December 2026: one output
    config: dict = field(default_factory=dict)
    epochs_planned: int | None = None
    epochs_done: int | None = None
    created: float | None = None
    updated: float | None = None

    @classmethod
    def from_meta(cls, meta: dict, run_id: str) -> RunInfo:
        """From a checked run.json (`core.store.run_format.run_meta`)."""
        layers = meta.get("layers") or []
        return cls(
            id=run_id,
            name=str(meta.get("name") or run_id),
            status=str(meta.get("status") or "running"),
            dataset=DatasetInfo.from_meta(meta.get("dataset")),
            probe=ProbeInfo.from_meta(meta.get("probe")),
            layers=tuple(LayerInfo.from_meta(position, record) for position, record in enumerate(layers)),
            outputs=tuple(OutputInfo.from_meta(i, record) for i, record in enumerate(meta.get("outputs") or [])),
            config=dict(meta.get("config") or {}),
            epochs_planned=_int(meta.get("epochs_planned")),
            epochs_done=_int(meta.get("epochs_done")),
            created=meta.get("created"),
            updated=meta.get("updated"),
        )

    def layer(self, name: str) -> LayerInfo | None:
        """The recorded layer called `name`, or None."""
        return next((layer for layer in self.layers if layer.name == name), None)

    def output_layer(self, output: OutputInfo) -> LayerInfo | None:
        """The recorded layer that gives model output `output`: the one run.json names; in runs that name none
        (written before 2026-12-05) the layer of the output's name, else, for a model of one output, the last
        recorded layer. None when the run did not record it."""
        found = self.layer(output.layer or output.name)
        if found is None and output.layer is None and len(self.outputs) == 1 and self.layers:
            found = self.layers[-1]
        return found

    def output_layers(self) -> list[int]:
        """Positions of the recorded layers that give a model output, in the order of the outputs. A run that
        lists no outputs (written before December 2026: one output), or none of whose outputs' layers is known,
        has its last recorded layer, as before outputs were recorded."""
        found = (self.output_layer(output) for output in self.outputs)
        indices = list(dict.fromkeys(layer.index for layer in found if layer is not None))
        return indices or ([len(self.layers) - 1] if self.layers else [])
