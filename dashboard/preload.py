"""Start loading plotly.js with the page, not after the first chart has arrived.

Streamlit loads its plotly chart component (4.7 MB, plotly.js inside) only once the first chart's message has
come over the websocket, and the browser then evaluates it for about a second before any chart can draw. Every
Strata page draws plotly charts, so the page asks for the component itself: a `modulepreload` fetches and
compiles it while Streamlit's own scripts load, and a module script evaluates it as soon as Streamlit's start-up
script has run, while Streamlit connects and the server runs the page. When the first chart arrives, the
component is ready. Same module URL as Streamlit's own import, so the browser loads and runs it once.
(Evaluating it at the first idle moment instead measured 0.4-0.5 s later: the page is rarely idle that early.)

`PreloadPlotly` is the ASGI middleware that adds those two tags to each HTML page Streamlit serves; `app.py`
installs it. It changes nothing else: other responses pass through untouched, and a Streamlit release without
the component under its expected name just gets no preload. bench/README.md has the figures.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit

STATIC_JS = Path(streamlit.__file__).parent / "static" / "static" / "js"


def plotly_chunk(directory: Path = STATIC_JS) -> str | None:
    """The file name of Streamlit's plotly chart component (hashed per release), or None unless there is one."""
    found = sorted(path.name for path in Path(directory).glob("PlotlyChart.*.js"))
    return found[0] if len(found) == 1 else None


def preload_tags(chunk: str) -> bytes:
    """The tags that fetch `chunk` at once and evaluate it right after Streamlit's own start-up script.

    Module scripts run in document order after parsing, so this one runs after Streamlit's; the timeout lets the
    tasks that script queued (its first render, its first requests) go first."""
    href = f"./static/js/{chunk}"  # relative, like Streamlit's own assets, so a base URL path works too
    script = f'setTimeout(() => import("{href}").catch(() => {{}}), 0);'
    return f'<link rel="modulepreload" crossorigin href="{href}"><script type="module">{script}</script>'.encode()


def with_tags(html: bytes, tags: bytes) -> bytes | None:
    """`html` with `tags` at the end of its head, or None when it has no head to add them to."""
    end = html.find(b"</head>")
    return None if end < 0 else html[:end] + tags + html[end:]


class PreloadPlotly:
    """ASGI middleware: adds `preload_tags` to the head of every HTML page (plain or gzip-encoded)."""

    def __init__(self, app, chunk: str | None = None, find=plotly_chunk):
        self.app = app
        chunk = chunk or find()
        self.tags = preload_tags(chunk) if chunk else None

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:  # an ASGI app
        if self.tags is None or scope["type"] != "http" or scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        start: dict = {}
        body: list[bytes] = []

        async def rewrite(message):
            if message["type"] == "http.response.start":
                headers = {key.lower(): value for key, value in message.get("headers", [])}
                encoding = headers.get(b"content-encoding")
                if not headers.get(b"content-type", b"").startswith(b"text/html") or encoding not in (None, b"gzip"):
                    start["pass"] = True
                    await send(message)
                    return
                start["message"], start["gzip"] = message, encoding == b"gzip"
                return
            if start.get("pass") or message["type"] != "http.response.body":
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            await self._send_page(start["message"], b"".join(body), start["gzip"], send)

        await self.app(scope, receive, rewrite)

    async def _send_page(self, head: dict, content: bytes, zipped: bool, send) -> None:
        assert self.tags is not None  # `__call__` hands pages here only when there are tags to add
        html = gzip.decompress(content) if zipped else content
        changed = with_tags(html, self.tags)
        if changed is not None:
            content = gzip.compress(changed, compresslevel=6) if zipped else changed
        headers = [(key, value) for key, value in head.get("headers", []) if key.lower() != b"content-length"]
        headers.append((b"content-length", str(len(content)).encode()))
        await send({**head, "headers": headers})
        await send({"type": "http.response.body", "body": content, "more_body": False})
