"""The Runs page's import of a run zip (AppTest): offered to visitors who may edit, never in viewer mode; a run
zip is added under a new id, a hostile one is refused with the reason as plain text."""

from __future__ import annotations

import pytest
from apptest_pages import open_app
from streamlit import config
from test_run_import import _valid_files, _zip

from core.store import RunStore


@pytest.fixture(autouse=True)
def local_server():
    """A server only this machine reaches (`server.address`, as .streamlit/config.toml sets it): a local visitor may
    edit unless STRATA_VIEWER_MODE is set."""
    before = config.get_option("server.address")
    config.set_option("server.address", "localhost")
    yield
    config.set_option("server.address", before)


def _texts(at) -> list[str]:
    return [element.value for element in at.text]


def test_the_runs_page_imports_a_run_zip_and_refuses_a_hostile_one(tmp_path, monkeypatch):
    monkeypatch.delenv("STRATA_VIEWER_MODE", raising=False)
    root = tmp_path / "runs"
    files = _valid_files(tmp_path)
    at = open_app(root, "runs")  # an empty store: the page offers the import all the same
    assert not at.exception and at.button(key="import_run").disabled
    at.file_uploader(key="import_zip").upload("small.zip", _zip(files.items()).getvalue(), "application/zip").run()
    at.button(key="import_run").click().run()
    assert not at.exception
    [run_id] = RunStore(str(root)).run_ids()
    assert f"Imported small.zip as run {run_id}." in _texts(at)
    assert run_id in set(at.dataframe[0].value["id"])  # listed at once

    hostile = _zip([("../outside/run.json", files["small/run.json"])]).getvalue()
    at.file_uploader(key="import_zip").set_value(("hostile.zip", hostile, "application/zip")).run()
    at.button(key="import_run").click().run()
    assert not at.exception
    [refusal] = [text for text in _texts(at) if text.startswith("Not imported:")]
    assert "leaves its folder" in refusal
    assert RunStore(str(root)).run_ids() == [run_id] and not (tmp_path / "outside").exists()


def test_viewer_mode_offers_no_import(tmp_path, monkeypatch):
    monkeypatch.setenv("STRATA_VIEWER_MODE", "1")
    at = open_app(tmp_path / "runs", "runs")
    assert not at.exception
    assert not at.get("file_uploader") and not [b for b in at.button if b.key == "import_run"]
