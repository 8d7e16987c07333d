"""A hosted dashboard under concurrent sessions: first-chart p50 and p95 for 1, 5, 10 and 20 sessions at once.

Workload (issue 18): the synthetic run of `bench_dashboard.py` (8 layers x 50 snapshots x 2,000 probe points), on
one `streamlit run dashboard/app.py` server (or `--servers 2`, sessions dealt round robin: scaling out). For each
level N, N sessions open the same share link together, and each one's first chart is timed. Two clients:

  * `--client ws` (default): N websocket sessions speaking Streamlit's own protocol, as the browser does
    (`BackMsg.rerun_script` with the link's query string and page; then `ForwardMsg`s until the first
    `plotly_chart` element). This is the server's part: no browser competes with it for the machine's 2 cores.
    The server it starts has XSRF protection off, because these clients carry no cookie.
  * `--client browser`: N fresh contexts in one headless Chromium, timed by each page's own clock (navigation
    start to the first frame after the chart's SVG exists, as in `bench_dashboard.py`). On this machine the 20
    pages' own plotly.js work (about a second of CPU each) shares the 2 cores with the server, so this is an
    upper bound of what a visitor on their own computer sees.

Each server first renders the whole page once, untimed (its wall time is printed): the first visitor computes what
the others share (the CKA over training, cached figures). Between levels the server stays up (warm). Prints, per
level: p50, p95 and max of the first-chart times, the server's RSS after the level, the server's CPU seconds spent on
it, and those per session opened (a session stops when its client leaves after the first chart, so this is not a
whole page). Then the load-insensitive figure: the server's CPU for one whole page render (every chart and the
sidebar), one session at a time, warm (`--renders` of them, median).

Each REV (a git revision of this repository; default: the working tree) is exported with `git archive` and served by
servers of its own, started from its folder (its `.streamlit/config.toml` applies); the builds take turns, round by
round, in alternating order, so the machine's drifts fall on all of them alike.

    python bench/bench_sessions.py [--levels 1,5,10,20] [--page layers] [--servers 1] [--rounds 3] [--client ws]
                                   [--renders 10] [REV ...]

Goal (issue 18): p95 at most 2 s with 20 sessions on this 2-CPU machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench_dashboard import CHROMIUM, CHROMIUM_ARGS, PAINT_PROBE, REPO, start_server

from dashboard.synthetic import synthetic_run

PAGES = {"embeddings": "", "gradients": "gradients", "layers": "layers"}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


async def ws_session(base: str, query: str, page: str) -> float:
    """Seconds from asking for the page's script run to its first chart, over Streamlit's websocket protocol."""
    import websockets
    from streamlit.proto import BackMsg_pb2, ForwardMsg_pb2

    url = base.replace("http://", "ws://") + "/_stcore/stream"
    async with websockets.connect(url, subprotocols=["streamlit"], max_size=None) as socket:
        start = time.perf_counter()
        message = BackMsg_pb2.BackMsg()
        message.rerun_script.query_string = query
        message.rerun_script.page_name = page
        await socket.send(message.SerializeToString())
        while True:
            reply = ForwardMsg_pb2.ForwardMsg()
            reply.ParseFromString(await asyncio.wait_for(socket.recv(), 120))
            kind = reply.WhichOneof("type")
            if kind == "delta" and reply.delta.WhichOneof("type") == "new_element":
                if reply.delta.new_element.WhichOneof("type") == "plotly_chart":
                    return time.perf_counter() - start
            elif kind == "script_finished":
                raise RuntimeError(f"the {page or 'embeddings'} page finished without a chart")


def ws_level(bases: list[str], query: str, page: str, sessions: int) -> list[float]:
    async def together() -> list[float]:
        return await asyncio.gather(*[ws_session(bases[n % len(bases)], query, page) for n in range(sessions)])

    return asyncio.run(together())


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


def full_render(base: str, query: str, page: str) -> None:
    """One session that opens the page and waits until its script has run to the end (every chart and the sidebar)."""
    import websockets
    from streamlit.proto import BackMsg_pb2, ForwardMsg_pb2

    async def session() -> None:
        url = base.replace("http://", "ws://") + "/_stcore/stream"
        async with websockets.connect(url, subprotocols=["streamlit"], max_size=None) as socket:
            message = BackMsg_pb2.BackMsg()
            message.rerun_script.query_string = query
            message.rerun_script.page_name = page
            await socket.send(message.SerializeToString())
            while True:
                reply = ForwardMsg_pb2.ForwardMsg()
                reply.ParseFromString(await asyncio.wait_for(socket.recv(), 300))
                if reply.WhichOneof("type") == "script_finished":
                    return

    asyncio.run(session())


def export(rev: str, into: Path) -> Path:
    """The repository at `rev`, as files under `into` (its own .streamlit/config.toml included)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


