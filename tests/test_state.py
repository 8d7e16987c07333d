"""The view state schema: query strings round-trip, and bad links degrade to defaults with notices."""

import pytest

from core.store import RunStore
from dashboard import state
from dashboard.state import (
    DEFAULTS,
    RunFacts,
    ViewState,
    format_rows,
    open_run,
    parse_query,
    parse_rows,
    to_query,
    validate,
)

FACTS = RunFacts(
    id="r1", layers=("dense_0", "dense_1", "output"), epochs=(0, 5, 10), components=10, probe_size=100, has_labels=True
)


def test_every_field_round_trips_through_the_query_string():
    view = ViewState(
        run="r1",
        layer="dense_1",
        epoch=5,
        pcx=3,
        pcy=1,
        pcz=7,
        dims="3d",
        color="confidence",
        size=9,
        opacity=0.35,
        sel=(1, 2, 3, 9),
        compare=("r2", "r3"),
    )
    parsed, notices = parse_query(to_query(view))
    assert parsed == view
    assert notices == []


def test_defaults_stay_out_of_the_link_except_the_run():
    assert to_query(ViewState(run="r1")) == {"run": "r1"}
    assert to_query(DEFAULTS) == {}
    assert parse_query({}) == (DEFAULTS, [])


def test_the_schema_lists_every_field_once():
    assert [f.name for f in state.FIELDS] == list(ViewState.__dataclass_fields__)


@pytest.mark.parametrize(
    "name, value",
    [
        ("run", "../../etc/passwd"),
        ("run", "a/b"),
        ("epoch", "abc"),
        ("epoch", "-3"),
        ("epoch", "1.5"),
        ("pcx", "0"),
        ("pcy", "1e9"),
        ("dims", "4d"),
        ("color", "<script>"),
        ("size", "999"),
        ("opacity", "nan"),
        ("opacity", "2"),
        ("sel", "1,x"),
        ("sel", "5-2"),
        ("compare", "../x"),
        ("layer", "x" * 300),
    ],
)
def test_garbage_falls_back_to_the_default_with_a_notice(name, value):
    view, notices = parse_query({name: value, "run": "ok-run"} if name != "run" else {name: value})
    assert getattr(view, name) == getattr(DEFAULTS, name)
    assert len(notices) == 1 and f"“{name}=" in notices[0]


def test_unknown_parameters_are_ignored_silently():
    assert parse_query({"grad_role": "bias", "utm_source": "x"}) == (DEFAULTS, [])


def test_repeated_parameters_take_the_last_value_and_compare_keeps_all():
    view, _ = parse_query({"epoch": ["3", "4"], "compare": ["a", "b", "a"]})
    assert view.epoch == 4 and view.compare == ("a", "b")


def test_rows_are_written_as_ranges_and_read_back():
    assert format_rows((7, 1, 2, 3, 9, 10)) == "1-3,7,9-10"
    assert parse_rows(["1-3,7", "9-10"]) == (1, 2, 3, 7, 9, 10)
    assert format_rows(()) == ""


def test_validate_keeps_a_valid_view():
    view = ViewState(run="r1", layer="dense_1", epoch=5, sel=(1, 99))
    assert validate(view, FACTS) == (view, [])


def test_validate_repairs_what_the_run_does_not_have():
    view = ViewState(run="r1", layer="dense_9", epoch=7, pcx=12, sel=(3, 150))
    fixed, notices = validate(view, FACTS)
    assert fixed.layer is None  # the first layer
    assert fixed.epoch == 5  # the nearest captured epoch (ties go to the earlier)
    assert fixed.pcx == 1
    assert fixed.sel == (3,)
    assert len(notices) == 4
    assert any("epoch 7" in n and "epoch 5" in n for n in notices)


def test_validate_without_labels_colours_by_prediction():
    facts = RunFacts(**{**FACTS.__dict__, "has_labels": False})
    fixed, notices = validate(ViewState(run="r1", color="correct"), facts)
    assert fixed.color == "pred" and notices
    fixed, notices = validate(ViewState(run="r1"), facts)  # no colour in the link: nothing to tell
    assert fixed.color == "pred" and notices == []


def test_validate_drops_comparison_runs_that_do_not_exist():
    fixed, notices = validate(ViewState(run="r1", compare=("r2", "gone")), FACTS, run_ids=("r1", "r2"))
    assert fixed.compare == ("r2",) and "gone" in notices[0]


def test_validate_trims_a_huge_selection():
    facts = RunFacts(**{**FACTS.__dict__, "probe_size": 10_000})
    fixed, notices = validate(ViewState(run="r1", sel=tuple(range(2000))), facts)
    assert len(fixed.sel) == state.MAX_SELECTION and notices


def test_open_run_falls_back_to_the_newest_with_a_notice(spiral_run_dir):
    root, run_id = spiral_run_dir
    store = RunStore(root)
    ids = [s.id for s in store.list_runs()]
    run, notices = open_run(store, run_id, ids)
    assert run.id == run_id and notices == []
    run, notices = open_run(store, "no-such-run", ids)
    assert run.id == ids[0] and "no-such-run" in notices[0]
    run, notices = open_run(RunStore(root + "/empty"), None, [])
    assert run is None and notices == []


def test_run_facts_of_a_real_run(spiral_run_dir):
    root, run_id = spiral_run_dir
    facts = RunFacts.of(RunStore(root).run(run_id))
    assert facts.layers == ("dense_0", "dense_1", "output")
    assert facts.epochs == (0, 1, 2, 3)
    assert facts.has_labels and facts.probe_size > 0
