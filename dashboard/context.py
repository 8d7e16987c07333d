"""The shared API every dashboard page uses: the store, the selected run, the view state and the notices.

`dashboard/main.py` calls `prepare()` and publishes the view state before any page runs, so a page only reads:

    from dashboard import context

    run = context.current_run()      # the selected core.store.Run, or None when there is nothing to show
    view = context.view_state()      # dashboard.state.ViewState: run, layer, epoch, pcx/pcy/pcz, dims, color,
                                     #   size, opacity, sel (probe rows), compare (run ids)
    index = context.layer_index()    # position of view.layer in run.layers (0 when there are no layers)
    snapshot = context.snapshot()    # the snapshot at view.epoch (None: the latest), or None before the first
    others = context.compare_runs()  # draws the bound "Compare with" picker, returns the chosen Runs
    context.is_live(run)             # True while the run trains: poll with st.fragment(run_every=LIVE_SECONDS)
    context.set_selection(rows)      # select probe rows (URL `sel`); view.sel reads them back
    context.run_facts(run)           # state.RunFacts: layer names, captured epochs, components, probe size
    context.store()                  # the cached RunStore of STRATA_RUNS (a folder or fsspec URL; default ./runs)
    context.damaged_runs()           # summaries of the runs that cannot be opened, each with its reason
    context.lost_notice(run)         # says which captured snapshots of the run cannot be read, and why
    context.jobs()                   # the JobManager every session shares (training runs in subprocesses)
    context.access()                 # access.Access: this visitor's role ("none", "viewer", "editor") and why
    context.can_edit()               # True when this visitor may train, cancel, recover, rename and delete
    context.may_edit("delete runs")  # the same, saying why not: call it in every action that changes runs
    context.add_notice("...")        # shown at the top of the page; notices explain what a link could not show

Every view setting lives in the URL: sidebar widgets use `bind="query-params"` with the parameter name as
their key (`run`, `layer`, `epoch`, ...), and the selection (`sel`) is written to `st.query_params` directly.
A page's own controls can do the same with their own keys (e.g. `key="grad_role", bind="query-params"`).
Wrap live charts in `st.fragment(run_every=context.LIVE_SECONDS)` while `context.is_live()`.

Names, layer names, link values and messages come from users and from files: put them into Markdown (captions,
alerts, headers, labels, toasts) only through `plain()` (dashboard/views/text.py), and never show the store's path,
which is the server's business.

Page modules live in `dashboard/screens/` (not `pages/`: Streamlit's old multipage mode would run files in a
folder of that name as scripts of their own).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import streamlit as st

from core.store import Run, RunStore, RunSummary, Snapshot, StoreError
from dashboard import state as schema
from dashboard.access import NONE, Access, Roles, decide, is_local, sign_in_problems, verified_email
from dashboard.jobs import JobLimits, JobManager
from dashboard.views.runs import skipped_lines
from dashboard.views.text import plain

LIVE_SECONDS = 2.0  # how often charts of a training run poll the store
_SEEDED = "_strata_seeded"  # session flag: the link in the URL has been read
_NOTICES = "_strata_notices"
_VIEW = "_strata_view"
_RUN = "_strata_run"
_LATEST = "_strata_latest_epoch"  # the newest epoch at the last full rerun: "follow the latest" memory
_SYNC = "_strata_sync_url"  # widget keys set in code whose values the address bar does not show yet
_FULL_RUN = "_strata_full_run"  # true while the whole app script runs (not a fragment rerun)
_FOLLOW = "_strata_follow_run"  # a run to select at the start of the next run, before the run picker exists
WIDGET_KEYS = ("run", "layer", "epoch", "pcx", "pcy", "pcz", "dims", "color", "size", "opacity", "out")


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


# ------------------------------------------------------------------------------------------------------------
# Who may do what (the rule is dashboard/access.py's)


def _secret_table(name: str) -> dict | None:
    """A table of `.streamlit/secrets.toml` as plain dicts; None without a secrets file or such a table."""
    if not st.secrets.load_if_toml_exists():  # also False for a file that does not parse: no sign-in, no roles
        return None
    value: Any = st.secrets.get(name)
    return value.to_dict() if hasattr(value, "to_dict") else value


def sign_in_settings() -> dict | None:
    """The `[auth]` table `st.login` reads, or None when sign-in is not configured."""
    return _secret_table("auth") or None


_LOGGED: set[str] = set()


def server_log(message: str) -> None:
    """Print `message` to the server's log once per process: settings problems are the operator's business."""
    if message not in _LOGGED:
        _LOGGED.add(message)
        print(f"strata: {message}", file=sys.stderr)


def access() -> Access:
    """This visitor's role and why, from the sign-in settings, `st.user`, the roles, where the session comes from
    and STRATA_VIEWER_MODE. Read afresh on every call, so a role taken away applies to the next click."""
    auth = sign_in_settings()
    for problem in sign_in_problems(auth):
        server_log(f"sign-in is not usable: {problem} (.streamlit/secrets.toml)")
    user = st.user.to_dict() if auth else {}
    signed_in = bool(user.get("is_logged_in"))
    try:
        roles = Roles.from_config((_secret_table("strata") or {}).get("roles"))
    except ValueError as error:
        server_log(f"no one is let in: {error}")
        if auth and signed_in:
            return Access(
                NONE, "This dashboard's roles are misconfigured, so no one is let in. Its server log says why."
            )
        roles = Roles()
    local = is_local(st.get_option("server.address"), st.context.ip_address, dict(st.context.headers.items()))
    return decide(
        sign_in=bool(auth),
        signed_in=signed_in,
        email=verified_email(user),
        roles=roles,
        local=local,
        viewer_mode=JobLimits.from_env().viewer_mode,
    )


def can_edit() -> bool:
    """Whether this visitor may train, cancel, recover, rename and delete runs (pages show those controls only then)."""
    return access().can_edit


def may_edit(action: str) -> bool:
    """`can_edit()`, checked again inside an action (a button callback runs before the page is drawn again, so
    a role taken away since must still stop it); when refused, says so and why."""
    verdict = access()
    if not verdict.can_edit:
        st.error(f"You cannot {plain(action)} here. {plain(verdict.why)}", icon=":material/lock:")
    return verdict.can_edit


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


# ------------------------------------------------------------------------------------------------------------
# Notices


def notices() -> list[str]:
    return st.session_state.get(_NOTICES, [])


def add_notice(message: str) -> None:
    st.session_state.setdefault(_NOTICES, []).append(message)


# ------------------------------------------------------------------------------------------------------------
# View state


def prepare() -> None:
    """Read the link on a session's first run, then keep the widget values valid for the selected run.

    Runs before the sidebar draws its widgets, so every bound widget finds a valid value in session state:
    a value from the URL that Streamlit's binding rejects falls back to the validated one set here.
    """
    st.session_state[_FULL_RUN] = True
    ids = [s.id for s in run_summaries()]
    if not st.session_state.get(_SEEDED):
        view, found = schema.parse_query(_raw_query())
        run, opened = schema.open_run(store(), view.run, ids)
        view, checked = schema.validate(replace(view, run=run.id if run else None), run_facts(run), tuple(ids))
        st.session_state[_NOTICES] = found + opened + checked
        st.session_state[_SEEDED] = True
        _seed_widgets(view, run)
        _set_selection(view.sel)
        if st.session_state[_NOTICES] or (run is not None and st.query_params.get("run") != run.id):
            request_url_sync(WIDGET_KEYS)
    else:
        st.session_state.setdefault(_NOTICES, [])
        if follow := st.session_state.pop(_FOLLOW, None):
            st.session_state["run"] = follow
        for key in st.session_state.pop(_SYNC, ()):
            if key in st.session_state:
                st.session_state[key] = st.session_state[key]  # a code-set value: Streamlit writes it to the URL
        requested = st.session_state.get("run")
        run, lost = schema.open_run(store(), requested, ids)
        st.session_state[_NOTICES] += lost
        if run is not None and st.session_state.get(_RUN) not in (None, run.id):
            _set_selection(())  # probe rows of another run mean nothing here
        _conform_widgets(run)
    st.session_state[_RUN] = run.id if run else None


def follow_run(run_id: str) -> None:
    """Select `run_id` from the next run on, and rerun the app. Safe wherever the run picker already exists:
    a widget's value can only be set before the widget is drawn, so `prepare()` applies it."""
    st.session_state[_FOLLOW] = run_id
    request_url_sync()
    refresh_runs()
    st.rerun(scope="app")


