"""The notices shown at the top of the page (main.py): what a link could not show, and actions that failed.

They quote links and errors as given, so main.py puts them into Markdown only through `plain()`. The module is not
called `notices` so that the name stays the function's (`context.notices()`)."""

from __future__ import annotations

import streamlit as st

_NOTICES = "_strata_notices"


def notices() -> list[str]:
    return st.session_state.get(_NOTICES, [])


def add_notice(message: str) -> None:
    st.session_state.setdefault(_NOTICES, []).append(message)


def set_notices(messages: list[str]) -> None:
    """Start this session's notices afresh: on its first run, with what reading the link found."""
    st.session_state[_NOTICES] = messages
