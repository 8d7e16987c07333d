"""Embeddings page: how each layer's representation of the probe set changes with depth and with training."""

from __future__ import annotations

import streamlit as st

from dashboard import context, data, sidebar
from dashboard.jobs import DEMO
from dashboard.views import embeddings as views
from dashboard.views.spec import SpecFigure
from dashboard.views.text import plain

CHART_CONFIG = {"displaylogo": False, "scrollZoom": False}


def render() -> None:
    st.title("Embeddings")
    run = context.current_run()
    if run is None:
        first_contact()
        return
    context.live_section(run, lambda live: show(run, context.view_state(), live))


def first_contact() -> None:
    st.markdown(
        "Strata shows **what the hidden layers of a network learn**: every layer's outputs on a fixed probe set, "
        "projected onto their principal components, epoch by epoch. There are no runs in this store yet."
    )
    if not context.can_edit():
        st.info("Record a run with `python -m core train --dataset spiral` (or `core.Recorder` in your own `fit`).")
        return
    st.markdown(
        f"Train a small demo: a {DEMO.hidden.replace(',', '-')} ReLU network on the two-arm spiral, "
        f"{DEMO.epochs} epochs, about half a minute. The charts fill in while it trains."
    )
    if st.button("Train a demo run", type="primary", key="demo", icon=":material/play_arrow:"):
        sidebar.start_training(DEMO)


def show(run, view, live: bool) -> None:
    snapshot = data.snapshot_at(run, view.epoch)
    if snapshot is None:
        context.no_snapshot_yet(run)
        return
    epoch = int(snapshot.epoch)
    count = len(run.epoch_snapshots())
    if live:
        context.live_caption(run, epoch)
    context.lost_notice(run)
    context.skipped_notice(run, snapshot)
    key = (run.id, count, view.color, view.size, view.opacity, view.sel, view.out, view.tcol)

    st.subheader(f"Every layer at epoch {epoch}")
    pcs = (view.pcx, view.pcy)
    chart(
        strip(*key, epoch, pcs),
        "strip",
        on_select=_selected("strip", run, epoch, pcs),
        selection_mode=("points", "box", "lasso"),
    )
    facts = context.run_facts(run)
    probe_size = facts.probe_size if facts else 0
    sampled = (
        (
            f" Each panel draws the same {views.POINTS_PER_PANEL:,} of the {probe_size:,} probe samples; a box or "
            "lasso selects every sample inside it."
        )
        if probe_size > views.POINTS_PER_PANEL
        else ""
    )
    labelled = run.meta.get("probe", {}).get("has_labels", True)
    _, truth_values, truth_title = data.output_truth(run, view.out, view.tcol)
    reading = (
        "the true value's colour scale shows which layer first orders the points by it"
        if truth_values is not None
        else "classes that overlap in early layers come apart in later ones"
        if labelled
        else "this run has no class labels, so colour by the prediction to see which layer first orders the points by "
        "it"
    )
    which = data.output_caption(run, view.out)
    which = f" The output {plain(which)} colours the points (the sidebar's Output picks another)." if which else ""
    if truth_values is not None and "column" in truth_title:  # a regression target of several columns
        detail = truth_title.split(", ", 1)[1]
        detail = f"the {detail}" if detail.startswith("norm") else detail
        which += (
            f" Its target has several columns: the colours show {plain(detail)}, true and predicted alike "
            "(the sidebar's Target column picks another)."
        )
    st.caption(
        f"Read left to right, input to output: {reading}. Axis titles give each component's share of that "
        f"layer's variance. Drag a box or lasso to select samples.{sampled}{which}"
    )

    layer = context.layer_index()
    focus_col, samples_col = st.columns([3, 2], gap="medium")
    with focus_col:
        st.subheader(f"Focus: {plain(run.layers[layer]['name']) if run.layers else 'layer'} over training")
        three = view.dims == "3d"
        pcs = (view.pcx, view.pcy, view.pcz)  # type: ignore[assignment]  # 2-D or 3-D
        chart(
            focus(*key, layer, epoch, view.dims, pcs),
            "focus",
            on_select="ignore" if three else _selected("focus"),
            selection_mode=("points", "box", "lasso"),
        )
        within = (
            f" Fractional epochs are the captures every {run.meta['batch_every']} batches within an epoch."
            if run.meta.get("batch_every")
            else ""
        )
        st.caption(
            "Press ▶ to replay training in the browser. Every frame shows that epoch's own largest components "
            "(PC1 is always the largest), with their signs matched to the frame before, so the cloud never "
            "mirror-flips; when two components trade places, the axes trade too and their titles say so."
            f"{within}"
        )
    with samples_col:
        selected_samples(run, snapshot, view.sel, view.out, view.tcol)

    scree_col, curves_col = st.columns(2, gap="medium")
    with scree_col:
        st.subheader("Explained variance")
        chart(scree(run.id, count, epoch), "scree")
        st.caption(
            "How many directions each layer uses: each line adds up a layer's components (colours as in the "
            "bars), and the bars count components for 90% of the variance. Layers that compress need few; the "
            "output needs about one per class."
        )
    with curves_col:
        st.subheader("Training curves")
        chart(views.curves_figure(run.history(), epoch), "curves")
        st.caption(
            "Train solid, validation dashed. A growing gap between them is overfitting; the dotted line is "
            "the epoch on view."
        )


