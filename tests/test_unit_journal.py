"""core/store/journal.py on its own: entries written, named, read back without pickle, deleted when done."""

from __future__ import annotations

import io
import json
import uuid
import zipfile

import numpy as np
import pytest

from core.store.files import META_KEY, Files, npz_bytes
from core.store.journal import (
    CAPTURE,
    ENTRY_NAME,
    JOURNAL_DIR,
    Journal,
    capture_key,
    pending_captures,
    read_journal,
)


def _capture(epoch: int, step: int, kind: str = "epoch") -> dict:
    state = [np.full((3, 2), float(epoch), np.float32), np.arange(2, dtype=np.float32) + step]
    return {
        "kind": kind,
        "epoch": epoch,
        "step": step,
        "batch": None,
        "logs": {"loss": 1.0 / (epoch + 1)},
        "state": state,
    }


def _names(root, run_id: str = "run") -> list[str]:
    files = Files(str(root))
    return files.listdir(files.join(run_id, JOURNAL_DIR))


def _npz_members(path) -> dict[str, str]:
    """{member: dtype} of an npz file, read as a zip (without numpy)."""
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name)[:10].decode("latin-1") for name in archive.namelist()}


# ----------------------------------------------------------------------------------------------------------------
# Names


def test_entry_names_parse():
    match = ENTRY_NAME.match("000012-capture-batch-3-45.npz")
    assert match.groups() == ("000012", "capture", "batch", "3", "45")
    assert ENTRY_NAME.match("000001-batch_gradients.npz").groups() == ("000001", "batch_gradients", None, None, None)
    assert ENTRY_NAME.match("000000-attach.npz").group(2) == "attach"
    for name in (
        "setup.npz",
        "12-epoch.npz",
        "000001-epoch.npz.tmp",
        ".tmp-000001-epoch.npz",
        "000001-Epoch.npz",
        "000001-capture-epoch-1.npz",
        "000001-epoch",
    ):
        assert ENTRY_NAME.match(name) is None, name


def test_capture_key_is_kind_epoch_step_and_defaults_to_epoch():
    assert capture_key({"kind": "batch", "epoch": 2, "step": 30.0}) == ("batch", 2, 30)
    assert capture_key({"epoch": 4, "step": 12}) == ("epoch", 4, 12)


# ----------------------------------------------------------------------------------------------------------------
# Writing and reading back


def test_entries_are_named_in_order_and_read_back_in_order(tmp_path):
    journal = Journal(str(tmp_path), "run")
    setup = journal.append("setup", {"model": "{}", "x": np.ones((4, 2), np.float32), "layers": 2})
    names = [
        journal.append("attach", {"root": str(tmp_path), "run_id": "run", "builder": {"components": 3}}),
        journal.append(CAPTURE, _capture(0, 0)),
        journal.append("epoch", {"epoch": 1, "history": {"epoch": [1], "loss": [0.5]}, "nan_epoch": None}),
        journal.append(CAPTURE, _capture(1, 8, kind="epoch")),
        journal.append(CAPTURE, _capture(1, 10, kind="batch")),
    ]
    assert setup == "setup.npz"
    assert names == [
        "000000-attach.npz",
        "000001-capture-epoch-0-0.npz",
        "000002-epoch.npz",
        "000003-capture-epoch-1-8.npz",
        "000004-capture-batch-1-10.npz",
    ]
    assert _names(tmp_path) == sorted(names + [setup])

    found_setup, entries = read_journal(Files(str(tmp_path)), "run")
    assert found_setup.name == "setup.npz" and found_setup.kind == "setup" and found_setup.key is None
    assert [e.name for e in entries] == names
    assert [e.kind for e in entries] == ["attach", CAPTURE, "epoch", CAPTURE, CAPTURE]
    assert [e.key for e in entries] == [None, ("epoch", 0, 0), None, ("epoch", 1, 8), ("batch", 1, 10)]

    np.testing.assert_array_equal(found_setup.payload["x"], np.ones((4, 2), np.float32))
    assert found_setup.payload["model"] == "{}" and found_setup.payload["layers"] == 2
    assert entries[0].payload == {"root": str(tmp_path), "run_id": "run", "builder": {"components": 3}}
    assert entries[2].payload == {"epoch": 1, "history": {"epoch": [1], "loss": [0.5]}, "nan_epoch": None}
    capture = entries[4].payload
    assert {k: capture[k] for k in ("kind", "epoch", "step", "batch", "logs")} == {
        "kind": "batch",
        "epoch": 1,
        "step": 10,
        "batch": None,
        "logs": {"loss": 0.5},
    }
    assert [a.dtype for a in capture["state"]] == [np.float32, np.float32]
    np.testing.assert_array_equal(capture["state"][0], np.full((3, 2), 1.0, np.float32))
    np.testing.assert_array_equal(capture["state"][1], np.arange(2, dtype=np.float32) + 10)


