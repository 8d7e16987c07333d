"""Issue 18, as a hostile visitor would try it: damaged run files, Markdown in names and links, symlinks in the store,
lost snapshots and the server's paths. Every test checks that the page still renders and that the other runs are
intact, not only that nothing raised."""

import json
import os
import re
import shutil
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from apptest_pages import open_app, shown
from google.protobuf.json_format import MessageToDict
from test_e2e_browser import browser  # noqa: F401  (the Chromium fixture)

from core.store import RunStore, StoreError
from dashboard.views.text import plain

REPO = Path(__file__).resolve().parents[1]
PAGES = ("", "gradients", "layers", "runs")
HOSTILE = "evil `tick` ![x](http://example.invalid/a.png) <img src=x> :red[boom] [link](http://example.invalid)"
HOSTILE_LAYER = "dense`0` [l](http://example.invalid/l)"


@pytest.fixture(autouse=True)
def _restore_env(monkeypatch):
    monkeypatch.setenv("STRATA_RUNS", os.environ.get("STRATA_RUNS", "runs"))


def ids_of(root) -> dict[str, str]:
    """{"spiral": id, "digits": id} of a copy of the recorded runs."""
    return {s.dataset: s.id for s in RunStore(str(root)).list_runs() if s.dataset in ("spiral", "digits")}


def edit_meta(root, run_id: str, change) -> None:
    path = Path(root) / run_id / "run.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )


def strings(at, fields=None) -> list[tuple[str, str]]:
    """(element type, string) for every string field of every element the app drew, main area and sidebar; only
    the fields named in `fields` when given."""
    found = []

    def collect(kind, value, name=None):
        if isinstance(value, str):
            if fields is None or name in fields:
                found.append((kind, value))
        elif isinstance(value, dict):
            for key, item in value.items():
                collect(kind, item, key)
        elif isinstance(value, list):
            for item in value:
                collect(kind, item, name)

    def walk(node):
        for child in getattr(node, "children", {}).values():
            walk(child)
        proto = getattr(node, "proto", None)
        if proto is not None and hasattr(proto, "DESCRIPTOR"):
            collect(node.type, MessageToDict(proto))

    walk(at._tree)
    return found


MARKDOWN_FIELDS = {
    "body",
    "label",
    "help",
}  # what Streamlit renders as Markdown: element bodies, widget labels, tooltips


def markup_from_the_name(at) -> list[str]:
    """Markdown strings holding an image, a link, an HTML tag or a colour directive that came from HOSTILE."""
    bad = []
    for kind, value in strings(at, MARKDOWN_FIELDS):
        if kind in ("text", "code"):
            continue  # rendered as text, not Markdown
        for pattern in (r"(?<!\\)\]\(http://example\.invalid", r"(?<!\\)<img", r"(?<!\\):red\[", r"(?<!\\)`tick"):
            if re.search(pattern, value):
                bad.append(value)
    return bad


def literal(at, text: str) -> bool:
    """Whether `text` shows literally somewhere: as plain text, or as escaped Markdown."""
    return any(text in value or text in shown(value) for _, value in strings(at))


# ----------------------------------------------------------------------------------------------------------
# 1. Per-run isolation: damaged files are listed with their reason, and everything else keeps working


DAMAGED_META = {
    "listtop": [1, 2],
    "dataset_text": {"dataset": "x"},
    "epochs_text": {"epochs_done": "abc"},
}


@pytest.fixture
def damaged_store(runs_copy):
    """The recorded spiral and digits runs, beside runs with a damaged run.json, bad layer entries and garbage
    probe.npz and snapshot files."""
    ids = ids_of(runs_copy)
    spiral = Path(runs_copy) / ids["spiral"]
    for run_id, content in DAMAGED_META.items():
        shutil.copytree(spiral, Path(runs_copy) / run_id)
        meta = json.loads((spiral / "run.json").read_text())
        (Path(runs_copy) / run_id / "run.json").write_text(
            json.dumps(content if isinstance(content, list) else {**meta, **content})
        )
    shutil.copytree(spiral, Path(runs_copy) / "bad_layers")
    edit_meta(runs_copy, "bad_layers", lambda meta: meta.update(layers=[1, "x", None]))
    shutil.copytree(spiral, Path(runs_copy) / "bad_probe")
    (Path(runs_copy) / "bad_probe" / "probe.npz").write_bytes(b"this is no zip file" * 10)
    return runs_copy, ids


