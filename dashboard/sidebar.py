"""The sidebar every page shares: run picker, "New run" form, view controls and the Share link.

View controls are widgets bound to the URL (`bind="query-params"`, key = parameter name), so the address bar
always holds the view; `context.prepare()` has already made their session-state values valid for the run.
"""

from __future__ import annotations

import time
from dataclasses import replace

import streamlit as st

from core import settings
from core.store import StoreError
from dashboard import account, context
from dashboard import state as schema
from dashboard.jobs import JobRefused, TrainForm
from dashboard.views.runs import layer_labels
from dashboard.views.text import plain

STATUS_ICONS = {
    "running": ":green[:material/pending:]",
    "finished": ":blue[:material/check_circle:]",
    "failed": ":red[:material/cancel:]",
    "interrupted": ":orange[:material/stop_circle:]",
}
_PENDING = "_strata_pending_run"  # a run started from this session that has not written run.json yet
_FORM_OPEN = "_strata_new_run_open"  # the New run dialog stays open across reruns until submitted or dismissed


def render(embeddings_page: bool) -> None:
    """Draw the sidebar. The app draws it after the page, whose charts need `view_state` only: the browser then
    receives the charts first and starts loading plotly.js while it sets up the sidebar's widgets."""
    with st.sidebar:
        account.sidebar_box(context.access())
        run = context.current_run()
        _run_picker(run)
        _new_run()
        _view_controls(run, embeddings_page)
        with st.expander("Share this view", icon=":material/link:", key="share_open", on_change="rerun") as share:
            if share.open:  # drawn only when opened: the code block's highlighter is slow to start in a browser
                st.code(context.share_link(context.view_state()), language=None, wrap_lines=True)
                st.caption("Opening this link shows the same run, layer, epoch, components, colours and selection.")


def view_state(run) -> schema.ViewState:
    """The view the sidebar's controls describe, read from session state, where `context.prepare()` has put
    valid values for every control: so the page can be drawn before the controls are."""
    selection = context.selection()
    facts = context.run_facts(run)
    if run is None or facts is None:
        return replace(schema.DEFAULTS, sel=selection)
    state = st.session_state
    defaults = schema.DEFAULTS
    epoch = state.get("epoch") if len(facts.epochs) > 1 else None
    if len(facts.epochs) == 1 and not context.is_live(run):
        epoch = facts.epochs[0]
    following = epoch is not None and epoch == facts.epochs[-1] and context.is_live(run)
    return schema.ViewState(
        run=run.id,
        layer=state.get("layer") if facts.layers else None,
        epoch=None if following else epoch,
        pcx=int(state.get("pcx", defaults.pcx)),
        pcy=int(state.get("pcy", defaults.pcy)),
        pcz=int(state.get("pcz", defaults.pcz)),
        dims=state.get("dims", defaults.dims),
        color=state.get("color", defaults.color),
        size=int(state.get("size", defaults.size)),
        opacity=float(state.get("opacity", defaults.opacity)),
        sel=selection,
        compare=tuple(state.get("compare") or ()),
        out=int(state["out"]) if len(facts.outputs) > 1 and state.get("out") is not None else None,
        tcol=str(state.get("tcol", defaults.tcol)),
    )


# ------------------------------------------------------------------------------------------------------------
# Runs


def _run_picker(run) -> None:
    summaries = {s.id: s for s in context.run_summaries()}
    options = list(summaries)
    if run is not None and run.id not in options:
        options.insert(0, run.id)  # just created: the cached list has not seen it yet
    damaged = context.damaged_runs()
    if damaged:
        st.caption(
            f":orange[:material/broken_image:] {len(damaged)} run(s) cannot be read fully: the Runs page says why."
        )
    if not options:
        st.caption("No runs yet.")
        return
    st.selectbox(
        "Run",
        options,
        index=None,
        key="run",
        bind="query-params",
        placeholder="Choose a run",
        help="Runs in this store, newest first. The id is what links refer to.",
    )
    if run is not None:
        _run_status(run.id)


