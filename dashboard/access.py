"""Who may do what on this dashboard: the role of one visitor, from the server's settings and the visitor's sign-in.

Three roles: "none" (sees nothing of the store: must sign in, or is not allowed), "viewer" (reads runs, downloads
them) and "editor" (also trains, cancels, recovers, renames and deletes). The rule, in `decide`:

- `STRATA_VIEWER_MODE=1` makes everyone a viewer at most.
- With sign-in configured (an `[auth]` section in `.streamlit/secrets.toml`, read by Streamlit's `st.login`),
  every visitor must sign in, and gets the best role whose allow-list in `[strata.roles]` names their e-mail
  address; a signed-in visitor on no list gets "none". No lists means no one is let in.
- Without sign-in, a visitor of a server that other machines cannot reach (bound to a loopback address, and the
  session's connection is local: see `is_local`) is an editor, as on a laptop; anyone else is a viewer.

No Streamlit here: `dashboard/context/permissions.py` reads the settings and the session, and asks `decide`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

NONE, VIEWER, EDITOR = "none", "viewer", "editor"
ANYONE = "*"  # in an allow-list: every signed-in visitor
PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")  # what one OIDC provider needs
SHARED_KEYS = ("redirect_uri", "cookie_secret")  # what [auth] needs whatever the provider
_FORWARDING_HEADERS = ("x-forwarded-for", "x-forwarded-host", "forwarded", "x-real-ip")


@dataclass(frozen=True)
class Access:
    """A visitor's role and why, in one sentence a page can show (it names settings, never their values)."""

    role: str
    why: str

    @property
    def can_view(self) -> bool:
        return self.role in (VIEWER, EDITOR)

    @property
    def can_edit(self) -> bool:
        return self.role == EDITOR


@dataclass(frozen=True)
class Roles:
    """The `[strata.roles]` allow-lists. Each entry is an e-mail address (`alice@example.com`), a domain
    (`@example.com`: its addresses, not its subdomains') or `"*"` (anyone signed in). Editors are viewers too."""

    viewers: tuple[str, ...] = ()
    editors: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, section: Mapping | None) -> Roles:
        """Roles from the `[strata.roles]` table (None: no one); raises ValueError naming a bad key or entry."""
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ValueError(f"[strata.roles] must be a table with `viewers` and `editors`. Received: {section!r}")
        unknown = sorted(set(section) - {"viewers", "editors"})
        if unknown:
            raise ValueError(
                f"[strata.roles] takes `viewers` and `editors` only. Received: {', '.join(map(str, unknown))}"
            )
        return cls(
            viewers=_allow_list("viewers", section.get("viewers", ())),
            editors=_allow_list("editors", section.get("editors", ())),
        )

    def role_of(self, email: str | None) -> str:
        """The best role `email` is listed for, or NONE."""
        if _listed(email, self.editors):
            return EDITOR
        if _listed(email, self.viewers):
            return VIEWER
        return NONE


def _allow_list(key: str, value) -> tuple[str, ...]:
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, (list, tuple)) or not all(isinstance(entry, str) for entry in entries):
        raise ValueError(
            f'[strata.roles] {key} must be "*" or a list of e-mail addresses and "@domain"s. Received: {value!r}'
        )
    cleaned = tuple(entry.strip().lower() for entry in entries)
    for entry in cleaned:
        if entry != ANYONE and (entry.count("@") != 1 or entry.endswith("@") or " " in entry):
            raise ValueError(f'[strata.roles] {key}: {entry!r} is not "*", an e-mail address or an "@domain".')
    return cleaned


def _listed(email: str | None, entries: tuple[str, ...]) -> bool:
    if ANYONE in entries:
        return True  # also a visitor whose provider gives no usable address: they did sign in
    if not email:
        return False
    domain = "@" + email.rsplit("@", 1)[1]
    return email in entries or domain in entries


def verified_email(user: Mapping) -> str | None:
    """The signed-in user's e-mail address, lower-cased, or None when there is none or the provider says it is not
    verified (`email_verified` false; some providers send the string "false"): an unverified address proves nothing,
    so it matches no allow-list entry."""
    email = user.get("email")
    if not isinstance(email, str) or email.count("@") != 1 or email.startswith("@") or email.endswith("@"):
        return None
    if str(user.get("email_verified", True)).strip().lower() in ("false", "0", "no"):
        return None
    return email.strip().lower()