def test_the_store_lists_damaged_runs_with_their_reason_and_reads_the_others(damaged_store):
    root, ids = damaged_store
    listed = {s.id: s for s in RunStore(root).list_runs()}
    assert {s for s in listed if listed[s].status == "damaged"} == {*DAMAGED_META, "bad_layers"}
    assert "holds a list, not an object" in listed["listtop"].damaged
    assert "`dataset` is text, not an object" in listed["dataset_text"].damaged
    assert "`epochs_done` is text, not a whole number" in listed["epochs_text"].damaged
    assert "layer 0 is a number, not an object" in listed["bad_layers"].damaged
    assert listed["bad_probe"].status == "finished" and "probe.npz: not an npz archive" in listed["bad_probe"].damaged
    for run_id in ids.values():
        assert listed[run_id].damaged is None and listed[run_id].status == "finished"
        run = RunStore(root).run(run_id)
        assert run.epochs() == list(range(len(run.epochs()))) and run.probe().size > 0
    with pytest.raises(StoreError, match="damaged probe set"):
        RunStore(root).run("bad_probe").probe()


def test_the_cli_reports_and_skips_a_damaged_run_and_fails_only_the_command_naming_it(damaged_store):
    root, ids = damaged_store
    listing = cli("runs", "--runs", root)
    assert listing.returncode == 0 and "Traceback" not in listing.stderr
    for run_id in ids.values():
        assert any(line.startswith(run_id) and "finished" in line for line in listing.stdout.splitlines())
    for run_id in (*DAMAGED_META, "bad_layers"):
        assert (
            re.search(rf"^{run_id}\s+damaged", listing.stdout, re.M)
            and f"{run_id}: Run '{run_id}' is damaged" in listing.stdout
        )
    for command in ("show", "diagnose"):
        for run_id in ("listtop", "dataset_text", "epochs_text", "bad_layers"):
            result = cli(command, run_id, "--runs", root)
            assert result.returncode == 2 and "is damaged" in result.stderr and "Traceback" not in result.stderr, (
                result.stderr
            )
        healthy = cli(command, ids["digits"], "--runs", root)
        assert healthy.returncode in (0, 1) and ids["digits"] in healthy.stdout and "Traceback" not in healthy.stderr


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_beside_damaged_runs_and_shows_the_good_ones(damaged_store, page):
    root, ids = damaged_store
    at = open_app(root, page, run=ids["digits"])
    assert not at.exception, at.exception
    picker = at.sidebar.selectbox(key="run")
    assert picker.value == ids["digits"] and set(ids.values()) <= set(picker.options)
    assert not set(picker.options) & {*DAMAGED_META, "bad_layers"}  # cannot be opened: listed on the Runs page instead
    assert any("cannot be read fully" in c.value for c in at.sidebar.caption)
    if page == "runs":
        [damaged] = [d.value for d in at.dataframe if "why" in d.value.columns]
        [listing] = [d.value for d in at.dataframe if "val accuracy" in d.value.columns]
        assert set(ids.values()) <= set(listing["id"])
        reasons = dict(zip(damaged["id"], damaged["why"]))
        assert set(reasons) == {*DAMAGED_META, "bad_layers", "bad_probe"}
        assert "`epochs_done` is text" in reasons["epochs_text"]
    elif page == "":
        assert "Every layer at epoch 2" in [s.value for s in at.subheader]


def test_a_link_to_a_damaged_run_says_why_and_shows_another(damaged_store):
    root, ids = damaged_store
    at = open_app(root, run="dataset_text")
    assert not at.exception
    notice = " ".join(shown(w.value) for w in at.warning)
    assert "dataset" in notice and "is text, not an object" in notice
    assert at.sidebar.selectbox(key="run").value in ids.values()
    assert "Every layer at epoch" in " ".join(s.value for s in at.subheader)


@pytest.mark.parametrize("page", ["", "layers"])
def test_a_garbage_probe_set_is_a_message_on_its_pages_not_a_traceback(damaged_store, page):
    root, ids = damaged_store
    at = open_app(root, page, run="bad_probe", sel="0-3")
    assert not at.exception, at.exception
    said = " ".join(e.value for e in [*at.error, *at.warning])
    assert "probe" in said and "not an npz archive" in said, said
    at = open_app(root, page, run=ids["spiral"])  # the other runs are untouched
    assert not at.exception and not at.error


