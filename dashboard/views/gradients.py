"""Pure view functions of the Gradients & activations page: runs in, plotly figures out (no Streamlit).

Every chart is bounded: series keep at most `MAX_EPOCHS` evenly spaced snapshots (the chosen epoch always), unit
strips at most `MAX_UNITS` units per layer, and per-batch norms at most `MAX_BATCH_POINTS` measurements.
Colour encodes depth (input side dark, output side light) and line style encodes the run, so overlaid runs read
layer against layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale, sequential
from plotly.subplots import make_subplots

from core.analysis.diagnosis import Finding, Thresholds, update_ratios_per_epoch
from core.analysis.measures import ACTIVATION_PERCENTILES, LOG_HIST_EDGES
from core.store import Run, Snapshot, main_weight

MAX_EPOCHS = 300  # snapshots per series and heatmap columns; longer runs show every k-th epoch
MAX_UNITS = 512  # units per layer in the unit strip
MAX_BATCH_POINTS = 4000  # per-batch measurements per layer that reach the browser
HISTOGRAM_BINS = 60  # common grid the per-snapshot activation histograms are rebinned onto
DEPTH_SCALE = "Plasma"
SHARE_SCALE = sequential.Magma[1:][
    ::-1
]  # shares: light = rare, dark = common; no near-black, which Streamlit's theme recolours
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")  # one per run: the current run is solid
HEALTHY_BAND = (Thresholds().update_ratio_low, Thresholds().update_ratio_high)  # per epoch, centred on 1e-3 in log
UNIT_STATES = ("active", "dead", "saturated")
UNIT_COLOURS = ("#e8e8e8", "#222222", "#d62728")

MAX_PERCENTILE_PANELS = 24  # a deep model gets an even spread of its layers: each panel needs ~190 px of height


# ------------------------------------------------------------------------------------------------------------
# What the charts draw, read once per run


@dataclass(frozen=True)
class LayerSeries:
    """One run's per-layer statistics over (a bounded subset of) its captured epochs."""

    run_id: str
    run_name: str
    layers: tuple[str, ...]
    epochs: np.ndarray  # (S,) captured epochs, ascending
    kernel_grad: np.ndarray  # (S, L) ‖∂loss/∂kernel‖ on the probe set
    bias_grad: np.ndarray  # (S, L)
    error_signal: np.ndarray  # (S, L) ‖∂loss/∂output‖: the error signal each layer receives
    update_ratio: np.ndarray  # (S, L) kernel ‖Δw‖/‖w‖ per epoch
    percentiles: np.ndarray  # (S, L, 5) activation percentiles ACTIVATION_PERCENTILES
    dead: np.ndarray  # (S, L) fraction of dead units
    saturated: np.ndarray  # (S, L) fraction of saturated units
    outputs: tuple[int, ...] = ()  # the layers that give the model's outputs (empty: the last one)

    def gradient(self, role: str) -> np.ndarray:
        return self.bias_grad if role == "bias" else self.kernel_grad

    @property
    def hidden(self) -> list[int]:
        """Every layer but the output layers, as the diagnosis counts them (`RunInfo.output_layers`)."""
        outputs = set(self.outputs) if self.outputs else {len(self.layers) - 1}
        return [i for i in range(len(self.layers)) if i not in outputs]


def hidden_layers(run: Run) -> list[int]:
    """Positions of the recorded layers that give no model output (`RunInfo.output_layers`), as `LayerSeries.hidden`."""
    outputs = set(run.info.output_layers())
    return [i for i in range(len(run.layers)) if i not in outputs]


def spaced(count: int, cap: int, keep: int | None = None) -> np.ndarray:
    """Sorted positions of at most `cap` (+1 for `keep`) of `count` items, evenly spaced, first and last included."""
    if count <= cap:
        return np.arange(count)
    picks = set(np.unique(np.round(np.linspace(0, count - 1, cap)).astype(int)).tolist())
    if keep is not None and 0 <= keep < count:
        picks.add(keep)
    return np.asarray(sorted(picks))


