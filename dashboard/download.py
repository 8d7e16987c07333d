"""The run download: `GET <base>/_strata/download/<run id>` streams the run folder as a zip archive.

A Starlette route of the `st.App` in `app.py`, outside Streamlit's sessions, so the archive goes from the store to the
browser piece by piece (`RunStore.zip_chunks`): never whole in the server's memory or on its disk, and read from the
store in worker threads, never on the event loop. Who may download is decided as for the pages
(`context.permissions.access_of`, the rule in `access.py`): without sign-in, whoever may open the pages; with sign-in,
a signed-in viewer or editor, known from Streamlit's signed sign-in cookie (`streamlit_internals`). Anyone else gets
403, an invalid id 400, an unknown run 404, a run the store refuses to serve (a link to a folder elsewhere, a damaged
run.json) 403, each with a plain-text reason and never a byte of the run. A `HEAD` request is checked the same way
and answered with the status and headers only: no archive is written for it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncGenerator, Iterator

import anyio
import streamlit as st
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from core.store import RunNotFound, RunStore, StoreError, is_valid_run_id
from dashboard.context.permissions import access_of, sign_in_settings
from dashboard.context.runs import runs_root
from dashboard.streamlit_internals import signed_in_user

ROUTE = "_strata/download"  # under the server's base URL path; not one of Streamlit's reserved prefixes


def link(run_id: str) -> str:
    """The download's address relative to a page of this app (pages live at `<base>/<page>`), so it works under
    `server.baseUrlPath` and behind a proxy that serves the app under a path of its own."""
    return f"{ROUTE}/{run_id}"


def route() -> Route:
    """The route to hand `st.App(routes=...)`; it reads `server.baseUrlPath`, so build it once the config is loaded
    (`streamlit run` loads it before it imports `app.py`)."""
    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    return Route("/" + "/".join(part for part in (base, ROUTE, "{run_id}") if part), download, methods=["GET"])


async def download(request: Request) -> Response:
    """The run's zip, streamed, or a plain-text refusal: who asks is checked before the run id is even looked at,
    so a visitor who may not view the runs cannot learn which ids exist."""
    user: dict = {}
    if sign_in_settings():
        user = signed_in_user(request.cookies, request.headers)
    client_ip = request.client.host if request.client else None
    verdict = access_of(user, client_ip, dict(request.headers.items()))
    if not verdict.can_view:
        return _refuse(403, f"Not allowed to download runs: {verdict.why}")
    run_id = request.path_params["run_id"]
    if not is_valid_run_id(run_id):
        return _refuse(400, "Not a run id: ids use letters, digits, '.', '_' and '-' only (at most 128).")
    store = RunStore(runs_root())
    head = request.method == "HEAD"
    try:
        if head:
            await run_in_threadpool(store.check_download, run_id)  # what zip_chunks checks before its first byte
        else:
            chunks = await run_in_threadpool(store.zip_chunks, run_id)
    except RunNotFound:
        return _refuse(404, f"There is no run {run_id} in this store.")
    except StoreError as error:
        return _refuse(403, str(error))
    headers = {
        "Content-Disposition": f'attachment; filename="{file_name(run_id)}"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    if head:
        return _headers_only(media_type="application/zip", headers=headers)
    return _ClosingStream(_in_threads(chunks), media_type="application/zip", headers=headers)


def file_name(run_id: str) -> str:
    """A file name any browser takes as is: the run id's letters, digits, '.', '_' and '-', and `.zip`."""
    return (re.sub(r"[^A-Za-z0-9._-]", "_", run_id).strip(".") or "run") + ".zip"


async def _in_threads(chunks: Iterator[bytes]) -> AsyncGenerator[bytes, None]:
    """`chunks`, each produced in a worker thread; closed when the response ends or the browser goes away, so the
    file being read is closed at once. The lock lets a close wait for a piece still being read (a generator cannot
    be closed while it runs), and the close is shielded from the cancellation that ends a response."""
    lock = threading.Lock()

    def step() -> bytes | None:
        with lock:
            return next(chunks, None)

    def close() -> None:
        with lock:
            getattr(chunks, "close", lambda: None)()

    try:
        while (chunk := await run_in_threadpool(step)) is not None:
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(close)


class _ClosingStream(StreamingResponse):
    """A StreamingResponse that closes its body when it ends in any way: Starlette leaves a body a browser
    stopped reading to the garbage collector."""

    body_iterator: AsyncGenerator[bytes, None]

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def _headers_only(media_type: str, headers: dict[str, str]) -> Response:
    """The answer to a HEAD request: a GET's status and headers, no body. The GET streams its archive without a
    length (its size is known only once it is written), so this one states none either, rather than a false 0."""
    response = Response(media_type=media_type, headers=headers)
    del response.headers["content-length"]
    return response


def _refuse(status: int, message: str) -> PlainTextResponse:
    return PlainTextResponse(message + "\n", status_code=status, headers={"Cache-Control": "no-store"})
