"""Jobs started from the dashboard: each one is `python -m core train` (or `recover`) in its own process.

The page process never imports TensorFlow; it only starts, lists and cancels these processes. One
`JobManager` per store is shared by every session of the server process (`JobManager.shared`), so two people
watching a run see one job. It is held here, not in a Streamlit cache: a browser can ask the server to clear
its caches, and that must not forget running jobs or reset the limit. Limits come from the environment, so a
deployment can set them without code:

    STRATA_MAX_JOBS     training processes at once (default 1)
    STRATA_MAX_EPOCHS   epochs one job may ask for (default 200)
    STRATA_VIEWER_MODE  1 turns training from the page off (a public, read-only host)

No Streamlit here: the manager is plain Python and unit-tested with real subprocesses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path

from core.settings import STAGE_PREFIX, TRAINING_STAGES, dataclass_fields, form_settings, text
from core.store import new_run_id
from core.training.datasets import PLANE_DATASETS

MAX_HIDDEN_LAYERS = 12
MAX_UNITS = 1024


class JobRefused(ValueError):
    """A job the limits or the form's values do not allow; the message says which and what to do."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _env_int(name: str, default: int) -> int:
    try:
        return max(0, int(os.environ.get(name, default)))
    except ValueError:
        return default


@dataclass(frozen=True)
class JobLimits:
    max_jobs: int = 1  # concurrent training processes; each takes a CPU core or more
    max_epochs: int = 200
    viewer_mode: bool = False  # no training from the page at all

    @classmethod
    def from_env(cls) -> JobLimits:
        return cls(
            max_jobs=_env_int("STRATA_MAX_JOBS", 1),
            max_epochs=_env_int("STRATA_MAX_EPOCHS", 200),
            viewer_mode=_env_flag("STRATA_VIEWER_MODE"),
        )


_FormSettings = make_dataclass(
    "FormSettings", dataclass_fields(form_settings(), as_text=("hidden", "name")), frozen=True
)


@dataclass(frozen=True)
class TrainForm(_FormSettings):  # type: ignore[misc,valid-type]
    """What the "New run" form asks for, with the defaults of `python -m core train` (both come from
    `core.settings`); `args()` turns it into its flags. `hidden` and `name` are text, as typed."""

    def check(self, limits: JobLimits) -> TrainForm:
        """Returns self, or raises JobRefused naming the first bad value (the CLI checks the rest)."""
        sizes = [part.strip() for part in self.hidden.split(",")]
        if not all(s.isdigit() and 0 < int(s) <= MAX_UNITS for s in sizes) or len(sizes) > MAX_HIDDEN_LAYERS:
            raise JobRefused(
                f"Hidden layers must be up to {MAX_HIDDEN_LAYERS} sizes from 1 to {MAX_UNITS} separated by commas, "
                f"e.g. 16,16,16. Received: {self.hidden!r}"
            )
        if not 1 <= self.epochs <= limits.max_epochs:
            raise JobRefused(f"Epochs must be from 1 to {limits.max_epochs} on this server. Received: {self.epochs}")
        for setting in form_settings():
            value = getattr(self, setting.name)
            if setting.choices and value not in setting.choices:
                raise JobRefused(f"Unknown {setting.name} {value!r}: choose one of {', '.join(setting.choices)}.")
        if not (self.lr > 0 and 0 <= self.dropout < 1 and self.l2 >= 0 and self.noise >= 0 and self.batch_size >= 1):
            raise JobRefused(
                "Learning rate must be > 0, dropout in [0, 1), L2, noise >= 0 and batch size >= 1. "
                f"Received: lr={self.lr}, dropout={self.dropout}, l2={self.l2}, noise={self.noise}, "
                f"batch_size={self.batch_size}"
            )
        return self

    def display_name(self) -> str:
        return self.name.strip() or f"{self.dataset} {self.hidden.replace(',', '-').replace(' ', '')} {self.activation}"

    def args(self) -> list[str]:
        """The `python -m core train` flags that ask for this form's run."""
        flags = []
        for setting in form_settings():
            value = self.display_name() if setting.name == "name" else getattr(self, setting.name)
            if setting.name == "noise" and self.dataset not in PLANE_DATASETS:
                continue  # the other data sets have no noise
            if setting.type is bool:
                flags += [setting.flag] if value else []
            else:
                flags += [setting.flag, value.replace(" ", "") if setting.type is tuple else text(setting, value)]
        return flags


# Learns the two-arm spiral to ~97% in 30 epochs (about 30 s on 2 cores): early layers still mix the arms,
# later ones pull them apart, which is the point of the demo.
DEMO = TrainForm(name="demo: spiral 32-32-32 relu")