def request_url_sync(keys=("run",)) -> None:
    """Put the values of bound widgets `keys` into the address bar with one more run after this one.

    Streamlit writes a value set in code into the URL only when the widget existed in the previous completed
    run; a value seeded before the widget's first run (a fallback from a bad link, the newest run) would
    otherwise stay out of the address bar until the next interaction.
    """
    st.session_state[_SYNC] = tuple(keys)


def finish() -> None:
    """Called by the app after the page has run: performs a requested URL sync (see `request_url_sync`).

    The extra run must start after this one has completed (a `st.rerun()` here would abort it before
    Streamlit records the widgets), so a tiny fragment asks for it from its first timed rerun, unless a full
    run (any interaction) has done the sync first.
    """
    if st.session_state.get(_SYNC):

        @st.fragment(run_every=0.2)
        def sync_url() -> None:
            if st.session_state.get(_SYNC) and not st.session_state.get(_FULL_RUN):
                st.rerun(scope="app")

        sync_url()
    st.session_state[_FULL_RUN] = False


def _raw_query() -> dict[str, list[str]]:
    return {key: st.query_params.get_all(key) for key in st.query_params}


def run_facts(run: Run | None) -> schema.RunFacts | None:
    """What bounds the view state for `run` (layers, epochs, components, probe size), or None."""
    if run is None:
        return None
    try:
        return schema.RunFacts.of(run)
    except StoreError:
        return None