def bounded_snapshots(run: Run, epoch: int | None = None, cap: int = MAX_EPOCHS) -> list[Snapshot]:
    snapshots = run.epoch_snapshots()
    epochs = [int(s.epoch) for s in snapshots]
    keep = epochs.index(epoch) if epoch in epochs else None
    return [snapshots[i] for i in spaced(len(snapshots), cap, keep)]


def layer_series(run: Run, epoch: int | None = None, cap: int = MAX_EPOCHS) -> LayerSeries:
    snapshots = bounded_snapshots(run, epoch, cap)
    series = lambda *path: run.layer_series(*path, snapshots=snapshots)  # noqa: E731
    percentiles = np.full((len(snapshots), len(run.layers), len(ACTIVATION_PERCENTILES)), np.nan)
    for row, snapshot in enumerate(snapshots):
        for column in range(len(run.layers)):
            values = snapshot.layer(column).get("activation", {}).get("percentiles")
            if values and len(values) == len(ACTIVATION_PERCENTILES):
                percentiles[row, column] = [np.nan if v is None else v for v in values]
    return LayerSeries(
        run_id=run.id,
        run_name=run.name,
        layers=tuple(str(layer.get("name", f"layer {i}")) for i, layer in enumerate(run.layers)),
        epochs=np.asarray([int(s.epoch) for s in snapshots]),
        kernel_grad=series("grad", main_weight, "norm"),
        bias_grad=series("grad", "bias", "norm"),
        error_signal=series("grad", "output", "norm"),
        update_ratio=update_ratios_per_epoch(run, snapshots) if snapshots else np.zeros((0, len(run.layers))),
        percentiles=percentiles,
        dead=series("activation", "dead_fraction"),
        saturated=series("activation", "saturated_fraction"),
        outputs=tuple(run.info.output_layers()),
    )


def depth_colours(count: int) -> list[str]:
    """One colour per layer, dark at the input and light (not too light to read) at the output."""
    if count <= 1:
        return sample_colorscale(DEPTH_SCALE, [0.0])
    return sample_colorscale(DEPTH_SCALE, list(np.linspace(0.0, 0.85, count)))


def _log_ticks(low: float, high: float) -> tuple[list[float], list[str]]:
    exponents = list(range(int(math.floor(low)), int(math.ceil(high)) + 1))
    step = max(1, math.ceil(len(exponents) / 8))
    exponents = exponents[::step]
    return [float(e) for e in exponents], [f"1e{e}" for e in exponents]


def _positive(values: np.ndarray) -> np.ndarray:
    """Values for a log axis: zeros, negatives and non-finite values become gaps."""
    values = np.asarray(values, dtype=np.float64).copy()
    values[~(np.isfinite(values) & (values > 0))] = np.nan
    return values


def _style(figure: go.Figure, height: int, legend: bool = True) -> go.Figure:
    figure.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=36, b=10),
        legend=dict(
            orientation="v", yanchor="top", y=1, x=1.02, xanchor="left", title="", font_size=11, tracegroupgap=1
        ),
        showlegend=legend,
        hovermode="closest",
        uirevision="strata-gradients",  # keep zoom and legend toggles across live refreshes
    )
    figure.update_annotations(font_size=12)
    return figure


def _epoch_marker(figure: go.Figure, epoch: int | None, **where) -> None:
    if epoch is not None:
        figure.add_vline(x=epoch, line=dict(color="grey", dash="dot", width=1), **where)


def healthy_summary(has_gradients: bool) -> str:
    """What a run without findings was checked for: the gradient claims only when gradients were measured."""
    if has_gradients:
        return (
            "gradients reach every layer, no layer is mostly dead or saturated, and the update sizes are in their band."
        )
    return (
        "no layer is mostly dead or saturated, and the update sizes are in their band. Gradients were not measured "
        "(the run has no labels to compute a loss), so whether they reach every layer is unknown."
    )


