"""dashboard.preload: the middleware that makes each HTML page start loading plotly.js (ASGI, no server)."""

import asyncio
import gzip
from pathlib import Path

import pytest

from dashboard import preload
from dashboard.preload import PreloadPlotly

PAGE = b"<!DOCTYPE html><html><head><title>Streamlit</title></head><body><div id=root></div></body></html>"
CHUNK = "PlotlyChart.abc123.js"


def respond(content_type: bytes, chunks: list[bytes], encoding: bytes | None = None):
    """A tiny ASGI app that answers with `chunks` as the body, in that many messages."""

    async def app(scope, receive, send):
        headers = [(b"content-type", content_type), (b"content-length", str(sum(map(len, chunks))).encode())]
        if encoding:
            headers.append((b"content-encoding", encoding))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": index < len(chunks) - 1})

    return app


def serve(app, method: str = "GET", scope_type: str = "http") -> list[dict]:
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    asyncio.run(app({"type": scope_type, "method": method, "path": "/"}, receive, send))
    return sent


def body_of(sent: list[dict]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def header(sent: list[dict], name: bytes) -> bytes | None:
    return dict(sent[0]["headers"]).get(name)


def test_an_html_page_gets_the_preload_once_at_the_end_of_its_head():
    sent = serve(PreloadPlotly(respond(b"text/html; charset=utf-8", [PAGE[:30], PAGE[30:]]), chunk=CHUNK))
    html = body_of(sent)
    assert html.count(b'rel="modulepreload"') == 1 and html.count(b"<script") == 1
    assert f'href="./static/js/{CHUNK}"'.encode() in html and f'import("./static/js/{CHUNK}")'.encode() in html
    assert (
        html.index(b"modulepreload") < html.index(b"</head>") and html.replace(preload.preload_tags(CHUNK), b"") == PAGE
    )
    assert header(sent, b"content-length") == str(len(html)).encode()


def test_a_gzip_encoded_page_is_rewritten_and_stays_gzip():
    sent = serve(PreloadPlotly(respond(b"text/html", [gzip.compress(PAGE)], encoding=b"gzip"), chunk=CHUNK))
    content = body_of(sent)
    assert (
        header(sent, b"content-encoding") == b"gzip" and header(sent, b"content-length") == str(len(content)).encode()
    )
    assert gzip.decompress(content) == PAGE.replace(b"</head>", preload.preload_tags(CHUNK) + b"</head>")


@pytest.mark.parametrize("content_type, encoding", [(b"application/javascript", None), (b"text/html", b"br")])
def test_everything_else_passes_through_as_sent(content_type, encoding):
    chunks = [b"x" * 70_000, b"y" * 10]  # a streamed static file keeps its messages
    inner = serve(respond(content_type, chunks, encoding))
    assert serve(PreloadPlotly(respond(content_type, chunks, encoding), chunk=CHUNK)) == inner


def test_a_page_without_a_head_or_a_post_is_left_alone():
    assert body_of(serve(PreloadPlotly(respond(b"text/html", [b"<p>hi</p>"]), chunk=CHUNK))) == b"<p>hi</p>"
    assert serve(PreloadPlotly(respond(b"text/html", [PAGE]), chunk=CHUNK), method="POST") == serve(
        respond(b"text/html", [PAGE])
    )


def test_without_the_component_the_middleware_changes_nothing(tmp_path):
    assert preload.plotly_chunk(tmp_path) is None
    assert serve(PreloadPlotly(respond(b"text/html", [PAGE]), find=lambda: None)) == serve(
        respond(b"text/html", [PAGE])
    )


def test_this_streamlit_ships_the_component_it_preloads():
    chunk = preload.plotly_chunk()
    assert chunk is not None, "Streamlit's plotly component was renamed: update dashboard/preload.py"
    assert (Path(preload.STATIC_JS) / chunk).stat().st_size > 1_000_000  # plotly.js is inside
