"""Sign-in and roles in the app (Streamlit's AppTest): which controls each visitor gets, that a visitor without a role
sees nothing of the store, and that an action re-checks the role. The rule itself is tested in test_access.py; a
real sign-in through an OIDC provider in test_e2e_access.py."""

import os
from pathlib import Path

import pytest
from apptest_pages import shown
from streamlit import config
from streamlit.testing.v1 import AppTest
from streamlit.util import calc_hash

from core.store import RunStore

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "main.py")
AUTH = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "a-test-secret-of-32-characters!!",
    "client_id": "strata",
    "client_secret": "secret",
    "server_metadata_url": "http://localhost:9/.well-known",
}
ROLES = {"roles": {"viewers": ["@viewers.example"], "editors": ["ed@editors.example"]}}
SIGN_IN = {"auth": AUTH, "strata": ROLES}
EDITOR = {"is_logged_in": True, "email": "ed@editors.example", "name": "Ed"}
VIEWER = {"is_logged_in": True, "email": "vic@viewers.example", "name": "Vic"}
STRANGER = {"is_logged_in": True, "email": "eve@elsewhere.example", "name": "Eve"}


@pytest.fixture
def server_address():
    """Set Streamlit's `server.address` for the test (AppTest reads it like a server would), then restore it."""
    before = config.get_option("server.address")
    yield lambda address: config.set_option("server.address", address)
    config.set_option("server.address", before)


@pytest.fixture(autouse=True)
def _restore_env(monkeypatch):
    monkeypatch.setenv("STRATA_RUNS", os.environ.get("STRATA_RUNS", "runs"))
    monkeypatch.delenv("STRATA_VIEWER_MODE", raising=False)


def session(root, page: str = "", *, secrets=None, user=None, **params) -> AppTest:
    """A fresh session on store `root` at `page`, with these secrets and this `st.user`."""
    os.environ["STRATA_RUNS"] = str(root)
    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets.update(secrets or {})
    if user is not None:
        at.user = dict(user)
    for key, value in params.items():
        at.query_params[key] = value
    if page:
        at.run()
        at._page_hash = calc_hash(page)
    return at.run()


def texts(at) -> str:
    """Everything the page shows as text, Markdown escapes resolved."""
    parts = [
        e.value
        for kind in ("title", "caption", "info", "error", "warning", "markdown", "text", "subheader")
        for e in getattr(at, kind)
    ]
    parts += [str(getattr(b, "label", "")) for b in at.button]
    return shown(" ".join(str(p) for p in parts))


def keys(at) -> set[str]:
    return {b.key for b in at.button if b.key}


def test_a_local_server_without_sign_in_lets_the_visitor_edit_as_before(spiral_run_dir):
    root, run_id = spiral_run_dir
    at = session(root, "runs", run=run_id)
    assert not at.exception
    assert {"new_run", "delete"} <= keys(at)
    assert "Read-only" not in texts(at) and "Sign in" not in texts(at)


@pytest.mark.parametrize("address", ["0.0.0.0", None, "192.0.2.10"])
def test_a_server_other_machines_reach_is_read_only_without_sign_in(spiral_run_dir, server_address, address):
    root, run_id = spiral_run_dir
    server_address(address)
    for page in ("", "runs"):
        at = session(root, page, run=run_id)
        assert not at.exception
        assert not {"new_run", "delete", "demo"} & keys(at), page
        assert ":material/visibility: Read-only" in [c.value for c in at.sidebar.caption]
        assert at.sidebar.selectbox(key="run").value == run_id  # the runs themselves are shown
    assert not [t for t in at.text_input if t.label == "Display name"]  # no rename form
    assert "can be reached from other machines and has no sign-in" in texts(at)


def test_an_empty_store_offers_no_demo_training_to_a_read_only_visitor(tmp_path, server_address):
    server_address("0.0.0.0")
    at = session(tmp_path)
    assert not at.exception and "demo" not in keys(at)
    assert "python -m core train" in texts(at)


def test_with_sign_in_a_visitor_must_sign_in_and_sees_nothing_of_the_store(spiral_run_dir):
    root, run_id = spiral_run_dir
    for page in ("", "runs", "layers"):
        at = session(root, page, secrets=SIGN_IN, user={"is_logged_in": False}, run=run_id)
        assert not at.exception
        assert "sign_in_main_default" in keys(at) and "sign_in_sidebar_default" in keys(at)
        assert "Sign in to see this dashboard's runs." in texts(at)
        assert run_id not in texts(at) and not at.selectbox and not at.dataframe  # no run list, no run, no picker
        assert not {"new_run", "delete"} & keys(at)


