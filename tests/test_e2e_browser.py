"""End to end in headless Chromium: a real `streamlit run dashboard/app.py` on the fixture runs."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs Chromium at {CHROMIUM}"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    runs_root: str, *, address: str = "127.0.0.1", args: tuple[str, ...] = (), base_path: str = "", **env
) -> tuple[subprocess.Popen, str]:
    """`streamlit run dashboard/app.py` on a free port, listening on `address`, with more `args` (and
    `server.baseUrlPath` set to `base_path`, if any); returns (process, base URL on 127.0.0.1, with the base path)
    once /_stcore/health answers."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "dashboard/app.py",
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--server.address",
            address,
            *(("--server.baseUrlPath", base_path) if base_path else ()),
            *args,
        ],
        cwd=REPO,
        env={**os.environ, "STRATA_RUNS": runs_root, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}" + (f"/{base_path.strip('/')}" if base_path else "")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{base}/_stcore/health", timeout=2).status == 200:
                return process, base
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the dashboard did not answer /_stcore/health within 60 s")


@pytest.fixture(scope="module")
def server(recorded_runs):
    root, ids = recorded_runs
    process, base = start_server(root)
    yield base, ids, process
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    yield context.new_page()
    context.close()


def query(page) -> dict[str, list[str]]:
    return parse_qs(urlparse(page.url).query)


def wait_for_charts(page, count: int = 1, timeout: float = 30_000) -> None:
    page.locator(".js-plotly-plot").nth(count - 1).wait_for(state="visible", timeout=timeout)


def test_a_share_link_opens_that_view(server, page):
    base, ids, _ = server
    page.goto(f"{base}/?run={ids['digits']}&layer=output&epoch=1&color=correct&sel=0-3")
    wait_for_charts(page, 2)
    main = page.get_by_test_id("stMain")
    main.get_by_text("Every layer at epoch 1").wait_for()
    main.get_by_text("Focus: output over training").wait_for()
    sidebar = page.get_by_test_id("stSidebar")
    assert sidebar.get_by_role("combobox", name="Layer").input_value() == "output"
    assert sidebar.get_by_role("combobox", name="Colour by").input_value() == "correct"
    assert sidebar.get_by_role("combobox", name="Run").input_value() == ids["digits"]
    assert (
        sidebar.get_by_test_id("stSlider").filter(has_text="Epoch").get_by_test_id("stSliderThumbValue").inner_text()
        == "1"
    )
    assert main.get_by_text("4 selected").count() == 1
    assert page.get_by_test_id("stException").count() == 0
    assert query(page)["run"] == [ids["digits"]]


def test_the_embeddings_page_also_opens_by_its_name(server, page):
    """The default page lives at "/"; "/embeddings?..." (typed, or a link trimmed by hand) shows it too."""
    base, ids, _ = server
    page.goto(f"{base}/embeddings?run={ids['spiral']}&layer=dense_1")
    wait_for_charts(page, 2)
    main = page.get_by_test_id("stMain")
    main.get_by_text("Focus: dense_1 over training").wait_for()
    assert page.get_by_text("Page not found").count() == 0
    assert page.get_by_test_id("stSidebar").get_by_text("Embedding view").count() == 1  # the page's own controls
    assert page.get_by_test_id("stException").count() == 0


def test_every_page_starts_loading_plotly_before_streamlit_connects(server, page):
    """dashboard/preload.py: the HTML asks for the plotly component itself, also on gzip-served deep links."""
    base, ids, _ = server
    page.goto(f"{base}/gradients?run={ids['digits']}")
    wait_for_charts(page)
    assert page.locator('link[rel="modulepreload"][href*="PlotlyChart"]').count() == 1
    starts = page.evaluate("""() => Object.fromEntries(performance.getEntriesByType('resource')
        .filter(e => e.name.includes('PlotlyChart') || e.name.includes('_stcore/host-config'))
        .map(e => [e.name.includes('PlotlyChart') ? 'plotly' : 'config', e.startTime]))""")
    assert starts["plotly"] < starts["config"]  # requested with the page, not after the first chart message
    assert page.get_by_test_id("stException").count() == 0


