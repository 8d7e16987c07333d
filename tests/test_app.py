"""The dashboard app through Streamlit's AppTest: every page, links in the query string, and bad links."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from apptest_pages import open_app, shown

from core.store import RunStore
from dashboard import context
from dashboard.jobs import JobLimits, TrainForm

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "main.py")  # the script each session runs


app = open_app


def notices(at) -> list[str]:
    return [shown(w.value) for w in at.warning]


def share_link(at) -> str:
    """The link in the sidebar's Share expander (drawn only while open)."""
    at.session_state["share_open"] = True
    return at.run().sidebar.code[0].value


def subheaders(at) -> list[str]:
    return [s.value for s in at.subheader]


@pytest.fixture(autouse=True)
def _restore_env(monkeypatch):
    monkeypatch.setenv("STRATA_RUNS", os.environ.get("STRATA_RUNS", "runs"))


# ----------------------------------------------------------------------------------------------------------
# Embeddings


def test_a_share_link_opens_exactly_that_view(digits_run_dir):
    root, run_id = digits_run_dir
    at = app(root, run=run_id, layer="output", epoch="1", pcx="2", pcy="3", color="correct", size="8", sel="0-2,7")
    assert not at.exception
    assert notices(at) == []
    assert at.sidebar.selectbox(key="run").value == run_id
    assert at.sidebar.selectbox(key="layer").value == "output"
    assert at.sidebar.select_slider(key="epoch").value == 1
    assert (at.sidebar.number_input(key="pcx").value, at.sidebar.number_input(key="pcy").value) == (2, 3)
    assert at.sidebar.selectbox(key="color").value == "correct"
    assert at.sidebar.slider(key="size").value == 8
    assert subheaders(at)[:2] == ["Every layer at epoch 1", "Focus: output over training"]
    assert "4 selected" in " ".join(c.value for c in at.caption)
    share = share_link(at)
    for part in (f"run={run_id}", "layer=output", "epoch=1", "pcx=2", "color=correct", "sel=0-2%2C7"):
        assert part in share


def test_widget_changes_update_the_view(spiral_run_dir):
    root, run_id = spiral_run_dir
    at = app(root, run=run_id)
    at.sidebar.selectbox(key="layer").set_value("dense_1").run()
    at.sidebar.select_slider(key="epoch").set_value(2).run()
    at.sidebar.radio(key="dims").set_value("3d").run()
    assert not at.exception
    view = at.session_state["_strata_view"]
    assert (view.layer, view.epoch, view.dims) == ("dense_1", 2, "3d")
    assert "Every layer at epoch 2" in subheaders(at) and "Focus: dense_1 over training" in subheaders(at)
    link = share_link(at)
    assert "layer=dense_1" in link and "dims=3d" in link


def test_selection_can_be_cleared(spiral_run_dir):
    root, run_id = spiral_run_dir
    at = app(root, run=run_id, sel="1,2")
    at.button(key="clear_selection").click().run()
    assert not at.exception and at.session_state["_strata_view"].sel == ()
    assert "sel" not in at.query_params


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"run": "no-such-run"}, "There is no run “no-such-run”"),
        ({"run": "../../etc/passwd"}, "is not a run id"),
        ({"epoch": "9999"}, "no snapshot at epoch 9999"),
        ({"epoch": "yesterday"}, "“epoch=yesterday” is not a whole number"),
        ({"layer": "conv_7"}, "has no layer “conv_7”"),
        ({"color": "rainbow", "dims": "5d"}, "“color=rainbow”"),
        ({"sel": "1-x"}, "“sel=1-x”"),
        ({"pcx": "40"}, "stores 10 components"),
    ],
)
def test_a_bad_link_shows_a_notice_and_falls_back(spiral_run_dir, params, expected):
    root, run_id = spiral_run_dir
    at = app(root, **{"run": run_id, **params})
    assert not at.exception
    assert any(expected in n for n in notices(at)), notices(at)
    assert at.sidebar.selectbox(key="run").value in RunStore(root).run_ids()
    assert subheaders(at)[0].startswith("Every layer at epoch")