def test_damaged_snapshot_headers_are_skipped_with_their_reason(runs_copy):
    from core.store import RunWriter

    writer = RunWriter(runs_copy, "headers", {"layers": [{"name": "dense_0"}], "every": 1})
    writer.write_snapshot(0, {"kind": "epoch", "epoch": 0, "layers": [{"grad": {"kernel": {"norm": 1.0}}}]}, {})
    writer.write_snapshot(1, {"kind": "epoch", "epoch": "one", "layers": []}, {})
    writer.write_snapshot(2, {"kind": "epoch", "epoch": 2, "layers": [{"activation": {"mean": "high"}}]}, {})
    writer.write_snapshot(3, {"kind": "epoch", "epoch": 3, "layers": ["x"]}, {})
    writer.update_meta(epochs_done=3, snapshots=4)
    writer.set_status("finished")
    run = RunStore(runs_copy).run("headers")
    assert run.epochs() == [0]
    damaged = run.damaged_files()
    assert "`epoch` is text, not a number" in damaged["snapshots/s000001.npz"]
    assert "`activation` is an object, not an object of numbers" in damaged["snapshots/s000002.npz"]
    assert "layer record 0 is text" in damaged["snapshots/s000003.npz"]
    assert run.lost_snapshots().epochs == (1, 2, 3)


# ----------------------------------------------------------------------------------------------------------
# 2. User text is rendered as text


@pytest.fixture
def hostile_store(runs_copy):
    """Both recorded runs renamed to HOSTILE, and the spiral's first layer named HOSTILE_LAYER."""
    ids = ids_of(runs_copy)
    store = RunStore(runs_copy)
    for run_id in ids.values():
        store.rename(run_id, HOSTILE)
    edit_meta(runs_copy, ids["spiral"], lambda meta: meta["layers"][0].update(name=HOSTILE_LAYER))
    return runs_copy, ids


@pytest.mark.parametrize("page", PAGES)
def test_a_hostile_run_name_renders_as_text_on_every_page(hostile_store, page, monkeypatch):
    monkeypatch.delenv("STRATA_VIEWER_MODE", raising=False)
    root, ids = hostile_store
    at = open_app(root, page, run=ids["spiral"], compare=ids["digits"], layer=HOSTILE_LAYER)
    assert not at.exception, at.exception
    assert not markup_from_the_name(at), markup_from_the_name(at)
    assert literal(at, HOSTILE), "the run name is not shown as written"
    assert any(plain(HOSTILE) in c.value for c in at.sidebar.caption)  # the status line
    if page != "runs":
        assert literal(at, HOSTILE_LAYER)
    if page == "gradients":
        compared = [c.value for c in at.caption if c.value.startswith("Compared run")]
        assert compared and shown(compared[0]).startswith(f"Compared run {HOSTILE}:")
    if page == "runs":
        assert f"Manage {plain(HOSTILE)}" in [s.value for s in at.subheader]
        assert at.checkbox(key="confirm_delete").label == f"Yes, delete {plain(HOSTILE)} and all of its snapshots"


def test_the_gradients_healthy_line_names_the_run_as_text(hostile_store):
    root, ids = hostile_store
    at = open_app(root, "gradients", run=ids["digits"])
    assert not at.exception
    healthy = [s.value for s in at.success if s.value.startswith("No problems found in")]
    assert not healthy or shown(healthy[0]).startswith(f"No problems found in {HOSTILE}:")
    assert not markup_from_the_name(at)


def test_a_link_parameter_cannot_break_out_of_the_notice(recorded_runs):
    root, ids = recorded_runs
    layer = "x` ![x](http://example.invalid/a.png) `y"
    at = open_app(root, run=ids["spiral"], layer=layer, unit="` [link](http://example.invalid) `")
    assert not at.exception
    notice = next(w.value for w in at.warning if "could not be shown exactly" in w.value)
    assert "](http" not in notice and shown(notice).count(layer) == 1
    at = open_app(root, "layers", run=ids["spiral"], unit="` [link](http://example.invalid) `")
    assert not at.exception and not [w for w in at.warning if "](http" in w.value]
    assert any("is not a unit of" in w.value for w in at.warning)


def test_the_markdown_escape_keeps_the_text_and_removes_all_markup():
    for text in (
        HOSTILE,
        HOSTILE_LAYER,
        ":material/home: $x^2$ *a* _b_ ~c~ # h",
        "dense_1",
        "a\\b",
        "<script>x</script>",
    ):
        escaped = plain(text)
        assert shown(escaped) == text
        assert not re.search(r"(?<!\\)[`*\[\]()<>:$~#!]", escaped)
    assert plain("line one\n# heading\n\n- item") == "line one \\# heading \\- item"
    assert plain("dense_1") == "dense_1" and plain("_b_") == "\\_b\\_"


# ----------------------------------------------------------------------------------------------------------
# 3. Downloads stay inside the store