def test_changing_the_layer_updates_the_url(server, page):
    base, ids, _ = server
    page.goto(f"{base}/?run={ids['spiral']}")
    wait_for_charts(page)
    assert "layer" not in query(page)
    page.get_by_test_id("stSidebar").get_by_role("combobox", name="Layer").click()
    page.get_by_role("option", name="dense_1").click()
    page.get_by_test_id("stMain").get_by_text("Focus: dense_1 over training").wait_for()
    page.wait_for_function("() => window.location.search.includes('layer=dense_1')", timeout=10_000)
    assert query(page)["layer"] == ["dense_1"] and query(page)["run"] == [ids["spiral"]]
    page.get_by_role("link", name="Runs").click()  # the view follows to another page
    page.get_by_test_id("stMain").get_by_role("heading", name="Runs").wait_for()
    assert urlparse(page.url).path == "/runs" and query(page)["layer"] == ["dense_1"]


def test_a_garbage_link_shows_a_notice_not_an_exception(server, page):
    base, _, _ = server
    page.goto(f"{base}/?run=..%2F..%2Fetc&epoch=yesterday&color=%3Cscript%3E&sel=1-x")
    wait_for_charts(page)
    alerts = page.get_by_test_id("stAlert").all_inner_texts()
    assert any("run=../../etc" in text and "is not a run id" in text for text in alerts), alerts
    assert any("epoch=yesterday" in text for text in alerts)
    assert page.get_by_test_id("stException").count() == 0


def test_a_plain_link_gets_the_run_into_the_address_bar(server, page):
    base, ids, _ = server
    page.goto(f"{base}/")
    wait_for_charts(page)
    page.wait_for_function("() => window.location.search.includes('run=')", timeout=10_000)
    assert query(page)["run"][0] in ids.values()


def test_a_deep_link_is_the_first_request_of_a_fresh_server(recorded_runs, browser):
    """The page in the URL path is served by main.py's navigation even on a server's very first script run."""
    root, ids = recorded_runs
    process, base = start_server(root)
    try:
        page = browser.new_page()
        page.goto(f"{base}/runs?run={ids['spiral']}&compare={ids['digits']}")
        page.get_by_test_id("stMain").get_by_role("heading", name="Compare").wait_for(timeout=30_000)
        assert page.get_by_test_id("stSidebar").get_by_role("combobox", name="Run").input_value() == ids["spiral"]
        assert page.get_by_test_id("stException").count() == 0
    finally:
        process.terminate()
        process.wait(10)


def test_the_server_process_never_loads_tensorflow(server):
    import psutil

    _, _, process = server
    mapped = {m.path for m in psutil.Process(process.pid).memory_maps()}
    assert not [path for path in mapped if "tensorflow" in path or "keras" in path]


