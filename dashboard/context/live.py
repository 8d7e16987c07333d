"""A run's charts on a page: drawn once for an ended run and polled while it trains, with the notes over them
(how far training is, why there is no snapshot yet, snapshots or files that cannot be read, analysis skipped)."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from core.store import Run, Snapshot, StoreError
from dashboard.context.link import current_run
from dashboard.context.runs import LIVE_SECONDS, jobs
from dashboard.views.runs import skipped_lines
from dashboard.views.text import plain


def is_live(run: Run | None = None) -> bool:
    """True while the run is still training or being written (its charts should poll), or while a job of this
    dashboard is about to write it (a recovery loading TensorFlow)."""
    run = run or current_run()
    try:
        if run is None:
            return False
        job = jobs().get(run.id)
        return run.status == "running" or (job is not None and job.running)
    except StoreError:
        return False


def live_section(run: Run, draw: Callable[[bool], None]) -> None:
    """Call `draw(live)`: once for an ended run, every LIVE_SECONDS in a fragment (no full rerun) while it trains.

    A run that turns unreadable mid-way (deleted, damaged) shows as a message, never a traceback.
    """
    live = is_live(run)

    @st.fragment(run_every=LIVE_SECONDS if live else None)
    def section() -> None:
        try:
            if live:
                run.refresh()
            draw(live)
        except StoreError as error:
            st.error(f"Run {plain(run.id)} cannot be read: {plain(error)}", icon=":material/error:")

    section()


def training_progress(run: Run) -> tuple[int, int, bool]:
    """(epochs done, epochs planned or 0, whether training has ended): a running run whose training has ended
    is still writing the snapshots its recorder held back for its budget."""
    done, planned = int(run.meta.get("epochs_done") or 0), int(run.meta.get("epochs_planned") or 0)
    return done, planned, bool(planned) and done >= planned


def live_caption(run: Run, epoch: int) -> None:
    """The caption over a live run's charts: how far training is, or that its snapshots are still being written."""
    done, planned, trained = training_progress(run)
    if trained:
        text = f"Training done; writing its snapshots: up to epoch {epoch} of {planned} so far"
    else:
        text = f"Live: epoch {epoch} of {planned or '?'}"
    st.caption(f":green[:material/pending:] {text} · charts update every {LIVE_SECONDS:g} s")


def no_snapshot_yet(run: Run) -> None:
    """What a page shows for a run without a snapshot: why there is none, and whether one is coming."""
    unwritten = 0 if is_live(run) else run.unwritten_captures()
    if unwritten:
        text = (
            f"Training was killed before this run's snapshots were written: {unwritten} of them can still be "
            "written (sidebar)."
        )
    elif not is_live(run):
        text = f"This run has no snapshot: it ended ({run.status}) before its first one was written."
    elif training_progress(run)[2]:
        text = (
            "Training has ended; its snapshots are being written now. Within its `budget`, the recorder keeps "
            "a short fit's snapshots until training ends, so as not to slow it."
        )
    else:
        text = (
            "Waiting for the first snapshot. The recorder takes one before training starts; within its `budget`, "
            "the snapshots of a fit with short epochs are written once training ends."
        )
    st.info(text, icon=":material/hourglass_top:")
    if not unwritten:
        lost_notice(run)


def lost_notice(run: Run) -> None:
    """Over a run's charts: the captured snapshots that cannot be read (how many, which, why), and other damaged
    files of the run. An ended run that lost snapshots would otherwise look complete ("finished 10/10")."""
    lost = run.lost_snapshots()
    others = {name: why for name, why in run.damaged_files().items() if not name.startswith("snapshots/")}
    if not lost and not others:
        return
    lines = lost.lines() + [
        f"{name} cannot be read ({why}); what needs it is not shown." for name, why in others.items()
    ]
    head = (
        f"This run lost {len(lost.epochs)} of its captured snapshots"
        if lost.epochs
        else "Some of this run's files cannot be read"
    ) + ": everything else is shown."
    st.warning(head + "\n\n" + "\n".join(f"- {plain(line)}" for line in lines), icon=":material/broken_image:")


def skipped_notice(run: Run, snapshot: Snapshot) -> None:
    """Names the pieces of analysis the recorder could not compute at `snapshot` (a constant or NaN layer), so
    a missing chart or number is explained. Layer names are the user's: they are shown as plain text."""
    lines = skipped_lines([str(layer.get("name", i)) for i, layer in enumerate(run.layers)], snapshot.skipped())
    if lines:
        st.warning(
            f"At epoch {int(snapshot.epoch)}, {len(lines)} piece(s) of analysis could not be computed; "
            "everything else in this snapshot is shown.",
            icon=":material/warning:",
        )
        st.text("\n".join(lines))
