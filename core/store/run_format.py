"""What each file of a run must hold to be read (core/FORMAT.md as checks): the store reader's validation.

`core.store` runs these on every file it reads, so a damaged or hand-edited run fails here, once, with a reason that
names the file and the field, and never later inside a page or a command. Reasons name JSON types only, never the
values found: a value can be anything, and the reason is shown to every viewer. Pure Python and numpy; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


class FormatProblem(ValueError):
    """A file's content does not match the format; the message says which field and what it should be."""


Check = tuple[Callable[[Any], bool], str]  # (test, what the value should be, in words)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _optional(check: Check) -> Check:
    test, words = check
    return (lambda value: value is None or test(value)), f"{words} or null"


def _list_of(check: Check, words: str) -> Check:
    test = check[0]
    return (lambda value: isinstance(value, list) and all(test(item) for item in value)), words


def _numeric_tree(value) -> bool:
    """A number, true/false or null, or a list or object of those (nested): the statistics in a layer record."""
    if value is None or isinstance(value, (int, float, bool)):
        return True
    if isinstance(value, list):
        return all(_numeric_tree(item) for item in value)
    if isinstance(value, dict):
        return all(_numeric_tree(item) for item in value.values())
    return False


INT: Check = (_is_int, "a whole number")
POSITIVE: Check = (lambda value: _is_int(value) and value >= 1, "a whole number from 1")
NUMBER: Check = (_is_number, "a number")
TEXT: Check = (lambda value: isinstance(value, str), "text")
BOOL: Check = (lambda value: isinstance(value, bool), "true or false")
OBJECT: Check = (lambda value: isinstance(value, dict), "an object")
LIST: Check = (lambda value: isinstance(value, list), "a list")
SCALAR: Check = (lambda value: value is None or isinstance(value, (str, int, float, bool)), "text or a number")
NUMBERS: Check = (_numeric_tree, "numbers")
NAMES = _list_of(SCALAR, "a list of names")
SHAPE = _list_of(_optional(INT), "a list of whole numbers")
# {output number as text: number or null}: a model of several outputs' linear probes or separations, per output.
PER_OUTPUT: Check = (
    lambda value: (
        isinstance(value, dict)
        and all(key.isdigit() and (item is None or _is_number(item)) for key, item in value.items())
    ),
    "an object of numbers by output number",
)
STATUS: Check = (
    lambda value: value in ("running", "finished", "failed", "interrupted"),
    "running, finished, failed or interrupted",
)

# run.json, field by field (FORMAT.md). Every field may be absent; null is allowed where the writer writes it.
RUN_FIELDS: dict[str, Check] = {
    "format_version": INT,
    "id": TEXT,
    "name": _optional(TEXT),
    "status": STATUS,
    "error": _optional(TEXT),
    "created": _optional(NUMBER),
    "updated": _optional(NUMBER),
    "host": _optional(TEXT),
    "pid": _optional(INT),
    "dataset": _optional(OBJECT),
    "config": _optional(OBJECT),
    "layers": _optional(LIST),
    "outputs": _optional(LIST),
    "model": _optional(OBJECT),
    "probe": _optional(OBJECT),
    "input": _optional(OBJECT),
    "every": _optional(POSITIVE),
    "batch_every": _optional(POSITIVE),
    "grad_every": _optional(POSITIVE),
    "components": _optional(POSITIVE),
    "seed": _optional(INT),
    "epochs_planned": _optional(INT),
    "steps_per_epoch": _optional(INT),
    "epochs_done": _optional(INT),
    "snapshots": _optional(INT),
    "nan_epoch": _optional(INT),
    "recovered_snapshots": _optional(INT),
}
DATASET_FIELDS: dict[str, Check] = {
    "name": _optional(SCALAR),
    "kind": _optional(TEXT),
    "class_names": _optional(NAMES),
    "feature_names": _optional(NAMES),
    "image_shape": _optional(_list_of(POSITIVE, "a list of whole numbers from 1")),
    "n_classes": _optional(INT),
    "n_samples": _optional(INT),
}
PROBE_FIELDS: dict[str, Check] = {
    "size": _optional(INT),
    "has_labels": _optional(BOOL),
    "input_shape": _optional(SHAPE),
    "inputs": _optional(LIST),
    "primary_output": _optional(INT),
    "plane": _optional(BOOL),
}
INPUT_FIELDS: dict[str, Check] = {
    "explained_variance_ratio": _optional(_list_of(_optional(NUMBER), "a list of numbers")),
    "linear_probe": _optional(NUMBER),
    "separation": _optional(NUMBER),
    "linear_probes": _optional(PER_OUTPUT),
    "separations": _optional(PER_OUTPUT),
}
MODEL_FIELDS: dict[str, Check] = {"name": _optional(TEXT), "params": _optional(INT)}
LAYER_FIELDS: dict[str, Check] = {
    "index": _optional(INT),
    "name": TEXT,
    "type": _optional(TEXT),
    "output_shape": _optional(SHAPE),
    "params": _optional(INT),
    "activation": _optional(TEXT),
    "weights": _optional(_list_of(TEXT, "a list of names")),
}
REQUIRED_LAYER_FIELDS = ("name",)
OUTPUT_KINDS = ("classes", "values", "multilabel")
OUTPUT_FIELDS: dict[str, Check] = {
    "name": TEXT,
    "kind": _optional((lambda value: value in OUTPUT_KINDS, "classes, values or multilabel")),
    "shape": _optional(SHAPE),
    "layer": _optional(TEXT),
}
OBJECTS = {"dataset": DATASET_FIELDS, "probe": PROBE_FIELDS, "input": INPUT_FIELDS, "model": MODEL_FIELDS}

