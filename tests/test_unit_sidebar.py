"""dashboard/sidebar.py on its own: the run picker and its status, the view controls and what they publish, the
Share box. Driven through Streamlit's AppTest with a small script that runs `context.prepare()`, publishes
`sidebar.view_state`, and draws `sidebar.render`, on runs written with numpy only."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from apptest_pages import open_context, printed, printed_view
from streamlit.testing.v1 import AppTest

from core.store import RunWriter
from core.store.journal import Journal
from dashboard import state as schema
from dashboard.synthetic import synthetic_run


def _captions(at: AppTest) -> list[str]:
    return [c.value for c in at.sidebar.caption]


def _buttons(at: AppTest) -> list[str]:
    return [b.label for b in at.sidebar.button]


def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=60)
    return child.pid


@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> str:
    """alpha: a finished synthetic run (3 layers, epochs 0-4); beta, newer: 2 layers, epochs 0-2."""
    root = str(tmp_path_factory.mktemp("sidebar"))
    synthetic_run(root, "alpha", layers=3, snapshots=5, points=60, classes=3, components=8, width=8)
    synthetic_run(root, "beta", layers=2, snapshots=3, points=60, classes=3, components=8, width=8)
    return root


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory) -> str:
    """Runs the sidebar treats specially, each written as a recorder would leave it."""
    root = str(tmp_path_factory.mktemp("sidebar-odd"))
    # Training now (this process is alive): layers in two stages, no labels, 2 components, one snapshot so far.
    live = RunWriter(
        root,
        "live",
        {
            "name": "live one",
            "dataset": {"name": "shapes"},
            "components": 2,
            "epochs_planned": 5,
            "epochs_done": 1,
            "layers": [{"name": "conv", "stage": "8×8"}, {"name": "head", "stage": "layers"}],
            "probe": {"size": 4, "has_labels": False},
        },
    )
    live.write_snapshot(
        0, {"kind": "epoch", "epoch": 0, "step": 0, "layers": [{}, {}]}, {"L0/pca": np.zeros((4, 2), np.float32)}
    )
    # Killed with two captures still in its journal.
    killed = RunWriter(
        root, "killed", {"name": "killed run", "layers": [{"name": "a"}], "epochs_planned": 5, "epochs_done": 2}
    )
    killed.update_meta(pid=_dead_pid())
    journal = Journal(root, "killed")
    for epoch in (1, 2):
        journal.append(
            "capture", {"kind": "epoch", "epoch": epoch, "step": epoch, "batch": None, "logs": {}, "state": []}
        )
    # Finished after its first snapshot.
    single = RunWriter(root, "single", {"name": "single", "layers": [{"name": "only"}], "epochs_planned": 0})
    single.write_snapshot(0, {"kind": "epoch", "epoch": 0, "step": 0, "layers": [{}]}, {})
    single.set_status("finished")
    # Failed.
    failed = RunWriter(root, "failed", {"name": "failed run", "layers": [{"name": "a"}]})
    failed.set_status("failed", error="CUDA out of memory")
    # Damaged: run.json is not an object.
    os.makedirs(os.path.join(root, "broken"))
    with open(os.path.join(root, "broken", "run.json"), "w") as handle:
        handle.write("[1, 2]")
    return root


# ----------------------------------------------------------------------------------------------------------------
# Run picker and status


def test_the_run_picker_lists_the_runs_newest_first_and_the_status_of_the_chosen_one(store_root):
    at = open_context(store_root, run="alpha")
    assert not at.exception
    picker = at.sidebar.selectbox(key="run")
    assert picker.options == ["beta", "alpha"] and picker.value == "alpha"
    assert _captions(at)[0] == (
        ":blue[:material/check_circle:] **synthetic 3x5x60** · finished · synthetic · epoch 4/4"
    )


def test_a_live_run_shows_its_progress_and_follows_the_newest_epoch(odd_root):
    at = open_context(odd_root, run="live")
    assert not at.exception
    assert ":green[:material/pending:] **live one** · running · shapes · epoch 1/5" in _captions(at)
    assert "Epoch: the newest, following the training" in _captions(at)
    assert not at.sidebar.select_slider  # one snapshot: no slider
    (progress,) = at.get("progress")
    assert (progress.value, progress.text) == (20, "training: epoch 1 of 5")
    assert printed_view(at).epoch is None  # following: the latest snapshot, whichever it is next
    assert printed(at)["snapshot_epoch"] == "0"


def test_a_killed_run_says_how_many_snapshots_can_still_be_written(odd_root):
    at = open_context(odd_root, run="killed")
    assert not at.exception
    assert [w.value for w in at.sidebar.warning] == [
        "Training was killed before 2 of its snapshots were written. They can still be written: "
        "`python -m core recover killed`."
    ]
    assert "Write them now" in _buttons(at)
    assert any(c.startswith(":orange[:material/stop_circle:] **killed run** · interrupted") for c in _captions(at))


def test_a_failed_run_shows_its_error(odd_root):
    at = open_context(odd_root, run="failed")
    assert "Error: CUDA out of memory" in _captions(at)
    assert any("· failed ·" in c for c in _captions(at))


def test_damaged_runs_are_counted_and_left_out_of_the_picker(odd_root):
    at = open_context(odd_root, run="single")
    assert ":orange[:material/broken_image:] 1 run(s) cannot be read fully: the Runs page says why." in _captions(at)
    assert "broken" not in at.sidebar.selectbox(key="run").options
    assert set(at.sidebar.selectbox(key="run").options) == {"live", "killed", "single", "failed"}


def test_an_empty_store_has_no_runs_and_no_view_controls(tmp_path):
    at = open_context(tmp_path)
    assert not at.exception
    assert "No runs yet." in _captions(at)
    assert not at.sidebar.selectbox and not at.sidebar.number_input
    assert printed_view(at) == schema.DEFAULTS


def test_viewer_mode_offers_no_training_or_recovery(odd_root, monkeypatch):
    at = open_context(odd_root, run="killed")
    assert "New run" in _buttons(at)  # a local visitor may edit
    monkeypatch.setenv("STRATA_VIEWER_MODE", "1")
    at = open_context(odd_root, run="killed")
    assert "New run" not in _buttons(at) and "Write them now" not in _buttons(at)
    assert at.sidebar.warning  # the count and the command are still shown


# ----------------------------------------------------------------------------------------------------------------
# View controls


def test_the_layer_picker_lists_the_runs_layers_and_sets_the_view(store_root):
    at = open_context(store_root, run="alpha")
    layer = at.sidebar.selectbox(key="layer")
    assert layer.options == ["dense_0", "dense_1", "output"] and layer.value == "dense_0"
    layer.set_value("output").run()
    assert printed_view(at).layer == "output" and printed(at)["layer_index"] == "2"


def test_layers_in_stages_are_listed_by_stage(odd_root):
    at = open_context(odd_root, run="live")
    layer = at.sidebar.selectbox(key="layer")
    assert layer.options == ["8×8 · conv", "layers · head"]  # shown by stage; the value is still the name
    assert layer.value == "conv"


def test_the_epoch_slider_holds_the_captured_epochs_and_sets_the_view(store_root):
    at = open_context(store_root, run="alpha")
    epoch = at.sidebar.select_slider(key="epoch")
    assert epoch.options == ["0", "1", "2", "3", "4"] and epoch.value == 4
    epoch.set_value(2).run()
    assert printed_view(at).epoch == 2 and printed(at)["snapshot_epoch"] == "2"


def test_a_finished_run_with_one_snapshot_shows_that_epoch(odd_root):
    at = open_context(odd_root, run="single")
    assert "Epoch 0 (the only snapshot)" in _captions(at)
    assert printed_view(at).epoch == 0 and printed(at)["snapshot_epoch"] == "0"


def test_embedding_controls_are_bounded_by_the_run(store_root, odd_root):
    at = open_context(store_root, run="alpha")
    assert at.sidebar.number_input(key="pcx").max == 8  # the components the run stores
    assert at.sidebar.selectbox(key="color").options == list(schema.COLORS)
    assert at.sidebar.radio(key="dims").options == list(schema.DIMS)
    at.sidebar.number_input(key="pcx").set_value(3).run()
    at.sidebar.radio(key="dims").set_value("3d").run()
    at.sidebar.selectbox(key="color").set_value("confidence").run()
    view = printed_view(at)
    assert (view.pcx, view.dims, view.color) == (3, "3d", "confidence")
    unlabelled = open_context(odd_root, run="live")
    assert unlabelled.sidebar.number_input(key="pcx").max == 2
    assert unlabelled.sidebar.selectbox(key="color").options == ["pred", "confidence"]  # no labels
    assert printed_view(unlabelled).color == "pred"


def test_the_share_box_shows_the_link_of_the_view(store_root):
    at = open_context(store_root, run="alpha", layer="dense_1", epoch="3", size="9")
    assert not at.sidebar.code  # drawn only when opened
    at.session_state["share_open"] = True
    at.run()
    (code,) = at.sidebar.code
    assert code.value == printed(at)["share"] == "?run=alpha&layer=dense_1&epoch=3&size=9"
    assert "Opening this link shows the same run" in " ".join(_captions(at))


def test_a_run_with_two_components_opens_without_a_notice(odd_root):
    at = open_context(odd_root, run="live")
    assert [w.value for w in at.main.warning] == []