def test_a_signed_in_viewer_sees_the_runs_without_edit_controls(spiral_run_dir):
    root, run_id = spiral_run_dir
    at = session(root, "runs", secrets=SIGN_IN, user=VIEWER, run=run_id)
    assert not at.exception
    assert at.sidebar.selectbox(key="run").value == run_id
    assert run_id in set(at.dataframe[0].value["id"])
    assert not {"new_run", "delete"} & keys(at) and "sign_out" in keys(at)
    assert "Signed in as Vic (vic@viewers.example) · viewer (read-only)" in texts(at)
    assert "Training, renaming and deleting need the editor role" in texts(at)


def test_a_signed_in_editor_renames_and_deletes(runs_copy):
    spiral = next(s.id for s in RunStore(runs_copy).list_runs() if s.dataset == "spiral")
    at = session(runs_copy, "runs", secrets=SIGN_IN, user=EDITOR, run=spiral)
    assert not at.exception and {"new_run", "delete", "sign_out"} <= keys(at)
    assert "Signed in as Ed (ed@editors.example) · editor" in texts(at)
    next(t for t in at.text_input if t.label == "Display name").set_value("renamed by ed")
    next(b for b in at.button if b.label == "Rename").click().run()
    assert RunStore(runs_copy).run(spiral).name == "renamed by ed"
    at.checkbox(key="confirm_delete").check().run()
    at.button(key="delete").click().run()
    assert not at.exception and spiral not in RunStore(runs_copy).run_ids()


def test_a_signed_in_user_on_no_list_is_refused_and_sees_nothing(spiral_run_dir):
    root, run_id = spiral_run_dir
    at = session(root, "runs", secrets=SIGN_IN, user=STRANGER, run=run_id)
    assert not at.exception
    assert "not allowed to see this dashboard" in at.error[0].value
    assert run_id not in texts(at) and not at.dataframe and not at.selectbox
    assert "sign_out" in keys(at) and not any(k.startswith("sign_in") for k in keys(at))


def test_a_role_taken_away_stops_the_next_action(runs_copy):
    """A button's callback runs before the page is drawn again: it checks the role itself."""
    spiral = next(s.id for s in RunStore(runs_copy).list_runs() if s.dataset == "spiral")
    at = session(runs_copy, "runs", secrets=SIGN_IN, user=EDITOR, run=spiral)
    at.checkbox(key="confirm_delete").check().run()
    at.secrets["strata"] = {
        "roles": {"viewers": ["ed@editors.example"], "editors": []}
    }  # the operator edits secrets.toml
    at.button(key="delete").click().run()
    assert not at.exception
    assert spiral in RunStore(runs_copy).run_ids()
    assert any("You cannot delete runs here" in shown(e.value) for e in at.error)
    assert "delete" not in keys(at)


def test_an_unverified_address_matches_no_list(spiral_run_dir):
    root, run_id = spiral_run_dir
    at = session(root, secrets=SIGN_IN, user={**EDITOR, "email_verified": False}, run=run_id)
    assert "not allowed to see this dashboard" in at.error[0].value


def test_viewer_mode_keeps_a_signed_in_editor_read_only(spiral_run_dir, monkeypatch):
    root, run_id = spiral_run_dir
    monkeypatch.setenv("STRATA_VIEWER_MODE", "1")
    at = session(root, "runs", secrets=SIGN_IN, user=EDITOR, run=run_id)
    assert not at.exception and not {"new_run", "delete"} & keys(at)
    assert "STRATA_VIEWER_MODE" in texts(at)


def test_names_from_the_provider_are_shown_as_text(spiral_run_dir):
    root, run_id = spiral_run_dir
    hostile = {**VIEWER, "name": "**Vic** ![x](http://evil.example/a.png) :red[alarm]"}
    at = session(root, secrets=SIGN_IN, user=hostile, run=run_id)
    caption = next(c.value for c in at.sidebar.caption if "Signed in as" in c.value)
    assert "](" not in caption.replace("\\](", "") and "\\*\\*Vic\\*\\*" in caption
    assert shown(caption).endswith(
        "Signed in as **Vic** ![x](http://evil.example/a.png) :red[alarm] (vic@viewers.example) · viewer (read-only)"
    )


@pytest.mark.parametrize(
    "secrets, message",
    [
        (
            {"auth": {"redirect_uri": "http://localhost:8501/oauth2callback", "client_id": "x"}},
            "Sign-in is not set up completely",
        ),
        ({"auth": AUTH, "strata": {"roles": {"editors": "ed"}}}, None),
    ],
)
def test_incomplete_settings_let_no_one_in(spiral_run_dir, secrets, message):
    root, run_id = spiral_run_dir
    at = session(root, "runs", secrets=secrets, user=EDITOR if message is None else {"is_logged_in": False}, run=run_id)
    assert not at.exception and run_id not in texts(at) and not {"new_run", "delete"} & keys(at)
    if message:
        assert message in texts(at)
    else:
        assert "roles are misconfigured" in at.error[0].value
