"""The run download route (`dashboard/download.py`): a zip streamed as it is written, the store's guards, the
status codes, and private Streamlit APIs kept in `dashboard/streamlit_internals.py`.

The route is driven here as an ASGI app in this process, message by message, so what it sends can be counted; the
browser tests with sign-in are in tests/test_e2e_access.py."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import shutil
import threading
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from starlette.applications import Starlette

from core.store import RunStore
from core.store.admin import ZIP_CHUNK
from dashboard import download

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(runs_copy, monkeypatch):
    """(root, ids) of a private copy of the recorded runs, served by the route (STRATA_RUNS)."""
    monkeypatch.setenv("STRATA_RUNS", runs_copy)
    monkeypatch.delenv("STRATA_VIEWER_MODE", raising=False)
    ids = {s.dataset: s.id for s in RunStore(runs_copy).list_runs()}
    return runs_copy, ids


class Response:
    """What the app sent: status, headers, and the body's pieces (or only their count and digest)."""

    def __init__(self, keep: bool):
        self.status = 0
        self.headers: dict[str, str] = {}
        self.pieces: list[bytes] = []
        self.count = 0
        self.size = 0
        self.digest = hashlib.sha256()
        self.keep = keep

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)


def get(
    path: str,
    *,
    keep: bool = True,
    client: str = "127.0.0.1",
    leave_after: int | None = None,
    spec: str = "2.4",
    method: str = "GET",
) -> Response:
    """GET (or `method`) `path` from an app that has the download route only, as a local browser would; `keep=False`
    keeps no body piece (for measuring memory); `leave_after`: the browser goes away after that many body pieces,
    which a server of ASGI `spec` 2.4 reports as a failing send, an older one as a disconnect message."""
    app = Starlette(routes=[download.route()])
    response = Response(keep)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8501")],
        "client": (client, 50000),
        "server": ("127.0.0.1", 8501),
    }

    async def run() -> None:
        requested, gone = asyncio.Event(), asyncio.Event()

        async def receive():
            if not requested.is_set():
                requested.set()
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()  # the browser stays until the response ends, or it leaves
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                response.status = message["status"]
                response.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
            elif message["type"] == "http.response.body" and message.get("body"):
                response.count += 1
                response.size += len(message["body"])
                response.digest.update(message["body"])
                if response.keep:
                    response.pieces.append(message["body"])
                if leave_after is not None and response.count >= leave_after:
                    if spec >= "2.4":
                        raise OSError("the browser went away")
                    gone.set()
                    await asyncio.sleep(3600)  # this send never returns: the response is cancelled

        try:
            await app(scope, receive, send)
        except Exception:
            if leave_after is None:
                raise

    asyncio.run(run())
    return response


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_streamed_archive_is_the_run(store):
    root, ids = store
    run_id = ids["spiral"]
    response = get(f"/_strata/download/{run_id}")
    assert response.status == 200, response.body
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"] == f'attachment; filename="{run_id}.zip"'
    with zipfile.ZipFile(io.BytesIO(response.body)) as archive:
        assert archive.testzip() is None
        unpacked = {name.removeprefix(f"{run_id}/"): archive.read(name) for name in archive.namelist()}
    assert unpacked == files_of(Path(root) / run_id)
    assert any(name.startswith("snapshots/") for name in unpacked)
    imported = RunStore(root).import_zip(io.BytesIO(response.body))  # and it is a run this dashboard imports
    assert RunStore(root).run(imported).epochs() == RunStore(root).run(run_id).epochs()


def test_the_route_streams_in_pieces_read_off_the_event_loop_and_its_memory_does_not_grow_with_the_run(
    store, monkeypatch
):
    root, ids = store
    run_id = ids["digits"]
    big = Path(root) / run_id / "big.bin"
    readers: set[int] = set()
    open_regular = RunStore._open_regular

    def recording(self, path):
        readers.add(threading.get_ident())
        return open_regular(self, path)

    monkeypatch.setattr(RunStore, "_open_regular", recording)
    peaks = {}
    for megabytes in (4, 40):
        big.write_bytes(os.urandom(megabytes << 20))
        expected = sum(p.stat().st_size for p in (Path(root) / run_id).rglob("*") if p.is_file())
        tracemalloc.start()
        response = get(f"/_strata/download/{run_id}", keep=False)
        peaks[megabytes] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert response.status == 200
        assert response.size > expected  # every byte of the run went out, with the zip's headers
        assert response.count >= expected // ZIP_CHUNK  # in pieces of about one chunk, not in one body
    assert threading.get_ident() not in readers  # the files were read in worker threads, not on the event loop
    assert peaks[40] < 8 << 20, f"peak {peaks[40] / 2**20:.1f} MiB while streaming a 40 MiB run"
    assert peaks[40] < peaks[4] + (2 << 20), peaks  # ten times the run, about the same memory


@pytest.mark.parametrize("spec", ["2.4", "2.3"])
def test_a_browser_that_goes_away_stops_the_reading(store, monkeypatch, spec):
    root, ids = store
    (Path(root) / ids["digits"] / "big.bin").write_bytes(os.urandom(8 << 20))
    opened = []
    open_regular = RunStore._open_regular

    def recording(self, path):
        opened.append((path, open_regular(self, path)))
        return opened[-1][1]

    monkeypatch.setattr(RunStore, "_open_regular", recording)
    response = get(f"/_strata/download/{ids['digits']}", keep=False, leave_after=2, spec=spec)
    assert response.count == 2 and response.size < 4 << 20  # it stopped there
    assert opened[-1][0].endswith("big.bin")  # in the middle of the big file (the run's other files are small)
    assert all(handle.closed for _, handle in opened)  # which is closed


