"""The store and the job manager every session shares, and the run list read from the store (cached briefly)."""

from __future__ import annotations

import os

import streamlit as st

from core.store import RunStore, RunSummary
from dashboard.jobs import JobLimits, JobManager

LIVE_SECONDS = 2.0  # how often charts of a training run poll the store, and how long the run list is kept


def runs_root() -> str:
    return os.environ.get("STRATA_RUNS", "runs")


@st.cache_resource(show_spinner=False)
def _store(root: str) -> RunStore:
    return RunStore(root)


def store() -> RunStore:
    """The run store every session shares (readers keep immutable snapshots, so sharing saves memory)."""
    return _store(runs_root())


def _jobs(root: str, limits: JobLimits) -> JobManager:
    return JobManager.shared(root, limits)  # not st.cache_resource: a browser's clear_cache message empties that


def jobs() -> JobManager:
    """The one JobManager of this server process: two viewers of a run see the same job."""
    return _jobs(runs_root(), JobLimits.from_env())


@st.cache_data(ttl=LIVE_SECONDS, show_spinner=False)
def _summaries(root: str) -> list[RunSummary]:
    return _store(root).list_runs()


def run_summaries() -> list[RunSummary]:
    """Every run that can be opened, newest first (re-read at most every LIVE_SECONDS)."""
    return [s for s in _summaries(runs_root()) if s.status != "damaged"]


def damaged_runs() -> list[RunSummary]:
    """Runs the store lists as damaged, with the reason in `damaged`: an unreadable run.json (they cannot be
    opened) or probe set (they open, without what needs it)."""
    return [s for s in _summaries(runs_root()) if s.damaged]


def refresh_runs() -> None:
    """Forget the cached run list (after starting, renaming or deleting a run)."""
    _summaries.clear()