# A snapshot's JSON header, and each of its layer records.
SNAPSHOT_FIELDS: dict[str, Check] = {
    "seq": INT,
    "kind": (lambda value: value in ("epoch", "batch"), "epoch or batch"),
    "epoch": NUMBER,
    "step": _optional(INT),
    "batch": _optional(INT),
    "logs": _optional(OBJECT),
    "probe_loss": _optional(NUMBER),
    "probe_model_accuracy": _optional(NUMBER),
    "cka": _optional(_list_of(NUMBERS, "a matrix of numbers")),
    "nonfinite": _optional(BOOL),
    "layers": _optional(LIST),
    "skipped": _optional(OBJECT),
}
REQUIRED_SNAPSHOT_FIELDS = ("seq", "epoch")
STATISTICS: Check = _optional((lambda value: isinstance(value, dict) and _numeric_tree(value), "an object of numbers"))
RECORD_FIELDS: dict[str, Check] = {
    "pca": _optional(OBJECT),
    "dimensionality": STATISTICS,
    "activation": STATISTICS,
    "weight_norm": STATISTICS,
    "update_ratio": STATISTICS,
    "grad": STATISTICS,
    "linear_probe": _optional(NUMBER),
    "separation": _optional(NUMBER),
    "linear_probes": _optional(PER_OUTPUT),
    "separations": _optional(PER_OUTPUT),
    "probe_components": _optional(INT),
    "skipped": _optional(OBJECT),
}
PCA_FIELDS: dict[str, Check] = {
    "explained_variance_ratio": _optional(_list_of(_optional(NUMBER), "a list of numbers")),
    "order": _optional(_list_of(INT, "a list of whole numbers")),
    "method": _optional(TEXT),
    "total_variance": _optional(NUMBER),
}


def json_type(value) -> str:
    """The JSON type of `value` in words, for a reason (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def check_fields(record: dict, fields: dict[str, Check], where: str, required: tuple[str, ...] = ()) -> None:
    for key in required:
        if key not in record:
            raise FormatProblem(f"{where} has no `{key}`")
    for key, (test, words) in fields.items():
        if key in record and not test(record[key]):
            raise FormatProblem(f"{where}'s `{key}` is {json_type(record[key])}, not {words}")


def run_meta(meta: Any) -> dict:
    """run.json checked field by field; null objects (`"dataset": null`) read as absent. Raises FormatProblem."""
    if not isinstance(meta, dict):
        raise FormatProblem(f"run.json holds {json_type(meta)}, not an object")
    check_fields(meta, RUN_FIELDS, "run.json")
    meta = {key: value for key, value in meta.items() if not (value is None and key in (*OBJECTS, "config", "layers"))}
    for key, fields in OBJECTS.items():
        if key in meta:
            check_fields(meta[key], fields, f"run.json's `{key}`")
    for index, layer in enumerate(meta.get("layers") or []):
        if not isinstance(layer, dict):
            raise FormatProblem(f"run.json's layer {index} is {json_type(layer)}, not an object")
        check_fields(layer, LAYER_FIELDS, f"run.json's layer {index}", REQUIRED_LAYER_FIELDS)
    for index, output in enumerate(meta.get("outputs") or []):
        if not isinstance(output, dict):
            raise FormatProblem(f"run.json's output {index} is {json_type(output)}, not an object")
        check_fields(output, OUTPUT_FIELDS, f"run.json's output {index}", ("name",))
    return meta


def snapshot_meta(meta: Any, seq: int) -> dict:
    """A snapshot's header checked, with its layer records; `seq` is the number in its file name."""
    if not isinstance(meta, dict):
        raise FormatProblem(f"the header holds {json_type(meta)}, not an object")
    check_fields(meta, SNAPSHOT_FIELDS, "the header", REQUIRED_SNAPSHOT_FIELDS)
    if meta["seq"] != seq:
        raise FormatProblem(f"the header says snapshot {meta['seq']}, the file name {seq}")
    for index, record in enumerate(meta.get("layers") or []):
        if not isinstance(record, dict):
            raise FormatProblem(f"layer record {index} is {json_type(record)}, not an object")
        check_fields(record, RECORD_FIELDS, f"layer record {index}")
        if isinstance(record.get("pca"), dict):
            check_fields(record["pca"], PCA_FIELDS, f"layer record {index}'s `pca`")
    return meta