def run_labels(runs) -> list[str]:
    """Short names for the legend: display names cut to 32 characters, ids where those would collide."""
    labels = [r.run_name if len(r.run_name) <= 32 else r.run_name[:31] + "…" for r in runs]
    return [label if labels.count(label) == 1 else r.run_id for label, r in zip(labels, runs)]


def _add_run_legend(figure: go.Figure, runs) -> None:
    """With overlaid runs, legend entries for the line style of each run (the layer entries carry the colour)."""
    if len(runs) < 2:
        return
    for index, label in enumerate(run_labels(runs)):
        figure.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="lines",
                name=label,
                legendgroup=f"run {index}",
                line=dict(color="#555555", dash=DASHES[index % len(DASHES)], width=2),
            )
        )


def _log_axis(figure: go.Figure, values: list[np.ndarray], **where) -> None:
    """Log y axis: labels at powers of ten only once the data span two decades or more (no 2 and 5 clutter)."""
    finite = np.concatenate([_positive(v).ravel() for v in values]) if values else np.zeros(0)
    finite = finite[np.isfinite(finite)]
    wide = finite.size and np.log10(finite.max()) - np.log10(finite.min()) >= 2
    figure.update_yaxes(type="log", exponentformat="power", dtick=1 if wide else None, **where)


# ------------------------------------------------------------------------------------------------------------
# Diagnosis callouts


def finding_markdown(finding: Finding) -> str:
    """The callout text: the message (layer, epoch, evidence, fix) with its "Kind:" opening in bold."""
    head, sep, body = finding.message.partition(": ")
    return f"**{head}.** {body[:1].upper()}{body[1:]}" if sep else finding.message


def findings_summary(name: str, findings: list[Finding]) -> str:
    if not findings:
        return f"`{name}`: no problems found."
    kinds = ", ".join(dict.fromkeys(f.title.lower() for f in findings))  # each finding names itself: no table per kind
    return f"`{name}`: {len(findings)} finding(s): {kinds}."


# ------------------------------------------------------------------------------------------------------------
# Lines over epochs, one colour per layer and one dash per run


def layer_lines_figure(
    runs: list[LayerSeries],
    values_of,
    y_title: str,
    log: bool = True,
    epoch: int | None = None,
    layers: list[int] | None = None,
    height: int = 340,
    band: tuple[float, float] | None = None,
    reference: float | None = None,
) -> go.Figure:
    """Lines of `values_of(series)` (S, L) over epochs for each layer of each run; a log y axis by default.

    `band` shades a healthy range, `reference` draws a dotted horizontal line (both in y units).
    """
    figure = go.Figure()
    if band is not None:
        figure.add_hrect(y0=band[0], y1=band[1], fillcolor="rgba(44,160,44,0.10)", line_width=0, layer="below")
    if reference is not None:
        figure.add_hline(y=reference, line=dict(color="rgba(44,160,44,0.8)", dash="dot", width=1))
    shown: set[str] = set()
    labels = run_labels(runs)
    drawn = []
    for index, series in enumerate(runs):
        values = values_of(series)
        columns = layers if layers is not None else list(range(values.shape[1] if values.ndim == 2 else 0))
        colours = depth_colours(len(series.layers))
        for column in columns:
            if column >= values.shape[1]:
                continue
            y = _positive(values[:, column]) if log else values[:, column].astype(np.float64)
            if not np.isfinite(y).any():
                continue
            layer = series.layers[column]
            hover = f"{layer}" + (f" · {labels[index]}" if len(runs) > 1 else "")
            figure.add_trace(
                go.Scatter(
                    x=series.epochs,
                    y=y,
                    mode="lines+markers" if len(series.epochs) <= 30 else "lines",
                    name=layer,
                    line=dict(color=colours[column], dash=DASHES[index % len(DASHES)], width=2 if index == 0 else 1.6),
                    marker=dict(size=4 if index == 0 else 3),
                    legendgroup=layer,
                    showlegend=layer not in shown,
                    hovertemplate=f"{hover}<br>epoch %{{x}}<br>{y_title} %{{y:.3g}}<extra></extra>",
                )
            )
            shown.add(layer)
            drawn.append(y)
    _add_run_legend(figure, runs)
    figure.update_xaxes(title_text="epoch")
    figure.update_yaxes(title_text=y_title)
    if log:
        _log_axis(figure, drawn + ([np.asarray(band)] if band else []))
    _epoch_marker(figure, epoch)
    return _style(figure, height)


