"""A hosted dashboard under concurrent sessions: first-chart p50 and p95 for 1, 5, 10 and 20 sessions at once.

Workload (issue 18): the synthetic run of `bench_dashboard.py` (8 layers x 50 snapshots x 2,000 probe points), on
one `streamlit run dashboard/app.py` server (or `--servers 2`, sessions dealt round robin: scaling out). For each
level N, N fresh browser contexts in one headless Chromium open the same share link together (every navigation
is under way before any is waited for); each page's first chart is timed by the page's own clock (navigation
start to the first frame after the chart's SVG exists, as in `bench_dashboard.py`). Between levels the server
stays up (warm); the first level also pays the cold start. Prints, per level: p50, p95 and max of the N
first-chart times, the server's RSS after the level, and the server's CPU seconds spent on it.

    python bench/bench_sessions.py [--levels 1,5,10,20] [--page layers] [--servers 1] [--rounds 2]

Goal (issue 18): p95 at most 2 s with 20 sessions on this 2-CPU machine. Note that the browser runs on the same
machine: with 20 pages it competes with the server for the same two cores, so the figures are an upper bound.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from bench_dashboard import APP, CHROMIUM, CHROMIUM_ARGS, PAINT_PROBE, start_server

from dashboard.synthetic import synthetic_run

PAGES = {"embeddings": "", "gradients": "gradients", "layers": "layers"}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def level(browser, links: list[str], sessions: int) -> list[float]:
    """Open `sessions` pages at once (links dealt round robin); each one's first chart painted, in seconds."""
    contexts = [browser.new_context(viewport={"width": 1400, "height": 1600}) for _ in range(sessions)]
    pages = []
    for number, context in enumerate(contexts):
        page = context.new_page()
        page.add_init_script(PAINT_PROBE)
        page.goto(links[number % len(links)], wait_until="commit", timeout=120_000)
        pages.append(page)
    times = []
    for page in pages:
        page.wait_for_function("window.__strataPaint !== null", timeout=180_000)
        times.append(page.evaluate("window.__strataPaint") / 1000)
    for context in contexts:
        context.close()
    return times


def main() -> None:
    import psutil
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,5,10,20")
    parser.add_argument("--page", choices=sorted(PAGES), default="layers")
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="measurements per level (their times pooled)")
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")]

    with tempfile.TemporaryDirectory() as root:
        run_id = synthetic_run(root)
        servers = [start_server(APP, root) for _ in range(args.servers)]
        try:
            processes = [psutil.Process(server.pid) for server, _ in servers]
            links = [f"{base}/{PAGES[args.page]}?run={run_id}" for _, base in servers]
            print(f"page {args.page}, {args.servers} server(s), {args.rounds} round(s) a level")
            print("| sessions | first chart p50 | p95 | max | server RSS | server CPU s |")
            print("| --- | --- | --- | --- | --- | --- |")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                for sessions in levels:
                    cpu_before = sum(sum(p.cpu_times()[:2]) for p in processes)
                    times = [t for _ in range(args.rounds) for t in level(browser, links, sessions)]
                    cpu = sum(sum(p.cpu_times()[:2]) for p in processes) - cpu_before
                    rss = sum(p.memory_info().rss for p in processes) / 2**20
                    print(f"| {sessions} | {statistics.median(times):.2f} s | {percentile(times, 0.95):.2f} s | "
                          f"{max(times):.2f} s | {rss:.0f} MB | {cpu:.1f} |", flush=True)
                browser.close()
        finally:
            for server, _ in servers:
                server.terminate()
                server.wait(10)


if __name__ == "__main__":
    main()
