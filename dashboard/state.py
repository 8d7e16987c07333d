"""The dashboard's view state: one declared schema that round-trips to the URL query string, and its validation.

Every view setting is a field of `ViewState` and one row of `FIELDS` (name in the URL, parser, formatter).
Parsing and formatting both loop over that table, as TensorFlow Playground's `state.ts` does, so adding a
control is one line here. A stale or hand-edited link never raises: each bad value falls back to its default
and adds a human-readable notice. The page itself lives in the URL path (`/`, `/gradients`, `/layers`,
`/runs`), not in the query string. No Streamlit here: `dashboard/context/link.py` connects this to the widgets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from core.store import Run, RunNotFound, StoreError, is_valid_run_id

COLORS = ("label", "pred", "correct", "confidence")  # true label, predicted label, correct/incorrect, max prob
DIMS = ("2d", "3d")
SIZE_RANGE = (1, 20)  # marker size in pixels
OPACITY_RANGE = (0.05, 1.0)
MAX_COMPONENT = 100  # more than any run stores (10 by default); the run's own count is checked in validate()
MAX_SELECTION = 500  # selected probe rows kept in a link; longer query strings break in some browsers
MAX_EPOCH = 10_000_000
MAX_OUTPUT = 999  # a model output's number; the run's own count is checked in validate()


@dataclass(frozen=True)
class ViewState:
    """What the user is looking at. Defaults are what an empty query string shows."""

    run: str | None = None  # run id; None: the newest run
    layer: str | None = None  # layer name as recorded (`dense_1`, `block/dense`); None: the first layer
    epoch: int | None = None  # a captured epoch; None: the latest one, which follows a run while it trains
    pcx: int = 1  # principal components on the x, y and z axes, counted from 1
    pcy: int = 2
    pcz: int = 3
    dims: str = "2d"
    color: str = "label"
    size: int = 5
    opacity: float = 0.8
    sel: tuple[int, ...] = ()  # selected probe rows (positions in probe.npz), highlighted in every panel
    compare: tuple[str, ...] = ()  # run ids overlaid on the comparison charts
    out: int | None = None  # the model output colours and predictions are of; None: the primary output
    # Of a regression target of several columns: the column ("0", "1", ...) that colours the points, or "norm", the
    # length of each row's vector of values.
    tcol: str = "norm"


class BadValue(ValueError):
    """A URL value that cannot be used; the message completes "The link's `name=value` ..."."""


@dataclass(frozen=True)
class Field:
    """One URL parameter: `parse` turns its raw values into the field's value or raises ValueError."""

    name: str
    parse: Callable[[list[str]], Any]
    fallback: str  # what a bad value is replaced by, for the notice
    format: Callable[[Any], str | list[str]] = str


def _single(convert: Callable[[str], Any]) -> Callable[[list[str]], Any]:
    return lambda values: convert(values[-1].strip())


