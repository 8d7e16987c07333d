"""Gradients & activations page: is every layer learning? Gradient flow, update sizes, activations and a diagnosis."""

from __future__ import annotations

import streamlit as st

from core.analysis.diagnosis import diagnose
from dashboard import context
from dashboard.data import snapshot_at
from dashboard.views import gradients as views
from dashboard.views.spec import frozen
from dashboard.views.text import plain, plain_with_code

CHART_CONFIG = {"displaylogo": False, "scrollZoom": False}
ROLES = ("kernel", "bias")


def render() -> None:
    st.title("Gradients & activations")
    st.markdown(
        "Hidden layers learn only from the error signal that backpropagation carries down to them. In a deep stack "
        "it can **vanish** or **explode** on the way, and units can **die** or **saturate**. This page shows where "
        "the signal goes, how far each layer's weights move, and names what looks wrong."
    )
    run = context.current_run()
    if run is None:
        st.info(
            "No run to show: there are no runs in this store yet. Train one from the sidebar or with "
            "`python -m core train`."
        )
        return
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    with left:
        role = st.segmented_control(
            "Weights",
            ROLES,
            default="kernel",
            required=True,
            key="grad_role",
            bind="query-params",
            help="Gradient of the layer's kernel (weight matrix; an embedding's table) or of its bias.",
        )
    with right:
        others = context.compare_runs("Overlay other runs")
    context.live_section(run, lambda live: show(run, [o for o in others if o.id != run.id], role or "kernel", live))


