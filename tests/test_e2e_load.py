"""A hosted dashboard under real use: a fresh server's first visitors arrive together."""

import subprocess
import sys

import pytest
from test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, start_server


def test_the_server_imports_what_the_pages_need_before_any_session_runs():
    """plotly imports pandas lazily; left to the sessions' threads, the first visitors raced on that import."""
    code = (
        "import sys, dashboard.app; "
        "print(' '.join(m for m in ('pandas', 'plotly.graph_objects', 'plotly.subplots', 'dashboard.views.layers', "
        "'dashboard.views.gradients', 'dashboard.views.embeddings', 'tensorflow') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = result.stdout.split()
    assert "tensorflow" not in loaded  # viewing never imports it
    assert set(loaded) == {
        "pandas",
        "plotly.graph_objects",
        "plotly.subplots",
        "dashboard.views.layers",
        "dashboard.views.gradients",
        "dashboard.views.embeddings",
    }


@pytest.mark.browser
@pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM), reason=f"needs Chromium at {CHROMIUM}")
def test_five_first_visitors_of_a_fresh_server_all_get_their_charts(recorded_runs):
    from playwright.sync_api import sync_playwright

    root, ids = recorded_runs
    process, base = start_server(root)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            pages = [browser.new_context(viewport={"width": 1400, "height": 1600}).new_page() for _ in range(5)]
            for number, page in enumerate(pages):  # every navigation is under way before any is waited for
                run = ids["digits"] if number % 2 else ids["spiral"]
                page.goto(f"{base}/layers?run={run}", wait_until="commit", timeout=60_000)
            for page in pages:
                page.locator(".js-plotly-plot").first.wait_for(state="visible", timeout=120_000)
                page.get_by_test_id("stMain").get_by_text("Linear probe accuracy").first.wait_for(timeout=60_000)
                assert page.get_by_test_id("stException").count() == 0
            browser.close()
    finally:
        process.terminate()
        process.wait(10)
