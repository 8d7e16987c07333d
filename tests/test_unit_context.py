"""dashboard/context/ on its own: the link read into a view state, the view state kept valid for the run, the
share link, the selection, and the pure helpers. Driven through Streamlit's AppTest with a small script that runs
only `context.prepare()`, the sidebar (which publishes the view) and `context.finish()`, on synthetic runs."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import pytest
from apptest_pages import open_context, printed, printed_view
from streamlit.testing.v1 import AppTest

from core.store import RunStore, RunWriter
from dashboard import context
from dashboard import state as schema
from dashboard.synthetic import synthetic_run


@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> str:
    """alpha: 3 layers, epochs 0-4, 60 samples; beta, written after it (the newest): 2 layers, epochs 0-2."""
    root = str(tmp_path_factory.mktemp("context"))
    synthetic_run(root, "alpha", layers=3, snapshots=5, points=60, classes=3, components=8, width=8)
    synthetic_run(root, "beta", layers=2, snapshots=3, points=60, classes=3, components=8, width=8)
    return root


def _notices(at: AppTest) -> list[str]:
    return [w.value for w in at.main.warning]


def _query(link: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(link).query, keep_blank_values=True)


# ----------------------------------------------------------------------------------------------------------------
# Opening a link


def test_without_a_link_the_newest_run_opens_at_its_latest_epoch(store_root):
    at = open_context(store_root)
    assert not at.exception and _notices(at) == []
    shown = printed(at)
    assert shown["run"] == "beta" and RunStore(store_root).list_runs()[0].id == "beta"
    assert printed_view(at) == replace(schema.DEFAULTS, run="beta", layer="dense_0", epoch=2)
    assert shown["layer_index"] == "0" and shown["snapshot_epoch"] == "2" and shown["selection"] == ""


def test_a_link_opens_exactly_its_view(store_root):
    params = dict(
        run="alpha",
        layer="dense_1",
        epoch="1",
        pcx="2",
        pcy="3",
        pcz="4",
        dims="3d",
        color="pred",
        size="8",
        opacity="0.5",
        sel="1-3,9",
    )
    at = open_context(store_root, **params)
    assert not at.exception and _notices(at) == []
    assert printed_view(at) == schema.ViewState(
        run="alpha",
        layer="dense_1",
        epoch=1,
        pcx=2,
        pcy=3,
        pcz=4,
        dims="3d",
        color="pred",
        size=8,
        opacity=0.5,
        sel=(1, 2, 3, 9),
    )
    shown = printed(at)
    assert shown["layer_index"] == "1" and shown["snapshot_epoch"] == "1" and shown["selection"] == "1,2,3,9"


def test_the_share_link_round_trips_the_view(store_root):
    at = open_context(store_root, run="alpha", layer="output", epoch="3", pcx="3", color="correct", sel="5,0-1")
    view = printed_view(at)
    link = printed(at)["share"]
    query = _query(link)
    assert query["run"] == ["alpha"] and query["layer"] == ["output"] and query["epoch"] == ["3"]
    assert query["pcx"] == ["3"] and query["color"] == ["correct"] and query["sel"] == ["0-1,5"]
    assert "pcy" not in query and "size" not in query  # defaults are left out of the link
    parsed, problems = schema.parse_query(query)
    assert problems == [] and parsed == view
    again = open_context(store_root, **{key: values[-1] for key, values in query.items()})
    assert _notices(again) == [] and printed_view(again) == view
    assert printed(again)["share"] == link


def test_the_share_link_keeps_a_pages_own_controls(store_root):
    at = open_context(store_root, run="alpha")
    at.session_state["unit"] = 4  # a page's own URL-bound widget (context.PAGE_CONTROLS)
    at.run()
    query = _query(printed(at)["share"])
    assert query["unit"] == ["4"] and query["run"] == ["alpha"]


def test_an_unknown_run_in_the_link_falls_back_to_the_newest_with_a_notice(store_root):
    at = open_context(store_root, run="no-such-run", layer="dense_1")
    assert not at.exception
    notices = _notices(at)
    assert notices[0] == (
        "There is no run “no-such-run” in this store (deleted, or a link from another host). "
        "Showing the newest run, “synthetic 2x3x60”, instead."
    )
    assert "Run beta has no layer “dense_1”; showing “dense_0” instead." in notices
    assert printed_view(at).run == "beta" and printed_view(at).layer == "dense_0"


def test_a_run_id_that_is_a_path_is_never_opened(store_root):
    at = open_context(store_root, run="../alpha")
    assert not at.exception and printed_view(at).run == "beta"
    assert _notices(at) == [
        "“run=../alpha” is not a run id (letters, digits, '.', '_' and '-' only): showing the newest run."
    ]


def test_values_the_run_does_not_have_fall_back_with_notices(store_root):
    at = open_context(store_root, run="alpha", layer="nope", epoch="99", pcx="9", color="sideways", size="500")
    assert not at.exception
    notices = " ".join(_notices(at))
    assert "Run alpha has no layer “nope”; showing “dense_0” instead." in notices
    assert "Run alpha has no snapshot at epoch 99 (it has 0–4); showing epoch 4." in notices
    assert "Run alpha stores 8 components, so “pcx” is back to PC1." in notices
    assert "color" in notices and "size" in notices
    view = printed_view(at)
    assert (view.layer, view.epoch, view.pcx, view.color, view.size) == ("dense_0", 4, 1, "label", schema.DEFAULTS.size)


def test_an_out_of_range_selection_is_trimmed_to_the_probe(store_root):
    at = open_context(store_root, run="alpha", sel="2,59,60,500")
    assert "The selection was trimmed to 2 rows" in " ".join(_notices(at))
    assert printed_view(at).sel == (2, 59) and printed(at)["selection"] == "2,59"


# ----------------------------------------------------------------------------------------------------------------
# Changing the view


def test_set_selection_sorts_and_dedups_and_selection_reads_rows_the_probe_has(store_root):
    at = open_context(store_root, run="alpha")
    at.button(key="select_rows").click().run()
    at.run()
    assert printed(at)["selection"] == "3,7"  # 10,000 is not a probe row of a 60-sample run
    assert printed_view(at).sel == (3, 7)
    assert _query(printed(at)["share"])["sel"] == ["3,7"]


def test_picking_another_run_moves_layer_and_epoch_to_values_it_has(store_root):
    at = open_context(store_root, run="alpha", layer="dense_1", epoch="3", sel="4")
    at.sidebar.selectbox(key="run").set_value("beta").run()
    assert not at.exception
    view = printed_view(at)
    assert view.run == "beta" and view.layer == "dense_0"  # beta has no dense_1
    assert view.epoch == 2  # beta's epochs are 0-2: the nearest to 3
    assert view.sel == () and printed(at)["selection"] == ""  # rows of another run's probe mean nothing here
    assert printed(at)["snapshot_epoch"] == "2"


def test_following_the_latest_epoch_follows_it_into_the_next_run(store_root):
    at = open_context(store_root, run="beta")  # at its latest epoch, 2
    at.sidebar.selectbox(key="run").set_value("alpha").run()
    assert printed_view(at).epoch == 4 and printed(at)["snapshot_epoch"] == "4"


def test_an_empty_store_shows_nothing_and_raises_nothing(tmp_path):
    at = open_context(str(tmp_path))
    assert not at.exception and _notices(at) == []
    shown = printed(at)
    assert shown["run"] == "None" and shown["layer_index"] == "0" and shown["snapshot_epoch"] == "None"
    assert printed_view(at) == schema.DEFAULTS


# ----------------------------------------------------------------------------------------------------------------
# Pure helpers


def test_runs_root_is_strata_runs_or_runs(monkeypatch):
    monkeypatch.delenv("STRATA_RUNS", raising=False)
    assert context.runs_root() == "runs"
    monkeypatch.setenv("STRATA_RUNS", "memory://elsewhere")
    assert context.runs_root() == "memory://elsewhere"


def test_training_progress(tmp_path, store_root):
    assert context.training_progress(RunStore(store_root).run("alpha")) == (4, 4, True)
    RunWriter(str(tmp_path), "mid", {"name": "mid", "epochs_planned": 10, "epochs_done": 3})
    RunWriter(str(tmp_path), "unknown", {"name": "unknown", "epochs_done": 2})
    store = RunStore(str(tmp_path))
    assert context.training_progress(store.run("mid")) == (3, 10, False)
    assert context.training_progress(store.run("unknown")) == (2, 0, False)  # no plan: never "ended"


def test_server_log_prints_each_message_once(capsys):
    message = f"unit test message {os.getpid()}"
    context.server_log(message)
    context.server_log(message)
    assert capsys.readouterr().err.count(f"strata: {message}") == 1


def test_run_facts_of_a_run_and_of_none(store_root):
    assert context.run_facts(None) is None
    facts = context.run_facts(RunStore(store_root).run("alpha"))
    assert facts == schema.RunFacts(
        id="alpha",
        layers=("dense_0", "dense_1", "output"),
        epochs=(0, 1, 2, 3, 4),
        components=8,
        probe_size=60,
        has_labels=True,
    )


def test_notices_quote_the_link_as_given(store_root):
    """A notice repeats the link's value; the page puts it into Markdown only through `plain()` (main.py)."""
    at = open_context(store_root, run="alpha", layer="**bold**")
    assert any(re.search(r"no layer “\*\*bold\*\*”", notice) for notice in _notices(at))
