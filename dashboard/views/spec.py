"""Figures handed to `st.plotly_chart` as ready specs: built and serialised once, then shared by every session.

`st.plotly_chart(figure)` calls `figure.to_dict()` on every render, which deep-copies the figure and converts its
arrays to plotly.js's typed arrays: 10-20 ms of CPU for one chart of the Layers page, paid again by each session
that opens the page, inside one server process. A `SpecFigure` returns a dict computed once instead, so a cached
figure costs each session only the JSON text Streamlit writes from it. No Streamlit here: the pages cache these.
"""

from __future__ import annotations

import plotly.graph_objects as go


class SpecFigure(go.Figure):
    """Hands a prebuilt spec (the dict `go.Figure.to_dict()` returns) to `st.plotly_chart` as is.

    Building `go.Figure` objects validates every property: about a second for an animation of 50 frames x
    2,000 points, which the rerun budget (200 ms) cannot afford. The spec is shared, so nothing may change it.
    """

    def __init__(self, spec: dict):
        super().__init__()
        self._spec = spec

    def to_dict(self) -> dict:
        return self._spec


def frozen(figure: go.Figure) -> SpecFigure:
    """`figure` as the spec `st.plotly_chart` sends, computed now, once: for a figure cached for every session."""
    return SpecFigure(figure.to_dict())
