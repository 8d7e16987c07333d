"""Who may do what (dashboard/access.py): the role table, the allow-lists, the sign-in settings and what counts as a
local session. Plain functions, no Streamlit."""

import pytest

from dashboard.access import (
    EDITOR,
    NONE,
    VIEWER,
    Roles,
    decide,
    is_local,
    is_loopback,
    providers,
    sign_in_problems,
    verified_email,
)

ROLES = Roles.from_config({"viewers": ["@team.example", "guest@else.example"], "editors": ["ann@team.example"]})


def role(*, sign_in=False, signed_in=False, email=None, roles=ROLES, local=False, viewer_mode=False) -> str:
    return decide(
        sign_in=sign_in, signed_in=signed_in, email=email, roles=roles, local=local, viewer_mode=viewer_mode
    ).role


# ----------------------------------------------------------------------------------------------------------
# The table


@pytest.mark.parametrize(
    "local, viewer_mode, expected",
    [
        (True, False, EDITOR),  # `streamlit run dashboard/app.py` on a laptop: as it always was
        (False, False, VIEWER),  # reachable from other machines, no sign-in: never an anonymous editor
        (True, True, VIEWER),  # STRATA_VIEWER_MODE=1 is read-only for everyone
        (False, True, VIEWER),
    ],
)
def test_without_sign_in_only_a_local_visitor_edits(local, viewer_mode, expected):
    assert role(local=local, viewer_mode=viewer_mode) == expected


@pytest.mark.parametrize("local", [True, False])
def test_with_sign_in_a_visitor_who_has_not_signed_in_sees_nothing(local):
    verdict = decide(sign_in=True, signed_in=False, email=None, roles=ROLES, local=local, viewer_mode=False)
    assert verdict.role == NONE and not verdict.can_view and "Sign in" in verdict.why


@pytest.mark.parametrize(
    "email, expected",
    [
        ("ann@team.example", EDITOR),  # named among the editors
        ("bob@team.example", VIEWER),  # their domain is among the viewers
        ("guest@else.example", VIEWER),  # named among the viewers
        ("eve@else.example", NONE),  # signed in, on no list: refused
        ("bob@sub.team.example", NONE),  # a domain entry is that domain only, not its subdomains
        ("bob@evilteam.example", NONE),  # nor a domain that ends the same way
        (None, NONE),  # no (verified) address matches no entry
    ],
)
def test_a_signed_in_visitor_gets_the_best_role_their_address_is_listed_for(email, expected):
    assert role(sign_in=True, signed_in=True, email=email) == expected


def test_viewer_mode_makes_a_signed_in_editor_a_viewer_and_still_refuses_strangers():
    assert role(sign_in=True, signed_in=True, email="ann@team.example", viewer_mode=True) == VIEWER
    assert role(sign_in=True, signed_in=True, email="eve@else.example", viewer_mode=True) == NONE


def test_with_sign_in_and_no_roles_no_one_is_let_in():
    assert role(sign_in=True, signed_in=True, email="ann@team.example", roles=Roles()) == NONE
    assert role(sign_in=True, signed_in=True, email="ann@team.example", roles=Roles.from_config(None)) == NONE


def test_a_star_lets_in_anyone_signed_in():
    roles = Roles.from_config({"viewers": "*", "editors": ["ann@team.example"]})
    assert role(sign_in=True, signed_in=True, email="eve@else.example", roles=roles) == VIEWER
    assert role(sign_in=True, signed_in=True, email=None, roles=roles) == VIEWER
    assert role(sign_in=True, signed_in=True, email="ANN@Team.Example", roles=roles) == VIEWER  # verified_email lowers
    assert role(sign_in=True, signed_in=True, email="ann@team.example", roles=roles) == EDITOR
    assert role(sign_in=True, signed_in=False, roles=roles) == NONE


def test_every_verdict_says_why():
    for kwargs in (
        {"local": True},
        {},
        {"viewer_mode": True},
        {"sign_in": True},
        {"sign_in": True, "signed_in": True, "email": "bob@team.example"},
        {"sign_in": True, "signed_in": True, "email": "eve@else.example"},
    ):
        verdict = decide(
            **{
                "sign_in": False,
                "signed_in": False,
                "email": None,
                "roles": ROLES,
                "local": False,
                "viewer_mode": False,
                **kwargs,
            }
        )
        assert verdict.why.endswith(".") and len(verdict.why) > 20, kwargs
    assert (
        "[strata.roles]"
        in decide(
            sign_in=True, signed_in=True, email="eve@else.example", roles=ROLES, local=False, viewer_mode=False
        ).why
    )


# ----------------------------------------------------------------------------------------------------------
# Allow-lists and addresses


def test_allow_lists_are_case_insensitive_and_trimmed():
    roles = Roles.from_config({"editors": [" Ann@Team.Example "], "viewers": ["@TEAM.example"]})
    assert roles == Roles(viewers=("@team.example",), editors=("ann@team.example",))
    assert roles.role_of("ann@team.example") == EDITOR


