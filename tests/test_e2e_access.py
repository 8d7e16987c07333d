"""Sign-in and roles end to end: a real `streamlit run dashboard/app.py`, a real OpenID Connect provider on loopback
(oidc-provider-mock, started here), and headless Chromium signing in through the provider's form.

Two servers, started once for the module: one that listens on every interface with no sign-in configured (what a
host gets by exposing the dashboard and nothing else), and one with `[auth]` and `[strata.roles]` in a secrets file
of its own (the repository's `.streamlit/` is never touched)."""

import base64
import json
import os
import shutil
import textwrap
import zipfile
from pathlib import Path

import pytest
from test_e2e_browser import CHROMIUM, browser, start_server  # noqa: F401  (browser is a fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs Chromium at {CHROMIUM}"),
]

EDITOR, VIEWER, STRANGER = "ed@editors.test", "vic@viewers.test", "eve@elsewhere.test"
HOSTILE_NAME = "**Vic** [phish](http://evil.test/) <img src=x>"
WAIT = 30_000  # ms: a page, a redirect or a rerun


@pytest.fixture(scope="module")
def store(recorded_runs, tmp_path_factory):
    """(root, ids): a private copy of the recorded runs, which the editor's test changes."""
    root, ids = recorded_runs
    copy = tmp_path_factory.mktemp("access") / "runs"
    shutil.copytree(root, copy)
    return str(copy), ids


@pytest.fixture(scope="module")
def open_server(store, tmp_path_factory):
    """No sign-in, listening on every interface: reachable from other machines."""
    secrets = tmp_path_factory.mktemp("open") / "secrets.toml"
    secrets.write_text("")  # and not the secrets of whoever runs the tests
    process, base = start_server(store[0], address="0.0.0.0", args=("--secrets.files", str(secrets)))
    yield base
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def provider():
    """An OpenID Connect provider on loopback; a user signs in by typing their e-mail address as the subject."""
    from oidc_provider_mock import User, run_server_in_thread  # warns of Authlib modules it uses: not ours to fix

    with run_server_in_thread(user_claims=[User(sub=VIEWER, claims={"email": VIEWER, "name": HOSTILE_NAME})]) as server:
        yield f"http://127.0.0.1:{server.server_port}"


@pytest.fixture(scope="module")
def team_server(store, provider, tmp_path_factory):
    """Sign-in through `provider`; viewers by domain, one editor."""
    secrets = tmp_path_factory.mktemp("team") / "secrets.toml"
    secrets.write_text(
        textwrap.dedent(f"""
        [auth]
        redirect_uri = "http://127.0.0.1:{{port}}/oauth2callback"
        cookie_secret = "{os.urandom(24).hex()}"
        client_id = "strata-e2e"
        client_secret = "not-a-secret"
        server_metadata_url = "{provider}/.well-known/openid-configuration"

        [strata.roles]
        viewers = ["@viewers.test"]
        editors = ["{EDITOR}"]
    """)
    )
    process, base = start_server(store[0], args=("--secrets.files", str(secrets)))
    yield base
    process.terminate()
    process.wait(10)


@pytest.fixture
def page(browser):  # noqa: F811
    """A fresh browser profile for each test: no cookie from another test's sign-in."""
    context = browser.new_context(viewport={"width": 1400, "height": 1200})
    yield context.new_page()
    context.close()


def sign_in(page, base: str, email: str) -> None:
    """Press Sign in, type `email` as the subject on the provider's form and come back signed in."""
    page.goto(f"{base}/")
    page.get_by_test_id("stMain").get_by_role("button", name="Sign in").click(timeout=WAIT)
    page.locator("input[name=sub]").fill(email, timeout=WAIT)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(f"{base}/", timeout=WAIT)
    page.get_by_test_id("stSidebar").get_by_text("Signed in as").wait_for(timeout=WAIT)


def text(locator) -> str:
    """What a locator shows, without the invisible word joiners `plain()` puts before an `@` or `:`."""
    return locator.inner_text().replace("\u2060", "")


