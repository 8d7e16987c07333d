"""How fast the dashboard views a run: rerun time, time to first chart in a browser, memory, and no TensorFlow.

Workload (issue 3): a synthetic but format-valid run of 8 layers x 50 snapshots x 2,000 probe points, written
with `core.store.RunWriter` (no TensorFlow involved), plus a 100,000-point run for the large-probe check.

    python bench/bench_dashboard.py [--reruns 15] [--skip-browser]

Measures:
  * the Embeddings page script per rerun after a widget change (AppTest; median over layer, epoch and colour
    changes) - goal <= 200 ms;
  * time from opening a share link in headless Chromium to the first chart on screen - goal <= 3 s - by the
    page's clock (the first frame after the chart's SVG is drawn) and as Playwright's `wait_for` sees it;
  * the server process's RSS after serving the page (psutil) - goal < 300 MB - and whether it loaded TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from dashboard.synthetic import synthetic_run  # noqa: E402

APP = str(REPO / "dashboard" / "app.py")  # the server: `streamlit run dashboard/app.py`
SCRIPT = str(REPO / "dashboard" / "main.py")  # the script each session runs (what AppTest runs)
CHROMIUM = "/usr/bin/chromium"
WARM_OPENS = 5  # fresh browser contexts per measurement after the cold one (median)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _app_test(root: str, run_id: str):
    from streamlit.testing.v1 import AppTest

    os.environ["STRATA_RUNS"] = root
    at = AppTest.from_file(SCRIPT, default_timeout=300)
    at.query_params["run"] = run_id
    return at


def rerun_times(root: str, run_id: str, reruns: int) -> tuple[float, list[float]]:
    """(first run, rerun times) of the Embeddings page, cycling through layer, epoch and colour changes."""
    at = _app_test(root, run_id)
    start = time.perf_counter()
    at.run()
    first = time.perf_counter() - start
    assert not at.exception, at.exception
    layers = at.sidebar.selectbox(key="layer").options
    epochs = at.sidebar.select_slider(key="epoch").options
    changes = [
        lambda i: at.sidebar.selectbox(key="layer").set_value(layers[i % len(layers)]),
        lambda i: at.sidebar.select_slider(key="epoch").set_value(epochs[(7 * i) % len(epochs)]),
        lambda i: at.sidebar.selectbox(key="color").set_value(["pred", "label", "confidence"][i % 3]),
    ]
    times = []
    for i in range(reruns):
        changes[i % len(changes)](i)
        start = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - start)
        assert not at.exception, at.exception
    return first, times


# When the first chart was on screen, by the page's own clock (ms from navigation start): the first animation
# frame after the first plotly chart's SVG exists with a size. Playwright's `wait_for` sees it later whenever the
# page's main thread is still busy with other charts, so both are reported.
PAINT_PROBE = """
window.__strataPaint = null;
const strataFirstChart = new MutationObserver(() => {
  const chart = document.querySelector('.js-plotly-plot');
  if (chart && chart.querySelector('.main-svg') && chart.getBoundingClientRect().width > 0) {
    strataFirstChart.disconnect();
    requestAnimationFrame(() => setTimeout(() => { window.__strataPaint = performance.now(); }, 0));
  }
});
strataFirstChart.observe(document, {subtree: true, childList: true});
"""


def open_and_time(browser, url: str, viewport=None, charts: int = 1) -> tuple[float, float, float]:
    """(first chart painted by the page's clock, first chart seen by Playwright, all `charts` seen) in seconds."""
    page = browser.new_page(viewport=viewport)
    page.add_init_script(PAINT_PROBE)
    start = time.perf_counter()
    page.goto(url)
    page.locator(".js-plotly-plot").first.wait_for(state="visible", timeout=60_000)
    seen = time.perf_counter() - start
    page.locator(".js-plotly-plot").nth(charts - 1).wait_for(state="visible", timeout=60_000)
    everything = time.perf_counter() - start
    page.wait_for_function("window.__strataPaint !== null", timeout=60_000)
    painted = page.evaluate("window.__strataPaint") / 1000
    page.close()
    return painted, seen, everything


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


BASELINE_APP = """
import plotly.graph_objects as go
import streamlit as st
st.title("baseline")
st.plotly_chart(go.Figure(go.Scatter(x=[1, 2, 3], y=[1, 3, 2])))
"""


def start_server(script: str, root: str, cwd: Path = REPO, args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """`streamlit run script [args]` from `cwd` (whose .streamlit/config.toml applies) on a free port, once healthy."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            script,
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            *args,
        ],
        cwd=cwd,
        env={**os.environ, "STRATA_RUNS": root},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{base}/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    return server, base


def baseline_first_chart(root: str) -> tuple[float, float]:
    """Median (painted, seen by Playwright) first chart of a one-chart Streamlit page: this browser's floor."""
    from playwright.sync_api import sync_playwright

    script = os.path.join(root, "baseline_app.py")
    Path(script).write_text(BASELINE_APP)
    server, base = start_server(script, root)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            timings = [open_and_time(browser, base) for _ in range(1 + WARM_OPENS)]
            browser.close()
        return statistics.median(t[0] for t in timings[1:]), statistics.median(t[1] for t in timings[1:])
    finally:
        server.terminate()
        server.wait(10)


def browser_numbers(root: str, run_id: str) -> dict:
    """Time to first chart (cold server, then warm), all four charts, RSS and TensorFlow in the server."""
    import psutil
    from playwright.sync_api import sync_playwright

    server, base = start_server(APP, root)
    try:
        results = {}
        link = f"{base}/?run={run_id}&layer=dense_3&epoch=25"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            viewport = {"width": 1400, "height": 1600}
            # the first open after the server starts is the cold one
            timings = [open_and_time(browser, link, viewport, charts=4) for _ in range(1 + WARM_OPENS)]
            browser.close()
        results["first chart painted (cold server)"] = timings[0][0]
        results[f"first chart painted (warm, median of {WARM_OPENS})"] = statistics.median(t[0] for t in timings[1:])
        results[f"first chart seen by Playwright (warm, median of {WARM_OPENS})"] = statistics.median(
            t[1] for t in timings[1:]
        )
        results[f"all 4 charts seen by Playwright (warm, median of {WARM_OPENS})"] = statistics.median(
            t[2] for t in timings[1:]
        )
        process = psutil.Process(server.pid)
        results["server RSS MB"] = process.memory_info().rss / 2**20
        maps = {m.path for m in process.memory_maps()}
        results["tensorflow loaded"] = any("tensorflow" in path for path in maps)
        return results
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reruns", type=int, default=15)
    parser.add_argument("--skip-browser", action="store_true")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="strata-bench-")
    t = time.perf_counter()
    synthetic_run(root, "bench-8x50x2000", layers=8, snapshots=50, points=2000)
    synthetic_run(root, "bench-100k", layers=4, snapshots=10, points=100_000)
    print(f"wrote the synthetic runs in {time.perf_counter() - t:.1f} s under {root}")

    rows = []
    first, times = rerun_times(root, "bench-8x50x2000", args.reruns)
    rows += [
        ("8x50x2000", "AppTest first run (cold caches)", f"{first * 1000:.0f} ms", ""),
        (
            "8x50x2000",
            f"AppTest rerun after a widget change, median of {len(times)}",
            f"{statistics.median(times) * 1000:.0f} ms",
            "<= 200 ms",
        ),
        ("8x50x2000", "AppTest rerun, slowest", f"{max(times) * 1000:.0f} ms", ""),
    ]
    first, times = rerun_times(root, "bench-100k", max(3, args.reruns // 3))
    rows += [
        ("100k points", "AppTest first run (cold caches)", f"{first * 1000:.0f} ms", ""),
        ("100k points", "AppTest rerun, median", f"{statistics.median(times) * 1000:.0f} ms", "usable"),
    ]
    if not args.skip_browser and os.path.exists(CHROMIUM):
        painted, seen = baseline_first_chart(root)
        rows.append(
            (
                "baseline",
                f"1-chart page: first chart painted (warm, median of {WARM_OPENS})",
                f"{painted:.2f} s",
                "reference",
            )
        )
        rows.append(
            (
                "baseline",
                f"1-chart page: first chart seen by Playwright (warm, median of {WARM_OPENS})",
                f"{seen:.2f} s",
                "reference",
            )
        )
        for run_id, label in (("bench-8x50x2000", "8x50x2000"), ("bench-100k", "100k points")):
            numbers = browser_numbers(root, run_id)
            for name, value in numbers.items():
                goal = (
                    (
                        "<= 3 s"
                        if name.startswith("first chart painted")
                        else {"server RSS MB": "< 300 MB", "tensorflow loaded": "False"}.get(name, "")
                    )
                    if label == "8x50x2000"
                    else ""
                )
                shown = (
                    f"{value:.2f} s"
                    if isinstance(value, float) and "MB" not in name
                    else (f"{value:.0f} MB" if "MB" in name else str(value))
                )
                rows.append((label, f"browser: {name}", shown, goal))
    rows.append(
        (
            "machine",
            "load average (1, 5, 15 min) at the end",
            " ".join(f"{v:.1f}" for v in os.getloadavg()),
            f"{os.cpu_count()} CPUs",
        )
    )
    width = max(len(r[1]) for r in rows)
    print(f"\n{'workload':<12} {'measure':<{width}} {'result':>10}  goal")
    for workload, name, value, goal in rows:
        print(f"{workload:<12} {name:<{width}} {value:>10}  {goal}")


if __name__ == "__main__":
    main()
