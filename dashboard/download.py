"""The run download: `GET <base>/_strata/download/<run id>` streams the run folder as a zip archive.

A Starlette route of the `st.App` in `app.py`, outside Streamlit's sessions, so the archive goes from the store to the
browser piece by piece (`RunStore.zip_chunks`): never whole in the server's memory or on its disk, and read from the
store in worker threads, never on the event loop. Who may download is decided as for the pages
(`context.permissions.access_of`, the rule in `access.py`): without sign-in, whoever may open the pages; with sign-in,
a signed-in viewer or editor, known from Streamlit's signed sign-in cookie (`streamlit_internals`). Anyone else gets
403, an invalid id 400, an unknown run 404, a run the store refuses to serve (a link to a folder elsewhere, a damaged
run.json) 403, each with a plain-text reason and never a byte of the run.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator

import streamlit as st
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
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
    try:
        chunks = await run_in_threadpool(store.zip_chunks, run_id)
    except RunNotFound:
        return _refuse(404, f"There is no run {run_id} in this store.")
    except StoreError as error:
        return _refuse(403, str(error))
    return StreamingResponse(
        _in_threads(chunks),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{file_name(run_id)}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


def file_name(run_id: str) -> str:
    """A file name any browser takes as is: the run id's letters, digits, '.', '_' and '-', and `.zip`."""
    return (re.sub(r"[^A-Za-z0-9._-]", "_", run_id).strip(".") or "run") + ".zip"


async def _in_threads(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """`chunks`, each produced in a worker thread; closed (in a thread too) when the response ends or the browser
    goes away, so the file being read is closed at once."""
    try:
        async for chunk in iterate_in_threadpool(chunks):
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await run_in_threadpool(close)


def _refuse(status: int, message: str) -> PlainTextResponse:
    return PlainTextResponse(message + "\n", status_code=status, headers={"Cache-Control": "no-store"})