def _integer(low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        if not text.lstrip("-").isdigit():
            raise BadValue("is not a whole number")
        value = int(text)
        if not low <= value <= high:
            raise BadValue(f"is outside {low}–{high}")
        return value

    return convert


def _number(low: float, high: float) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not low <= value <= high:
            raise BadValue(f"is not a number from {low:g} to {high:g}")
        return value

    return convert


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text not in options:
            raise BadValue(f"is not one of {', '.join(options)}")
        return text

    return convert


def _column(text: str) -> str:
    if text != "norm" and not (text.isascii() and text.isdigit() and int(text) <= MAX_OUTPUT):
        raise BadValue("is not norm or a column number")
    return text if text == "norm" else str(int(text))


def _run_id(text: str) -> str:
    if not is_valid_run_id(text):
        raise BadValue("is not a run id (letters, digits, '.', '_' and '-' only)")
    return text


def _layer_name(text: str) -> str:
    if not text or len(text) > 200:
        raise BadValue("is not a layer name")
    return text


def parse_rows(values: list[str]) -> tuple[int, ...]:
    """Probe rows from "3,17,40-45" (ranges are inclusive); sorted, unique."""
    rows: set[int] = set()
    for part in ",".join(values).split(","):
        part = part.strip()
        if not part:
            continue
        start, _, end = part.partition("-")
        end = end or start
        if not (start.isdigit() and end.isdigit()) or int(end) < int(start) or int(end) - int(start) > 1_000_000:
            raise BadValue("is not a list of probe rows such as 3,17,40-45")
        rows.update(range(int(start), int(end) + 1))
        if len(rows) > 1_000_000:
            raise BadValue("selects too many rows")
    return tuple(sorted(rows))


def format_rows(rows: tuple[int, ...]) -> str:
    """The inverse of `parse_rows`, with runs of consecutive rows written as ranges: (1, 2, 3, 7) -> "1-3,7"."""
    parts: list[str] = []
    start: int | None = None
    previous: int | None = None  # set together with start
    for row in [*sorted(set(rows)), None]:
        if start is not None and previous is not None and row == previous + 1:
            previous = row
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = row
    return ",".join(parts)


FIELDS: tuple[Field, ...] = (
    Field("run", _single(_run_id), "the newest run"),
    Field("layer", _single(_layer_name), "the first layer"),
    Field("epoch", _single(_integer(0, MAX_EPOCH)), "the latest epoch"),
    Field("pcx", _single(_integer(1, MAX_COMPONENT)), "PC1"),
    Field("pcy", _single(_integer(1, MAX_COMPONENT)), "PC2"),
    Field("pcz", _single(_integer(1, MAX_COMPONENT)), "PC3"),
    Field("dims", _single(_choice(DIMS)), "2d"),
    Field("color", _single(_choice(COLORS)), "the true label"),
    Field("size", _single(_integer(*SIZE_RANGE)), "size 5"),
    Field("opacity", _single(_number(*OPACITY_RANGE)), "opacity 0.8", lambda value: f"{value:g}"),
    Field("sel", parse_rows, "no selection", format_rows),
    Field(
        "compare",
        lambda values: tuple(dict.fromkeys(_run_id(v.strip()) for v in values if v.strip())),
        "no comparison",
        list,
    ),
    Field("out", _single(_integer(0, MAX_OUTPUT)), "the primary output"),
    Field("tcol", _single(_column), "the norm of the target's columns"),
)
DEFAULTS = ViewState()
assert [f.name for f in FIELDS] == [f.name for f in fields(ViewState)], "FIELDS and ViewState must list the same fields"


def parse_query(params: Mapping[str, str | list[str]]) -> tuple[ViewState, list[str]]:
    """The view a query string asks for, and a notice for every value that was unusable (and so defaulted).

    `params` maps names to a value or a list of values (repeated parameters). Unknown names are ignored:
    they may belong to a page's own controls.
    """
    values, notices = {}, []
    for field in FIELDS:
        raw = params.get(field.name)
        if raw is None:
            continue
        raw = [raw] if isinstance(raw, str) else list(raw)
        if not raw:
            continue
        try:
            values[field.name] = field.parse(raw)
        except ValueError as error:
            shown = ",".join(raw)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            reason = str(error) if isinstance(error, BadValue) else "is not valid"
            notices.append(f"“{field.name}={shown}” {reason}: showing {field.fallback}.")
    return replace(DEFAULTS, **values), notices


def to_query(state: ViewState, always: tuple[str, ...] = ("run",)) -> dict[str, str | list[str]]:
    """Query parameters for `state`: fields at their default are left out, except those named in `always`."""
    query: dict[str, str | list[str]] = {}
    for field in FIELDS:
        value = getattr(state, field.name)
        if value is None or value == () or (value == getattr(DEFAULTS, field.name) and field.name not in always):
            continue
        query[field.name] = field.format(value)
    return query


# --------------------------------------------------------------------------------------------------------------
# Validation against a run


@dataclass(frozen=True)
class RunFacts:
    """What a link's values are checked against: the parts of a run that bound the view state."""

    id: str
    layers: tuple[str, ...]  # recorded layer names, input side first
    epochs: tuple[int, ...]  # captured epochs, ascending
    components: int  # principal components stored per layer
    probe_size: int
    has_labels: bool
    outputs: tuple[str, ...] = ()  # model output names (empty: one output, or a run from before they were stored)
    output_kinds: tuple[str | None, ...] = ()  # per output: classes, values, multilabel or None (no targets)
    primary_output: int = 0
    output_columns: tuple[int, ...] = ()  # per output: its width (the last axis of its shape; 1 when unknown)

    def target_columns(self, out: int | None) -> int:
        """Columns of the regression target of output `out` (None: the primary output); 0 for other targets."""
        index = self.primary_output if out is None else out
        if not 0 <= index < len(self.output_kinds) or self.output_kinds[index] != "values":
            return 0
        return self.output_columns[index] if index < len(self.output_columns) else 1

    @property
    def has_truth(self) -> bool:
        """Whether points can be coloured by a true target: class labels, or the value of another kind of target."""
        return self.has_labels or any(kind is not None for kind in self.output_kinds)

    @classmethod
    def of(cls, run: Run) -> RunFacts:
        meta = run.meta
        probe = meta.get("probe", {})
        return cls(
            id=run.id,
            layers=tuple(str(layer.get("name", f"layer {i}")) for i, layer in enumerate(run.layers)),
            epochs=tuple(run.epochs()),
            components=int(meta.get("components") or 10),
            probe_size=int(probe.get("size") or 0),
            has_labels=bool(probe.get("has_labels", True)),
            outputs=tuple(output.name for output in run.info.outputs),
            output_kinds=tuple(output.kind for output in run.info.outputs),
            primary_output=run.info.probe.primary_output,
            output_columns=tuple(_width(output.shape) for output in run.info.outputs),
        )


def _width(shape: tuple[int | None, ...] | None) -> int:
    """Columns of an output of shape `shape` (without the batch axis): its values per sample, 1 when unknown."""
    sizes = [1 if size is None else size for size in shape or ()]
    return max(1, math.prod(sizes))


def validate(state: ViewState, facts: RunFacts | None, run_ids: tuple[str, ...] = ()) -> tuple[ViewState, list[str]]:
    """`state` made valid for the run described by `facts`, and a notice for every value that had to change.

    `run_ids` are the runs that exist, for the comparison list. Without a run (`facts` None) only the
    run-independent fields are kept.
    """
    notices: list[str] = []
    changes: dict[str, Any] = {}
    if run_ids and state.compare:
        kept = tuple(r for r in state.compare if r in run_ids)
        if kept != state.compare:
            missing = ", ".join(r for r in state.compare if r not in run_ids)
            notices.append(f"The runs {missing} to compare with do not exist (any more); they were left out.")
            changes["compare"] = kept
    if facts is None:
        return replace(state, **changes, layer=None, epoch=None, sel=()), notices
    if state.layer is not None and state.layer not in facts.layers:
        first = facts.layers[0] if facts.layers else "none"
        notices.append(f"Run {facts.id} has no layer “{state.layer}”; showing “{first}” instead.")
        changes["layer"] = None
    if state.epoch is not None and facts.epochs and state.epoch not in facts.epochs:
        wanted = state.epoch
        nearest = min(facts.epochs, key=lambda e: (abs(e - wanted), e))
        notices.append(
            f"Run {facts.id} has no snapshot at epoch {state.epoch} "
            f"(it has {facts.epochs[0]}–{facts.epochs[-1]}); showing epoch {nearest}."
        )
        changes["epoch"] = nearest
    for name in ("pcx", "pcy", "pcz"):
        if getattr(state, name) > facts.components:
            default = min(getattr(DEFAULTS, name), max(1, facts.components))
            if getattr(state, name) != getattr(DEFAULTS, name):  # a link asked for it; a default is not news
                notices.append(
                    f"Run {facts.id} stores {facts.components} components, so “{name}” is back to PC{default}."
                )
            changes[name] = default
    if state.out is not None and (len(facts.outputs) < 2 or state.out >= len(facts.outputs)):
        if len(facts.outputs) > 1:  # a one-output run has nothing to choose: no news
            first = facts.outputs[facts.primary_output]
            notices.append(f"Run {facts.id} has no output {state.out}; showing output “{first}”.")
        changes["out"] = None
    columns = facts.target_columns(changes.get("out", state.out))
    if state.tcol != "norm" and int(state.tcol) >= columns:
        if columns > 1:  # a target of one column has nothing to choose: no news
            notices.append(
                f"The chosen output's target has {columns} columns, no column {state.tcol}; colouring by their norm."
            )
        changes["tcol"] = "norm"
    if not facts.has_truth and state.color in ("label", "correct"):
        if state.color != DEFAULTS.color:  # the default colouring switching over is not something a link asked for
            notices.append(f"Run {facts.id} was recorded without labels, so points are coloured by prediction.")
        changes["color"] = "pred"
    if state.sel:
        kept_rows = tuple(r for r in state.sel if r < facts.probe_size)[:MAX_SELECTION]
        if kept_rows != state.sel:
            notices.append(
                f"The selection was trimmed to {len(kept_rows)} rows: the probe set has {facts.probe_size} samples "
                f"and a link keeps at most {MAX_SELECTION}."
            )
            changes["sel"] = kept_rows
    return replace(state, **changes), notices


def open_run(store, run_id: str | None, run_ids: list[str]) -> tuple[Run | None, list[str]]:
    """The run a link names (validated by `RunStore.run` before any file is touched), else the newest one.

    `run_ids` lists the store's runs, newest first. Returns (None, notices) when there is no run to show.
    """
    notices: list[str] = []
    if run_id is not None:
        try:
            return store.run(run_id), notices
        except RunNotFound:
            notices.append(f"There is no run “{run_id}” in this store (deleted, or a link from another host).")
        except StoreError as error:
            notices.append(f"Run “{run_id}” cannot be opened: {error}")
    for candidate in run_ids:
        try:
            run = store.run(candidate)
        except StoreError:
            continue
        if notices:
            notices[-1] += f" Showing the newest run, “{run.name}”, instead."
        return run, notices
    return None, notices