def test_values_are_stored_as_json_and_arrays_as_npz_members(tmp_path):
    journal = Journal(str(tmp_path), "run")
    payload = {
        "tuple": (1, 2),
        "numpy scalar": np.float32(0.5),
        "nan": float("nan"),
        "int64": np.int64(7),
        "nested": {"a": [np.arange(3), {"b": np.eye(2)}]},
        "text": "é",
        "none": None,
        3: "key",
    }
    name = journal.append("probe", payload)
    path = tmp_path / "run" / JOURNAL_DIR / name
    with np.load(path, allow_pickle=False) as data:
        header = json.loads(str(data[META_KEY]))
        members = sorted(data.files)
    assert header["kind"] == "probe"
    assert members == [META_KEY, "a0", "a1"]  # the two arrays, by reference from the JSON header
    assert header["payload"]["nested"] == {"a": [{"__array__": "a0"}, {"b": {"__array__": "a1"}}]}
    (_, [entry]) = read_journal(Files(str(tmp_path)), "run")
    back = entry.payload
    assert back["tuple"] == [1, 2]  # JSON has lists only
    assert back["numpy scalar"] == 0.5 and type(back["numpy scalar"]) is float
    assert back["nan"] is None  # JSON has no NaN: the store writes it as null
    assert back["int64"] == 7 and back["text"] == "é" and back["none"] is None and back["3"] == "key"
    np.testing.assert_array_equal(back["nested"]["a"][0], np.arange(3))
    np.testing.assert_array_equal(back["nested"]["a"][1]["b"], np.eye(2))


def test_entries_never_need_pickle(tmp_path):
    journal = Journal(str(tmp_path), "run")
    journal.append("setup", {"x": np.zeros((2, 2), np.float32), "variables": [["dense/kernel", [2, 2]]]})
    journal.append(CAPTURE, _capture(0, 0))
    for path in (tmp_path / "run" / JOURNAL_DIR).iterdir():
        with np.load(path, allow_pickle=False) as data:  # raises ValueError for any object array
            assert all(data[key].dtype != object for key in data.files)
        assert all(name.endswith(".npy") for name in _npz_members(path))


# ----------------------------------------------------------------------------------------------------------------
# done, close, pending_captures


def test_done_deletes_messages_and_keeps_the_last_written_capture(tmp_path):
    journal = Journal(str(tmp_path), "run")
    journal.append("setup", {"layers": 1})
    attach = journal.append("attach", {"run_id": "run"})
    first = journal.append(CAPTURE, _capture(0, 0))
    second = journal.append(CAPTURE, _capture(1, 5))
    third = journal.append(CAPTURE, _capture(2, 10))

    journal.done(attach)
    assert attach not in _names(tmp_path)
    journal.done(first)  # the last written capture stays: a recovery reads its weights
    assert first in _names(tmp_path)
    journal.done(second)  # now the first one goes
    assert first not in _names(tmp_path) and second in _names(tmp_path)
    journal.done(None)
    journal.done("setup.npz")  # the setup stays while the journal does
    assert _names(tmp_path) == [second, third, "setup.npz"]
    journal.done(third)
    assert _names(tmp_path) == [third, "setup.npz"]
    journal.close()
    assert not (tmp_path / "run" / JOURNAL_DIR).exists()
    assert (tmp_path / "run").is_dir()  # only the journal goes


def test_pending_captures_counts_captures_that_no_snapshot_has(tmp_path):
    files = Files(str(tmp_path))
    assert pending_captures(files, "run", set()) == 0  # no journal at all
    journal = Journal(str(tmp_path), "run")
    journal.append("setup", {})
    journal.append("attach", {})
    journal.append(CAPTURE, _capture(0, 0))
    journal.append(CAPTURE, _capture(1, 4))
    journal.append(CAPTURE, _capture(1, 2, kind="batch"))
    journal.append("end", {"status": "finished", "fields": {}})
    assert pending_captures(files, "run", set()) == 3
    written = {capture_key({"kind": "epoch", "epoch": 0, "step": 0}), ("batch", 1, 2)}
    assert pending_captures(files, "run", written) == 1
    assert pending_captures(files, "run", written | {("epoch", 1, 4)}) == 0


