"""The Layers page through Streamlit's AppTest and in headless Chromium, on the session's recorded fixture runs."""

import json
import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from apptest_pages import open_app, shown
from gradient_fixtures import gradient_runs  # noqa: F401  (a fixture)

from core.store import RunStore
from dashboard.views.layers import CAPTIONS

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "main.py")  # the script each session runs
SHARED_CHARTS = ["probe_heatmap", "probe_depth", "cka_heatmap", "cka_final", "depth", "time"]


def layers_page(root, **params):
    """A fresh session of /layers on store `root` with `params` in the link."""
    return open_app(root, "layers", **params)


def charts(at) -> dict[str, dict]:
    """The page's plotly figures by chart key, as the JSON the browser receives."""
    return {chart.key: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}


def alive_unit(root, run_id, layer: int) -> int:
    dead = RunStore(root).run(run_id).epoch_snapshots()[-1].array(f"L{layer}/dead_units")
    return int(np.flatnonzero(~dead)[0])


@pytest.fixture(autouse=True)
def _restore_env(monkeypatch):
    monkeypatch.setenv("STRATA_RUNS", os.environ.get("STRATA_RUNS", "runs"))


def test_a_spiral_run_shows_the_metrics_and_the_plane_views(spiral_run_dir):
    root, run_id = spiral_run_dir
    unit = alive_unit(root, run_id, 1)
    at = layers_page(root, run=run_id, layer="dense_1", epoch="2", unit=str(unit))
    assert not at.exception and not at.warning
    assert [h.value for h in at.header] == [
        "Linear probe accuracy",
        "Representation similarity (CKA)",
        "Separation and dimensionality",
        "Units of dense_1",
    ]
    figures = charts(at)
    assert list(figures) == SHARED_CHARTS + ["unit_grid", "unit_plane", "bent_plane"]
    captions = {c.value for c in at.caption}
    assert all(CAPTIONS[name] in captions for name in figures)  # every chart says how to read it
    assert at.selectbox(key="unit").value == unit
    assert f"Unit {unit} and the decision boundary" in [s.value for s in at.subheader]
    depth = figures["probe_depth"]["data"]
    assert [trace["name"] for trace in depth] == ["epoch 0", "epoch 2"]  # the epoch from the link
    assert depth[1]["x"][0] == "input"
    assert len([t for t in figures["unit_grid"]["data"] if t["type"] == "heatmap"]) == 8  # hidden (8, 8)
    assert [a["text"] for a in figures["bent_plane"]["layout"]["annotations"]][:4] == [
        "input",
        "dense_0",
        "<b>dense_1</b>",
        "output",
    ]


def test_a_digits_run_shows_thumbnails_favourite_inputs_and_weights(digits_run_dir):
    root, run_id = digits_run_dir
    unit = alive_unit(root, run_id, 0)
    at = layers_page(root, run=run_id, layer="dense_0", unit=str(unit))
    assert not at.exception
    figures = charts(at)
    assert list(figures) == SHARED_CHARTS + ["unit_images", "prototypes", "kernel_images"]
    assert len(figures["unit_images"]["data"]) == 16  # 8 most and 8 least activating probe images
    assert len(figures["kernel_images"]["data"]) == 16  # the first Dense layer has 16 units
    z = figures["kernel_images"]["data"][0]["z"]  # plotly sends arrays as {"dtype", "bdata", "shape"}
    assert (z["shape"].replace(" ", "") if isinstance(z, dict) else str(np.shape(z))) in ("8,8", "(8, 8)")
    assert "epoch 2" in [trace["name"] for trace in figures["probe_depth"]["data"]]  # no epoch in the link: the latest


def test_a_bad_unit_in_the_link_falls_back_to_unit_0_with_a_notice(spiral_run_dir):
    root, run_id = spiral_run_dir
    for bad in ("999", "abc", "-1"):
        at = layers_page(root, run=run_id, layer="dense_0", unit=bad)
        assert not at.exception, bad
        assert at.selectbox(key="unit").value == 0
        [notice] = [shown(w.value) for w in at.warning]
        assert f"unit={bad}" in notice and "showing unit 0" in notice