def _seed_widgets(view: schema.ViewState, run: Run | None) -> None:
    facts = run_facts(run)
    values = {
        "run": view.run,
        "pcx": view.pcx,
        "pcy": view.pcy,
        "pcz": view.pcz,
        "dims": view.dims,
        "color": view.color,
        "size": view.size,
        "opacity": view.opacity,
    }
    if facts and facts.layers:
        values["layer"] = view.layer or facts.layers[0]
    if facts and facts.epochs:
        values["epoch"] = facts.epochs[-1] if view.epoch is None else view.epoch
        st.session_state[_LATEST] = facts.epochs[-1]
    if facts and len(facts.outputs) > 1:
        values["out"] = facts.primary_output if view.out is None else view.out
    if view.compare:
        values["compare"] = list(view.compare)  # type: ignore[assignment]  # a multiselect's value is a list
    for key, value in values.items():
        if value is not None:
            st.session_state[key] = value


def _conform_widgets(run: Run | None) -> None:
    """After the user picks another run (or one grows), move layer and epoch to values that run has."""
    facts = run_facts(run)
    if run is not None and st.session_state.get("run") != run.id:
        st.session_state["run"] = run.id
    if facts is None:
        return
    if facts.layers and st.session_state.get("layer") not in facts.layers:
        st.session_state["layer"] = facts.layers[0]
    if facts.epochs:
        epoch, latest = st.session_state.get("epoch"), facts.epochs[-1]
        if epoch is None or epoch == st.session_state.get(_LATEST):  # following the newest epoch of a live run
            st.session_state["epoch"] = latest
        elif epoch not in facts.epochs:
            st.session_state["epoch"] = min(facts.epochs, key=lambda e: (abs(e - epoch), e))
        st.session_state[_LATEST] = latest
    for key in ("pcx", "pcy", "pcz"):
        if int(st.session_state.get(key, 1)) > facts.components:
            st.session_state[key] = getattr(schema.DEFAULTS, key)
    if len(facts.outputs) > 1 and st.session_state.get("out") not in range(len(facts.outputs)):
        st.session_state["out"] = facts.primary_output
    if not facts.has_truth and st.session_state.get("color") in ("label", "correct"):
        st.session_state["color"] = "pred"


