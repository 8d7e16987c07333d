"""Who may do what, for this visitor: reads the sign-in settings, the roles and the session, and asks the policy
in `dashboard/access.py` (which holds the rule, and no Streamlit)."""

from __future__ import annotations

import sys
from typing import Any

import streamlit as st

from dashboard.access import NONE, Access, Roles, decide, is_local, sign_in_problems, verified_email
from dashboard.jobs import JobLimits
from dashboard.views.text import plain


def _secret_table(name: str) -> dict | None:
    """A table of `.streamlit/secrets.toml` as plain dicts; None without a secrets file or such a table."""
    if not st.secrets.load_if_toml_exists():  # also False for a file that does not parse: no sign-in, no roles
        return None
    value: Any = st.secrets.get(name)
    return value.to_dict() if hasattr(value, "to_dict") else value


def sign_in_settings() -> dict | None:
    """The `[auth]` table `st.login` reads, or None when sign-in is not configured."""
    return _secret_table("auth") or None


_LOGGED: set[str] = set()


def server_log(message: str) -> None:
    """Print `message` to the server's log once per process: settings problems are the operator's business."""
    if message not in _LOGGED:
        _LOGGED.add(message)
        print(f"strata: {message}", file=sys.stderr)


def access() -> Access:
    """This visitor's role and why, from the sign-in settings, `st.user`, the roles, where the session comes from
    and STRATA_VIEWER_MODE. Read afresh on every call, so a role taken away applies to the next click."""
    user = st.user.to_dict() if sign_in_settings() else {}
    return access_of(user, st.context.ip_address, dict(st.context.headers.items()))


def access_of(user: dict, client_ip: str | None, headers: dict[str, str]) -> Access:
    """The role of whoever sent a request: `user` as `st.user.to_dict()` gives it (`{}` when not signed in), the
    connection's address and its headers. `access()` asks it for a session, the run download for its request."""
    auth = sign_in_settings()
    for problem in sign_in_problems(auth):
        server_log(f"sign-in is not usable: {problem} (.streamlit/secrets.toml)")
    if not auth:
        user = {}
    signed_in = bool(user.get("is_logged_in"))
    try:
        roles = Roles.from_config((_secret_table("strata") or {}).get("roles"))
    except ValueError as error:
        server_log(f"no one is let in: {error}")
        if auth and signed_in:
            return Access(
                NONE, "This dashboard's roles are misconfigured, so no one is let in. Its server log says why."
            )
        roles = Roles()
    return decide(
        sign_in=bool(auth),
        signed_in=signed_in,
        email=verified_email(user),
        roles=roles,
        local=is_local(st.get_option("server.address"), client_ip, headers),
        viewer_mode=JobLimits.from_env().viewer_mode,
    )


def can_edit() -> bool:
    """Whether this visitor may train, cancel, recover, rename and delete runs (pages show those controls only then)."""
    return access().can_edit


def may_edit(action: str) -> bool:
    """`can_edit()`, checked again inside an action (a button callback runs before the page is drawn again, so
    a role taken away since must still stop it); when refused, says so and why."""
    verdict = access()
    if not verdict.can_edit:
        st.error(f"You cannot {plain(action)} here. {plain(verdict.why)}", icon=":material/lock:")
    return verdict.can_edit