def sign_in_problems(auth: Mapping | None) -> list[str]:
    """What the `[auth]` section lacks for `st.login` to work (empty: complete, or there is no section).

    A provider is either the section's own `client_id`, `client_secret` and `server_metadata_url`, or a named
    table of them (`[auth.google]`)."""
    if not auth:
        return []
    problems = [f"[auth] has no `{key}`" for key in SHARED_KEYS if not auth.get(key)]
    if not providers(auth):
        problems.append(
            "[auth] names no provider (`client_id`, `client_secret` and `server_metadata_url`, in [auth] "
            "itself or in a table such as [auth.google])"
        )
    return problems


def providers(auth: Mapping | None) -> list[str]:
    """The provider names `st.login` takes: "default" for one configured in [auth] itself, then named tables."""
    if not auth:
        return []
    named = [
        name
        for name, value in auth.items()
        if isinstance(value, Mapping) and name != "client_kwargs" and all(value.get(key) for key in PROVIDER_KEYS)
    ]
    return (["default"] if all(auth.get(key) for key in PROVIDER_KEYS) else []) + named


def is_loopback(host: str | None) -> bool:
    """True for "localhost" and loopback addresses (127.0.0.0/8, ::1, with or without IPv6 brackets)."""
    if not host:
        return False
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local(server_address: str | None, client_ip: str | None, headers: Mapping[str, str]) -> bool:
    """Whether this session comes from this machine and no other machine can reach the server.

    The server must listen on a loopback address (Streamlit's `server.address`; unset means every interface).
    The session's connection must be local too: its address loopback (Streamlit reports None for that), no proxy's
    forwarding header, and the Host and Origin the browser sent naming a loopback host. The last two catch a
    reverse proxy on the same machine (a browser elsewhere sends the public name) and DNS rebinding (a web page
    whose own name now points at 127.0.0.1 reaching this server from the visitor's browser)."""
    if not is_loopback(server_address):
        return False
    if client_ip is not None and not is_loopback(client_ip):
        return False
    lower = {name.lower(): value for name, value in headers.items()}
    if any(lower.get(name) for name in _FORWARDING_HEADERS):
        return False
    host = lower.get("host")
    if host is not None and not is_loopback(urlsplit(f"//{host}").hostname):
        return False
    origin = lower.get("origin")
    return origin is None or is_loopback(urlsplit(origin).hostname)


def decide(
    *, sign_in: bool, signed_in: bool, email: str | None, roles: Roles, local: bool, viewer_mode: bool
) -> Access:
    """The visitor's role. `sign_in`: the server has an [auth] section; `signed_in`: `st.user.is_logged_in`;
    `email`: from `verified_email`; `local`: from `is_local`; `viewer_mode`: STRATA_VIEWER_MODE."""
    if sign_in:
        if not signed_in:
            return Access(NONE, "Sign in to see this dashboard's runs.")
        role = roles.role_of(email)
        if role == NONE:
            return Access(
                NONE,
                "This account is not allowed to see this dashboard. Ask whoever runs it to add "
                "your e-mail address to the viewers in [strata.roles].",
            )
        if viewer_mode:
            return Access(
                VIEWER,
                "This dashboard is read-only (STRATA_VIEWER_MODE): runs cannot be trained, "
                "renamed or deleted from the page.",
            )
        if role == VIEWER:
            return Access(
                VIEWER,
                "You can view runs. Training, renaming and deleting need the editor role: ask "
                "whoever runs this dashboard to add you to the editors in [strata.roles].",
            )
        return Access(EDITOR, "You can view, train, rename and delete runs.")
    if viewer_mode:
        return Access(
            VIEWER,
            "This dashboard is read-only (STRATA_VIEWER_MODE): runs cannot be trained, renamed "
            "or deleted from the page.",
        )
    if local:
        return Access(EDITOR, "A local dashboard: you can view, train, rename and delete runs.")
    return Access(
        VIEWER,
        "Read-only: this server can be reached from other machines and has no sign-in, so "
        "runs cannot be trained, renamed or deleted from the page. Its operator can set up "
        "sign-in ([auth] and [strata.roles] in secrets.toml) to let editors in.",
    )
