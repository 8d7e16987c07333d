"""Layers page: what each layer and each unit learned (probe accuracy, CKA, separation, dimensionality, unit views)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from core.analysis import measures, metrics
from core.store.run_info import parse_layer_key
from dashboard import context, data
from dashboard.data import output_caption, snapshot_at
from dashboard.views import layers as views
from dashboard.views.embeddings import columns, component_title
from dashboard.views.spec import frozen
from dashboard.views.text import plain

CHART_CONFIG = {"displaylogo": False, "scrollZoom": False}


def render() -> None:
    st.title("Layers")
    run = context.current_run()
    if run is None:
        st.info(
            "No run to show yet: record one with `python -m core train --dataset spiral` or the sidebar's ➕ New run."
        )
        return
    st.caption(
        "Numbers and concrete examples for what each layer and each unit has learned. Pick the layer and the "
        "epoch in the sidebar; every choice here is kept in the link."
    )
    context.live_section(run, lambda live: show(run, live))


def show(run, live: bool) -> None:
    snapshot = context.snapshot()
    if snapshot is None:
        context.no_snapshot_yet(run)
        return
    view, layer = context.view_state(), context.layer_index()
    epoch, count = int(snapshot.epoch), len(run.epoch_snapshots())
    if live:
        context.live_caption(run, epoch)
    context.lost_notice(run)
    context.skipped_notice(run, snapshot)
    key = (run.id, count, epoch)
    layer_name = run.layers[layer]["name"] if run.layers else None
    labelled = run.meta.get("probe", {}).get("has_labels", True)
    probed = data.probed_output(run, view.out)  # None: the primary output's classes
    if labelled:
        st.header("Linear probe accuracy")
        left, right = st.columns(2, gap="medium")
        chart(left, "probe_heatmap", probe_heatmap(*key, output=probed))
        chart(right, "probe_depth", probe_depth(*key, layer_name, output=probed))
        st.caption(probe_reliability(*key, layer, output=probed) + _probed_output(run, view.out, probed))
    else:
        st.info("This run was recorded without class labels, so it has no linear-probe accuracy or class separation.")

    st.header("Representation similarity (CKA)")
    left, right = st.columns(2, gap="medium")
    chart(left, "cka_heatmap", cka_heatmap(*key))
    chart(right, "cka_final", cka_final(*key))

    st.header("Separation and dimensionality" if labelled else "Dimensionality")
    chart(st, "depth", depth_metrics(*key, layer_name, output=probed), labelled=labelled)
    chart(st, "time", time_metrics(*key, output=probed), labelled=labelled)

    units(run, snapshot, layer, key, (view.pcx, view.pcy))


def _probed_output(run, chosen: int | None, probed: int | None) -> str:
    """For a model of several outputs: which output's classes the linear probes and separation are of, and why
    when it is not the output the sidebar's Output control chose (one without classes, or not probed)."""
    which = output_caption(run, probed)
    if not which:
        return ""
    if probed is not None:
        return (
            f" The probes and separation decode the classes of the output the sidebar's Output chose, {plain(which)}."
        )
    text = f" The probes and separation decode the classes of the primary output, {plain(which)}"
    if chosen is not None and chosen != run.info.probe.primary_output:
        other = output_caption(run, chosen)
        return (
            text + f": the chosen output {plain(other)} has no linear probes of its own (only outputs of classes do)."
        )
    return text + " (the sidebar's Output picks another output of classes)."


def chart(where, name: str, figure, title: str | None = None, labelled: bool = True) -> None:
    """One figure (under an optional subheader) and the one-line caption that says how to read it."""
    if title:
        where.subheader(title)
    where.plotly_chart(figure, key=name, config=CHART_CONFIG)
    where.caption(views.caption(name, labelled))


