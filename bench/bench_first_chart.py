"""Interleaved A/B of the first chart in headless Chromium: builds of the dashboard opened in turn.

    python bench/bench_first_chart.py [--rounds 10] [REV ...]

Each REV (a git revision of this repository; default: the working tree) is exported with `git archive` into a
temporary folder and served by its own `streamlit run dashboard/app.py`, beside the one-chart reference page.
Every round opens each build once, in random order, each in a fresh browser context, at the issue-3 link on the
8 layers x 50 snapshots x 2,000 points run. Interleaving spreads the machine's drifts over all builds alike,
which single runs of bench_dashboard.py cannot. Prints the first chart painted (page clock): median, min, max.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench_dashboard import (  # noqa: E402
    BASELINE_APP,
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO,
    open_and_time,
    start_server,
    synthetic_run,
)

LINK = "/?run=bench-8x50x2000&layer=dense_3&epoch=25"


def export(rev: str, into: Path) -> Path:
    """The repository at `rev`, as files under `into`."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revs", nargs="*", help="git revisions to compare (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="strata-ab-"))
    root = str(work / "runs")
    synthetic_run(root, "bench-8x50x2000", layers=8, snapshots=50, points=2000)
    (work / "baseline_app.py").write_text(BASELINE_APP)
    builds = [(rev, export(rev, work / f"build-{i}")) for i, rev in enumerate(args.revs)] or [("working tree", REPO)]
    servers = [(label, *start_server("dashboard/app.py", root, cwd=checkout), LINK) for label, checkout in builds]
    servers.append(("one-chart page", *start_server(str(work / "baseline_app.py"), root), "/"))
    painted: dict[str, list[float]] = {label: [] for label, *_ in servers}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for _, _, base, link in servers:  # each server's first page load runs its imports: not measured
                open_and_time(browser, base + link)
            for round_number in range(args.rounds):
                for label, _, base, link in random.sample(servers, len(servers)):
                    painted[label].append(open_and_time(browser, base + link, {"width": 1400, "height": 1600})[0])
                print(
                    f"round {round_number + 1}: " + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in painted.items()),
                    flush=True,
                )
            browser.close()
    finally:
        for _, process, _, _ in servers:
            process.terminate()
    print(f"\nfirst chart painted over {args.rounds} interleaved rounds (fresh browser context each)")
    for label, values in painted.items():
        print(f"  {label:24s} median {statistics.median(values):.2f} s  (min {min(values):.2f}, max {max(values):.2f})")


if __name__ == "__main__":
    main()