class Build:
    """One build of the dashboard under test: its servers, and what was measured on them."""

    def __init__(self, label: str, checkout: Path, root: str, servers: int, xsrf: tuple[str, str]):
        import psutil

        self.label = label
        self.servers = [start_server("dashboard/app.py", root, cwd=checkout, args=xsrf) for _ in range(servers)]
        self.processes = [psutil.Process(server.pid) for server, _ in self.servers]
        self.bases = [base for _, base in self.servers]
        self.times: dict[int, list[float]] = {}
        self.cpu: dict[int, float] = {}
        self.full_cpu: list[float] = []

    def cpu_seconds(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.processes)

    def rss_mb(self) -> float:
        return sum(p.memory_info().rss for p in self.processes) / 2**20

    def stop(self) -> None:
        for server, _ in self.servers:
            server.terminate()
            server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revs", nargs="*", help="git revisions to compare, side by side (default: the working tree)")
    parser.add_argument("--levels", default="1,5,10,20")
    parser.add_argument("--page", choices=sorted(PAGES), default="layers")
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="measurements per level (their times pooled)")
    parser.add_argument("--renders", type=int, default=10, help="whole-page renders, one at a time, for CPU per render")
    parser.add_argument("--client", choices=("ws", "browser"), default="ws")
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")]
    page = PAGES[args.page]

    with tempfile.TemporaryDirectory() as work:
        root = str(Path(work) / "runs")
        run_id = synthetic_run(root)
        query = f"run={run_id}"
        checkouts = [(rev, export(rev, Path(work) / f"build-{i}")) for i, rev in enumerate(args.revs)]
        xsrf = ("--server.enableXsrfProtection", str(args.client == "browser").lower())  # ws clients carry no cookie
        builds = [
            Build(label, checkout, root, args.servers, xsrf)
            for label, checkout in checkouts or [("working tree", REPO)]
        ]
        browser = playwright = None
        try:
            if args.client == "browser":
                from playwright.sync_api import sync_playwright

                playwright = sync_playwright().start()
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            print(
                f"page {args.page}, {args.servers} server(s) a build, client {args.client}, {args.rounds} round(s) a "
                "level"
            )
            for build in builds:  # the first visitor computes what every later one shares (CKA over training, ...)
                start = time.perf_counter()
                full_render(build.bases[0], query, page)
                print(
                    f"{build.label}: first whole page on a fresh server {time.perf_counter() - start:.1f} s (not "
                    "counted)"
                )
            for level_number, sessions in enumerate(levels):
                for build in builds:
                    build.times[sessions], build.cpu[sessions] = [], 0.0
                for round_number in range(args.rounds):
                    order = builds if (level_number + round_number) % 2 == 0 else builds[::-1]
                    for build in order:  # one build at a time: the other's servers sit idle
                        before = build.cpu_seconds()
                        if browser is None:
                            build.times[sessions] += ws_level(build.bases, query, page, sessions)
                        else:
                            links = [f"{base}/{page}?{query}" for base in build.bases]
                            build.times[sessions] += level(browser, links, sessions)
                        time.sleep(1)  # the sessions' scripts stop once their clients have gone
                        build.cpu[sessions] += build.cpu_seconds() - before
            for round_number in range(args.renders):
                for build in builds if round_number % 2 == 0 else builds[::-1]:
                    before = build.cpu_seconds()
                    full_render(build.bases[0], query, page)
                    build.full_cpu.append(build.cpu_seconds() - before)
            print("\n| build | sessions | first chart p50 | p95 | max | server RSS | server CPU s | CPU ms a session |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- |")
            for sessions in levels:
                for build in builds:
                    times = build.times[sessions]
                    print(
                        f"| {build.label} | {sessions} | {statistics.median(times):.2f} s | "
                        f"{percentile(times, 0.95):.2f} s | {max(times):.2f} s | {build.rss_mb():.0f} MB | "
                        f"{build.cpu[sessions]:.1f} | {1000 * build.cpu[sessions] / (sessions * args.rounds):.0f} |"
                    )
            print(
                f"\nserver CPU for one whole {args.page} page render, one session at a time, warm ({args.renders} "
                "each):"
            )
            for build in builds:
                print(
                    f"  {build.label:24s} median {1000 * statistics.median(build.full_cpu):.0f} ms "
                    f"(min {1000 * min(build.full_cpu):.0f}, max {1000 * max(build.full_cpu):.0f})"
                )
            if browser is not None:
                browser.close()
                playwright.stop()
        finally:
            for build in builds:
                build.stop()


if __name__ == "__main__":
    main()