def test_picking_another_unit_and_layer_keeps_the_page_consistent(spiral_run_dir):
    root, run_id = spiral_run_dir
    at = layers_page(root, run=run_id)
    at.selectbox(key="unit").set_value(5).run()
    assert not at.exception and at.selectbox(key="unit").value == 5
    at.sidebar.selectbox(key="layer").set_value("output").run()  # two units only: unit 5 is gone
    assert not at.exception
    assert at.selectbox(key="unit").options == ["0", "1"] and at.selectbox(key="unit").value == 0
    assert "Units of output" in [h.value for h in at.header]


def test_a_tabular_run_shows_feature_values(gradient_runs):  # noqa: F811
    """A run recorded by the real recorder on a tabular data set (no plane, no images): gradient_fixtures' iris run
    (32-32-32 ReLU, 8 epochs), recorded once for the whole test run."""
    at = layers_page(gradient_runs, run="iris", unit="2")
    assert not at.exception
    figures = charts(at)
    assert list(figures) == SHARED_CHARTS + ["unit_features"]
    assert figures["unit_features"]["data"][0]["x"][:2] == ["sepal length (cm)", "sepal width (cm)"]
    table = at.dataframe[0].value
    assert list(table["rank"])[:2] == ["top 1", "top 2"] and "sepal length (cm)" in table.columns


# ------------------------------------------------------------------------------------------------------------
# In the browser


def choose(page, combobox, option: str) -> None:
    """Pick `option` in a selectbox once the app's script run has finished (a run that ends while the menu is open
    redraws the selectbox and closes it). Streamlit marks its app element with the script's state; the status
    widget, which appears only after a delay, can miss a run that has just started.

    Streamlit's dropdown closes on any scroll of the page, and focusing its first option can itself scroll the
    main area when the page is taller than the window. So the page must fit its window (see `PAGE`): then nothing
    can scroll and the menu stays open."""
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=60_000)
    combobox.fill(option)  # typing opens the menu, filtered to the option
    page.get_by_role("option").filter(has_text=re.compile(f"^{re.escape(option)}$")).click(timeout=30_000)


# Taller than the Layers page of a 2-D run (~3,900 px at this width), so the page never scrolls (see `choose`).
PAGE = {"width": 1400, "height": 4400}


@pytest.mark.browser
def test_the_page_renders_in_chromium_and_the_unit_goes_into_the_link(recorded_runs):
    from test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, start_server

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"needs Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    root, ids = recorded_runs
    process, base = start_server(root)  # a fresh server: the deep link below is its very first script run
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=PAGE)
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{base}/layers?run={ids['spiral']}&layer=dense_1")
            main = page.get_by_test_id("stMain")
            main.get_by_role("heading", name="Units of dense_1").wait_for(timeout=30_000)
            page.locator(".js-plotly-plot").nth(8).wait_for(state="attached", timeout=30_000)  # all 9 charts
            assert page.locator(".js-plotly-plot").count() == 9
            assert page.get_by_test_id("stException").count() == 0 and not errors
            choose(page, main.get_by_role("combobox", name="Unit"), "3")
            page.wait_for_function("() => window.location.search.includes('unit=3')", timeout=10_000)
            main.get_by_role("heading", name="Unit 3 and the decision boundary").wait_for(timeout=10_000)
            assert parse_qs(urlparse(page.url).query)["layer"] == ["dense_1"]

            page.goto(f"{base}/layers?run={ids['digits']}")
            main.get_by_role("heading", name="First-layer weights as images").wait_for(timeout=30_000)
            assert page.get_by_test_id("stException").count() == 0 and not errors
            browser.close()
    finally:
        process.terminate()
        process.wait(10)


def test_the_share_link_carries_the_pages_own_controls(spiral_run_dir):
    root, run_id = spiral_run_dir
    unit = alive_unit(root, run_id, 1)
    at = layers_page(root, run=run_id, layer="dense_1", unit=str(unit))
    at.session_state["share_open"] = True  # open the sidebar's Share expander
    query = parse_qs(urlparse(at.run().sidebar.code[0].value).query)
    assert query["unit"] == [str(unit)] and query["run"] == [run_id] and query["layer"] == ["dense_1"]