def test_a_lasso_on_the_strip_selects_every_sample_inside_not_only_the_drawn_ones(server, page, recorded_runs):
    """The strip draws a subset of the probe; a lasso on it selects all probe samples in the region."""
    import numpy as np

    from core.store import RunStore
    from dashboard.views.embeddings import POINTS_PER_PANEL, decimate, inside_polygon

    base, ids, _ = server
    page.goto(f"{base}/?run={ids['spiral']}")
    wait_for_charts(page, 2)
    strip = page.locator(".js-plotly-plot").first
    box = strip.evaluate("""g => {
        const r = g.getBoundingClientRect(), x = g._fullLayout.xaxis, y = g._fullLayout.yaxis;
        return {left: r.left + x._offset, top: r.top + y._offset, width: x._length, height: y._length,
                x: x.range, y: y.range}; }""")
    # a rectangle over the middle of the input panel, drawn as a lasso (the strip's drag mode)
    corners = [(0.3, 0.3), (0.7, 0.3), (0.7, 0.7), (0.3, 0.7), (0.3, 0.3)]
    lasso(page, box, corners)
    page.get_by_test_id("stMain").get_by_text("selected ·").wait_for(timeout=15_000)
    page.wait_for_function("() => window.location.search.includes('sel=')", timeout=10_000)

    from dashboard.state import parse_rows

    chosen = set(parse_rows(query(page)["sel"]))
    run = RunStore(recorded_runs[0]).run(ids["spiral"])
    coords = run.probe().input_pca[:, :2]
    to_data = lambda fx, fy: (  # noqa: E731
        box["x"][0] + fx * (box["x"][1] - box["x"][0]),
        box["y"][1] - fy * (box["y"][1] - box["y"][0]),
    )  # noqa: E731
    xs, ys = zip(*(to_data(fx, fy) for fx, fy in corners))
    inside = set(np.flatnonzero(inside_polygon(coords[:, 0], coords[:, 1], np.array(xs), np.array(ys))).tolist())
    drawn = set(decimate(len(coords), POINTS_PER_PANEL).tolist())
    assert len(coords) > POINTS_PER_PANEL and inside - drawn  # the region holds samples the strip does not draw
    assert len(chosen ^ inside) <= max(2, len(inside) // 50), (len(chosen), len(inside))  # all of them, up to the edge
    assert page.get_by_test_id("stException").count() == 0

    # the whole panel holds more samples than a link keeps: the first MAX_SELECTION stay, and a toast says so
    from dashboard.state import MAX_SELECTION

    lasso(page, box, [(0.01, 0.01), (0.99, 0.01), (0.99, 0.99), (0.01, 0.99), (0.01, 0.01)])
    page.get_by_test_id("stToast").filter(has_text=f"a link keeps {MAX_SELECTION}").wait_for(timeout=15_000)
    page.get_by_test_id("stMain").get_by_text(f"{MAX_SELECTION} selected").wait_for(timeout=15_000)
    assert len(parse_rows(query(page)["sel"])) == MAX_SELECTION


def lasso(page, box: dict, corners) -> None:
    """Drag the mouse through `corners`, fractions of the plot area `box` (pixels), as a lasso."""
    pixels = [(box["left"] + fx * box["width"], box["top"] + fy * box["height"]) for fx, fy in corners]
    page.mouse.move(*pixels[0])
    page.mouse.down()
    for point in pixels[1:]:
        page.mouse.move(*point, steps=8)
    page.mouse.up()


def test_play_animates_the_focus_view_in_the_browser(server, page):
    """Plotly frames, not Streamlit reruns: the slider moves and, coloured by prediction, points change class."""
    base, ids, _ = server
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{base}/?run={ids['spiral']}&color=pred&epoch=0")
    wait_for_charts(page, 2)
    focus = page.locator(".js-plotly-plot").nth(1)
    state = "g => [g._fullLayout.sliders[0].active, g._fullData.filter(t => t.meta === 'points').map(t => t._length)]"
    start, start_counts = focus.evaluate(state)
    focus.locator(".updatemenu-button").first.click()  # ▶ Play
    page.wait_for_function("g => g._fullLayout.sliders[0].active >= 2", arg=focus.element_handle(), timeout=20_000)
    end, end_counts = focus.evaluate(state)
    assert start == 0 and end > start
    assert sum(start_counts) == sum(end_counts) and start_counts != end_counts  # predictions moved between classes
    assert not errors and page.get_by_test_id("stException").count() == 0


def test_writing_a_killed_runs_snapshots_from_the_sidebar_draws_them_without_a_reload(killed_runs, browser, tmp_path):
    """The button starts `python -m core recover` in the background; the page follows that job, which loads
    TensorFlow before the run says it is being written, and draws the charts once they are."""
    import shutil

    shutil.copytree(killed_runs, tmp_path / "runs")
    process, base = start_server(str(tmp_path / "runs"))
    context = browser.new_context(viewport={"width": 1400, "height": 1200})
    page = context.new_page()
    try:
        page.goto(f"{base}/?run=killed")
        page.get_by_text("Write them now").click(timeout=60_000)
        page.get_by_text("Every layer at epoch").wait_for(timeout=120_000)
        wait_for_charts(page, 2)
        # The first chart can come while the job still writes the last snapshots; once it is done, the sidebar's
        # next refresh drops the offer. On a loaded machine that refresh can come after the charts.
        page.get_by_text("Write them now").wait_for(state="detached", timeout=120_000)
        assert page.get_by_test_id("stException").count() == 0
    finally:
        context.close()
        process.terminate()
        process.wait(10)
