"""Strata's dashboard: `streamlit run dashboard/app.py` (reads STRATA_RUNS, default ./runs).

This file is the server. `streamlit run` finds the `st.App` below and serves it: every session runs `main.py`
(the pages), and each page the browser opens starts loading plotly.js at once (see `dashboard/preload.py`).
"""

from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware

from dashboard.preload import PreloadPlotly

app = st.App(str(Path(__file__).with_name("main.py")), middleware=[Middleware(PreloadPlotly)])
