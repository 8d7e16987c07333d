"""Strata's dashboard: `streamlit run dashboard/app.py` (reads STRATA_RUNS, default ./runs).

This file is the server. `streamlit run` finds the `st.App` below and serves it: every session runs `main.py`
(the pages), and each page the browser opens starts loading plotly.js at once (see `dashboard/preload.py`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `streamlit run` puts dashboard/, not the repo, on the path

import streamlit as st  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from dashboard.preload import PreloadPlotly  # noqa: E402

app = st.App(str(Path(__file__).with_name("main.py")), middleware=[Middleware(PreloadPlotly)])