def show(run, others, role: str, live: bool) -> None:
    view = context.view_state()
    snapshot = snapshot_at(run, view.epoch)
    if snapshot is None:
        context.no_snapshot_yet(run)
        return
    epoch, layer = int(snapshot.epoch), context.layer_index()
    keys = tuple((r.id, len(r.epoch_snapshots())) for r in [run, *others])
    if live:
        context.live_caption(run, epoch)
    has_gradients = _has_gradients(run)
    context.lost_notice(run)
    context.skipped_notice(run, snapshot)
    diagnosis(run, others, keys, has_gradients)
    if not has_gradients:
        st.info(
            "This run was recorded without targets, so it has no gradients: the charts below show how its weights "
            "move and what its activations do." + (" Compared runs keep their gradient charts." if others else "")
        )
    shows_gradients = has_gradients or any(_has_gradients(o) for o in others)

    if shows_gradients:
        st.subheader("Gradient flow")
        lines, heat = st.columns(2, gap="medium")
        with lines:
            st.plotly_chart(flow(keys, role, epoch), key="grad_flow", config=CHART_CONFIG)
            st.caption(
                f"‖∇ {role}‖ of each layer on the probe set, log scale; dark lines are near the input. Lines that "
                "sit orders of magnitude apart mean the early layers get almost no gradient."
            )
        with heat:
            st.plotly_chart(heatmap(keys[0], role, epoch), key="grad_heatmap", config=CHART_CONFIG)
            st.caption(
                "The selected run's norms as colour, layer by epoch (log scale). Dark rows at the top over "
                "bright rows at the bottom: the gradient fades on its way back to the input."
            )

    signal_col, update_col = st.columns(2, gap="medium") if shows_gradients else (None, st.container())
    if signal_col is not None:
        with signal_col:
            st.subheader("Error signal per layer")
            st.plotly_chart(error_signal(keys, epoch), key="error_signal", config=CHART_CONFIG)
            st.caption(
                "‖∂loss/∂output‖: how much error each hidden layer receives from above. It should stay within "
                "an order of magnitude from layer to layer."
            )
    with update_col:
        st.subheader("Update-to-weight ratio")
        st.plotly_chart(updates(keys, epoch), key="update_ratio", config=CHART_CONFIG)
        st.caption(
            "‖Δw‖/‖w‖ per epoch. The green band (1e-5 to 1e-1, centred on the customary 1e-3) is healthy; above "
            "it while the loss rises means the learning rate is too high, below it the weights barely move."
        )

    name = run.layers[layer]["name"] if run.layers else "layer"
    st.subheader(f"Histograms over time: {plain(name)}")
    grad_col, act_col = st.columns(2, gap="medium") if has_gradients else (None, st.container())
    if grad_col is not None:
        with grad_col:
            if run.layers and views.histogram_weight(run.layers[layer], role) is None:
                st.info(
                    f"{plain(name)} ({plain(run.layers[layer].get('type') or 'layer')}) has no {role} weights, so no "
                    "gradient histogram. Pick a layer with weights, such as a Dense or Conv layer, in the sidebar."
                )
            else:
                st.plotly_chart(
                    histograms(keys[0], layer, "gradient", role, epoch), key="grad_hist", config=CHART_CONFIG
                )
                st.caption(
                    f"Share of |∇ {role}| entries per magnitude bin at each epoch (log colour). A mass drifting "
                    "down toward 1e-8 and below is a gradient dying out. Pick the layer in the sidebar."
                )
    with act_col:
        st.plotly_chart(histograms(keys[0], layer, "activation", role, epoch), key="act_hist", config=CHART_CONFIG)
        st.caption(
            "Share of activation values per bin at each epoch. Mass piling up at a bound (0 and 1 for sigmoid, "
            "±1 for tanh) is saturation; a single bar at 0 for ReLU is dead units."
        )

    st.subheader("Activation percentiles per layer")
    st.plotly_chart(percentiles(keys, epoch, layer), key="percentiles", config=CHART_CONFIG)
    hidden = views.hidden_layers(run)
    shown = len(views.percentile_panels(hidden, layer))
    spread = (
        f" This run has {len(hidden)} hidden layers: {shown} of them are drawn, spread from first to last, "
        "with the one chosen in the sidebar."
        if shown < len(hidden)
        else ""
    )
    st.caption(
        "As in Glorot & Bengio (2010), figure 2: per hidden layer, the median (line), 25–75% (band) and 2% and "
        "98% (dotted) of its activations on the probe set. Bands collapsing onto a bound mean saturated units." + spread
    )

    fraction_col, strip_col = st.columns([3, 2], gap="medium")
    with fraction_col:
        st.subheader("Dead and saturated units")
        st.plotly_chart(unit_fractions(keys, epoch), key="unit_fractions", config=CHART_CONFIG)
        st.caption(
            "Share of each hidden layer's units that are dead (zero on every probe sample) or saturated (at a "
            "bound on 95% of them). Either way they pass no gradient."
        )
    with strip_col:
        st.subheader("Which units")
        st.plotly_chart(unit_strip(keys[0], epoch), key="unit_strip", config=CHART_CONFIG)
        st.caption(
            f"Every unit of every hidden layer at epoch {epoch} (the sidebar's epoch): grey is active, black "
            f"dead, red saturated. Layers wider than {views.MAX_UNITS} show their first {views.MAX_UNITS} units."
        )

    st.subheader("Per-batch gradient norms")
    measured = {key: r.meta["grad_every"] for key, r in zip(keys, [run, *others]) if r.meta.get("grad_every")}
    if not measured:
        st.caption(
            "Not recorded for this run. Train with `--grad-every 10` (or `Recorder(grad_every=10)`) to measure each "
            "layer's gradient norm every 10 batches, between the epoch snapshots."
        )
        return
    st.plotly_chart(batch_norms(tuple(measured), epoch), key="batch_norms", config=CHART_CONFIG)
    every = " or ".join(sorted({str(n) for n in measured.values()}))
    st.caption(
        f"Each layer's gradient norm (all its weights together) every {every} batches, on a fixed subset of the "
        "probe: the spikes and drifts that epoch snapshots average away."
    )


def diagnosis(run, others, keys, has_gradients: bool) -> None:
    """Callouts at the top: one per finding of the current run, and a line per compared run."""
    findings = findings_for(*keys[0])
    if not findings:
        st.success(
            f"No problems found in {plain(run.name)}: " + views.healthy_summary(has_gradients),
            icon=":material/check_circle:",
        )
    for finding in findings:
        if finding.severe:
            st.error(finding_text(finding), icon=":material/error:")
        else:
            st.warning(finding_text(finding), icon=":material/warning:")
    if len(run.info.outputs) > 1:
        st.caption(
            "This model has several outputs: the diagnosis judges each output of classes by its own accuracy and loss, "
            "and leaves every output layer out of the dead and saturated units; a finding about one output names it."
        )
    for other, key in zip(others, keys[1:]):
        found = findings_for(*key)
        kinds = ", ".join(dict.fromkeys(f.title.lower() for f in found))
        st.caption(
            f"Compared run {plain(other.name)}: "
            + (f"{len(found)} finding(s): {plain(kinds)}." if found else "no problems found.")
        )