def history(value: Any) -> dict:
    """history.json: an object of per-epoch lists."""
    if not isinstance(value, dict):
        raise FormatProblem(f"history.json holds {json_type(value)}, not an object")
    for key, series in value.items():
        if not isinstance(series, list) or not all(item is None or _is_number(item) for item in series):
            raise FormatProblem(
                f"history.json's `{key}` is not a list of numbers"
                if isinstance(key, str)
                else "history.json holds a series that is not a list of numbers"
            )
    return value


def probe_arrays(arrays: dict[str, np.ndarray]) -> None:
    """probe.npz: `indices` (n,) whole numbers; `y` (n,); `x` (n, ...); `inputs/<k>` (n, ...) from k = 1; `input/pca`
    (n, k); `targets/<output>` (n,) or (n, c); `plane/*` (G,)."""
    indices = arrays.get("indices")
    if indices is None:
        raise FormatProblem("probe.npz has no `indices`")
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise FormatProblem(
            f"probe.npz's `indices` is {indices.dtype} of shape {indices.shape}, not (n,) whole numbers"
        )
    n = len(indices)
    expected: dict[str, tuple[int, ...] | None] = {"y": (1,), "x": None, "input/pca": (2,)}
    for key in arrays:
        if key.startswith("targets/"):
            if not key.removeprefix("targets/").isdigit():
                raise FormatProblem("probe.npz holds a target not named by its output's number")
            expected[key] = (1, 2)  # a regression of several columns: (n, c)
        elif key.startswith("inputs/"):
            number = key.removeprefix("inputs/")
            if not (number.isascii() and number.isdigit() and int(number) >= 1):
                raise FormatProblem("probe.npz holds an input not named by its number from 1")
            expected[key] = None
    for key, ndim in expected.items():
        array = arrays.get(key)
        if array is None:
            continue
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise FormatProblem(f"probe.npz's `{key}` holds {array.dtype}, not numbers")
        if array.ndim == 0 or array.shape[0] != n or (ndim is not None and array.ndim not in ndim):
            raise FormatProblem(
                f"probe.npz's `{key}` has shape {array.shape}, not {n} rows"
                + (f" of {' or '.join(map(str, ndim))} dimension(s)" if ndim else "")
            )
    for key in ("plane/xs", "plane/ys"):
        array = arrays.get(key)
        if array is not None and (array.ndim != 1 or not np.issubdtype(array.dtype, np.number)):
            raise FormatProblem(f"probe.npz's `{key}` is not a list of numbers")


def batch_gradients(steps: np.ndarray, norms: np.ndarray, layers: int) -> None:
    """A batch_gradients file: `steps` (m,) whole numbers, `norms` (m, layers) numbers."""
    if steps.ndim != 1 or not np.issubdtype(steps.dtype, np.integer):
        raise FormatProblem(f"`steps` has shape {steps.shape} and type {steps.dtype}, not (m,) whole numbers")
    if norms.shape != (len(steps), layers) or not np.issubdtype(norms.dtype, np.number):
        raise FormatProblem(f"`norms` has shape {norms.shape}, not ({len(steps)}, {layers})")
