"""The Runs page tables: plain dicts in, rows out."""

from core.store import RunSummary
from dashboard.views import runs as views


def meta(dataset, hidden, lr, params):
    return {
        "config": {"dataset": dataset, "noise": 0.1, "hidden": hidden, "activation": "relu", "lr": lr},
        "model": {"params": params},
        "layers": [{}] * (len(hidden) + 1),
        "dataset": {"name": dataset},
    }


def test_compare_table_lines_up_settings_and_final_metrics():
    table = views.compare_table(
        [
            {
                "name": "a",
                "meta": meta("spiral", [8, 8], 0.01, 120),
                "history": {"loss": [0.9, 0.5], "val_accuracy": [0.5, None]},
            },
            {"name": "a", "meta": meta("digits", [16], 0.001, 1200), "history": {}},
        ]
    )
    assert list(table) == ["setting", "a", "a "]  # equal names still get their own column
    row = {label: i for i, label in enumerate(table["setting"])}
    assert table["a"][row["hidden layers"]] == "8-8" and table["a "][row["hidden layers"]] == "16"
    assert table["a"][row["final loss"]] == "0.5" and table["a"][row["final val_accuracy"]] == "0.5"
    assert table["a "][row["final loss"]] == "–"
    assert table["a "][row["noise"]] == "–"  # digits has no noise setting
    differing = [table["setting"][i] for i in views.differing_rows(table)]
    assert "learning rate" in differing and "activation" not in differing


def test_run_rows_show_progress_and_accuracy():
    summary = RunSummary(
        id="r1", name="demo", status="running", dataset="spiral", epochs_done=3, epochs_planned=30, created=0.0
    )
    (row,) = views.run_rows([summary], {"r1": {"val_accuracy": [0.5, 0.71234]}})
    assert row["epochs"] == "3/30" and row["val accuracy"] == 0.7123 and row["id"] == "r1"