def edit_controls(page) -> dict[str, int]:
    """How many of each edit control the page shows, once it is drawn to the end (the sidebar's last control): the
    browser shows elements in the order the app draws them, so one missing now is not on its way."""
    page.get_by_test_id("stSidebar").get_by_text("Share this view").wait_for(timeout=WAIT)
    return {
        name: page.get_by_role("button", name=name).count()
        for name in ("New run", "Rename", "Delete run", "Train a demo run")
    }


def test_an_anonymous_visitor_of_an_exposed_server_gets_no_edit_control(open_server, store, page):
    _, ids = store
    page.goto(f"{open_server}/runs?run={ids['spiral']}")
    main = page.get_by_test_id("stMain")
    main.get_by_text("Manage spiral 8-8 fixture").wait_for(timeout=WAIT)
    main.get_by_text("can be reached from other machines and has no sign-in").wait_for(timeout=WAIT)
    page.get_by_test_id("stSidebar").get_by_text("Read-only").wait_for(timeout=WAIT)
    main.get_by_role("link", name="Download as zip").wait_for(timeout=WAIT)  # reading is allowed
    assert edit_controls(page) == {"New run": 0, "Rename": 0, "Delete run": 0, "Train a demo run": 0}
    assert page.get_by_test_id("stException").count() == 0
    assert_downloads(page, store, "spiral")  # by anyone who may open the pages, as a viewer


def test_the_download_link_works_under_a_base_url_path(store, page, tmp_path):
    _, ids = store
    secrets = tmp_path / "secrets.toml"
    secrets.write_text("")
    process, base = start_server(store[0], base_path="team/strata", args=("--secrets.files", str(secrets)))
    try:
        assert base.endswith("/team/strata")
        page.goto(f"{base}/runs?run={ids['spiral']}")
        assert download_link(page) == f"{base}/_strata/download/{ids['spiral']}"
        assert_downloads(page, store, "spiral")  # a local visitor of a localhost server: an editor
    finally:
        process.terminate()
        process.wait(10)


def download_link(page) -> str:
    """The address the Runs page's "Download as zip" points at, resolved against the page's own."""
    link = page.get_by_test_id("stMain").get_by_role("link", name="Download as zip")
    link.wait_for(timeout=WAIT)
    return page.evaluate("(href) => new URL(href, location.href).href", link.get_attribute("href"))


