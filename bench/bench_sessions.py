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

Between levels the server stays up (warm); the first level also pays the cold start. Prints, per level: p50, p95
and max of the first-chart times, the server's RSS after the level, and the server's CPU seconds spent on it.

    python bench/bench_sessions.py [--levels 1,5,10,20] [--page layers] [--servers 1] [--rounds 3] [--client ws]

Goal (issue 18): p95 at most 2 s with 20 sessions on this 2-CPU machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

from bench_dashboard import APP, CHROMIUM, CHROMIUM_ARGS, PAINT_PROBE, start_server

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


def main() -> None:
    import psutil

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,5,10,20")
    parser.add_argument("--page", choices=sorted(PAGES), default="layers")
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="measurements per level (their times pooled)")
    parser.add_argument("--client", choices=("ws", "browser"), default="ws")
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")]

    with tempfile.TemporaryDirectory() as root:
        run_id = synthetic_run(root)
        xsrf = ("--server.enableXsrfProtection", str(args.client == "browser").lower())  # ws clients carry no cookie
        servers = [start_server(APP, root, args=xsrf) for _ in range(args.servers)]
        try:
            processes = [psutil.Process(server.pid) for server, _ in servers]
            bases = [base for _, base in servers]
            print(f"page {args.page}, {args.servers} server(s), client {args.client}, {args.rounds} round(s) a level")
            print("| sessions | first chart p50 | p95 | max | server RSS | server CPU s |")
            print("| --- | --- | --- | --- | --- | --- |")
            browser = playwright = None
            if args.client == "browser":
                from playwright.sync_api import sync_playwright

                playwright = sync_playwright().start()
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for sessions in levels:
                cpu_before = sum(sum(p.cpu_times()[:2]) for p in processes)
                times = []
                for _ in range(args.rounds):
                    if browser is None:
                        times += ws_level(bases, f"run={run_id}", PAGES[args.page], sessions)
                    else:
                        times += level(browser, [f"{b}/{PAGES[args.page]}?run={run_id}" for b in bases], sessions)
                cpu = sum(sum(p.cpu_times()[:2]) for p in processes) - cpu_before
                rss = sum(p.memory_info().rss for p in processes) / 2**20
                print(
                    f"| {sessions} | {statistics.median(times):.2f} s | {percentile(times, 0.95):.2f} s | "
                    f"{max(times):.2f} s | {rss:.0f} MB | {cpu:.1f} |",
                    flush=True,
                )
            if browser is not None:
                browser.close()
                playwright.stop()
        finally:
            for server, _ in servers:
                server.terminate()
                server.wait(10)


if __name__ == "__main__":
    main()
