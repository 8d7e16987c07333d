"""Strata's dashboard: `streamlit run dashboard/app.py` (reads STRATA_RUNS, default ./runs).

This file is the server. `streamlit run` finds the `st.App` below and serves it: every session runs `main.py`
(the pages), each page the browser opens starts loading plotly.js at once (see `dashboard/preload.py`), and
`<base>/_strata/download/<run id>` streams a run as a zip archive (see `dashboard/download.py`).
"""

import gc
from pathlib import Path

import pandas  # noqa: F401  (plotly imports it lazily: see below)
import plotly.graph_objects  # noqa: F401
import streamlit as st
from starlette.middleware import Middleware
from threadpoolctl import threadpool_limits

from dashboard import download, sidebar  # noqa: F401
from dashboard.preload import PreloadPlotly
from dashboard.screens import embeddings, gradients, layers, runs  # noqa: F401

# Everything the pages import is imported here, once, while the server starts and before any session runs.
# Left to the sessions, the first visitors' threads imported it at the same moment, and plotly's lazy
# `import pandas` in one thread saw the half-initialized module of another ("partially initialized module
# 'pandas' has no attribute 'Series'", in 4 of 5 cold starts with 5 visitors).

app = st.App(
    str(Path(__file__).with_name("main.py")), routes=[download.route()], middleware=[Middleware(PreloadPlotly)]
)

# Streamlit ends every script run with a full garbage collection (`runner.postScriptGC`), which walks every object the
# process tracks: with streamlit, plotly and pandas loaded, ~65 ms of CPU per page opened, in the one process that
# serves every session. What was imported above lives as long as the server, so it is moved out of the collector's
# sight; what the sessions create is still collected.
gc.freeze()

# The server's numpy work is small products (the CKA sketches of 256 probe rows, ...), each in one session's thread.
# OpenBLAS's own threads on top of those made each one 10-40 times slower on a busy 2-core machine (a 256 x 64 sketch:
# 0.4 ms on one thread, 6-18 ms with its threads), and the first visitor of a run's Layers page waited for the CKA
# over training accordingly. threadpoolctl comes with scikit-learn (requirements.txt).
threadpool_limits(1, user_api="blas")