@pytest.fixture
def linked_store(runs_copy, tmp_path):
    """A run with a link to a secret file and to a folder outside the store, and a run folder that is a link."""
    ids = ids_of(runs_copy)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("root:x:0:0:SECRET")
    run = Path(runs_copy) / ids["spiral"]
    os.symlink(outside / "secret.txt", run / "passwd")
    os.symlink(outside, run / "elsewhere")
    os.mkfifo(run / "pipe")  # reading it would block the download for ever
    shutil.copytree(Path(runs_copy) / ids["digits"], outside / "linked-run")
    os.symlink(outside / "linked-run", Path(runs_copy) / "linked-run")
    return runs_copy, ids


def test_a_zip_never_follows_links_out_of_the_run(linked_store):
    root, ids = linked_store
    with zipfile.ZipFile(RunStore(root).zip_file(ids["spiral"])) as archive:
        names = archive.namelist()
        contents = b"".join(archive.read(name) for name in names)
    assert f"{ids['spiral']}/run.json" in names and f"{ids['spiral']}/probe.npz" in names
    assert any(name.startswith(f"{ids['spiral']}/snapshots/s") for name in names)
    assert not [name for name in names if "passwd" in name or "elsewhere" in name or "pipe" in name]
    assert b"SECRET" not in contents


def test_a_linked_run_folder_is_not_offered_for_download(linked_store):
    root, _ = linked_store
    store = RunStore(root)
    assert store.run("linked-run").epochs()  # it is still viewable
    for refuse in (store.zip_file, store.check_download):
        with pytest.raises(StoreError, match="link to a folder elsewhere"):
            refuse("linked-run")
    at = open_app(root, "runs", run="linked-run")
    assert not at.exception
    assert not at.get("link_button") and at.button(key="download_refused").disabled
    assert any("link to a folder elsewhere" in c.value for c in at.caption)


def test_the_viewer_mode_download_serves_the_run_and_nothing_else(linked_store, monkeypatch):
    root, ids = linked_store
    monkeypatch.setenv("STRATA_VIEWER_MODE", "1")
    at = open_app(root, "runs", run=ids["spiral"])
    assert not at.exception
    [button] = at.get("link_button")
    assert button.proto.label == "Download as zip" and button.proto.url.endswith(ids["spiral"])
    with zipfile.ZipFile(
        RunStore(root).zip_file(ids["spiral"])
    ) as archive:  # what the route streams (test_download.py)
        assert b"SECRET" not in b"".join(archive.read(name) for name in archive.namelist())


def test_the_zip_is_built_in_a_file_not_in_memory(runs_copy):
    ids = ids_of(runs_copy)
    big = os.urandom(24 << 20)
    (Path(runs_copy) / ids["digits"] / "big.bin").write_bytes(big)
    store = RunStore(runs_copy)
    store.run(ids["digits"])
    tracemalloc.start()
    archive_file = store.zip_file(ids["digits"])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB while zipping a 24 MiB run"
    with archive_file, zipfile.ZipFile(archive_file) as archive:
        assert archive.read(f"{ids['digits']}/big.bin") == big


# ----------------------------------------------------------------------------------------------------------
# 4. Say what is missing


@pytest.fixture
def lossy_store(runs_copy):
    """The spiral run (finished, epochs 0-3) after it lost epoch 2's file and epoch 1's turned to garbage."""
    ids = ids_of(runs_copy)
    snapshots = Path(runs_copy) / ids["spiral"] / "snapshots"
    (snapshots / "s000002.npz").unlink()
    (snapshots / "s000001.npz").write_bytes(b"\0" * 100)
    return runs_copy, ids


def test_a_run_that_lost_snapshots_says_how_many_which_and_why(lossy_store):
    root, ids = lossy_store
    run = RunStore(root).run(ids["spiral"])
    lost = run.lost_snapshots()
    assert run.epochs() == [0, 3] and lost.epochs == (1, 2)
    assert lost.files["snapshots/s000001.npz"].startswith("damaged (not an npz archive")
    assert lost.files["snapshots/s000002.npz"].startswith("missing")
    assert not RunStore(root).run(ids["digits"]).lost_snapshots()

    shown = cli("show", ids["spiral"], "--runs", root)
    assert shown.returncode == 0
    assert "2 captured epoch(s) have no readable snapshot: 1, 2." in shown.stdout
    assert "s000001.npz is damaged (not an npz archive)" in shown.stdout and "s000002.npz is missing" in shown.stdout
    summary = json.loads(cli("show", ids["spiral"], "--runs", root, "--json").stdout)
    assert summary["lost_snapshots"]["epochs"] == [1, 2] and summary["epochs"] == [0, 3]