def chart(spec: dict, key: str, **options) -> None:
    """A prebuilt figure spec, styled by the view module itself (see `views.figure` on why `theme=None`)."""
    st.plotly_chart(SpecFigure(spec), key=key, config=CHART_CONFIG, theme=None, **options)


def selected_samples(run, snapshot, rows, output: int | None = None, column: str = "norm") -> None:
    st.subheader("Selected samples")
    if not rows:
        st.caption(
            "Select points in the strip or the focus view (box, lasso or click): they are outlined in every "
            "layer, listed here, and kept in the link."
        )
        return
    probe = run.probe()
    dataset = run.info.dataset
    probs = data.output_predictions(run, snapshot, output, column)
    truth, values, _ = data.output_truth(run, output, column)
    features, feature_names = (None, []) if dataset.image_shape else data.probe_features(run)
    table = views.sample_table(
        rows,
        truth,
        probs,
        data.class_names(run, output),
        features=features,
        feature_names=feature_names,
        values=values,
    )
    correct = sum(1 for row in table if row.get("correct"))
    st.caption(
        f"{len(rows)} selected · {correct} of {len(table)} shown predicted correctly at epoch {int(snapshot.epoch)}"
    )
    if dataset.image_shape and probe.x is not None:
        images = views.thumbnails(probe.x, rows, dataset.image_shape)
        captions = [
            plain(f"{r['label']}→{r.get('prediction', '?')}" if "label" in r else r.get("prediction", ""))
            for r in table[: len(images)]
        ]  # class names are the user's; captions are Markdown
        st.image(images, caption=captions, width=70, clamp=True)
    st.dataframe(table, hide_index=True, height=min(320, 38 + 35 * len(table)))
    st.button("Clear selection", key="clear_selection", on_click=context.set_selection, args=((),))


def _selected(chart: str, run=None, epoch: int | None = None, pcs: tuple[int, int] = (1, 2)):
    """The selection callback of `chart`. For the strip (`run` given), a region selects every probe row inside it
    at the epoch and components the strip showed."""

    def on_select() -> None:
        panels = None
        if run is not None:
            snapshot = data.snapshot_at(run, epoch)
            panels = data.strip_panels(run, snapshot) if snapshot is not None else None
        context.set_selection(views.selection_rows(st.session_state.get(chart), panels, pcs))

    return on_select


# ------------------------------------------------------------------------------------------------------------
# Cached figures. Keys include the number of snapshots, so a growing run rebuilds and a finished one never does.
# cache_resource keeps the specs themselves (no pickling per rerun); nothing mutates them after they are built.


def _run(run_id: str):
    return context.store().run(run_id)


@st.cache_resource(max_entries=24, show_spinner=False)
def strip(run_id, count, color, size, opacity, sel, out, tcol, epoch, pcs):
    run = _run(run_id)
    snapshot = data.snapshot_at(run, epoch)
    labels, values, title = data.output_truth(run, out, tcol)
    names = data.class_names(run, out)
    predictions = data.output_predictions(run, snapshot, out, tcol)
    coloring = views.coloring(color, labels, predictions, names, values, title)
    return views.strip_figure(data.strip_panels(run, snapshot), coloring, pcs, sel, size, opacity)


@st.cache_resource(max_entries=12, show_spinner=False)
def focus(run_id, count, color, size, opacity, sel, out, tcol, layer, epoch, dims, pcs):
    run = _run(run_id)
    frames, start = data.focus_frames(run, layer, color, epoch, out, tcol)
    return views.focus_figure(frames, start, dims, pcs, sel, size, opacity)


@st.cache_resource(max_entries=24, show_spinner=False)
def scree(run_id, count, epoch):
    run = _run(run_id)
    return views.scree_figure(*data.scree_inputs(run, data.snapshot_at(run, epoch)))