def units(run, snapshot, layer: int, key: tuple[str, int, int], components: tuple[int, int]) -> None:
    name = run.layers[layer]["name"] if run.layers else "layer"
    count = unit_count(snapshot, layer)
    st.header(f"Units of {plain(name)}")
    if not count:
        st.info(f"{plain(name)} has no recorded unit statistics at epoch {key[2]}.")
        return
    unit = unit_picker(count, name)
    probe, dataset = run.probe(), run.info.dataset
    dead = is_dead(snapshot, layer, unit)
    mean = snapshot.layer_array(layer, "unit_mean")
    facts = [f"unit {unit} of {count}", f"mean activation {float(mean[unit]):.3g}"]
    st.markdown(
        " · ".join(
            facts
            + (["**dead**: zero for every probe sample, so no sample drives it more than another"] if dead else [])
        )
    )
    examples = unit_examples(snapshot, layer, unit)
    if examples is None and not dead:
        st.info(
            f"No probe samples are ranked for unit {unit} at epoch {key[2]}: the recorder ranks the first 256 units "
            "of a layer, and none while its outputs are not finite."
        )
    if dataset.image_shape and probe.x is not None:
        if examples is not None:
            chart(
                st, "unit_images", unit_images(*key, layer, unit), f"Unit {unit}: its most and least activating images"
            )
        if snapshot.layer_array(layer, "unit_top") is not None:
            chart(st, "prototypes", prototypes(*key, layer, unit), "Every unit's favourite input")
        kernel = kernel_figure(*key, layer, unit)
        if kernel is not None:
            chart(st, "kernel_images", kernel, "First-layer weights as images")
    elif snapshot.layer_array(layer, "plane_units") is not None and probe.plane:
        chart(st, "unit_grid", unit_grid(*key, layer, unit), "Every unit over the input plane")
        chart(st, "unit_plane", unit_plane(*key, layer, unit), f"Unit {unit} and the decision boundary")
        chart(st, "bent_plane", bent_plane(*key, layer, components), "How each layer bends the input plane")
    elif examples is not None and data.probe_features(run)[0] is not None:
        chart(
            st, "unit_features", unit_features(*key, layer, unit), f"Unit {unit}: its most and least activating samples"
        )
    if examples is not None:
        features, feature_names = (None, []) if dataset.image_shape else data.probe_features(run)
        table = views.unit_examples_table(
            features,
            probe.y,
            snapshot.array("pred/probs"),
            examples.top,
            examples.bottom,
            list(dataset.class_names),
            feature_names,
        )
        with st.expander(f"The {len(examples.top)} most and least activating probe samples of unit {unit}"):
            st.dataframe(table, hide_index=True)


def is_dead(snapshot, layer: int, unit: int) -> bool:
    dead = snapshot.layer_array(layer, "dead_units")
    return bool(dead is not None and unit < len(dead) and dead[unit])


def unit_examples(snapshot, layer: int, unit: int) -> metrics.UnitExamples | None:
    """The unit's most and least activating probe rows; None for a dead unit, whose samples all tie at zero."""
    return None if is_dead(snapshot, layer, unit) else metrics.unit_examples(snapshot, layer, unit)


def unit_count(snapshot, layer: int) -> int:
    means = snapshot.layer_array(layer, "unit_mean")
    return 0 if means is None else int(len(means))


def unit_picker(count: int, layer_name: str) -> int:
    """The `unit` control, bound to the link. A link's unit this layer does not have falls back to unit 0."""
    requested = st.query_params.get("unit")
    if requested is not None and requested not in {str(u) for u in range(count)}:
        st.warning(
            f"The link's {plain('unit=' + requested[:20])} is not a unit of {plain(layer_name)} (0–{count - 1}); "
            "showing unit 0.",
            icon=":material/link_off:",
        )
    unit = st.selectbox(
        "Unit",
        list(range(count)),
        key="unit",
        bind="query-params",
        help="The unit (channel, for convolutions) of the chosen layer whose samples are shown.",
    )
    return int(unit or 0)


# ------------------------------------------------------------------------------------------------------------
# Cached figures. Keys hold the number of snapshots, so a growing run rebuilds and a finished one never does. Each
# figure is kept as its finished spec (`frozen`), so the sessions that show it share its serialisation too.


def _run(run_id: str):
    return context.store().run(run_id)


def _snapshot(run, epoch: int):
    return snapshot_at(run, epoch)


@st.cache_resource(max_entries=8, show_spinner=False)
def layer_metrics(run_id: str, count: int, output: int | None = None) -> metrics.LayerMetrics:
    return metrics.layer_metrics(_run(run_id), output=output)


