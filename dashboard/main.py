"""The script Streamlit runs for every session of the dashboard: the pages, the sidebar, the link in the URL.

Start the dashboard with `streamlit run dashboard/app.py`, which serves this script (see app.py)."""

import sys

import streamlit as st

from core.store import StoreError
from dashboard import account, context, sidebar
from dashboard.screens import embeddings, gradients, layers, runs
from dashboard.views.text import plain

st.set_page_config(page_title="Strata: what hidden layers learn", page_icon=":material/layers:", layout="wide")

EMBEDDINGS: dict = dict(title="Embeddings", icon=":material/scatter_plot:")
home = st.Page(embeddings.render, default=True, **EMBEDDINGS)
pages = [
    home,
    st.Page(gradients.render, title="Gradients & activations", icon=":material/trending_down:", url_path="gradients"),
    st.Page(layers.render, title="Layers", icon=":material/layers:", url_path="layers"),
    st.Page(runs.render, title="Runs", icon=":material/folder_open:", url_path="runs"),
    # The default page lives at "/"; this hidden twin makes "/embeddings?run=..." (typed, or trimmed from a link)
    # open the same page instead of Streamlit's "Page not found".
    st.Page(embeddings.render, url_path="embeddings", visibility="hidden", **EMBEDDINGS),
]
verdict = context.access()
page = st.navigation(pages, position="sidebar" if verdict.can_view else "hidden")
if not verdict.can_view:  # must sign in, or is not allowed: nothing of the store, not even the run list
    account.gate(verdict)
    st.stop()


def store_error(error: Exception) -> None:
    """The store itself is unreachable. Visitors learn that, and the kind of error; where the store is and the full
    error (paths, URLs) go to the server's log, for its operator."""
    print(
        f"strata: cannot read the run store {context.runs_root()!r}: {type(error).__name__}: {error}", file=sys.stderr
    )
    st.error(
        f"Cannot read the run store ({plain(type(error).__name__)}). The server's log says why.",
        icon=":material/error:",
    )
    st.stop()


STORE_ERRORS = (
    StoreError,
    OSError,
    ValueError,
    ImportError,
)  # a bad store (unreachable URL, no permission) reads as a message
try:
    context.prepare()
    context.publish(sidebar.view_state(context.current_run()))
except STORE_ERRORS as error:
    store_error(error)
if context.notices():
    lines = "\n".join(f"- {plain(notice)}" for notice in context.notices())  # they quote the link
    st.warning(f"**This link could not be shown exactly as written.**\n{lines}", icon=":material/link_off:")
page.run()  # before the sidebar: the browser gets the charts first (see sidebar.render)
try:
    sidebar.render(embeddings_page=page.title == EMBEDDINGS["title"])  # "/" or its twin
except STORE_ERRORS as error:
    store_error(error)
context.finish()
