"""Opening one page of the dashboard in Streamlit's AppTest, as a link would: `open_app(root, "layers", run=...)`."""

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
