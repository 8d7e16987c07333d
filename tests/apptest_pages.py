"""Opening one page of the dashboard in Streamlit's AppTest, as a link would: `open_app(root, "layers", run=...)`."""

import json
import os
import re
from pathlib import Path

from streamlit.testing.v1 import AppTest
from streamlit.util import calc_hash

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "main.py")  # the script each session runs


def shown(markdown: str) -> str:
    """The text a Markdown string shows: the pages escape user text (dashboard/views/text.py `plain`: backslashes, and
    an invisible word joiner where a bare link could start)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u2060", "")


def open_app(root, page: str = "", **params) -> AppTest:
    """A fresh session of the app on store `root`, opened at `page` (a url_path) with `params` in the link."""
    os.environ["STRATA_RUNS"] = str(root)
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in params.items():
        at.query_params[key] = value
    if page:
        at.run()  # st.navigation registers the pages on the first run
        at._page_hash = calc_hash(page)  # AppTest.switch_page only knows file pages; ours are callables
    return at.run()


# A session that only wires the sidebar and the shared page state (dashboard/context/), no page: what a page would
# read is written out as text, one `key=value` a line (`printed`). Used by test_unit_context and test_unit_sidebar.
CONTEXT_SCRIPT = """
import dataclasses
import json

import streamlit as st
from dashboard import context, sidebar

context.prepare()
context.publish(sidebar.view_state(context.current_run()))
for notice in context.notices():
    st.warning(notice)
view = context.view_state()
snapshot = context.snapshot()
st.text(f"run={view.run}")
st.text("view=" + json.dumps(dataclasses.asdict(view)))
st.text(f"layer_index={context.layer_index()}")
st.text(f"snapshot_epoch={None if snapshot is None else int(snapshot.epoch)}")
st.text(f"share={context.share_link(view)}")
st.text(f"selection={','.join(str(r) for r in context.selection())}")
if st.button("select", key="select_rows"):
    context.set_selection([7, 3, 3, 10_000])
sidebar.render(embeddings_page=True)
context.finish()
"""


def open_context(root, **params) -> AppTest:
    """A CONTEXT_SCRIPT session on the store at `root`, with `params` in its link, after its first run."""
    os.environ["STRATA_RUNS"] = str(root)  # conftest gives every test os.environ back as it found it
    at = AppTest.from_string(CONTEXT_SCRIPT, default_timeout=60)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def printed(at: AppTest) -> dict[str, str]:
    """What a CONTEXT_SCRIPT session printed: {key: value}."""
    return dict(t.value.split("=", 1) for t in at.main.text)


def printed_view(at: AppTest):
    """The view state a CONTEXT_SCRIPT session published, as a `dashboard.state.ViewState`."""
    from dashboard import state as schema

    fields = json.loads(printed(at)["view"])
    return schema.ViewState(**{**fields, "sel": tuple(fields["sel"]), "compare": tuple(fields["compare"])})
