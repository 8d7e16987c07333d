"""Reads what the Embeddings views need out of a run (numpy-only, through `core.store`; no Streamlit).

The dashboard only reads projections the recorder already made; it never fits a PCA itself.
"""

from __future__ import annotations

import numpy as np

from core.analysis.metrics import probed_outputs
from core.store import Run, Snapshot, StoreError, variance_ratios
from dashboard.views.embeddings import Frame, Panel, coloring, frame_subset


def snapshot_at(run: Run, epoch: int | None) -> Snapshot | None:
    """The end-of-epoch snapshot of `epoch` (None: the latest); None while the run has none."""
    snapshots = run.epoch_snapshots()
    if not snapshots:
        return None
    if epoch is None:
        return snapshots[-1]
    return min(snapshots, key=lambda s: (abs(s.epoch - epoch), s.epoch))


def labels(run: Run) -> np.ndarray | None:
    try:
        return run.probe().y
    except Exception:  # a probe still being written reads as "no labels yet"
        return None


def class_names(run: Run, output: int | None = None) -> list[str]:
    """The data set's class names: those of the primary output (`output` None, or that output's number)."""
    if output is not None and output != run.info.probe.primary_output:
        return []  # another output's classes are shown by number
    return list(run.info.dataset.class_names)


TRUTH_TITLES = {"values": "true value", "multilabel": "labels per sample"}