def finding_text(finding) -> str:
    """A finding's callout: its "Kind:" opening in bold, then the message, whose layer names are the user's, as
    plain text."""
    head, sep, body = finding.message.partition(": ")
    return (
        f"**{plain(head)}.** {plain_with_code(body[:1].upper() + body[1:])}"
        if sep
        else plain_with_code(finding.message)
    )


# ------------------------------------------------------------------------------------------------------------
# Cached figures and findings. Keys carry (run id, snapshot count), so a growing run rebuilds and a finished one
# never does. cache_resource keeps the objects themselves (no pickling); each figure is kept as its finished spec
# (`frozen`), so the sessions that show it share its serialisation too.


def _run(run_id: str):
    return context.store().run(run_id)


@st.cache_resource(max_entries=32, show_spinner=False)
def _series(run_id: str, count: int, epoch: int):
    return views.layer_series(_run(run_id), epoch)


def _all_series(keys, epoch):
    return [_series(run_id, count, epoch) for run_id, count in keys]


def _has_gradients(run) -> bool:
    """Whether the recorder measured gradients: it needs targets to compute a loss, class labels or regression
    targets alike, so this asks the snapshots rather than whether the probe has class labels."""
    snapshots = run.epoch_snapshots()
    return (
        any(isinstance(snapshots[-1].layer(i).get("grad"), dict) for i in range(len(run.layers)))
        if snapshots
        else False
    )


@st.cache_resource(max_entries=32, show_spinner=False)
def findings_for(run_id: str, count: int):
    return diagnose(_run(run_id))


@st.cache_resource(max_entries=16, show_spinner=False)
def flow(keys, role, epoch):
    return frozen(views.gradient_flow_figure(_all_series(keys, epoch), role, epoch))


@st.cache_resource(max_entries=16, show_spinner=False)
def heatmap(key, role, epoch):
    return frozen(views.gradient_heatmap_figure(_series(*key, epoch), role, epoch))


@st.cache_resource(max_entries=16, show_spinner=False)
def error_signal(keys, epoch):
    return frozen(views.error_signal_figure(_all_series(keys, epoch), epoch))


@st.cache_resource(max_entries=16, show_spinner=False)
def updates(keys, epoch):
    return frozen(views.update_ratio_figure(_all_series(keys, epoch), epoch))


@st.cache_resource(max_entries=16, show_spinner=False)
def histograms(key, layer, kind, role, epoch):
    run = _run(key[0])
    snapshots = views.bounded_snapshots(run, epoch)
    if kind == "gradient":
        series, title = views.gradient_histograms(run, snapshots, layer, role), f"|∇ {role}| histogram"
    else:
        series, title = views.activation_histograms(snapshots, layer), "activation histogram"
    return frozen(views.histogram_heatmap_figure(series, title, epoch))


@st.cache_resource(max_entries=16, show_spinner=False)
def percentiles(keys, epoch, layer):
    return frozen(views.percentile_figure(_all_series(keys, epoch), epoch, chosen=layer))


@st.cache_resource(max_entries=16, show_spinner=False)
def unit_fractions(keys, epoch):
    return frozen(views.unit_fraction_figure(_all_series(keys, epoch), epoch))


@st.cache_resource(max_entries=16, show_spinner=False)
def unit_strip(key, epoch):
    run = _run(key[0])
    hidden = views.hidden_layers(run)
    names = [run.layers[i].get("name", f"layer {i}") for i in hidden]
    return frozen(views.unit_strip_figure(views.unit_states(snapshot_at(run, epoch), hidden), names, epoch))


@st.cache_resource(max_entries=16, show_spinner=False)
def batch_norms(keys, epoch):
    return frozen(
        views.batch_norm_figure(
            [norms for key in keys if (norms := views.batch_norms(_run(key[0]))) is not None], epoch
        )
    )