def test_a_run_id_from_a_link_never_reaches_the_filesystem(spiral_run_dir, monkeypatch):
    root, _ = spiral_run_dir
    opened = []
    real = RunStore.run
    monkeypatch.setattr(RunStore, "run", lambda self, run_id: opened.append(run_id) or real(self, run_id))
    at = app(root, run="..%2F..", compare="../../x")
    assert not at.exception
    assert all(".." not in run_id and "/" not in run_id for run_id in opened)


def test_an_empty_store_offers_a_demo_run(tmp_path, monkeypatch):
    at = app(tmp_path / "empty")
    assert not at.exception
    assert at.button(key="demo").label == "Train a demo run"
    monkeypatch.setenv("STRATA_VIEWER_MODE", "1")
    at = app(tmp_path / "empty")
    assert not at.exception and not [b for b in at.button if b.key == "demo"]
    assert "python -m core train" in at.info[0].value


def test_the_demo_trains_in_the_background_and_the_page_follows_it(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    monkeypatch.setattr(
        "dashboard.screens.embeddings.DEMO", TrainForm(dataset="spiral", hidden="4", epochs=2, name="demo test")
    )
    at = app(root)
    at.button(key="demo").click().run()
    assert not at.exception
    manager = context._jobs(str(root), JobLimits.from_env())
    (job,) = manager.jobs()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not subheaders(at):
            time.sleep(1)
            at.run()
        assert not at.exception
        assert at.sidebar.selectbox(key="run").value == job.run_id
        assert subheaders(at)[0].startswith("Every layer at epoch")
    finally:
        manager.shutdown()


def test_the_new_run_form_refuses_bad_values_with_a_reason(spiral_run_dir, monkeypatch):
    root, run_id = spiral_run_dir
    monkeypatch.setenv("STRATA_MAX_EPOCHS", "50")
    at = app(root, run=run_id)
    at.sidebar.button(key="new_run").click().run()
    hidden = next(t for t in at.text_input if t.label == "Hidden layers")
    hidden.set_value("8,,x")
    next(b for b in at.button if b.label == "Train").click().run()
    assert not at.exception
    assert "Hidden layers must be" in at.error[0].value
    assert context._jobs(str(root), JobLimits.from_env()).jobs() == []


def test_viewer_mode_hides_training_from_the_page(spiral_run_dir, monkeypatch):
    root, run_id = spiral_run_dir
    monkeypatch.setenv("STRATA_VIEWER_MODE", "1")
    at = app(root, run=run_id)
    assert not at.exception and not [b for b in at.sidebar.button if b.key == "new_run"]
    at = app(root, "runs", run=run_id)
    assert not [b for b in at.button if b.key == "delete"]  # a public host is read-only


def test_an_unreadable_store_is_an_error_message_not_a_traceback(tmp_path):
    at = app("nosuchprotocol://bucket/runs")
    assert not at.exception
    assert "Cannot read the run store" in at.error[0].value


# ----------------------------------------------------------------------------------------------------------
# Other pages


def test_every_page_renders_without_an_exception(digits_run_dir):
    root, run_id = digits_run_dir
    for page in ("gradients", "layers", "runs"):
        at = app(root, page, run=run_id, layer="dense_0")
        assert not at.exception, (page, at.exception)
        assert at.sidebar.selectbox(key="layer").value == "dense_0", page  # the shared sidebar keeps the view


def test_runs_page_lists_and_compares(recorded_runs):
    root, ids = recorded_runs
    at = app(root, "runs", run=ids["spiral"], compare=ids["digits"])
    assert not at.exception
    assert at.title[0].value == "Runs"
    listing = at.dataframe[0].value
    assert set(listing["id"]) == set(ids.values())
    table = at.dataframe[1].value
    assert list(table.columns) == ["setting", "spiral 8-8 fixture", "digits 16 fixture"]
    assert "data set" in " ".join(c.value for c in at.caption if c.value.startswith("They differ"))
    [download] = at.get("link_button")  # the server streams the zip: dashboard/download.py
    assert download.proto.label == "Download as zip" and download.proto.url == f"_strata/download/{ids['spiral']}"


def test_rename_and_delete_with_confirmation(runs_copy):
    store = RunStore(runs_copy)
    spiral = next(s.id for s in store.list_runs() if s.dataset == "spiral")
    at = app(runs_copy, "runs", run=spiral)
    at.text_input[0].set_value("renamed spiral")
    at.button[0].click().run()  # the form's Rename button
    assert not at.exception and RunStore(runs_copy).run(spiral).name == "renamed spiral"
    assert at.button(key="delete").disabled  # nothing happens without the confirmation
    at.checkbox(key="confirm_delete").check().run()
    at.button(key="delete").click().run()
    assert not at.exception
    assert spiral not in RunStore(runs_copy).run_ids()
    assert at.sidebar.selectbox(key="run").value != spiral  # the view moved to a run that exists


def test_viewing_never_imports_tensorflow(recorded_runs):
    root, ids = recorded_runs
    script = f"""
import os, sys
from streamlit.testing.v1 import AppTest
from streamlit.util import calc_hash
os.environ["STRATA_RUNS"] = {root!r}
for page in ("", "gradients", "layers", "runs"):
    at = AppTest.from_file({APP!r}, default_timeout=60)
    at.query_params["run"] = {ids["digits"]!r}
    at.run()
    if page:
        at._page_hash = calc_hash(page)
        at.run()
    assert not at.exception, at.exception
print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_started_run_is_followed_even_when_the_run_list_already_shows_it(spiral_run_dir):
    """The run picker may already list a run that was started from this session (the list is re-read every
    few seconds): following it must not set the picker's value after the picker is drawn."""
    root, run_id = spiral_run_dir
    at = open_app(root)
    other = at.sidebar.selectbox(key="run").value
    at.session_state["_strata_pending_run"] = run_id  # as `start_training` leaves it
    at.run()
    assert not at.exception
    assert at.sidebar.selectbox(key="run").value == run_id and other is not None
    assert "_strata_pending_run" not in at.session_state


@pytest.mark.parametrize("page", ["", "gradients", "layers"])
def test_a_run_without_a_snapshot_yet_says_why_on_every_page(spiral_run_dir, tmp_path, page):
    """A Recorder within its budget writes a short fit's snapshots once training ends: until then the run is
    listed, running, with no snapshot. Each page says which of the three cases it is."""
    from core.store import RunWriter

    root, run_id = spiral_run_dir
    meta = RunStore(root).run(run_id).meta
    fields = {
        k: v
        for k, v in meta.items()
        if k not in ("id", "status", "created", "updated", "host", "pid", "format_version")
    }
    planned = fields["epochs_planned"]
    RunWriter(str(tmp_path), "training", {**fields, "name": "training", "epochs_done": 1, "snapshots": 0})
    RunWriter(str(tmp_path), "writing", {**fields, "name": "writing", "epochs_done": planned, "snapshots": 0})
    RunWriter(str(tmp_path), "ended", {**fields, "name": "ended", "epochs_done": 1, "snapshots": 0}).set_status(
        "interrupted"
    )

    expected = {
        "training": "Waiting for the first snapshot",
        "writing": "Training has ended; its snapshots are being written now",
        "ended": "This run has no snapshot: it ended (interrupted) before its first one was written",
    }
    for run, text in expected.items():
        at = open_app(tmp_path, page, run=run)
        assert not at.exception, run
        assert [i.value for i in at.info if text in i.value], (run, [i.value for i in at.info])
        progress = [bar.proto.text for bar in at.sidebar.get("progress")]
        assert run == "ended" or progress == [
            "training: epoch 1 of %d" % planned  # noqa: UP031
            if run == "training"
            else "training done: writing its snapshots (0 so far)"
        ], (run, progress)


@pytest.mark.parametrize("page", ["", "gradients", "layers"])
def test_a_run_writing_its_snapshots_after_training_says_so_over_its_charts(spiral_run_dir, tmp_path, page):
    import shutil

    from core.store import RunWriter

    root, run_id = spiral_run_dir
    shutil.copytree(Path(root) / run_id, tmp_path / "writing")
    for name in sorted(os.listdir(tmp_path / "writing" / "snapshots"))[2:]:  # two written, the rest to come
        os.remove(tmp_path / "writing" / "snapshots" / name)
    writer = RunWriter.attach(str(tmp_path), "writing")  # this live process now "writes" it
    planned = writer.meta["epochs_planned"]
    writer.update_meta(status="running", epochs_done=planned)

    at = open_app(tmp_path, page, run="writing")
    assert not at.exception
    captions = [c.value for c in at.caption if "writing its snapshots" in c.value]
    assert captions and f"up to epoch 1 of {planned} so far" in captions[0], [c.value for c in at.caption]


def test_a_killed_run_offers_to_write_its_held_back_snapshots(killed_runs, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(killed_runs, root)
    unwritten = RunStore(str(root)).run("killed").unwritten_captures()
    monkeypatch.setenv("STRATA_VIEWER_MODE", "1")
    at = open_app(root, run="killed")
    assert not at.exception and not [b for b in at.sidebar.button if b.key == "recover_run"]
    monkeypatch.delenv("STRATA_VIEWER_MODE")
    at = open_app(root, run="killed")
    assert not at.exception
    (warning,) = [w.value for w in at.sidebar.warning]
    assert f"Training was killed before {unwritten} of its snapshots were written" in warning
    assert "python -m core recover killed" in warning
    if not RunStore(str(root)).run("killed").snapshots():  # the page says why it is empty, and what can be done
        assert [i.value for i in at.info if f"{unwritten} of them can still be written" in i.value]
    at.sidebar.button(key="recover_run").click().run()
    assert not at.exception
    manager = context._jobs(str(root), JobLimits.from_env())
    job = manager.get("killed")
    try:
        job.process.wait(180)
        assert job.state == "finished", job.log_tail()
        at.run()
        assert not at.exception and not at.sidebar.warning
        assert subheaders(at)[0].startswith("Every layer at epoch")
        run = RunStore(str(root)).run("killed")
        assert run.unwritten_captures() == 0 and len(run.snapshots()) >= unwritten
    finally:
        manager.shutdown()


def test_the_new_run_form_starts_at_the_declared_defaults_and_submits_them(spiral_run_dir, monkeypatch):
    from core import settings

    root, run_id = spiral_run_dir
    monkeypatch.setenv("STRATA_MAX_EPOCHS", "20")
    submitted = []
    monkeypatch.setattr("dashboard.sidebar.start_training", submitted.append)
    at = app(root, run=run_id)
    at.sidebar.button(key="new_run").click().run()
    assert not at.exception
    widgets = {
        w.key: w.value
        for kind in ("selectbox", "slider", "text_input", "number_input", "checkbox")
        for w in getattr(at, kind)
        if w.key and w.key.startswith("new_run_")
    }
    expected = {
        f"new_run_{s.name}": settings.text(s) if s.type in (str, tuple) and not s.choices else s.default
        for s in settings.form_settings()
    }
    assert widgets == {**expected, "new_run_epochs": 20}  # epochs: at most this server's limit
    next(b for b in at.button if b.label == "Train").click().run()
    assert not at.exception
    assert submitted == [TrainForm(epochs=20)]


def test_a_starting_job_shows_which_stage_it_is_in(spiral_run_dir, tmp_path):
    """TensorFlow takes seconds to load: until the run appears, the sidebar shows the stage the training process
    last announced on its log (`python -m core train` prints each), how far along that is, and the time so far."""
    from dashboard.jobs import Job

    root, _ = spiral_run_dir
    log = tmp_path / "job.log"
    log.write_text("strata: stage: loading TensorFlow and Keras\nstrata: stage: loading the data set\n")
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    manager = context._jobs(str(root), JobLimits.from_env())
    manager._jobs["20261205-000000-starting"] = Job("20261205-000000-starting", "starting", process, log)
    try:
        at = open_app(root)
        at.session_state["_strata_pending_run"] = "20261205-000000-starting"
        at.run()
        assert not at.exception
        (bar,) = at.get("progress")
        assert bar.proto.value == 25  # one of the four stages done
        assert "loading the data set" in bar.proto.text and "20261205-000000-starting" in shown(bar.proto.text)
    finally:
        process.kill()
        process.wait(10)
        manager._jobs.pop("20261205-000000-starting", None)