def output_truth(
    run: Run, output: int | None, column: str = "norm"
) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(class labels, values, what the values are) of model output `output` (None: the primary output): class ids
    for an output of classes, else the (n,) true value of a regression or a multi-label row's number of labels. A
    regression target of several columns gives the one `column` names ("0", "1", ...) or, for "norm" or a column it
    does not have, each row's norm, and says which in the title. A run that stored no outputs (one output, written
    before December 2026) has its labels only."""
    outputs = run.info.outputs
    if not outputs:
        return labels(run), None, ""
    index = run.info.probe.primary_output if output is None or not 0 <= output < len(outputs) else output
    try:
        target = run.probe().targets.get(index)
    except Exception:  # a probe still being written reads as "no targets yet"
        return None, None, ""
    kind = outputs[index].kind
    if kind == "classes":
        return (target if target is not None else labels(run)), None, ""
    if target is None or kind is None:
        return None, None, ""
    title = TRUTH_TITLES.get(kind, "true value")
    if target.ndim == 2:
        target, which = target_column(target, column)
        title = f"{title}, {which}"
    return None, target, title


def target_column(values: np.ndarray, column: str) -> tuple[np.ndarray, str]:
    """((n,) one column of (n, c) regression `values`, or each row's Euclidean norm, what it is in words): the
    column `column` names ("0", "1", ...), else (for "norm", or a column the values do not have) the norm."""
    columns = values.shape[1]
    if column.isdigit() and int(column) < columns:
        return values[:, int(column)], f"column {column} of {columns}"
    return np.linalg.norm(values.astype(np.float64), axis=1).astype(np.float32), f"norm of {columns} columns"


def output_predictions(run: Run, snapshot: Snapshot, output: int | None, column: str = "norm") -> np.ndarray | None:
    """The predictions of model output `output` (None: the primary one) at `snapshot`; of a regression of several
    columns, the (n, 1) column or norm `output_truth` colours by, so that they are read as one predicted value."""
    predictions = snapshot.predictions(output)
    outputs = run.info.outputs
    index = run.info.probe.primary_output if output is None or not 0 <= output < len(outputs) else output
    if predictions is None or not outputs or outputs[index].kind != "values" or predictions.ndim != 2:
        return predictions
    if predictions.shape[1] < 2:
        return predictions
    return target_column(predictions, column)[0][:, None]


def output_caption(run: Run, output: int | None) -> str:
    """'“reg” (regression)' for a run of several outputs: what the colours and predictions are of; ""
    for one output."""
    outputs = run.info.outputs
    if len(outputs) < 2:
        return ""
    index = run.info.probe.primary_output if output is None or not 0 <= output < len(outputs) else output
    words = {"classes": "classes", "values": "regression", "multilabel": "multi-label"}
    return f"“{outputs[index].name}” ({words.get(outputs[index].kind or '', 'no targets')})"


def probe_features(run: Run) -> tuple[np.ndarray | None, list[str]]:
    """(n, d) the stored probe inputs flattened side by side, and a name per column, for the charts and tables of
    feature values. One input: `x` and the data set's feature names. Several inputs: each one's columns in the order
    of `model.inputs`, named by the data set's feature names for the first when they fit it, else `name 1`,
    `name 2`, ... after the input's name. (None, []) when no input is stored."""
    try:
        inputs = run.probe().inputs
    except (StoreError, OSError):
        return None, []
    given = list(run.info.dataset.feature_names)
    input_names = run.info.probe.input_names
    if len(input_names) < 2 or not inputs:  # one input (or a run that did not name its inputs)
        return inputs.get(0), given
    columns, names = [], []
    for index, array in inputs.items():
        flat = array.reshape(len(array), -1)
        label = input_names[index] if index < len(input_names) and input_names[index] else f"input {index}"
        own = (
            given if index == 0 and len(given) == flat.shape[1] else [f"{label} {j + 1}" for j in range(flat.shape[1])]
        )
        columns.append(flat)
        names += own
    return np.hstack(columns), names


def probed_output(run: Run, output: int | None) -> int | None:
    """The model output whose linear probes and class separation the Layers page shows for the Output control's
    `output`: that output when the run probed its classes (a model of several outputs records a probe per output of
    classes), else None, the primary output's."""
    outputs = run.info.outputs
    if output is None or len(outputs) < 2 or output == run.info.probe.primary_output:
        return None
    return output if output in probed_outputs(run) else None


def probe_labels(run: Run, output: int | None) -> np.ndarray | None:
    """(n,) the class ids the linear probes of model output `output` (None: the primary output) are trained on."""
    if output is None:
        return labels(run)
    try:
        return run.probe().targets.get(output)
    except Exception:  # a probe still being written reads as "no labels yet"
        return None


def chance_accuracy(run: Run, output: int | None) -> float | None:
    """1 / classes of model output `output` (None: the primary output, from the data set's class count)."""
    classes: int | None
    if output is None:
        classes = run.info.dataset.classes
    else:
        ids = probe_labels(run, output)
        classes = int(ids.max()) + 1 if ids is not None and len(ids) else None
    return 1.0 / classes if classes else None


def input_panel(run: Run) -> Panel | None:
    """The raw input's PCA (fixed through training): the strip's first panel."""
    try:
        coords = run.probe().input_pca
    except (StoreError, OSError):
        return None
    if coords is None:
        return None
    ratios = run.meta.get("input", {}).get("explained_variance_ratio")
    return Panel("input", coords, None if ratios is None else np.asarray(ratios, dtype=np.float64))


def pooled_note(snapshot: Snapshot, index: int) -> str:
    """ " · pooled 6×6" for a layer whose PCA is of its output averaged to a 6×6 grid of positions (a wide feature
    map: see core.capture.snapshot.MAX_FEATURES), so its shares of variance are read as what they are; "" otherwise."""
    pca = snapshot.layer(index).get("pca")
    grid = pca.get("pooled") if isinstance(pca, dict) else None
    if isinstance(grid, list) and grid and all(isinstance(g, int) and not isinstance(g, bool) for g in grid):
        return " · pooled " + "×".join(str(g) for g in grid)
    return ""


def strip_panels(run: Run, snapshot: Snapshot) -> list[Panel]:
    """Input first, then every recorded layer at `snapshot`."""
    panels = [p for p in [input_panel(run)] if p is not None]
    for index, layer in enumerate(run.layers):
        projection = snapshot.projection(index)
        if projection is not None:
            panels.append(
                Panel(
                    layer.get("name", f"layer {index}") + pooled_note(snapshot, index),
                    projection.coords,
                    projection.variance_ratio,
                )
            )
    return panels


def focus_frames(
    run: Run, layer: int, color_mode: str, chosen_epoch: int | None, output: int | None = None, column: str = "norm"
) -> tuple[list[Frame], int]:
    """The animation frames of one layer (at most `MAX_FRAMES`) and the position of `chosen_epoch`'s frame, coloured
    by model output `output` (None: the primary one; of a regression of several columns, by `column` or the norm).
    A run recorded with `batch_every` also has frames within epochs, labelled by fractional epoch ("0.33")."""
    snapshots, times = timeline(run)
    ends = [int(s.epoch) for s in snapshots if s.meta.get("kind", "epoch") == "epoch"]
    chosen = ends[-1] if chosen_epoch is None and ends else chosen_epoch
    (truth, values, title), names = output_truth(run, output, column), class_names(run, output)
    frames = []
    for position in frame_subset(times, chosen):
        snapshot = snapshots[position]
        projection = snapshot.projection(layer)
        if projection is None:
            continue
        predictions = output_predictions(run, snapshot, output, column)
        color = coloring(color_mode, truth, predictions, names, values, title)
        label = "" if snapshot.meta.get("kind", "epoch") == "epoch" else f"{times[position]:.2f}"
        frames.append(Frame(int(snapshot.epoch), projection.coords, projection.variance_ratio, color, label))
    start = next((i for i, f in enumerate(frames) if not f.label and f.epoch == chosen), len(frames) - 1)
    return frames, max(start, 0)


def timeline(run: Run) -> tuple[list[Snapshot], list[float]]:
    """Every epoch snapshot and, in capture order between them, every batch snapshot that is not also an
    epoch's end; with each one's time in epochs (epoch + batch / batches per epoch)."""
    ends = run.epoch_snapshots()
    per_epoch = run.meta.get("steps_per_epoch") or 0
    at_ends = {s.meta.get("step") for s in ends}
    kept = {s.seq for s in ends}
    snapshots = [
        s
        for s in run.snapshots()
        if s.seq in kept or (per_epoch and s.meta.get("kind") == "batch" and s.meta.get("step") not in at_ends)
    ]
    times = [float(s.epoch) + (0 if s.seq in kept else (s.meta.get("batch") or 0) / per_epoch) for s in snapshots]
    return snapshots, times


def scree_inputs(run: Run, snapshot: Snapshot) -> tuple[list[str], list, list]:
    """(names, explained variance ratios, components for 90%) for the input and every layer."""
    names: list[str] = []
    variances: list[list | None] = []
    n90: list[int | None] = []
    base = run.meta.get("input", {}).get("explained_variance_ratio")
    if base is not None:
        names.append("input")
        variances.append(base)
        n90.append(None)
    for index, layer in enumerate(run.layers):
        record = snapshot.layer(index)
        names.append(layer.get("name", f"layer {index}"))
        ratios = variance_ratios(record)
        variances.append(None if ratios is None else [None if np.isnan(r) else float(r) for r in ratios])
        n90.append(record.get("dimensionality", {}).get("n90"))
    return names, variances, n90