def gradient_flow_figure(runs: list[LayerSeries], role: str = "kernel", epoch: int | None = None) -> go.Figure:
    return layer_lines_figure(runs, lambda s: s.gradient(role), f"‖∇ {role}‖", epoch=epoch)


def error_signal_figure(runs: list[LayerSeries], epoch: int | None = None) -> go.Figure:
    """‖∂loss/∂output‖ per hidden layer. The output layers are left out: their gradient is with respect to the
    model's outputs (probabilities, for a softmax), on another scale, and runs recorded before that gradient
    was measured hold 0 for it."""

    def hidden(series: LayerSeries) -> np.ndarray:
        values = np.array(series.error_signal, dtype=np.float64)  # a copy: the output layers' columns undrawn
        values[:, [i for i in range(values.shape[1]) if i not in series.hidden]] = np.nan
        return values

    return layer_lines_figure(runs, hidden, "‖∂loss/∂output‖", epoch=epoch)


def update_ratio_figure(runs: list[LayerSeries], epoch: int | None = None) -> go.Figure:
    return layer_lines_figure(
        runs, lambda s: s.update_ratio, "‖Δw‖/‖w‖ per epoch", epoch=epoch, band=HEALTHY_BAND, reference=1e-3
    )


def unit_fraction_figure(runs: list[LayerSeries], epoch: int | None = None) -> go.Figure:
    """Dead (left) and saturated (right) fraction of each hidden layer's units over epochs."""
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=["dead units", "saturated units"], horizontal_spacing=0.1, shared_yaxes=True
    )
    labels, shown = run_labels(runs), set()
    for index, series in enumerate(runs):
        colours = depth_colours(len(series.layers))
        for col, values in ((1, series.dead), (2, series.saturated)):
            for column in series.hidden:
                layer = series.layers[column]
                hover = layer + (f" · {labels[index]}" if len(runs) > 1 else "")
                figure.add_trace(
                    go.Scatter(
                        x=series.epochs,
                        y=values[:, column],
                        mode="lines",
                        name=layer,
                        legendgroup=layer,
                        showlegend=col == 1 and layer not in shown,
                        line=dict(color=colours[column], dash=DASHES[index % len(DASHES)]),
                        hovertemplate=f"{hover}<br>epoch %{{x}}<br>%{{y:.0%}}<extra></extra>",
                    ),
                    row=1,
                    col=col,
                )
                shown.add(layer)
            _epoch_marker(figure, epoch, row=1, col=col)
    _add_run_legend(figure, runs)
    figure.update_yaxes(range=[-0.02, 1.02], tickformat=".0%")
    figure.update_xaxes(title_text="epoch")
    return _style(figure, 320)


# ------------------------------------------------------------------------------------------------------------
# Layer x epoch heatmap