@st.cache_resource(max_entries=8, show_spinner=False)
def cka_series(run_id: str, count: int):
    return metrics.cka_to_final(_run(run_id))


@st.cache_data(max_entries=16, show_spinner=False)
def held_out(run_id: str, output: int | None = None) -> tuple[int, int]:
    """(samples each linear probe is scored on, probe size): the probed output's labels fix both."""
    run = _run(run_id)
    ids = data.probe_labels(run, output)
    return (measures.held_out_size(ids) if ids is not None else 0), run.probe().size


@st.cache_resource(max_entries=16, show_spinner=False)
def probe_heatmap(run_id, count, epoch, output=None):
    found = layer_metrics(run_id, count, output)
    return frozen(
        views.probe_heatmap(
            found.epochs,
            found.layers,
            found.probe,
            found.input_probe,
            epoch,
            data.chance_accuracy(_run(run_id), output),
            held_out(run_id, output)[0],
        )
    )


@st.cache_resource(max_entries=16, show_spinner=False)
def probe_depth(run_id, count, epoch, chosen, output=None):
    found = layer_metrics(run_id, count, output)
    row = found.at(epoch)
    initial = found.probe[0] if row > 0 else None
    return frozen(
        views.probe_depth_figure(
            found.layers,
            found.probe[row],
            found.input_probe,
            found.epochs[row],
            initial,
            data.chance_accuracy(_run(run_id), output),
            chosen,
            initial_epoch=found.epochs[0],
            held_out=held_out(run_id, output)[0],
        )
    )


def probe_reliability(run_id, count, epoch, layer: int, output=None) -> str:
    found = layer_metrics(run_id, count, output)
    accuracy = found.probe[found.at(epoch)]
    chosen = float(accuracy[layer]) if 0 <= layer < len(accuracy) else None
    run = _run(run_id)
    config = run.meta.get("config")
    seed = config.get("seed") if isinstance(config, dict) and isinstance(config.get("seed"), int) else None
    snapshot = _snapshot(run, epoch)
    components = snapshot.layer(layer).get("probe_components") if snapshot is not None else None
    return views.probe_reliability(*held_out(run_id, output), chosen, seed, components)


@st.cache_resource(max_entries=16, show_spinner=False)
def cka_heatmap(run_id, count, epoch):
    run = _run(run_id)
    found = layer_metrics(run_id, count)
    return frozen(views.cka_heatmap(found.layers, _snapshot(run, epoch).meta.get("cka"), epoch))


@st.cache_resource(max_entries=16, show_spinner=False)
def cka_final(run_id, count, epoch):
    epochs, values = cka_series(run_id, count)
    return frozen(views.cka_final_figure(epochs, layer_metrics(run_id, count).layers, values, epoch))


def _measures(found: metrics.LayerMetrics, row=slice(None)) -> dict[str, np.ndarray]:
    return {"separation": found.separation[row], "n90": found.n90[row], "participation": found.participation[row]}


@st.cache_resource(max_entries=16, show_spinner=False)
def depth_metrics(run_id, count, epoch, chosen, output=None):
    found = layer_metrics(run_id, count, output)
    row = found.at(epoch)
    initial = _measures(found, 0) if row > 0 else None
    return frozen(
        views.depth_metrics_figure(
            found.layers,
            _measures(found, row),
            found.epochs[row],
            initial,
            found.input_separation,
            chosen,
            initial_epoch=found.epochs[0],
        )
    )


@st.cache_resource(max_entries=16, show_spinner=False)
def time_metrics(run_id, count, epoch, output=None):
    found = layer_metrics(run_id, count, output)
    return frozen(views.time_metrics_figure(found.epochs, found.layers, _measures(found), epoch))


@st.cache_resource(max_entries=16, show_spinner=False)
def unit_grid(run_id, count, epoch, layer, unit):
    snapshot = _snapshot(_run(run_id), epoch)
    plane = _run(run_id).probe().plane
    return frozen(
        views.unit_grid_figure(
            snapshot.layer_array(layer, "plane_units"),
            plane["xs"],
            plane["ys"],
            unit,
            snapshot.layer_array(layer, "dead_units"),
        )
    )


