"""The Gradients & activations page in headless Chromium: a real server, a deep link, the charts drawn, no exception."""

import os
from urllib.parse import parse_qs, urlparse

import pytest
from gradient_fixtures import gradient_runs  # noqa: F401  (a fixture)
from test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, start_server

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs Chromium at {CHROMIUM}"),
]


@pytest.fixture(scope="module")
def page(gradient_runs):  # noqa: F811
    from playwright.sync_api import sync_playwright

    process, base = start_server(gradient_runs)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
            page.base = base
            yield page
            browser.close()
    finally:
        process.terminate()
        process.wait(10)


def test_a_deep_link_draws_every_chart_with_the_diagnosis(page, tmp_path):
    page.goto(f"{page.base}/gradients?run=vanishing&compare=relu_he")  # a fresh server: the very first script run
    page.locator(".js-plotly-plot").nth(9).wait_for(state="attached", timeout=60_000)
    main = page.get_by_test_id("stMain")
    assert "Vanishing gradients." in main.get_by_test_id("stAlert").first.inner_text()
    main.get_by_text("Compared run relu_he: no problems found.").wait_for()
    for title in (
        "Gradient flow",
        "Error signal per layer",
        "Update-to-weight ratio",
        "Activation percentiles per layer",
        "Dead and saturated units",
        "Which units",
        "Per-batch gradient norms",
    ):
        main.get_by_role("heading", name=title).wait_for()
    assert main.locator(".js-plotly-plot .main-svg").count() >= 10  # plotly drew, not only mounted
    assert page.get_by_test_id("stException").count() == 0
    page.screenshot(path=str(tmp_path / "gradients.png"), full_page=True)


def test_the_weights_toggle_writes_the_link(page):
    page.goto(f"{page.base}/gradients?run=relu_he")
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    page.get_by_test_id("stMain").get_by_role("radio", name="bias").click()  # a segmented control option
    page.wait_for_function("() => window.location.search.includes('grad_role=bias')", timeout=15_000)
    assert parse_qs(urlparse(page.url).query)["grad_role"] == ["bias"]
    page.get_by_test_id("stMain").get_by_text("‖∇ bias‖ of each layer", exact=False).wait_for()
    assert page.get_by_test_id("stException").count() == 0
