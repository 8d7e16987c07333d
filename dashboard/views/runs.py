"""Pure tables of the Runs page: the run list and the side-by-side comparison (plain dicts in, rows out)."""

from __future__ import annotations

import time

from core.training.datasets import PLANE_DATASETS

# (row label, path into run.json's `config`), in the order a reader compares runs
CONFIG_ROWS = (
    ("data set", ("dataset",)),
    ("noise", ("noise",)),
    ("hidden layers", ("hidden",)),
    ("activation", ("activation",)),
    ("initializer", ("init",)),
    ("optimizer", ("optimizer",)),
    ("learning rate", ("lr",)),
    ("batch size", ("batch_size",)),
    ("epochs", ("epochs",)),
    ("L2", ("l2",)),
    ("dropout", ("dropout",)),
    ("batch norm", ("batch_norm",)),
    ("seed", ("seed",)),
)
METRIC_ROWS = ("loss", "val_loss", "accuracy", "val_accuracy")


def _text(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "-".join(str(v) for v in value)
    return str(value)


def last_value(history: dict, key: str):
    """The last non-missing value of one metric, or None."""
    values = [v for v in history.get(key) or [] if v is not None]
    return values[-1] if values else None


def run_rows(summaries, histories: dict[str, dict]) -> list[dict]:
    """One row per run for the run list: name, status, data set, progress, final validation accuracy, created."""
    rows = []
    for summary in summaries:
        history = histories.get(summary.id, {})
        accuracy = last_value(history, "val_accuracy")
        rows.append(
            {
                "name": summary.name,
                "status": summary.status,
                "data set": summary.dataset,
                "epochs": f"{summary.epochs_done}/{summary.epochs_planned or '?'}",
                "val accuracy": None if accuracy is None else round(accuracy, 4),
                "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(summary.created)) if summary.created else "",
                "id": summary.id,
            }
        )
    return rows


def compare_table(runs: list[dict]) -> dict[str, list[str]]:
    """Settings and final metrics side by side: {"setting": [...], <run name>: [...], ...}.

    Each item of `runs` is {"name", "meta" (run.json), "history"}. Rows where every run agrees are kept, so
    the table reads the same for any choice of runs; differing rows are what to look at.
    """
    labels = (
        [label for label, _ in CONFIG_ROWS] + ["parameters", "layers recorded"] + [f"final {m}" for m in METRIC_ROWS]
    )
    table = {"setting": labels}
    for item in runs:
        meta, history = item["meta"], item.get("history") or {}
        config = meta.get("config") or {}
        values = [_text(_dig(config, path)) for _, path in CONFIG_ROWS]
        if values[0] == "–":
            values[0] = _text(meta.get("dataset", {}).get("name"))
        if values[0] not in PLANE_DATASETS:
            values[1] = "–"  # noise only applies to the 2-D data sets
        values.append(_text(meta.get("model", {}).get("params")))
        values.append(_text(len(meta.get("layers") or [])))
        values += [_text(last_value(history, m)) for m in METRIC_ROWS]
        column = item["name"]
        while column in table:
            column += " "  # two runs with one display name still get two columns
        table[column] = values
    return table


def differing_rows(table: dict[str, list[str]]) -> list[int]:
    """Positions of the rows where the compared runs disagree."""
    columns = [values for name, values in table.items() if name != "setting"]
    return [i for i in range(len(table["setting"])) if len({column[i] for column in columns}) > 1]


def _dig(record: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return record


# What each piece a snapshot can skip (core.capture.snapshot `skipped`) stands for, in the pages' words.
SKIPPED_PIECES = {
    "projection": "PCA projection, linear probe and class separation",
    "activation": "activation statistics",
    "gradients": "gradient statistics",
    "unit_rankings": "most and least activating samples per unit",
    "cka": "CKA between layers",
}


def skipped_lines(layer_names: list[str], skipped: list[tuple[int | None, str, str]]) -> list[str]:
    """One plain-text line per piece of analysis a snapshot could not compute: the layer, what is missing, why."""
    lines = []
    for index, piece, reason in skipped:
        where = layer_names[index] if index is not None and 0 <= index < len(layer_names) else "all layers"
        lines.append(f"{where}: no {SKIPPED_PIECES.get(piece, piece)} ({reason})")
    return lines


def layer_labels(layers: list[dict]) -> dict[str, str]:
    """How the layer picker lists each recorded layer: "24×24 · block_2_add", its stage (spatial size, or nested
    model) first, so the layers of a deep model read in groups and typing a stage or a name finds them. A run whose
    layers share one stage (an MLP), or that names none, lists bare names."""
    stages = [layer.get("stage") if isinstance(layer.get("stage"), str) else None for layer in layers]
    names = [str(layer.get("name", f"layer {i}")) for i, layer in enumerate(layers)]
    if len({s for s in stages if s}) < 2:
        return {name: name for name in names}
    return {name: f"{stage} · {name}" if stage else name for name, stage in zip(names, stages)}