def _run_status(run_id: str) -> None:
    """Status and progress of the selected run; polls while it trains."""
    try:
        live = context.is_live(context.store().run(run_id))
    except StoreError:
        return

    @st.fragment(run_every=context.LIVE_SECONDS if live else None)
    def status() -> None:
        try:
            run = context.store().run(run_id)
            if live:
                run.refresh()
        except StoreError as error:
            st.error(plain(error))
            return
        meta, status = run.meta, run.status
        done, planned, trained = context.training_progress(run)
        dataset = run.info.dataset.name  # a Recorder in the user's own fit may not name one
        lost = run.lost_snapshots()
        parts = [
            f"{STATUS_ICONS.get(status, '')} **{plain(run.name)}**",
            status,
            plain(dataset) if dataset else None,
            f"epoch {done}/{planned or '?'}",
            f":orange[{len(lost.epochs)} snapshot(s) lost]" if lost.epochs else None,
        ]
        st.caption(" · ".join(part for part in parts if part))
        if status == "running":
            if trained:  # a Recorder within its budget writes held-back snapshots after fit
                st.progress(
                    1.0, text=f"training done: writing its snapshots ({int(meta.get('snapshots') or 0)} so far)"
                )
            else:
                st.progress(done / planned if planned else 0.0, text=f"training: epoch {done} of {planned or '?'}")
            job = context.jobs().get(run_id)
            if job is not None and job.running and context.can_edit():
                if st.button("Cancel training", key="cancel_job", icon=":material/stop_circle:") and context.may_edit(
                    "cancel training"
                ):
                    context.jobs().cancel(run_id)
                    st.toast("Cancel sent: the run stops after the current batch.")
        elif live:
            context.refresh_runs()
            st.rerun(scope="app")  # it just finished: refresh the epoch slider and the charts once
        if status == "failed" and meta.get("error"):
            st.caption(f"Error: {plain(meta['error'])}")
        if status == "interrupted":
            _unwritten(run)

    status()


def _unwritten(run) -> None:
    """For a run whose training was killed while it held snapshots back: say so, and offer to write them."""
    job = context.jobs().get(run.id)
    if job is not None and job.running:  # started, but its TensorFlow has not loaded yet
        st.info("Writing the held-back snapshots…", icon=":material/restore:")
        return
    if (
        job is not None
        and job.state == "failed"
        and isinstance(job.process.args, list)
        and "recover" in job.process.args
    ):
        st.error("Writing the held-back snapshots failed:")
        st.code(job.log_tail(3), language=None)
        return
    count = run.unwritten_captures()
    if not count:
        return
    st.warning(
        f"Training was killed before {count} of its snapshots were written. They can still be written: "
        f"`python -m core recover {run.id}`.",
        icon=":material/restore:",
    )
    if context.can_edit() and st.button("Write them now", key="recover_run", icon=":material/restore:"):
        if not context.may_edit("write a run's snapshots"):
            return
        try:
            context.jobs().recover(run.id, run.name)
        except JobRefused as error:
            st.error(plain(error))
            return
        context.refresh_runs()
        st.rerun(scope="app")  # the run reads "running" while they are written: the pages follow it live


def _new_run() -> None:
    if not context.can_edit():
        return
    _pending_run()
    st.button("New run", icon=":material/add:", key="new_run", width="stretch", on_click=_set_form_open, args=(True,))
    if st.session_state.get(_FORM_OPEN):
        _new_run_dialog()


def _set_form_open(is_open: bool) -> None:
    st.session_state[_FORM_OPEN] = is_open


@st.dialog("New run", width="large", on_dismiss=lambda: _set_form_open(False))
def _new_run_dialog() -> None:
    """The training form, in a dialog so its widgets cost nothing until someone opens it."""
    limits = context.jobs().limits
    with st.form("new_run_form", border=False):
        columns = st.columns(3)
        values = {
            setting.name: _form_widget(columns[i % 3], setting, limits)
            for i, setting in enumerate(settings.form_settings())
        }
        st.caption(
            f"Training runs in its own process. Limits here: {limits.max_jobs} job(s) at once, "
            f"{limits.max_epochs} epochs."
        )
        submitted = st.form_submit_button("Train", type="primary", icon=":material/play_arrow:")
    if submitted:
        start_training(TrainForm(**values))


def _form_widget(column, setting: settings.Setting, limits):
    """The New run form's widget for `setting`, starting at the default `python -m core train` uses (the table in
    `core.settings`); returns its value as `TrainForm` takes it."""
    widget, key = setting.form, f"new_run_{setting.name}"
    assert widget is not None  # form_settings() yields only settings the form shows
    if setting.choices:
        return column.selectbox(widget.label, setting.choices, index=setting.choices.index(setting.default), key=key)
    if setting.type is bool:
        return column.checkbox(widget.label, setting.default, key=key)
    if setting.type in (str, tuple):
        return column.text_input(widget.label, settings.text(setting), help=widget.help, key=key)
    high = widget.high
    if setting.name == "epochs":
        high = max(1, min(high, limits.max_epochs))  # this server's limit
    default = min(setting.default, high)
    if widget.slider:
        return setting.type(column.slider(widget.label, widget.low, high, default, widget.step, key=key))
    return setting.type(
        column.number_input(widget.label, widget.low, high, default, widget.step, format=widget.format, key=key)
    )


def start_training(form: TrainForm) -> None:
    """Start a job for `form` and follow its run as soon as it appears; errors become messages."""
    if not context.may_edit("train runs"):
        return
    try:
        job = context.jobs().start(form)
    except JobRefused as error:
        st.error(plain(error))
        return
    st.session_state[_PENDING] = job.run_id
    st.session_state[_FORM_OPEN] = False
    context.refresh_runs()
    st.rerun(scope="app")