def test_links_in_a_run_are_not_followed_and_a_linked_run_folder_is_refused(store, tmp_path):
    root, ids = store
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("root:x:0:0:SECRET")
    run = Path(root) / ids["spiral"]
    os.symlink(outside / "secret.txt", run / "passwd")
    os.symlink(outside, run / "elsewhere")
    os.mkfifo(run / "pipe")  # reading it would block the download for ever
    response = get(f"/_strata/download/{ids['spiral']}")
    assert response.status == 200
    with zipfile.ZipFile(io.BytesIO(response.body)) as archive:
        names = archive.namelist()
        assert b"SECRET" not in b"".join(archive.read(name) for name in names)
    assert not [name for name in names if re.search("passwd|elsewhere|pipe", name)]
    assert f"{ids['spiral']}/run.json" in names

    shutil.copytree(Path(root) / ids["digits"], outside / "linked-run")
    os.symlink(outside / "linked-run", Path(root) / "linked-run")
    refused = get("/_strata/download/linked-run")
    assert refused.status == 403 and refused.headers["content-type"].startswith("text/plain")
    assert b"link to a folder elsewhere" in refused.body and b"PK" not in refused.body


def test_an_unknown_run_is_404_and_an_invalid_id_400(store):
    assert get("/_strata/download/20991231-000000-no-such-run").status == 404
    for bad in ("..", "a%20b", "%2e%2e"):
        response = get(f"/_strata/download/{bad}")
        assert response.status == 400, bad
        assert response.headers["content-type"].startswith("text/plain")


def test_a_damaged_run_is_refused_with_its_reason(store):
    root, ids = store
    (Path(root) / ids["spiral"] / "run.json").write_text("[1, 2]")
    response = get(f"/_strata/download/{ids['spiral']}")
    assert response.status == 403 and b"PK" not in response.body
    assert ids["spiral"].encode() in response.body


def test_without_sign_in_a_read_only_visitor_may_download_too(store, monkeypatch):
    _, ids = store
    assert get(f"/_strata/download/{ids['spiral']}", client="203.0.113.9").status == 200  # a viewer: may read
    monkeypatch.setenv("STRATA_VIEWER_MODE", "1")
    assert get(f"/_strata/download/{ids['spiral']}").status == 200


def test_head_answers_with_the_headers_only_and_writes_no_archive(store, monkeypatch, tmp_path):
    root, ids = store
    run_id = ids["spiral"]
    opened: list[str] = []
    with monkeypatch.context() as patched:
        patched.setattr(RunStore, "_open_regular", lambda self, path: opened.append(path))
        response = get(f"/_strata/download/{run_id}", method="HEAD")
    assert response.status == 200 and response.size == 0
    assert opened == []  # not one file of the run was read
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"] == f'attachment; filename="{run_id}.zip"'
    assert response.headers["cache-control"] == "no-store"
    assert "content-length" not in response.headers  # the GET streams without one: no false length here

    assert get("/_strata/download/20991231-000000-no-such-run", method="HEAD").status == 404
    assert get("/_strata/download/a%20b", method="HEAD").status == 400
    shutil.copytree(Path(root) / ids["digits"], tmp_path / "linked-run")
    os.symlink(tmp_path / "linked-run", Path(root) / "linked-run")
    assert get("/_strata/download/linked-run", method="HEAD").status == 403
    (Path(root) / run_id / "run.json").write_text("[1, 2]")
    assert get(f"/_strata/download/{run_id}", method="HEAD").status == 403
    assert get(f"/_strata/download/{ids['digits']}", method="HEAD", client="203.0.113.9").status == 200  # a viewer


def test_head_is_refused_as_a_get_is_to_whoever_may_not_view(store, monkeypatch):
    from dashboard.access import NONE, Access

    _, ids = store
    monkeypatch.setattr(download, "access_of", lambda user, ip, headers: Access(NONE, "Sign in to see the runs."))
    for method in ("GET", "HEAD"):
        refused = get(f"/_strata/download/{ids['spiral']}", method=method)
        assert refused.status == 403 and refused.headers["content-type"].startswith("text/plain"), method
        assert "content-disposition" not in refused.headers


def test_the_route_lives_under_the_base_url_path(monkeypatch):
    import streamlit as st

    assert download.route().path == "/_strata/download/{run_id}"
    monkeypatch.setattr(st, "get_option", lambda name: "/team/strata/" if name == "server.baseUrlPath" else None)
    assert download.route().path == "/team/strata/_strata/download/{run_id}"
    assert download.link("r1") == "_strata/download/r1"  # relative to a page at <base>/<page>
    assert download.file_name("a b/..") == "a_b_.zip" and download.file_name("..") == "run.zip"


def test_no_module_but_streamlit_internals_touches_a_private_streamlit_api():
    private = re.compile(r"^\s*(from|import) streamlit\.(web|runtime|auth_util|elements|proto)\b|\b_streamlit_user\b")
    users = {
        str(path.relative_to(REPO))
        for folder in ("dashboard", "core")
        for path in (REPO / folder).rglob("*.py")
        if any(private.search(line) for line in path.read_text().splitlines())
    }
    assert users == {"dashboard/streamlit_internals.py"}
