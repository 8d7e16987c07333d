"""The view state kept in the link: read from the URL on a session's first run, kept valid for the selected run
while the user clicks, published by the sidebar for the pages to read, and written back into a share link.

Every view setting lives in the URL: the sidebar's widgets are bound to query parameters named by their keys
(WIDGET_KEYS), the selected probe rows are written to `st.query_params["sel"]` directly, and the pages' own bound
controls are PAGE_CONTROLS. `prepare()` runs before the sidebar draws, so every widget finds a valid value.
"""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from core.store import Run, Snapshot, StoreError
from dashboard import state as schema
from dashboard.context.page_notices import add_notice, notices, set_notices
from dashboard.context.runs import refresh_runs, run_summaries, store

_SEEDED = "_strata_seeded"  # session flag: the link in the URL has been read
_VIEW = "_strata_view"
_RUN = "_strata_run"
_LATEST = "_strata_latest_epoch"  # the newest epoch at the last full rerun: "follow the latest" memory
_SYNC = "_strata_sync_url"  # widget keys set in code whose values the address bar does not show yet
_FULL_RUN = "_strata_full_run"  # true while the whole app script runs (not a fragment rerun)
_FOLLOW = "_strata_follow_run"  # a run to select at the start of the next run, before the run picker exists
WIDGET_KEYS = ("run", "layer", "epoch", "pcx", "pcy", "pcz", "dims", "color", "size", "opacity", "out", "tcol")


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
        set_notices(found + opened + checked)
        st.session_state[_SEEDED] = True
        _seed_widgets(view, run)
        _set_selection(view.sel)
        if notices() or (run is not None and st.query_params.get("run") != run.id):
            request_url_sync(WIDGET_KEYS)
    else:
        if follow := st.session_state.pop(_FOLLOW, None):
            st.session_state["run"] = follow
        for key in st.session_state.pop(_SYNC, ()):
            if key in st.session_state:
                st.session_state[key] = st.session_state[key]  # a code-set value: Streamlit writes it to the URL
        requested = st.session_state.get("run")
        run, lost = schema.open_run(store(), requested, ids)
        for message in lost:
            add_notice(message)
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
        "tcol": view.tcol,
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
    column = st.session_state.get("tcol", "norm")
    if column != "norm" and int(column) >= facts.target_columns(_chosen_output(facts)):
        st.session_state["tcol"] = "norm"  # another output (or run) than the column was chosen for
    if not facts.has_truth and st.session_state.get("color") in ("label", "correct"):
        st.session_state["color"] = "pred"


def _chosen_output(facts: schema.RunFacts) -> int | None:
    """The output the Output control names (None: the primary output, or a run of one output)."""
    out = st.session_state.get("out")
    return out if len(facts.outputs) > 1 and isinstance(out, int) else None


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