def test_read_journal_skips_temporary_and_foreign_files(tmp_path):
    journal = Journal(str(tmp_path), "run")
    journal.append("attach", {})
    folder = tmp_path / "run" / JOURNAL_DIR
    (folder / ".tmp-000001-epoch.npz").write_bytes(b"half")
    (folder / "notes.txt").write_text("x")
    setup, entries = read_journal(Files(str(tmp_path)), "run")
    assert setup is None
    assert [e.name for e in entries] == ["000000-attach.npz"]


def test_a_second_journal_on_the_same_run_starts_numbering_again(tmp_path):
    """Each Journal numbers from 0: a recovery reads entries, it never appends to a journal it did not start."""
    Journal(str(tmp_path), "run").append("attach", {})
    assert Journal(str(tmp_path), "run").append("attach", {"again": True}) == "000000-attach.npz"
    (_, [entry]) = read_journal(Files(str(tmp_path)), "run")
    assert entry.payload == {"again": True}


def test_a_journal_on_an_fsspec_store_lands_under_the_run(tmp_path):
    root = f"memory://journal-{uuid.uuid4().hex}"
    files = Files(root)
    journal = Journal(root, "run")
    name = journal.append(CAPTURE, _capture(3, 9))
    assert files.listdir(files.join("run", JOURNAL_DIR)) == [name]
    (_, [entry]) = read_journal(files, "run")
    assert entry.key == ("epoch", 3, 9)
    np.testing.assert_array_equal(entry.payload["state"][0], np.full((3, 2), 3.0, np.float32))
    journal.close()
    assert not files.isdir(files.join("run", JOURNAL_DIR))


# ----------------------------------------------------------------------------------------------------------------
# Damage


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"not an npz at all", id="garbage"),
        pytest.param(npz_bytes({"a0": np.arange(3)}), id="no-header"),
        pytest.param(npz_bytes({"a0": np.arange(3)}, {"kind": "capture", "payload": {}})[:-30], id="cut-npz"),
        pytest.param(b"", id="empty"),
        pytest.param(b"PK\x03\x04" + b"\x00" * 40, id="broken-zip"),
    ],
)
def test_a_damaged_entry_raises_value_error_naming_the_file(tmp_path, content):
    journal = Journal(str(tmp_path), "run")
    name = journal.append(CAPTURE, _capture(0, 0))
    (tmp_path / "run" / JOURNAL_DIR / name).write_bytes(content)
    (_, [entry]) = read_journal(Files(str(tmp_path)), "run")
    assert entry.key == ("epoch", 0, 0)  # the name still says what it was
    with pytest.raises(ValueError, match=rf"The journal entry {name} is unreadable"):
        _ = entry.payload


def test_an_entry_holding_a_pickled_object_array_is_refused_on_reading(tmp_path):
    journal = Journal(str(tmp_path), "run")
    name = journal.append("epoch", {})
    buffer = io.BytesIO()
    np.savez(
        buffer,
        a0=np.array([{"code": 1}], dtype=object),
        **{META_KEY: np.array(json.dumps({"kind": "epoch", "payload": {"x": {"__array__": "a0"}}}))},
    )
    (tmp_path / "run" / JOURNAL_DIR / name).write_bytes(buffer.getvalue())
    (_, [entry]) = read_journal(Files(str(tmp_path)), "run")
    with pytest.raises(ValueError, match=name):
        _ = entry.payload


def test_a_header_without_payload_raises_value_error_naming_the_file(tmp_path):
    journal = Journal(str(tmp_path), "run")
    name = journal.append("epoch", {})
    (tmp_path / "run" / JOURNAL_DIR / name).write_bytes(npz_bytes({}, {"kind": "epoch"}))
    (_, [entry]) = read_journal(Files(str(tmp_path)), "run")
    with pytest.raises(ValueError, match=name):
        _ = entry.payload


def test_appending_an_object_array_is_refused_when_written(tmp_path):
    journal = Journal(str(tmp_path), "run")
    with pytest.raises((TypeError, ValueError)):
        journal.append("epoch", {"bad": np.array([{"a": 1}], dtype=object)})