def assert_downloads(page, store, which: str) -> None:
    """Press the Runs page's "Download as zip" (the page is open on run `which`): the browser saves the run's zip,
    holding every file of the run folder, byte for byte."""
    root, ids = store
    with page.expect_download(timeout=WAIT) as saved:
        page.get_by_test_id("stMain").get_by_role("link", name="Download as zip").click()
    download = saved.value
    assert download.suggested_filename == f"{ids[which]}.zip"
    folder = Path(root) / ids[which]
    expected = {f"{ids[which]}/{p.relative_to(folder)}": p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with zipfile.ZipFile(download.path()) as archive:
        assert {name: archive.read(name) for name in archive.namelist()} == expected


def assert_refused(page, url: str, why: str) -> None:
    """A request for `url` with this browser's cookies gets 403, says `why` in plain text, and carries no zip."""
    response = page.request.get(url)
    assert response.status == 403, response.status
    assert response.headers["content-type"].startswith("text/plain")
    assert why in response.text() and not response.body().startswith(b"PK")


def test_a_visitor_must_sign_in_and_sees_nothing_before(team_server, store, page):
    _, ids = store
    page.goto(f"{team_server}/runs?run={ids['spiral']}")
    page.get_by_text("Sign in to see this dashboard's runs.").wait_for(timeout=WAIT)
    page.get_by_test_id("stSidebar").get_by_role("button", name="Sign in").wait_for(timeout=WAIT)
    page.get_by_test_id("stMain").get_by_role("button", name="Sign in").wait_for(
        timeout=WAIT
    )  # the page's last element
    body = page.locator("body").inner_text()
    assert ids["spiral"] not in body and "fixture" not in body
    assert page.get_by_role("combobox").count() == 0 and page.get_by_role("button", name="New run").count() == 0
    assert_refused(page, f"{team_server}/_strata/download/{ids['spiral']}", "Sign in to see this dashboard's runs.")
    assert_refused(page, f"{team_server}/_strata/download/no-such-run", "Sign in")  # 403 before 404: ids stay secret
    forged = base64.urlsafe_b64encode(json.dumps({"email": EDITOR, "is_logged_in": True}).encode()).decode()
    page.context.add_cookies([{"name": "_streamlit_user", "value": forged, "url": team_server}])
    assert_refused(page, f"{team_server}/_strata/download/{ids['spiral']}", "Sign in")  # not signed by this server


def test_a_signed_in_editor_renames_a_run_and_signs_out(team_server, store, page):
    root, ids = store
    sign_in(page, team_server, EDITOR)
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_role("button", name="Sign out").wait_for(timeout=WAIT)
    assert f"Signed in as {EDITOR} · editor" in text(sidebar)
    assert sidebar.get_by_role("button", name="New run").count() == 1

    page.goto(f"{team_server}/runs?run={ids['digits']}")
    main = page.get_by_test_id("stMain")
    name = main.get_by_role("textbox", name="Display name")
    name.fill("digits renamed by ed", timeout=WAIT)
    main.get_by_role("button", name="Rename").click()
    main.get_by_text("Manage digits renamed by ed").wait_for(timeout=WAIT)
    from core.store import RunStore

    assert RunStore(root).run(ids["digits"]).name == "digits renamed by ed"
    assert main.get_by_role("button", name="Delete run").count() == 1

    sidebar.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="End session").click(timeout=WAIT)  # the provider's own sign-out, then back
    page.get_by_text("Sign in to see this dashboard's runs.").wait_for(timeout=WAIT)
    assert page.url.startswith(team_server)


def test_a_signed_in_viewer_sees_the_runs_and_no_edit_control(team_server, store, page):
    _, ids = store
    sign_in(page, team_server, VIEWER)
    page.goto(f"{team_server}/runs?run={ids['spiral']}")
    main = page.get_by_test_id("stMain")
    main.get_by_text("Manage spiral 8-8 fixture").wait_for(timeout=WAIT)
    main.get_by_text("Training, renaming and deleting need the editor role").wait_for(timeout=WAIT)
    assert edit_controls(page) == {"New run": 0, "Rename": 0, "Delete run": 0, "Train a demo run": 0}
    sidebar = page.get_by_test_id("stSidebar")
    assert f"Signed in as {HOSTILE_NAME} ({VIEWER})" in text(sidebar)  # the name as the provider gave it, as text
    assert page.locator("a[href*='evil.test'], img[src='x']").count() == 0
    assert download_link(page) == f"{team_server}/_strata/download/{ids['spiral']}"
    assert_downloads(page, store, "spiral")


def test_a_signed_in_user_on_no_list_is_refused(team_server, store, page):
    _, ids = store
    page.goto(f"{team_server}/")
    page.get_by_test_id("stMain").get_by_role("button", name="Sign in").click(timeout=WAIT)
    page.locator("input[name=sub]").fill(STRANGER, timeout=WAIT)
    page.get_by_role("button", name="Authorize").click()
    page.get_by_text("This account is not allowed to see this dashboard").wait_for(timeout=WAIT)
    page.goto(f"{team_server}/runs?run={ids['spiral']}")
    page.get_by_text("This account is not allowed to see this dashboard").wait_for(
        timeout=WAIT
    )  # the page's last element
    page.get_by_role("button", name="Sign out").wait_for(timeout=WAIT)
    body = page.locator("body").inner_text()
    assert ids["spiral"] not in body and "fixture" not in body
    assert page.get_by_role("button", name="Sign in").count() == 0 and page.get_by_role("combobox").count() == 0
    assert_refused(page, f"{team_server}/_strata/download/{ids['spiral']}", "This account is not allowed")