@pytest.mark.parametrize(
    "section, message",
    [
        ({"viewers": 5}, "viewers must be"),
        ({"editors": ["ann@team.example", 3]}, "editors must be"),
        ({"editors": ["ann"]}, "'ann' is not"),
        ({"viewers": ["ann@"]}, "'ann@' is not"),
        ({"viewers": [""]}, "'' is not"),
        ({"viewers": ["a@b@c"]}, "'a@b@c' is not"),
        ({"admins": ["ann@team.example"]}, "Received: admins"),
        (["ann@team.example"], "must be a table"),
    ],
)
def test_a_bad_roles_table_is_refused_naming_what_was_wrong(section, message):
    with pytest.raises(ValueError, match="strata.roles") as error:
        Roles.from_config(section)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "user, expected",
    [
        ({"email": "Ann@Team.Example"}, "ann@team.example"),
        ({"email": "ann@team.example", "email_verified": True}, "ann@team.example"),
        ({"email": "ann@team.example", "email_verified": False}, None),  # an unverified address proves nothing
        ({"email": "ann@team.example", "email_verified": "false"}, None),  # as some providers send it
        ({"email": "ann@team.example@evil.example"}, None),
        ({"email": "@team.example"}, None),  # would match a domain entry as it is
        ({"email": 7}, None),
        ({"name": "Ann"}, None),
    ],
)
def test_only_a_well_formed_verified_address_identifies_a_user(user, expected):
    assert verified_email(user) == expected


# ----------------------------------------------------------------------------------------------------------
# Sign-in settings

COMPLETE = {
    "redirect_uri": "https://strata.example/oauth2callback",
    "cookie_secret": "s" * 32,
    "client_id": "id",
    "client_secret": "secret",
    "server_metadata_url": "https://idp.example/.well-known",
}


def test_sign_in_settings_name_their_providers_and_what_they_lack():
    assert sign_in_problems(None) == [] and providers(None) == []
    assert sign_in_problems(COMPLETE) == [] and providers(COMPLETE) == ["default"]
    named = {
        "redirect_uri": COMPLETE["redirect_uri"],
        "cookie_secret": "s",
        "google": {key: COMPLETE[key] for key in ("client_id", "client_secret", "server_metadata_url")},
        "client_kwargs": {"prompt": "login"},
    }
    assert sign_in_problems(named) == [] and providers(named) == ["google"]
    assert sign_in_problems({"redirect_uri": "x", "client_id": "id"}) == [
        "[auth] has no `cookie_secret`",
        "[auth] names no provider (`client_id`, `client_secret` and `server_metadata_url`, in [auth] itself or in a "
        "table such as [auth.google])",
    ]


# ----------------------------------------------------------------------------------------------------------
# Local sessions

LOCAL_HEADERS = {"Host": "localhost:8501", "Origin": "http://localhost:8501"}


@pytest.mark.parametrize(
    "host, expected",
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("app.localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        (None, False),
        ("192.168.1.5", False),
        ("strata.example", False),
        ("localhost.example", False),
    ],
)
def test_loopback_hosts(host, expected):
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    "address, expected",
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("::1", True),
        (None, False),  # Streamlit's default: every interface
        ("", False),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.4", False),
    ],
)
def test_a_session_is_local_only_on_a_server_bound_to_loopback(address, expected):
    assert is_local(address, None, LOCAL_HEADERS) is expected


@pytest.mark.parametrize(
    "client_ip, headers",
    [
        ("10.0.0.9", LOCAL_HEADERS),  # not a loopback connection
        (None, {**LOCAL_HEADERS, "X-Forwarded-For": "203.0.113.7"}),  # a reverse proxy on this machine
        (None, {**LOCAL_HEADERS, "Forwarded": "for=203.0.113.7"}),
        (None, {**LOCAL_HEADERS, "X-Real-IP": "203.0.113.7"}),
        (None, {"Host": "strata.example", "Origin": "https://strata.example"}),  # a proxy that forwards nothing
        (None, {"Host": "localhost:8501", "Origin": "https://strata.example"}),  # ... and rewrites Host
        (None, {"Host": "rebound.example:8501", "Origin": "http://rebound.example:8501"}),  # DNS rebinding
    ],
)
def test_a_session_through_a_proxy_or_from_another_site_is_not_local(client_ip, headers):
    assert not is_local("localhost", client_ip, headers)


def test_a_local_session_without_headers_is_local():
    """Streamlit's AppTest (and a test client) has no connection: only the server's address decides."""
    assert is_local("127.0.0.1", None, {})
    assert is_local("localhost", "127.0.0.1", {"host": "127.0.0.1:8501", "origin": "http://127.0.0.1:8501"})
    assert is_local("localhost", None, {"Host": "[::1]:8501", "Origin": "http://[::1]:8501"})