def gradient_heatmap_figure(series: LayerSeries, role: str = "kernel", epoch: int | None = None) -> go.Figure:
    """log10 of each layer's gradient norm (rows, input at the top) at every epoch (columns). Layers without that
    weight (activations, pooling, normalisation for `kernel`) get no row: a blank row would read as a gradient
    gone. A measured zero keeps its row."""
    measured = np.asarray(series.gradient(role), np.float64)  # (S, L), NaN for a layer without the weight
    rows = [i for i in range(measured.shape[1]) if np.isfinite(measured[:, i]).any()] or list(range(measured.shape[1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log10(_positive(measured[:, rows])).T  # (rows, S)
    finite = z[np.isfinite(z)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (-3.0, 0.0)
    if high - low < 1:
        low, high = low - 0.5, high + 0.5
    ticks, labels = _log_ticks(low, high)
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=series.epochs,
            y=[series.layers[i] for i in rows],
            colorscale="Viridis",
            zmin=low,
            zmax=high,
            colorbar=dict(title=f"‖∇ {role}‖", tickvals=ticks, ticktext=labels, thickness=12),
            customdata=np.power(10.0, z),
            hovertemplate="%{y}<br>epoch %{x}<br>norm %{customdata:.3g}<extra></extra>",
        )
    )
    figure.update_yaxes(autorange="reversed", type="category")
    figure.update_xaxes(title_text="epoch")
    _epoch_marker(figure, epoch)
    return _style(figure, 340, legend=False)


# ------------------------------------------------------------------------------------------------------------
# Histograms over time: bins x epoch


def rebin(edges: np.ndarray, counts: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """`counts` over `edges` redistributed onto the bins of `grid`, assuming values spread evenly within a bin.

    Counts outside the grid fall into its end bins, so the total is kept.
    """
    edges, counts = np.asarray(edges, np.float64), np.asarray(counts, np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])  # (B + 1,) at the source edges
    inner = np.interp(grid[1:-1], edges, cumulative)  # below edges[0]: 0, above edges[-1]: the total
    return np.diff(np.concatenate([[0.0], inner, [cumulative[-1]]]))


@dataclass(frozen=True)
class HistogramSeries:
    """Histograms of one layer at several epochs on one common grid."""

    epochs: np.ndarray  # (S,)
    edges: np.ndarray  # (B + 1,) common bin edges (log10|g| for gradients)
    density: np.ndarray  # (S, B) fraction of values per bin, each row summing to 1 (NaN rows: no data)
    log_values: bool  # True when edges are log10 of magnitudes


def activation_histograms(snapshots: list[Snapshot], layer: int, bins: int = HISTOGRAM_BINS) -> HistogramSeries:
    """Each snapshot's activation histogram (its own edges) rebinned onto one grid spanning all of them."""
    pairs = [(s.layer_array(layer, "act_hist_edges"), s.layer_array(layer, "act_hist_counts")) for s in snapshots]
    spans = [(float(e[0]), float(e[-1])) for e, c in pairs if e is not None and c is not None and np.isfinite(e).all()]
    low = min((a for a, _ in spans), default=0.0)
    high = max((b for _, b in spans), default=1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    grid = np.linspace(low, high, bins + 1)
    rows = [
        rebin(e, c, grid) if e is not None and c is not None and np.isfinite(e).all() else np.full(bins, np.nan)
        for e, c in pairs
    ]
    return HistogramSeries(
        np.asarray([int(s.epoch) for s in snapshots]), grid, _normalised(rows, bins), log_values=False
    )


def histogram_weight(layer: dict, role: str) -> str | None:
    """The weight whose gradient histogram stands for `layer` in the `role` chart: for 'kernel', its kernel or
    the weight in that role (`main_weight`, such as an embedding table); None when the layer has no such weight
    (activations, dropout, normalisation). A layer record without its weight list (older runs) keeps `role`."""
    if "weights" not in layer:
        return role
    if role == "kernel":
        return main_weight(layer)
    return role if role in layer["weights"] else None


def gradient_histograms(run: Run, snapshots: list[Snapshot], layer: int, role: str = "kernel") -> HistogramSeries:
    """Each snapshot's log10|gradient| histogram; they share `LOG_HIST_EDGES`, so no rebinning is needed. `role`
    is read as `histogram_weight` reads it."""
    bins = len(LOG_HIST_EDGES) - 1
    if 0 <= layer < len(run.layers):
        role = histogram_weight(run.layers[layer], role) or role
    rows = []
    for snapshot in snapshots:
        counts = snapshot.layer_array(layer, f"grad_{role}_log_hist")
        rows.append(np.full(bins, np.nan) if counts is None or len(counts) != bins else counts.astype(np.float64))
    return HistogramSeries(
        np.asarray([int(s.epoch) for s in snapshots]), LOG_HIST_EDGES.copy(), _normalised(rows, bins), log_values=True
    )


def _normalised(rows: list[np.ndarray], bins: int) -> np.ndarray:
    matrix = np.asarray(rows, dtype=np.float64).reshape(len(rows), bins)
    totals = np.nansum(matrix, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(totals > 0, matrix / totals, np.nan)


def histogram_heatmap_figure(
    histograms: HistogramSeries, title: str, epoch: int | None = None, height: int = 320
) -> go.Figure:
    """Bins (rows) x epochs (columns), colour = share of values in the bin, on a log colour scale so tails show."""
    centres = (histograms.edges[:-1] + histograms.edges[1:]) / 2
    trimmed = _trim_empty_bins(histograms.density)
    density = histograms.density[:, trimmed]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log10(np.where(density > 0, density, np.nan)).T  # (B, S)
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=histograms.epochs,
            y=centres[trimmed],
            colorscale=SHARE_SCALE,
            zmin=-4,
            zmax=0,
            colorbar=dict(
                title="share",
                tickvals=[-4, -3, -2, -1, 0],
                ticktext=["0.01%", "0.1%", "1%", "10%", "100%"],
                thickness=12,
            ),
            customdata=np.power(10.0, z),
            hovertemplate="epoch %{x}<br>bin %{y:.3g}<br>share %{customdata:.2%}<extra></extra>",
        )
    )
    if histograms.log_values:
        low, high = float(centres[trimmed][0]), float(centres[trimmed][-1])
        ticks, labels = _log_ticks(low, high)
        labels = [f"≤{label}" if tick <= LOG_HIST_EDGES[0] + 0.5 else label for tick, label in zip(ticks, labels)]
        figure.update_yaxes(tickvals=ticks, ticktext=labels, title_text="|gradient|")
    else:
        figure.update_yaxes(title_text="activation")
    figure.update_xaxes(title_text="epoch")
    figure.update_layout(title=dict(text=title, x=0, font_size=13))
    _epoch_marker(figure, epoch)
    return _style(figure, height, legend=False)


def _trim_empty_bins(density: np.ndarray) -> np.ndarray:
    """Positions of the bins from the first to the last that is ever non-empty (all of them when none is)."""
    used = np.flatnonzero(np.nan_to_num(density).sum(axis=0) > 0)
    if used.size == 0:
        return np.arange(density.shape[1])
    return np.arange(used[0], used[-1] + 1)


# ------------------------------------------------------------------------------------------------------------
# Activation percentile bands (Glorot & Bengio 2010, figure 2)


def percentile_panels(hidden: list[int], chosen: int | None = None, limit: int = MAX_PERCENTILE_PANELS) -> list[int]:
    """The hidden layers (positions among the recorded layers, `LayerSeries.hidden`) that get a percentile panel:
    all of them up to `limit`, else an even spread from first to last hidden layer that includes `chosen`."""
    if len(hidden) <= limit:
        return list(hidden)
    picks = {hidden[round(j * (len(hidden) - 1) / (limit - 2))] for j in range(limit - 1)}
    if chosen in hidden:
        picks.add(chosen)
    return sorted(picks)


def percentile_figure(
    runs: list[LayerSeries], epoch: int | None = None, columns: int = 3, chosen: int | None = None
) -> go.Figure:
    """One panel per hidden layer (at most `MAX_PERCENTILE_PANELS`, see `percentile_panels`): 25–75% band, median
    line and 2%/98% dotted lines over epochs, one colour per run."""
    shown = (percentile_panels(runs[0].hidden, chosen) or [0]) if runs else [0]
    hidden = len(shown)
    rows = math.ceil(hidden / columns)
    titles = [runs[0].layers[i] for i in shown] if runs else [""]
    height = 120 + 190 * rows
    figure = make_subplots(
        rows=rows,
        cols=min(columns, hidden),
        subplot_titles=titles,
        shared_xaxes=True,
        vertical_spacing=min(60 / height, 0.9 / max(rows - 1, 1)),
        horizontal_spacing=0.06,
    )
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
    labels = run_labels(runs)
    for index, series in enumerate(runs):
        colour = palette[index % len(palette)]
        fill = _rgba(colour, 0.22)
        for column, layer in enumerate(shown):
            if layer not in series.hidden:  # a compared run with fewer layers, or this one's output layer there
                continue
            row, col = column // columns + 1, column % columns + 1
            p = series.percentiles[:, layer]  # (S, 5): 2, 25, 50, 75, 98
            group = series.run_id
            first = column == 0
            kwargs = dict(x=series.epochs, legendgroup=group, hoverinfo="skip")
            figure.add_trace(
                go.Scatter(y=p[:, 3], mode="lines", line=dict(width=0, color=colour), showlegend=False, **kwargs),
                row=row,
                col=col,
            )
            figure.add_trace(
                go.Scatter(
                    y=p[:, 1],
                    mode="lines",
                    line=dict(width=0, color=colour),
                    fill="tonexty",
                    fillcolor=fill,
                    showlegend=False,
                    **kwargs,
                ),
                row=row,
                col=col,
            )
            for position, dash, width in ((0, "dot", 1), (4, "dot", 1)):
                figure.add_trace(
                    go.Scatter(
                        y=p[:, position],
                        mode="lines",
                        line=dict(color=colour, dash=dash, width=width),
                        showlegend=False,
                        **kwargs,
                    ),
                    row=row,
                    col=col,
                )
            figure.add_trace(
                go.Scatter(
                    x=series.epochs,
                    y=p[:, 2],
                    mode="lines",
                    line=dict(color=colour, width=2),
                    name=labels[index],
                    legendgroup=group,
                    showlegend=first,
                    customdata=p,
                    hovertemplate="epoch %{x}<br>98%: %{customdata[4]:.3g}<br>75%: %{customdata[3]:.3g}<br>"
                    "median: %{y:.3g}<br>25%: %{customdata[1]:.3g}<br>2%: %{customdata[0]:.3g}<extra></extra>",
                ),
                row=row,
                col=col,
            )
    if epoch is not None:
        for column in range(hidden):
            figure.add_vline(
                x=epoch,
                line=dict(color="grey", dash="dot", width=1),
                row=column // columns + 1,
                col=column % columns + 1,
            )
    _style(figure, height)
    figure.update_layout(
        margin=dict(t=64), legend=dict(orientation="h", yref="container", y=1, yanchor="top", x=0, xanchor="left")
    )
    return figure


def _rgba(hex_colour: str, alpha: float) -> str:
    red, green, blue = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


# ------------------------------------------------------------------------------------------------------------
# Which units: a strip per layer at one epoch


def unit_states(snapshot: Snapshot, hidden: list[int]) -> np.ndarray:
    """(len(hidden), max units) 0 = active, 1 = dead, 2 = saturated, NaN past a layer's width: a row for each of
    the `hidden` layers (positions among the recorded layers, `LayerSeries.hidden`)."""
    rows = []
    for index in hidden:
        dead, saturated = snapshot.layer_array(index, "dead_units"), snapshot.layer_array(index, "saturated_units")
        present = dead if dead is not None else saturated
        if present is None:  # neither array was recorded
            rows.append(np.zeros(0))
            continue
        state = np.zeros(len(present))
        if saturated is not None:
            state[saturated.astype(bool)] = 2
        if dead is not None:
            state[dead.astype(bool)] = 1
        rows.append(state[:MAX_UNITS])
    width = max((len(r) for r in rows), default=0)
    matrix = np.full((len(hidden), max(width, 1)), np.nan)
    for index, row in enumerate(rows):
        matrix[index, : len(row)] = row
    return matrix


def unit_strip_figure(states: np.ndarray, layers: list[str], epoch: int) -> go.Figure:
    """Every unit of every hidden layer (rows, named by `layers`) coloured by state at `epoch`: which units are dead
    or saturated."""
    hidden = list(layers[: states.shape[0]])
    scale = []
    for value, colour in enumerate(UNIT_COLOURS):
        scale += [[value / 3, colour], [(value + 1) / 3, colour]]
    labels = (
        np.vectorize(lambda v: "" if np.isnan(v) else UNIT_STATES[int(v)], otypes=[object])(states)
        if states.size
        else states
    )
    figure = go.Figure(
        go.Heatmap(
            z=states,
            y=hidden,
            x=np.arange(states.shape[1]),
            colorscale=scale,
            zmin=-0.5,
            zmax=2.5,
            xgap=1,
            ygap=3,
            customdata=labels,
            hovertemplate="%{y} unit %{x}: %{customdata}<extra></extra>",
            colorbar=dict(tickvals=[0, 1, 2], ticktext=list(UNIT_STATES), thickness=12),
        )
    )
    figure.update_yaxes(autorange="reversed", type="category")
    figure.update_xaxes(title_text="unit", showgrid=False)
    figure.update_layout(title=dict(text=f"units at epoch {epoch}", x=0, font_size=13))
    return _style(figure, 80 + 34 * max(len(hidden), 1), legend=False)


# ------------------------------------------------------------------------------------------------------------
# Per-batch gradient norms


@dataclass(frozen=True)
class BatchNorms:
    run_id: str
    run_name: str
    layers: tuple[str, ...]
    epochs: np.ndarray  # (m,) fractional epoch of each measurement (step / steps per epoch)
    norms: np.ndarray  # (m, L)


def batch_norms(run: Run, cap: int = MAX_BATCH_POINTS) -> BatchNorms | None:
    """The run's per-batch gradient norms, or None when it was recorded without `grad_every`."""
    steps, norms = run.batch_gradient_norms()
    if steps.size == 0:
        return None
    steps_per_epoch = run.meta.get("steps_per_epoch") or 1
    keep = spaced(len(steps), cap)
    layers = tuple(str(layer.get("name", f"layer {i}")) for i, layer in enumerate(run.layers))
    return BatchNorms(run.id, run.name, layers, steps[keep] / steps_per_epoch, norms[keep])


def batch_norm_figure(runs: list[BatchNorms], epoch: int | None = None) -> go.Figure:
    """Each layer's gradient norm at every measured batch, over (fractional) epochs, on a log scale."""
    figure = go.Figure()
    labels, shown, drawn = run_labels(runs), set(), []
    for index, series in enumerate(runs):
        colours = depth_colours(len(series.layers))
        for column, name in enumerate(series.layers[: series.norms.shape[1]]):
            y = _positive(series.norms[:, column])
            if not np.isfinite(y).any():
                continue
            hover = name + (f" · {labels[index]}" if len(runs) > 1 else "")
            figure.add_trace(
                go.Scattergl(
                    x=series.epochs,
                    y=y,
                    mode="lines",
                    name=name,
                    legendgroup=name,
                    showlegend=name not in shown,
                    line=dict(color=colours[column], dash=DASHES[index % len(DASHES)], width=1.4),
                    hovertemplate=f"{hover}<br>epoch %{{x:.2f}}<br>‖∇‖ %{{y:.3g}}<extra></extra>",
                )
            )
            shown.add(name)
            drawn.append(y)
    _add_run_legend(figure, runs)
    figure.update_xaxes(title_text="epoch")
    figure.update_yaxes(title_text="‖∇ weights‖ per batch")
    _log_axis(figure, drawn)
    _epoch_marker(figure, epoch)
    return _style(figure, 320)