@dataclass
class Job:
    """One training process. `state` is running, finished, failed or cancelled."""

    run_id: str
    name: str
    process: subprocess.Popen
    log_path: Path
    started: float = field(default_factory=time.time)
    cancelled: bool = False

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def state(self) -> str:
        code = self.process.poll()
        if code is None:
            return "running"
        if self.cancelled:
            return "cancelled"
        return "finished" if code == 0 else "failed"

    def stage(self) -> tuple[int, str] | None:
        """(index in TRAINING_STAGES, name) of the last stage the training process announced; None before the
        first (Python itself is still starting) or for a job that announces none (a recovery)."""
        found = None
        for line in self.log_tail(200).splitlines():
            name = line.removeprefix(STAGE_PREFIX) if line.startswith(STAGE_PREFIX) else None
            if name in TRAINING_STAGES:
                found = (TRAINING_STAGES.index(name), name)
        return found

    def log_tail(self, lines: int = 8) -> str:
        """The last lines the process wrote (stderr and stdout), to explain a failure."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


class JobManager:
    """Starts, lists and cancels training processes that write into one run store."""

    _shared: dict[tuple[str, JobLimits], JobManager] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, runs_root: str, limits: JobLimits) -> JobManager:
        """The one manager of this store and these limits in this process, created on first use."""
        with cls._shared_lock:
            key = (str(runs_root), limits)
            if key not in cls._shared:
                cls._shared[key] = cls(runs_root, limits)
            return cls._shared[key]

    def __init__(self, runs_root: str, limits: JobLimits | None = None, python: str = sys.executable):
        root = str(runs_root)
        self.runs_root = root if "://" in root else os.path.abspath(root)  # the child may run anywhere
        self.limits = limits or JobLimits.from_env()
        self.python = python
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()  # sessions run in threads; two clicks must not start two jobs past the limit
        self._log_dir = Path(tempfile.mkdtemp(prefix="strata-jobs-"))

    def start(self, form: TrainForm) -> Job:
        """Launch `python -m core train` for `form` and return the job; raises JobRefused when not allowed."""
        if self.limits.viewer_mode:
            raise JobRefused("This dashboard is in viewer mode (STRATA_VIEWER_MODE): training from the page is off.")
        form.check(self.limits)
        with self._lock:
            running = self.running()
            if len(running) >= self.limits.max_jobs:
                raise JobRefused(
                    f"{len(running)} training job(s) already running, the limit here is {self.limits.max_jobs} "
                    "(STRATA_MAX_JOBS). Wait for it to finish or cancel it."
                )
            run_id = new_run_id(form.display_name())
            return self._launch(run_id, form.display_name(), ["train", *form.args(), "--run-id", run_id, "--quiet"])

    def recover(self, run_id: str, name: str) -> Job:
        """Launch `python -m core recover RUN`: it writes the snapshots a killed training process held back.
        Counts as a job (it runs the probe passes, with TensorFlow); raises JobRefused when not allowed."""
        if self.limits.viewer_mode:
            raise JobRefused(
                "This dashboard is in viewer mode (STRATA_VIEWER_MODE): recovering runs from the page is off."
            )
        with self._lock:
            if len(self.running()) >= self.limits.max_jobs:
                raise JobRefused(
                    f"A job is already running, the limit here is {self.limits.max_jobs} (STRATA_MAX_JOBS). "
                    "Wait for it to finish, or run `python -m core recover` yourself."
                )
            return self._launch(run_id, name, ["recover", run_id])

    def _launch(self, run_id: str, name: str, args: list[str]) -> Job:
        """Start `python -m core ARGS --runs ROOT` as the job of run `run_id` (the caller holds the lock)."""
        log_path = self._log_dir / f"{run_id}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [self.python, "-m", "core", *args, "--runs", self.runs_root],
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C on the dashboard does not kill the run half-written
            )
        job = Job(run_id=run_id, name=name, process=process, log_path=log_path)
        self._jobs[run_id] = job
        return job

    def jobs(self) -> list[Job]:
        """Every job started by this manager, newest first."""
        return sorted(self._jobs.values(), key=lambda job: job.started, reverse=True)

    def running(self) -> list[Job]:
        return [job for job in self._jobs.values() if job.running]

    def get(self, run_id: str) -> Job | None:
        return self._jobs.get(run_id)

    def cancel(self, run_id: str) -> bool:
        """SIGTERM the job's process: the CLI marks the run "interrupted". False when it is not running."""
        job = self._jobs.get(run_id)
        if job is None or not job.running:
            return False
        job.cancelled = True
        try:
            job.process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel every running job and wait for them (tests and server shutdown)."""
        for job in self.running():
            self.cancel(job.run_id)
        for job in self._jobs.values():
            try:
                job.process.wait(timeout)
            except subprocess.TimeoutExpired:
                job.process.kill()
                job.process.wait()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up noise out of the log tail
    return env
