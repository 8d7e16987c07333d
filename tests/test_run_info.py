"""The typed read model of a run (core/store/run_info.py) on real run.json files and on what older runs omit."""

from core.store import RunStore
from core.store.run_info import DatasetInfo, LayerInfo, RunInfo, layer_key, parse_layer_key
from dashboard.synthetic import synthetic_run


def test_layer_keys_round_trip():
    assert layer_key(3, "pca") == "L3/pca" and parse_layer_key("L3/pca") == (3, "pca")
    assert parse_layer_key("L12/unit_top") == (12, "unit_top") and parse_layer_key("L0/act_hist/counts") == (
        0,
        "act_hist/counts",
    )
    assert parse_layer_key("cka") is None and parse_layer_key("Lx/pca") is None


def test_a_written_run_reads_as_typed_info(tmp_path):
    run_id = synthetic_run(str(tmp_path), layers=3, snapshots=2, points=50)
    run = RunStore(str(tmp_path)).run(run_id)
    info = RunInfo.from_meta(run.meta, run.id)
    assert info.id == run_id and info.name == run.name and info.status == run.meta["status"]
    assert [layer.name for layer in info.layers] == [layer["name"] for layer in run.layers]
    assert [layer.index for layer in info.layers] == [0, 1, 2]
    assert info.layers[1].key("pca") == "L1/pca" and info.layers[1].key("pca") in run.snapshots()[0].keys()
    assert info.dataset.class_names == tuple(run.meta["dataset"]["class_names"])
    assert info.dataset.classes == len(run.meta["dataset"]["class_names"])
    assert info.layer(info.layers[2].name) is info.layers[2] and info.layer("no such layer") is None


def test_what_an_older_or_foreign_run_omits_reads_as_absent():
    info = RunInfo.from_meta({"status": "finished", "layers": [{"name": "dense"}]}, "r1")
    assert info.name == "r1" and info.dataset == DatasetInfo() and info.dataset.classes == 0
    assert info.layers == (LayerInfo(index=0, name="dense"),) and info.layers[0].weights == ()
    assert info.probe.has_labels is False and info.probe.plane is False and info.config == {}
    full = DatasetInfo.from_meta(
        {"name": 7, "kind": "image", "image_shape": [8, 8], "n_classes": 10, "class_names": [0, 1]}
    )
    assert full.name == "7" and full.image_shape == (8, 8) and full.classes == 10 and full.class_names == ("0", "1")


def test_the_layers_of_the_outputs_read_from_run_json_or_by_name_or_as_the_last_layer():
    layers = [{"name": name} for name in ("hidden", "head_a", "head_b", "tail")]
    named = RunInfo.from_meta(
        {"layers": layers, "outputs": [{"name": "a", "layer": "head_a"}, {"name": "b", "layer": "head_b"}]}, "r"
    )
    assert [named.output_layer(o).name for o in named.outputs] == ["head_a", "head_b"]
    assert named.output_layers() == [1, 2]
    # Written before outputs named their layer: the layer of the output's name; of several unknown, the last layer.
    by_name = RunInfo.from_meta({"layers": layers, "outputs": [{"name": "head_a"}, {"name": "other"}]}, "r")
    assert by_name.output_layer(by_name.outputs[1]) is None and by_name.output_layers() == [1]
    unknown = RunInfo.from_meta({"layers": layers, "outputs": [{"name": "x"}, {"name": "y"}]}, "r")
    assert unknown.output_layers() == [3]
    one = RunInfo.from_meta({"layers": layers, "outputs": [{"name": "x"}]}, "r")
    assert one.output_layer(one.outputs[0]).name == "tail" and one.output_layers() == [3]
    assert RunInfo.from_meta({"layers": layers}, "r").output_layers() == [3]  # before outputs were recorded
