"""Every private Streamlit API Strata relies on, in one module, so that a Streamlit upgrade that moves one breaks
here, by name, and nowhere else. Everything else in the dashboard uses public Streamlit only.

Streamlit has no public way to ask who sent an HTTP request that is not its websocket: `st.user` exists only inside
a session. The run download (`dashboard/download.py`) is a plain Starlette route, so it reads the sign-in cookie the
way Streamlit's websocket handler does. What is used, and why:

- `streamlit.web.server.starlette.starlette_server_config.USER_COOKIE_NAME`: the name of the signed cookie
  (`_streamlit_user`) that `st.login` sets after the provider's callback.
- `streamlit.web.server.starlette.starlette_websocket._get_signed_cookie_with_chunks(cookies, name)`: checks the
  cookie's signature (itsdangerous, keyed by `server_util.get_cookie_secret()`, i.e. `[auth] cookie_secret`) and its
  age, and joins a cookie that was split in chunks; None for a missing, forged or expired cookie.
- `streamlit.web.server.starlette.starlette_websocket._parse_decoded_user_cookie(value, origin)`: the user's claims
  from the verified cookie, refused (`{}`) unless it was issued for `origin`.
- `streamlit.auth_util.get_origin_from_redirect_uri()`: the origin of `[auth] redirect_uri`, which is what Streamlit
  writes into the cookie. The websocket compares it with the browser's `Origin` header; a download is a plain
  navigation, which sends none, so the cookie must name this server's configured origin.
- `streamlit.web.server.starlette.starlette_websocket.gather_user_info(headers)`: the claims a trusted proxy passes
  in the headers named by `server.trustedUserHeaders`; the websocket lets them override the cookie's, and so does
  the download, so that `st.user` and the download see the same user.

Tested against the pinned Streamlit (requirements.txt) by tests/test_download.py, which signs a cookie the way
`st.login` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.datastructures import Headers
from streamlit.auth_util import get_origin_from_redirect_uri
from streamlit.web.server.starlette.starlette_server_config import USER_COOKIE_NAME
from streamlit.web.server.starlette.starlette_websocket import (
    _get_signed_cookie_with_chunks,
    _parse_decoded_user_cookie,
    gather_user_info,
)


def signed_in_user(cookies: Mapping[str, str], headers: Headers) -> dict[str, Any]:
    """The user a request comes from, as `st.user.to_dict()` would give it in a session: `{"is_logged_in": True,
    "email": ..., ...}` from a valid sign-in cookie of this server, `{}` (or only the trusted headers' claims)
    otherwise."""
    user: dict[str, Any] = {}
    origin = get_origin_from_redirect_uri()
    decoded = _get_signed_cookie_with_chunks(dict(cookies), USER_COOKIE_NAME) if origin else None
    if decoded:
        user.update(_parse_decoded_user_cookie(decoded, origin or ""))
    user.update(gather_user_info(headers))
    return user
