"""Runs page: list the runs, compare their settings and results, rename, download or delete one, import a run zip."""

from __future__ import annotations

import streamlit as st

from core.store import StoreError
from dashboard import context, download
from dashboard.views import runs as views
from dashboard.views.text import plain


def render() -> None:
    st.title("Runs")
    summaries = context.run_summaries()
    damaged(context.damaged_runs())
    if not summaries:
        st.info("No runs in this store yet. Start one from the sidebar or with `python -m core train`.")
        upload()
        return
    store = context.store()
    histories = {s.id: _history(store, s.id) for s in summaries}
    st.dataframe(views.run_rows(summaries, histories), hide_index=True, key="run_list")
    st.caption(
        "Pick a run in the sidebar to view it. Status `interrupted` means training stopped early (cancelled, "
        "or its process died); its snapshots up to then are intact."
    )

    st.subheader("Compare")
    current = context.current_run()
    others = context.compare_runs("Compare the selected run with")
    chosen = ([current] if current else []) + others
    if len(chosen) > 0:
        table = views.compare_table([{"name": r.name, "meta": r.meta, "history": r.history()} for r in chosen])
        differs = set(views.differing_rows(table))
        st.dataframe(table, hide_index=True, height=38 + 35 * len(table["setting"]), key="compare_table")
        if len(chosen) > 1:
            names = [table["setting"][i] for i in sorted(differs)]
            st.caption("They differ in: " + (", ".join(names) if names else "nothing recorded"))

    if current is not None:
        manage(current)
    upload()


def damaged(summaries) -> None:
    """The runs the store cannot read fully, each with its reason: listed, never hidden, never fatal."""
    if not summaries:
        return
    st.warning(
        f"{len(summaries)} run(s) in this store cannot be read fully. Runs whose run.json is damaged cannot be "
        "opened; the others open without what needs the damaged file. Every other run is unaffected.",
        icon=":material/broken_image:",
    )
    st.dataframe(
        [{"id": s.id, "status": s.status, "why": s.damaged} for s in summaries], hide_index=True, key="damaged_list"
    )


def manage(run) -> None:
    st.subheader(f"Manage {plain(run.name)}")
    verdict = context.access()
    try:
        context.store().check_download(run.id)
    except StoreError as error:
        st.button("Download as zip", disabled=True, icon=":material/download:", key="download_refused")
        st.caption(plain(error))
    else:  # the server streams the archive as it writes it (dashboard/download.py checks who asks, again)
        st.link_button("Download as zip", download.link(run.id), icon=":material/download:", key="download")
    if not verdict.can_edit:
        st.caption(plain(verdict.why))
        return
    with st.form("rename", border=False):
        name = st.text_input("Display name", run.name, help="The id (and so every link) stays the same.")
        if st.form_submit_button("Rename"):
            _rename(run.id, name)
    running = run.status == "running"
    confirm = st.checkbox(
        f"Yes, delete {plain(run.name)} and all of its snapshots", key="confirm_delete", disabled=running
    )
    st.button(
        "Delete run", type="primary", disabled=not confirm or running, on_click=_delete, args=(run.id,), key="delete"
    )
    if running:
        st.caption("Cancel training (sidebar) before deleting this run.")


def upload() -> None:
    """Add a run from a zip archive (one downloaded here), for visitors who may edit; the outcome as plain text."""
    if not context.can_edit():
        return
    st.subheader("Import a run")
    st.file_uploader(
        "Run zip",
        type="zip",
        key="import_zip",
        help="A run downloaded as a zip from a Strata dashboard. It is added under a new id.",
    )
    st.button("Import", on_click=_import, disabled=st.session_state.get("import_zip") is None, key="import_run")
    if st.session_state.get("import_result"):
        st.text(st.session_state["import_result"])  # plain text: a refusal may quote names from the archive


def _import() -> None:
    """A button callback: the import runs once per click, and the next run of the page lists the new run."""
    archive = st.session_state.get("import_zip")
    if archive is None or not context.may_edit("import runs"):
        return
    try:
        run_id = context.store().import_zip(archive)
    except (StoreError, OSError) as error:
        st.session_state["import_result"] = f"Not imported: {error}"
        return
    context.refresh_runs()
    st.session_state["import_result"] = f"Imported {archive.name} as run {run_id}."


def _history(store, run_id: str) -> dict:
    try:
        return store.run(run_id).history()
    except StoreError:
        return {}


def _rename(run_id: str, name: str) -> None:
    if not context.may_edit("rename runs"):
        return
    try:
        context.store().rename(run_id, name)
    except (StoreError, OSError) as error:
        st.error(f"Could not rename: {plain(error)}")
        return
    context.refresh_runs()
    st.toast(f"Renamed to {plain(name.strip() or run_id)}")
    st.rerun()


def _delete(run_id: str) -> None:
    """A button callback: it runs before the script, so it may move the bound `run` widget to another run."""
    if not context.may_edit("delete runs"):
        return
    try:
        context.store().delete(run_id)
    except (StoreError, OSError) as error:
        context.add_notice(f"Could not delete run {run_id}: {error}")  # notices are shown as plain text
        return
    context.refresh_runs()
    remaining = [s.id for s in context.run_summaries() if s.id != run_id]
    st.session_state["run"] = remaining[0] if remaining else None
    st.session_state["confirm_delete"] = False
    st.toast(f"Deleted run {plain(run_id)}")