def _set_selection(rows: tuple[int, ...]) -> None:
    if rows:
        st.query_params["sel"] = schema.format_rows(rows)
    elif "sel" in st.query_params:
        del st.query_params["sel"]


def set_selection(rows) -> None:
    """Select probe rows (highlighted in every panel, kept in the link); an empty list clears the selection."""
    rows = tuple(sorted(set(int(r) for r in rows)))
    if len(rows) > schema.MAX_SELECTION:
        st.toast(
            f"Selected {len(rows):,} samples; a link keeps {schema.MAX_SELECTION}, so the first "
            f"{schema.MAX_SELECTION} by row stay selected.",
            icon=":material/info:",
        )
        rows = rows[: schema.MAX_SELECTION]
    _set_selection(rows)
    view = st.session_state.get(_VIEW)
    if view is not None:
        st.session_state[_VIEW] = replace(view, sel=rows)


def selection() -> tuple[int, ...]:
    """The selected probe rows from the URL (validated against the current run)."""
    try:
        rows = schema.parse_rows(st.query_params.get_all("sel"))
    except ValueError:
        return ()
    facts = run_facts(current_run())
    limit = facts.probe_size if facts else 0
    return tuple(r for r in rows if r < limit)[: schema.MAX_SELECTION]


def publish(view: schema.ViewState) -> None:
    """Called by the sidebar once its widgets have run: the view every page reads."""
    st.session_state[_VIEW] = view


def view_state() -> schema.ViewState:
    return st.session_state.get(_VIEW) or schema.DEFAULTS


def current_run() -> Run | None:
    run_id = st.session_state.get(_RUN)
    if not run_id:
        return None
    try:
        return store().run(run_id)
    except StoreError:
        return None


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
        text = f"Training was killed before this run's snapshots were written: {unwritten} of them can still be written (sidebar)."
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


def layer_index() -> int:
    run, view = current_run(), view_state()
    names = [layer.get("name") for layer in run.layers] if run else []
    return names.index(view.layer) if view.layer in names else 0


def snapshot() -> Snapshot | None:
    """The snapshot on view: the chosen epoch's, or the latest one while following a live run."""
    run = current_run()
    if run is None:
        return None
    from dashboard.data import snapshot_at

    return snapshot_at(run, view_state().epoch)


def compare_runs(label: str = "Compare with") -> list[Run]:
    """A multiselect of other runs bound to the `compare` URL parameter; returns the chosen, readable runs."""
    current = st.session_state.get(_RUN)
    options = [s.id for s in run_summaries() if s.id != current]
    if "compare" in st.session_state:  # the selected run, or a deleted one, cannot be compared with
        st.session_state["compare"] = [r for r in st.session_state["compare"] if r in options]
    chosen = st.multiselect(
        label,
        options,
        key="compare",
        bind="query-params",
        help="Run ids as in the sidebar's run picker; the link keeps them.",
    )
    runs = []
    for run_id in chosen:
        try:
            runs.append(store().run(run_id))
        except StoreError as error:
            add_notice(str(error))
    st.session_state[_VIEW] = replace(view_state(), compare=tuple(chosen))
    return runs


PAGE_CONTROLS = ("grad_role", "unit")  # keys of the pages' own URL-bound widgets, beyond the sidebar's view state


def page_controls() -> dict[str, str]:
    """The current values of the pages' own bound widgets. Streamlit keeps a bound widget's value in the browser's
    URL and in session state, not in `st.query_params`, so the Share box reads it from session state."""
    return {key: str(st.session_state[key]) for key in PAGE_CONTROLS if st.session_state.get(key) is not None}


def share_link(view: schema.ViewState) -> str:
    """The full link to this view: the page's URL, the view state, and the page's own controls (`unit`, ...)."""
    from urllib.parse import urlencode

    query = urlencode({**page_controls(), **schema.to_query(view)}, doseq=True)
    base = st.context.url or ""
    if base.count("/") == 2:  # "http://host:port": the root page still needs its "/"
        base += "/"
    return f"{base}?{query}" if query else base