@pytest.mark.parametrize("page", ["", "gradients", "layers"])
def test_every_page_of_a_run_that_lost_snapshots_says_so(lossy_store, page):
    root, ids = lossy_store
    at = open_app(root, page, run=ids["spiral"])
    assert not at.exception
    warning = next(w.value for w in at.warning if "lost 2 of its captured snapshots" in w.value)
    assert "epoch(s) have no readable snapshot: 1, 2" in shown(warning)
    assert "s000002.npz is missing" in shown(warning)
    assert any("2 snapshot(s) lost" in c.value for c in at.sidebar.caption)
    at = open_app(root, page, run=ids["digits"])  # a whole run says nothing
    assert not at.exception and not [w for w in at.warning if "lost" in w.value]


def test_diagnose_fails_on_a_run_with_nothing_to_diagnose(lossy_store):
    root, ids = lossy_store
    for name in os.listdir(Path(root) / ids["spiral"] / "snapshots"):
        (Path(root) / ids["spiral"] / "snapshots" / name).write_bytes(b"garbage")
    result = cli("diagnose", ids["spiral"], "--runs", root)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no readable snapshot, so there is nothing to diagnose" in result.stderr
    assert "4 captured epoch(s) have no readable snapshot" in result.stderr
    assert cli("diagnose", ids["digits"], "--runs", root).returncode in (0, 1)  # the other run is diagnosed as before


# ----------------------------------------------------------------------------------------------------------
# 5. The server's store path is never shown


def test_no_page_shows_the_store_path(runs_copy, tmp_path):
    ids = ids_of(runs_copy)
    secret_root = str(tmp_path / "srv-secret-runs")
    for root, run in ((runs_copy, ids["spiral"]), (secret_root, None)):
        for page in PAGES:
            at = open_app(root, page, **({"run": run} if run else {}))
            assert not at.exception
            shown = [value for _, value in strings(at) if str(tmp_path) in value or "srv-secret" in value]
            assert not shown, (root, page, shown)
    at = open_app(runs_copy, run="no-such-run")  # the notice for a missing run
    assert not [value for _, value in strings(at) if str(tmp_path) in value]
    at = open_app("nosuchprotocol://srv-secret-bucket/runs")
    assert not at.exception and "Cannot read the run store" in at.error[0].value
    assert not [value for _, value in strings(at) if "srv-secret" in value]


# ----------------------------------------------------------------------------------------------------------
# 2, in a real browser: nothing in the served page's DOM comes from the name


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Chromium at /usr/bin/chromium")
def test_a_hostile_run_name_puts_no_image_or_link_in_the_served_page(hostile_store, browser):  # noqa: F811
    from test_e2e_browser import start_server

    root, ids = hostile_store
    process, base = start_server(root)
    context = browser.new_context(viewport={"width": 1400, "height": 1800})
    page = context.new_page()
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    shots = os.environ.get("STRATA_SCREENSHOTS")
    try:
        for path, heading in (
            ("/", "Embeddings"),
            ("/gradients", "Gradients & activations"),
            ("/layers", "Layers"),
            ("/runs", "Runs"),
        ):
            page.goto(f"{base}{path}?run={ids['spiral']}&compare={ids['digits']}")
            main, sidebar = page.get_by_test_id("stMain"), page.get_by_test_id("stSidebar")
            main.get_by_role("heading", name=heading).first.wait_for(timeout=60_000)
            opening = HOSTILE.split("http")[0]  # the name as written, up to where an invisible joiner breaks "http:"
            sidebar.get_by_text(opening).first.wait_for(timeout=30_000)  # the status line
            if path == "/runs":
                main.get_by_text(f"Manage {opening}").wait_for(timeout=30_000)
                main.get_by_text(f"Yes, delete {opening}").wait_for(timeout=30_000)
            else:
                page.locator(".js-plotly-plot").first.wait_for(state="visible", timeout=60_000)
            if shots:
                page.screenshot(path=os.path.join(shots, f"hostile{path.replace('/', '-') or '-'}.png"), full_page=True)
            assert page.locator("img[src*='example.invalid'], img[src='x']").count() == 0, path
            assert page.locator("a[href*='example.invalid']").count() == 0, path
            assert page.get_by_test_id("stException").count() == 0, path
            assert HOSTILE in page.inner_text("body").replace("\u2060", ""), path
        assert not [url for url in requested if "example.invalid" in url]
    finally:
        context.close()
        process.terminate()
        process.wait(10)