def _pending_run() -> None:
    """Until a started run has written run.json (TensorFlow takes seconds to load), say so and poll."""
    run_id = st.session_state.get(_PENDING)
    if not run_id:
        return

    @st.fragment(run_every=1.0)
    def waiting() -> None:
        job = context.jobs().get(run_id)
        try:
            context.store().run(run_id)
        except StoreError:
            if job is not None and not job.running:
                st.error("Training stopped before it started:")
                st.code(job.log_tail(), language=None)
                st.session_state.pop(_PENDING, None)
                return
            if job is None:
                st.info(f"Starting {plain(run_id)}…", icon=":material/hourglass_top:")
                return
            stage = job.stage()
            done = 0 if stage is None else stage[0]
            doing = "starting Python" if stage is None else stage[1]
            st.progress(
                done / len(settings.TRAINING_STAGES),
                text=f"Starting {plain(run_id)}: {doing} ({time.time() - job.started:.0f} s)",
            )
            return
        st.session_state.pop(_PENDING, None)
        context.follow_run(run_id)

    waiting()


# ------------------------------------------------------------------------------------------------------------
# View controls


def _target_column(facts: schema.RunFacts) -> None:
    """The Target column control, for an output whose regression target has several columns: the column that colours
    the points, or each row's norm."""
    out = st.session_state.get("out") if len(facts.outputs) > 1 else None
    columns = facts.target_columns(out if isinstance(out, int) else None)
    if columns < 2:
        return
    st.selectbox(
        "Target column",
        ["norm", *map(str, range(min(columns, schema.MAX_OUTPUT + 1)))],
        key="tcol",
        bind="query-params",
        format_func=lambda c: f"norm of all {columns}" if c == "norm" else f"column {c}",
        help="This output's regression target has several columns: colour the points by one column (true and "
        "predicted values, and their error) or by each row's norm, the length of its vector of values.",
    )


KIND_WORDS = {"classes": "classes", "values": "regression", "multilabel": "multi-label"}


def _view_controls(run, embeddings_page: bool) -> None:
    """Layer, epoch and the embedding controls. They show and edit the values `view_state` reads, which the app
    has already published for this run."""
    facts = context.run_facts(run)
    if run is None or facts is None:
        return
    st.divider()
    if facts.layers:
        labels = layer_labels(run.layers)
        st.selectbox(
            "Layer",
            facts.layers,
            key="layer",
            bind="query-params",
            format_func=lambda name: labels.get(name, name),
            help="The layer the focus view and the other pages show, listed by stage (spatial size) in a deep "
            "model. Type to search.",
        )
    if len(facts.epochs) > 1:
        st.select_slider(
            "Epoch",
            facts.epochs,
            value=facts.epochs[-1],
            key="epoch",
            bind="query-params",
            help="Captured epochs; 0 is before training.",
        )
    elif facts.epochs:
        live = context.is_live(run)
        st.caption(
            "Epoch: the newest, following the training" if live else f"Epoch {facts.epochs[0]} (the only snapshot)"
        )
    with st.expander("Embedding view", expanded=embeddings_page):
        top = min(facts.components, schema.MAX_COMPONENT)
        x, y, z = st.columns(3)
        x.number_input("PC x", 1, top, 1, key="pcx", bind="query-params")
        y.number_input("PC y", 1, top, 2 if top >= 2 else 1, key="pcy", bind="query-params")
        dims = st.radio("Dimensions", schema.DIMS, key="dims", bind="query-params", horizontal=True)
        z.number_input("PC z", 1, top, 3 if top >= 3 else 1, key="pcz", bind="query-params", disabled=dims != "3d")
        if len(facts.outputs) > 1:
            kinds = dict(enumerate(facts.output_kinds))
            st.selectbox(
                "Output",
                list(range(len(facts.outputs))),
                key="out",
                bind="query-params",
                format_func=lambda i: f"{facts.outputs[i]} ({KIND_WORDS.get(kinds[i] or '', 'no targets')})",
                help="The model output whose targets and predictions colour the points and fill the sample table. "
                "On the Layers page, the linear probes and class separation are of this output when its targets are "
                "classes, else of the primary output (the first of classes, unless the Recorder named another). The "
                "diagnosis reads every output.",
            )
        _target_column(facts)
        colors = schema.COLORS if facts.has_truth else ("pred", "confidence")
        st.selectbox(
            "Colour by",
            colors,
            key="color",
            bind="query-params",
            help="label: true class (or a regression's true value, on a continuous scale) · pred: predicted class "
            "or value · correct: right or wrong (a regression: its absolute error) · confidence: top probability",
        )
        st.slider("Point size", *schema.SIZE_RANGE, schema.DEFAULTS.size, key="size", bind="query-params")
        st.slider("Opacity", *schema.OPACITY_RANGE, schema.DEFAULTS.opacity, 0.05, key="opacity", bind="query-params")
