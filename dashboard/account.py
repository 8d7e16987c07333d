"""The visitor's account: sign in and out with Streamlit's `st.login` (OIDC), their role in the sidebar, and the page
a visitor without a role sees instead of the store.

Sign-in is configured in `.streamlit/secrets.toml` (`[auth]`, which `st.login` reads) and roles in
`[strata.roles]`: see README.md and `dashboard/access.py`. Names and addresses come from the identity provider,
so they are shown as plain text.
"""

from __future__ import annotations

import streamlit as st

from dashboard import context
from dashboard.access import EDITOR, VIEWER, Access, providers, sign_in_problems
from dashboard.views.text import plain

ROLE_LABELS = {EDITOR: "editor", VIEWER: "viewer (read-only)"}


def sidebar_box(verdict: Access, divider: bool = True) -> None:
    """At the top of the sidebar: who is signed in, their role and a Sign out button; or why this dashboard is
    read-only. Nothing for a local dashboard without sign-in, which works as it always has."""
    auth = context.sign_in_settings()
    if auth:
        if st.user.is_logged_in:
            role = f" · {ROLE_LABELS[verdict.role]}" if verdict.role in ROLE_LABELS else ""
            st.caption(f":material/account_circle: Signed in as {plain(_who())}{role}", help=verdict.why)
            if st.button("Sign out", key="sign_out", icon=":material/logout:", type="tertiary"):
                st.logout()
        else:
            sign_in_buttons(auth, key="sidebar")
        if divider:
            st.divider()
    elif not verdict.can_edit:
        st.caption(":material/visibility: Read-only", help=verdict.why)


def gate(verdict: Access) -> None:
    """The whole page for a visitor who may see nothing: the reason, and a way to sign in. Nothing of the store."""
    with st.sidebar:
        sidebar_box(verdict, divider=False)
    st.title("Strata")
    auth = context.sign_in_settings()
    if auth and st.user.is_logged_in:
        st.error(f"Signed in as {plain(_who())}. {plain(verdict.why)}", icon=":material/block:")
        return
    st.info(plain(verdict.why), icon=":material/lock:")
    sign_in_buttons(auth, key="main")


def sign_in_buttons(auth: dict | None, key: str) -> None:
    """One Sign in button per configured provider (`st.login` sends the browser to it and back), or an error when
    the settings are incomplete; what is missing goes to the server's log."""
    names = providers(auth)
    if sign_in_problems(auth) or not names:
        st.error(
            "Sign-in is not set up completely on this server. Its log says what is missing.", icon=":material/error:"
        )
        return
    for name in names:
        label = "Sign in" if len(names) == 1 else f"Sign in with {name}"
        if st.button(label, key=f"sign_in_{key}_{name}", type="primary", icon=":material/login:"):
            st.login(name)


def _who() -> str:
    """The signed-in user as the provider names them: "Name (address)", the address, or the subject."""
    user = st.user
    name, email = user.get("name"), user.get("email")
    if isinstance(name, str) and name.strip() and isinstance(email, str):
        return f"{name} ({email})"
    return str(email or name or user.get("sub") or "an account without a name")
