"""The job manager: real `python -m core train` subprocesses, limits, viewer mode and cancellation."""

import subprocess
import time

import pytest

from core.store import RunStore, StoreError
from dashboard.jobs import DEMO, JobLimits, JobManager, JobRefused, TrainForm


def wait_for(condition, timeout=120.0, interval=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s")


def status_of(root, run_id):
    try:
        run = RunStore(root).run(run_id)
    except StoreError:
        return None
    return run.status, int(run.meta.get("epochs_done") or 0)


def test_form_becomes_cli_flags():
    args = TrainForm(dataset="moons", hidden="8, 4", epochs=3, batch_norm=True, name="x").args()
    assert args[args.index("--hidden") + 1] == "8,4"
    assert args[args.index("--noise") + 1] == repr(TrainForm().noise) and "--batch-norm" in args
    assert "--noise" not in TrainForm(dataset="digits").args()  # noise only for the 2-D sets
    assert TrainForm(dataset="iris", hidden="8").display_name() == "iris 8 relu"
    DEMO.check(JobLimits())


@pytest.mark.parametrize(
    "form, message",
    [
        (TrainForm(hidden="8,,4"), "Hidden layers"),
        (TrainForm(hidden="0"), "Hidden layers"),
        (TrainForm(epochs=500), "Epochs must be from 1 to 200"),
        (TrainForm(dataset="imagenet"), "Unknown dataset"),
        (TrainForm(activation="bogus"), "Unknown activation"),
        (TrainForm(lr=0), "Learning rate"),
    ],
)
def test_bad_forms_are_refused_with_a_reason(form, message):
    with pytest.raises(JobRefused, match=message):
        form.check(JobLimits())


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("STRATA_MAX_JOBS", "3")
    monkeypatch.setenv("STRATA_MAX_EPOCHS", "50")
    monkeypatch.setenv("STRATA_VIEWER_MODE", "1")
    assert JobLimits.from_env() == JobLimits(max_jobs=3, max_epochs=50, viewer_mode=True)
    monkeypatch.setenv("STRATA_MAX_JOBS", "lots")
    assert JobLimits.from_env().max_jobs == 1


def test_viewer_mode_refuses_to_train(tmp_path):
    manager = JobManager(str(tmp_path), JobLimits(viewer_mode=True))
    with pytest.raises(JobRefused, match="viewer mode"):
        manager.start(DEMO)
    assert manager.jobs() == []


@pytest.fixture(scope="module")
def spiral_job(tmp_path_factory):
    """(root, manager, job, what the manager did at the start): one real training job, shared by the tests that
    read a finished job (one TensorFlow import for them all). What holds only while it runs is taken as it starts:
    whether it was running and known to the manager, and the refusal of a second job (None if there was none)."""
    root = str(tmp_path_factory.mktemp("jobs") / "runs")
    manager = JobManager(root, JobLimits(max_jobs=1))
    job = manager.start(TrainForm(dataset="spiral", hidden="8", epochs=2, name="job test"))
    started = {"running": job.running, "known": manager.get(job.run_id) is job, "second": None}
    try:
        manager.start(TrainForm(epochs=1))  # one at a time here
    except JobRefused as refused:
        started["second"] = refused
    yield root, manager, job, started
    manager.shutdown()


def test_a_job_trains_a_real_run_in_another_process(spiral_job):
    root, _, job, started = spiral_job
    assert started["running"] and started["known"]
    assert isinstance(started["second"], JobRefused) and "already running" in str(started["second"])
    job.process.wait(180)
    assert job.state == "finished", job.log_tail()
    assert status_of(root, job.run_id) == ("finished", 2)
    assert RunStore(root).run(job.run_id).name == "job test"


def test_cancel_marks_the_run_interrupted(tmp_path):
    root = str(tmp_path / "runs")
    manager = JobManager(root, JobLimits(max_jobs=1, max_epochs=1000))
    job = manager.start(TrainForm(dataset="spiral", hidden="8", epochs=1000, batch_size=8))
    wait_for(lambda: (status_of(root, job.run_id) or ("", 0))[1] >= 1)  # training, not still importing
    assert manager.cancel(job.run_id)
    try:  # the process first writes the snapshots already captured: on a loaded machine that took over a minute
        job.process.wait(300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the cancelled job did not end in 300 s; its log:\n{job.log_tail()}")
    assert job.state == "cancelled"
    assert wait_for(lambda: status_of(root, job.run_id)[0] == "interrupted", timeout=10)
    assert not manager.cancel(job.run_id)  # nothing left to cancel
    assert manager.start(TrainForm(dataset="spiral", hidden="4", epochs=1)).running  # the slot is free again
    manager.shutdown()


def test_a_job_that_fails_at_once_explains_itself(tmp_path):
    manager = JobManager(str(tmp_path / "runs"), JobLimits())
    job = manager.start(
        TrainForm(
            dataset="spiral", hidden="8", epochs=1, optimizer="adam", lr=1e-3, init="glorot_uniform", activation="relu"
        )
    )
    job.process.send_signal(9)  # a crash before the recorder wrote anything
    job.process.wait(30)
    assert job.state == "failed"
    assert isinstance(job.log_tail(), str)


def test_a_browser_clearing_the_server_caches_keeps_the_jobs_and_their_limit(tmp_path, monkeypatch):
    """A visitor can send BackMsg(clear_cache=True); the server then empties every st.cache_data and
    st.cache_resource. The job manager must survive it: a second job under a limit of 1 stays refused, and the
    first job keeps its Cancel button (the manager still knows it)."""
    from streamlit.runtime import caching

    from dashboard import context

    root = str(tmp_path / "runs")
    monkeypatch.setenv("STRATA_RUNS", root)
    monkeypatch.setenv("STRATA_MAX_JOBS", "1")
    monkeypatch.setenv("STRATA_MAX_EPOCHS", "1000")
    manager = context.jobs()
    job = manager.start(TrainForm(dataset="spiral", hidden="4", epochs=1000, batch_size=8))
    try:
        caching.cache_data.clear()  # what AppSession does on a clear_cache message
        caching.cache_resource.clear()
        assert context.jobs() is manager and context.jobs().get(job.run_id) is job
        with pytest.raises(JobRefused, match="already running"):
            context.jobs().start(TrainForm(epochs=1))
    finally:
        manager.shutdown()


def test_a_training_job_announces_its_stages_in_order(spiral_job):
    from core.settings import STAGE_PREFIX, TRAINING_STAGES

    _, _, job, _ = spiral_job
    assert job.process.wait(180) == 0, job.log_tail()
    announced = [
        line.removeprefix(STAGE_PREFIX) for line in job.log_tail(200).splitlines() if line.startswith(STAGE_PREFIX)
    ]
    assert announced == list(TRAINING_STAGES)
    assert job.stage() == (len(TRAINING_STAGES) - 1, "training")