@st.cache_resource(max_entries=16, show_spinner=False)
def unit_plane(run_id, count, epoch, layer, unit):
    run = _run(run_id)
    snapshot, probe = _snapshot(run, epoch), run.probe()
    examples = unit_examples(snapshot, layer, unit)
    top, bottom = (examples.top, examples.bottom) if examples else ([], [])
    return frozen(
        views.unit_plane_figure(
            snapshot.layer_array(layer, "plane_units")[:, unit],
            snapshot.array("pred/plane_probs"),
            probe.plane["xs"],
            probe.plane["ys"],
            probe.x,
            probe.y,
            top,
            bottom,
            unit,
            list(run.info.dataset.class_names),
        )
    )


@st.cache_resource(max_entries=16, show_spinner=False)
def bent_plane(run_id, count, epoch, layer, components):
    run = _run(run_id)
    snapshot, plane = _snapshot(run, epoch), run.probe().plane
    grid_x, grid_y = np.meshgrid(plane["xs"], plane["ys"])  # grid point r*G + c is (xs[c], ys[r])
    panels = [("input", np.stack([grid_x.ravel(), grid_y.ravel()], axis=1))]
    titles = [("x1", "x2")]
    for index, info in enumerate(run.layers):
        projection = snapshot.projection(index, "plane_pca")
        if projection is not None:  # a layer with fewer components than asked for is flat along the missing ones
            coords = projection.coords
            panels.append((info.get("name", f"layer {index}"), np.stack(columns(coords, components), axis=1)))
            titles.append(tuple(component_title(c, coords.shape[1], short=True) for c in components[:2]))
    chosen = run.layers[layer].get("name") if run.layers else None
    return frozen(
        views.bent_plane_figure(
            panels,
            snapshot.array("pred/plane_probs"),
            len(plane["xs"]),
            chosen,
            titles,
        )
    )


@st.cache_resource(max_entries=16, show_spinner=False)
def unit_features(run_id, count, epoch, layer, unit):
    run = _run(run_id)
    examples = unit_examples(_snapshot(run, epoch), layer, unit)
    features, names = data.probe_features(run)  # every stored input, side by side
    return frozen(views.unit_feature_figure(features, examples.top, examples.bottom, names))


@st.cache_resource(max_entries=16, show_spinner=False)
def unit_images(run_id, count, epoch, layer, unit):
    run = _run(run_id)
    examples, dataset = unit_examples(_snapshot(run, epoch), layer, unit), run.info.dataset
    return frozen(
        views.unit_images_figure(
            run.probe().x, examples.top, examples.bottom, dataset.image_shape, run.probe().y, list(dataset.class_names)
        )
    )


@st.cache_resource(max_entries=16, show_spinner=False)
def prototypes(run_id, count, epoch, layer, unit):
    run = _run(run_id)
    snapshot = _snapshot(run, epoch)
    dead = snapshot.layer_array(layer, "dead_units")
    images = views.prototype_images(
        run.probe().x, snapshot.layer_array(layer, "unit_top"), run.info.dataset.image_shape, dead
    )
    titles = [f"{u}" + (" · dead" if dead is not None and dead[u] else "") for u in range(len(images))]
    return frozen(views.image_grid_figure(images, titles, views.GRID_COLUMNS * 2, chosen=unit))


@st.cache_resource(max_entries=16, show_spinner=False)
def kernel_figure(run_id, count, epoch, layer, unit):
    """The first Dense layer's weights as images, or None when the run stored no kernel that fits the images."""
    run = _run(run_id)
    snapshot = _snapshot(run, epoch)
    kernels = [found for found in map(parse_layer_key, snapshot.keys()) if found and found[1] == "kernel"]
    if not kernels:
        return None
    kernel_layer = kernels[0][0]
    images = views.kernel_images(snapshot.layer_array(kernel_layer, "kernel"), run.info.dataset.image_shape)
    if images is None:
        return None
    return frozen(
        views.image_grid_figure(
            images,
            [str(u) for u in range(len(images))],
            views.GRID_COLUMNS * 2,
            scale=views.UNIT_SCALE,
            symmetric=True,
            chosen=unit if kernel_layer == layer else None,
        )
    )
