"""Pure view functions of the Layers page: metric arrays and probe samples in, plotly figures and tables out (no
Streamlit).

Layers keep one colour everywhere, from light (near the input) to dark (near the output), so depth reads the
same in every line chart. Grids of units and images are heatmap small multiples in one figure (no WebGL).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale
from plotly.subplots import make_subplots

from core.analysis.measures import accuracy_interval
from core.capture.snapshot import CKA_SKETCH_POINTS, SEPARATION_POINTS

MAX_GRID_UNITS = 64  # unit maps and weight images drawn per layer; wider layers show their first 64
GRID_COLUMNS = 8
CELL_HEIGHT = 92  # pixels per row of image small multiples (16 to a row)
PLANE_CELL_HEIGHT = 135  # pixels per row of unit maps (8 to a row): about square on a wide page
MAX_PLANE_POINTS = 1_000  # probe points drawn over the decision boundary
MAX_TEXT_CELLS = 150  # heatmaps print their values in the cells up to this many cells
MAX_TEXT_COLUMNS = 12  # ... and up to this many columns, so the numbers fit
INPUT = "input"
PALETTE = qualitative.Plotly + qualitative.Dark24
UNIT_SCALE = "RdBu"  # diverging, as in TensorFlow Playground: one colour for positive, one for negative, white at 0
DEPTH_SCALE = "Viridis"
EARLY = "#b8b8b8"  # epoch 0 (before training) drawn as a faint reference
FEW_HELD_OUT = 200  # below this many held-out samples a probe accuracy's 95% interval is wider than ±4 points at 90%

CAPTIONS = {
    "probe_heatmap": "Each cell: how well a linear classifier reads the class off that layer at that epoch, scored on "
    "the held-out half of the probe set. Brighter is more linearly decodable; the input row is the "
    "baseline.",
    "probe_depth": "Linear-probe accuracy from input to output at the chosen epoch (grey: before training), with its "
    "95% interval. A rise with depth means later layers make the classes linearly separable.",
    "cka_heatmap": "Linear CKA between every pair of layers at the chosen epoch: 1 means two layers represent the "
    "probe set the same way up to rotation and scale; blocks of high values are stages. Blank: a constant layer, no "
    "CKA.",
    "cka_final": "Each layer's CKA with itself at the last epoch, on a fixed subsample of at most "
    f"{CKA_SKETCH_POINTS} probe samples. A line reaching 1 early means that layer stopped changing; layers "
    "near the input usually settle first.",
    "depth": "At the chosen epoch (grey: before training): class separation (silhouette in the layer's top "
    f"components, on at most {SEPARATION_POINTS} probe samples; higher is better separated) and how many "
    "directions each layer uses (n90, participation ratio).",
    "time": "The same three measures over training, one line per layer, light near the input and dark near the output.",
    "unit_grid": "Every unit's response over the input plane (Playground style): blue where it fires, red where it is "
    "negative, each unit on its own scale; the outlined one is the chosen unit.",
    "unit_plane": "Left: the chosen unit's response with its most (▲) and least (▼) activating probe samples. "
    "Right: the network's decision over the plane with the probe samples.",
    "bent_plane": "A 25×25 grid of input points pushed through the network and drawn in each layer's PCA space, "
    "coloured by the decision: watch the plane fold until the classes come apart.",
    "unit_images": "The probe images that drive the chosen unit most (top row) and least (bottom row); for ReLU units "
    "many samples tie at zero, so the bottom row is one pick among them.",
    "prototypes": "Each unit's favourite input: the average of the probe images that activate it most (blank: a dead "
    "unit, which no sample activates).",
    "kernel_images": "The first layer's weights per unit drawn as images: blue pixels push the unit up, red pull it "
    "down. Structured strokes mean learned detectors; salt-and-pepper noise means little learning.",
    "unit_features": "Feature values of the probe samples that drive the chosen unit most and least, as standard "
    "scores against the probe set: a column that flips colour is what the unit responds to.",
}
UNLABELLED_CAPTIONS = {  # a run without class labels has no class separation: two measures, not three
    "depth": "At the chosen epoch (grey: before training): how many directions each layer uses (n90, participation "
    "ratio); a run without class labels has no class separation.",
    "time": "The same two measures over training, one line per layer, light near the input and dark near the output.",
}


def caption(name: str, labelled: bool = True) -> str:
    """How to read chart `name`; a run without class labels gets the captions that leave class separation out."""
    return CAPTIONS[name] if labelled else UNLABELLED_CAPTIONS.get(name, CAPTIONS[name])


# ------------------------------------------------------------------------------------------------------------
# Shared helpers


def depth_colours(count: int) -> list[str]:
    """One colour per layer, from light (input side) to dark (output side)."""
    if count <= 0:
        return []
    points = [0.85 - 0.8 * i / max(count - 1, 1) for i in range(count)]
    return sample_colorscale(DEPTH_SCALE, points)


def _style(figure: go.Figure, height: int, titled: bool = False) -> go.Figure:
    """Common layout. Figures with subplot titles (`titled`) put the legend in a band above the titles."""
    if titled:
        legend = dict(orientation="h", yref="container", y=0.995, yanchor="top", xanchor="left", x=0, title="")
        margin = dict(l=10, r=10, t=75, b=10)
    else:
        legend = dict(orientation="h", yanchor="bottom", y=1.04, xanchor="left", x=0, title="")
        margin = dict(l=10, r=10, t=40, b=10)
    figure.update_layout(height=height, margin=margin, template="plotly_white", legend=legend)
    return figure


def _clean(values) -> list:
    """Floats for plotly: None where missing, so gaps show as gaps."""
    return [
        None if v is None or not math.isfinite(float(v)) else float(v)
        for v in np.asarray(values, dtype=np.float64).ravel()
    ]


def grid_shape(count: int, columns: int = GRID_COLUMNS) -> tuple[int, int]:
    """(rows, columns) of a grid of `count` small panels."""
    width = max(1, min(columns, count))
    return max(1, math.ceil(count / width)), width


def _small_multiples(count: int, titles: list[str], columns: int = GRID_COLUMNS, spacing: float = 0.02) -> go.Figure:
    rows, width = grid_shape(count, columns)
    figure = make_subplots(
        rows=rows, cols=width, subplot_titles=titles, horizontal_spacing=spacing, vertical_spacing=min(0.25, 0.3 / rows)
    )
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    figure.update_annotations(font_size=10)
    return figure


def _outline(figure: go.Figure, panel: int) -> None:
    """A frame around small multiple `panel` (0-based), to mark the chosen unit or layer."""
    suffix = "" if panel == 0 else str(panel + 1)
    figure.add_shape(
        type="rect",
        xref=f"x{suffix} domain",
        yref=f"y{suffix} domain",
        x0=-0.02,
        x1=1.02,
        y0=-0.02,
        y1=1.0,
        line=dict(color="#111111", width=2.5),
    )


def _mark_layer(figure: go.Figure, name: str, panels: int = 1) -> None:
    """A light band behind the chosen layer on category x axes (every panel of a row of subplots)."""
    for panel in range(panels):
        suffix = "" if panel == 0 else str(panel + 1)
        figure.add_shape(
            type="rect",
            xref=f"x{suffix}",
            yref=f"y{suffix} domain",
            x0=name,
            x1=name,
            y0=0,
            y1=1,
            line=dict(color="rgba(59, 91, 219, 0.18)", width=28),
            layer="below",
        )


def _square(figure: go.Figure, count: int, width: int) -> None:
    """Equal x and y scales in every small multiple, so images and the input plane keep their aspect."""
    for index in range(count):
        suffix = "" if index == 0 else str(index + 1)
        figure.update_yaxes(scaleanchor=f"x{suffix}", constrain="domain", row=index // width + 1, col=index % width + 1)
        figure.update_xaxes(constrain="domain", row=index // width + 1, col=index % width + 1)


def _no_data(message: str, height: int = 200) -> go.Figure:
    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, font=dict(size=14, color="grey"))
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    return _style(figure, height)


# ------------------------------------------------------------------------------------------------------------
# Linear probe


def probe_heatmap(
    epochs: list[int],
    layers: list[str],
    accuracy: np.ndarray,
    baseline: float | None,
    epoch: int | None = None,
    chance: float | None = None,
    held_out: int | None = None,
) -> go.Figure:
    """Layer × epoch heatmap of linear-probe accuracy (epochs, layers), the input baseline as the first row; the
    hover names the `held_out` samples each accuracy was scored on."""
    if not epochs:
        return _no_data("No captured epochs yet.")
    names = ([INPUT] if baseline is not None else []) + list(layers)
    rows = ([np.full(len(epochs), baseline)] if baseline is not None else []) + [
        accuracy[:, i] for i in range(len(layers))
    ]
    z = [_clean(row) for row in rows]  # (layers + 1, epochs)
    text = len(epochs) <= MAX_TEXT_COLUMNS and len(names) * len(epochs) <= MAX_TEXT_CELLS
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=list(epochs),
            y=names,
            zmin=colour_floor(z, chance),
            zmax=1.0,
            colorscale="Viridis",
            colorbar=dict(title="accuracy", thickness=12, tickformat=".0%"),
            texttemplate="%{z:.2f}" if text else None,
            textfont=dict(size=10),
            hovertemplate="%{y} · epoch %{x}<br>probe accuracy %{z:.3f}"
            + (f" on {held_out:,} held-out samples" if held_out else "")
            + "<extra></extra>",
        )
    )
    figure.update_xaxes(
        title_text="epoch",
        tickmode="array" if len(epochs) <= MAX_TEXT_COLUMNS else "auto",
        tickvals=list(epochs) if len(epochs) <= MAX_TEXT_COLUMNS else None,
    )
    figure.update_yaxes(autorange="reversed")
    if epoch is not None and epoch in epochs:
        figure.add_vline(x=epoch, line=dict(color="white", width=2, dash="dot"))
    return _style(figure, max(260, 40 + 28 * len(names)))


def probe_depth_figure(
    layers: list[str],
    accuracy: np.ndarray,
    baseline: float | None,
    epoch: int,
    initial: np.ndarray | None = None,
    chance: float | None = None,
    chosen: str | None = None,
    initial_epoch: int = 0,
    held_out: int | None = None,
) -> go.Figure:
    """Accuracy against depth at `epoch` (and, faint, before training: at `initial_epoch`, which a resumed fit
    starts from), starting from the input baseline. With `held_out` (the samples each probe is scored on), every
    point of `epoch` carries its 95% interval as an error bar."""
    names = ([INPUT] if baseline is not None else []) + list(layers)
    lead = [baseline] if baseline is not None else []
    values = _clean(lead + list(accuracy))
    figure = go.Figure()
    if initial is not None:
        figure.add_trace(
            go.Scatter(
                x=names,
                y=_clean(lead + list(initial)),
                mode="lines+markers",
                name=f"epoch {initial_epoch}",
                line=dict(color=EARLY, dash="dot"),
            )
        )
    error_y = None
    if held_out:
        bounds = [accuracy_interval(v, held_out) if v is not None else (math.nan, math.nan) for v in values]
        error_y = dict(
            type="data",
            symmetric=False,
            color="rgba(31, 36, 48, 0.45)",
            thickness=1.2,
            width=4,
            array=[None if v is None else high - v for v, (_, high) in zip(values, bounds)],
            arrayminus=[None if v is None else v - low for v, (low, _) in zip(values, bounds)],
        )
    figure.add_trace(
        go.Scatter(
            x=names,
            y=values,
            mode="lines+markers+text",
            name=f"epoch {epoch}",
            line=dict(color=PALETTE[0], width=3),
            text=[_percent(v) for v in lead + list(accuracy)],
            textposition="top center",
            textfont=dict(size=10),
            error_y=error_y,
        )
    )
    if baseline is not None:
        figure.add_hline(
            y=baseline,
            line=dict(color="grey", dash="dash"),
            annotation_text="input baseline",
            annotation_position="bottom right",
        )
    shown = [v for v in _clean(lead + list(accuracy) + (list(initial) if initial is not None else [])) if v is not None]
    bottom = max(min(shown, default=0.0) - 0.05, 0.0)  # the values fill the axis; chance shows when it is near them
    if chance is not None and chance >= bottom:
        figure.add_hline(
            y=chance,
            line=dict(color="#dddddd", dash="dot"),
            annotation_text="chance",
            annotation_position="bottom left",
        )
    figure.update_yaxes(title_text="probe accuracy", range=[bottom, 1.06], tickformat=".0%")
    figure.update_xaxes(title_text="depth (input → output)", type="category")
    if chosen is not None:
        _mark_layer(figure, chosen)
    return _style(figure, 320)


def probe_reliability(
    held_out: int, probe_size: int, accuracy: float | None, seed: int | None, components: int | None = None
) -> str:
    """What the probe accuracies rest on, in words: how many held-out samples, how wide a 95% interval that gives
    at `accuracy` (the chosen layer's, say), that the run is one training seed, and, when the chosen layer was
    probed on its top `components` principal coordinates (a run reduced on the device), what that leaves out."""
    trained = max(probe_size - held_out, 0)
    text = (
        f"Each probe is trained on {trained:,} probe samples and scored on the other {held_out:,}, which it never saw. "
    )
    if components:
        text += (
            f"This layer's probe reads its top {components} principal components, all of it that the device-reduced "
            "capture kept: class information in its lower-variance directions is not counted. "
        )
    if held_out and accuracy is not None and math.isfinite(accuracy):
        low, high = accuracy_interval(accuracy, held_out)
        text += (
            f"At {accuracy:.0%} on {held_out:,} samples the 95% interval is {low:.0%} to {high:.0%} (the error "
            "bars), so smaller differences between layers or epochs may be noise. "
        )
    if held_out < FEW_HELD_OUT:
        text += "That is few samples: record with a larger probe (`probe_size`) for firmer numbers. "
    seed_text = f" (seed {seed})" if seed is not None else ""
    return text + f"All of it is one training run{seed_text}: another seed can give other curves."


def colour_floor(z: list[list], chance: float | None = None) -> float:
    """The bottom of the accuracy colour scale: the lowest value shown (rounded down to 5%), never below chance.

    Spending the scale on [lowest, 1] keeps differences visible when every layer of an easy data set is above 90%.
    """
    values = [v for row in z for v in row if v is not None]
    lowest = math.floor(min(values) * 20) / 20 if values else 0.0
    return max(lowest, chance or 0.0) if lowest < 1.0 else 0.95


def _percent(value) -> str:
    return "" if value is None or not math.isfinite(float(value)) else f"{float(value):.0%}"


# ------------------------------------------------------------------------------------------------------------
# CKA


def cka_heatmap(layers: list[str], matrix, epoch: int) -> go.Figure:
    """Symmetric layer × layer linear CKA at one epoch (the snapshot's `cka`)."""
    if matrix is None:
        return _no_data("This snapshot has no CKA matrix.")
    z = [_clean(row) for row in np.asarray(matrix, dtype=np.float64)]
    text = len(layers) ** 2 <= MAX_TEXT_CELLS
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=list(layers),
            y=list(layers),
            zmin=0.0,
            zmax=1.0,
            colorscale="Blues",
            colorbar=dict(title="CKA", thickness=12),
            texttemplate="%{z:.2f}" if text else None,
            textfont=dict(size=10),
            hovertemplate="%{y} vs %{x}<br>CKA %{z:.3f}<extra></extra>",
        )
    )
    figure.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain")
    figure.update_xaxes(constrain="domain", title_text=f"epoch {epoch}")
    return _style(figure, 340)


def cka_final_figure(epochs: list[int], layers: list[str], values: np.ndarray, epoch: int | None = None) -> go.Figure:
    """CKA of every layer with its own last snapshot, over training: one line per layer."""
    if not epochs:
        return _no_data("No captured epochs yet.")
    figure = go.Figure()
    for index, (name, colour) in enumerate(zip(layers, depth_colours(len(layers)))):
        figure.add_trace(
            go.Scatter(
                x=epochs,
                y=_clean(values[:, index]),
                mode="lines+markers" if len(epochs) <= 30 else "lines",
                name=name,
                line=dict(color=colour, width=2),
                marker=dict(size=5),
            )
        )
    if epoch is not None:
        figure.add_vline(x=epoch, line=dict(color="grey", dash="dot"))
    figure.update_yaxes(title_text="CKA with last epoch", range=[0, 1.05])
    figure.update_xaxes(title_text="epoch")
    return _style(figure, 340)


# ------------------------------------------------------------------------------------------------------------
# Separation and dimensionality

MEASURES = (
    ("separation", "class separation (silhouette)"),
    ("n90", "components for 90% variance"),
    ("participation", "participation ratio"),
)


def _measured(values: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """The MEASURES that hold at least one finite value (all of them when none does, so the figure keeps its shape)."""
    found = [(key, title) for key, title in MEASURES if np.isfinite(np.asarray(values[key], dtype=np.float64)).any()]
    return found or list(MEASURES)


def depth_metrics_figure(
    layers: list[str],
    values: dict[str, np.ndarray],
    epoch: int,
    initial: dict[str, np.ndarray] | None = None,
    input_separation: float | None = None,
    chosen: str | None = None,
    initial_epoch: int = 0,
) -> go.Figure:
    """Separation, n90 and participation ratio against depth at `epoch` (and, faint, at `initial_epoch`, before
    training); `values` maps each measure to (layers,).
    A measure the run holds no value of (separation, without labels) gets no panel."""
    measures = _measured(values)
    figure = make_subplots(
        rows=1, cols=len(measures), subplot_titles=[title for _, title in measures], horizontal_spacing=0.07
    )
    for col, (key, _) in enumerate(measures, start=1):
        lead_names = [INPUT] if key == "separation" and input_separation is not None else []
        lead = [input_separation] if lead_names else []
        names = lead_names + list(layers)
        if initial is not None:
            figure.add_trace(
                go.Scatter(
                    x=names,
                    y=_clean(lead + list(initial[key])),
                    mode="lines+markers",
                    name=f"epoch {initial_epoch}",
                    line=dict(color=EARLY, dash="dot"),
                    legendgroup="early",
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        figure.add_trace(
            go.Scatter(
                x=names,
                y=_clean(lead + list(values[key])),
                mode="lines+markers",
                name=f"epoch {epoch}",
                line=dict(color=PALETTE[0], width=3),
                legendgroup="now",
                showlegend=col == 1,
            ),
            row=1,
            col=col,
        )
        figure.update_xaxes(type="category", tickangle=-30, row=1, col=col)
        figure.update_yaxes(rangemode="tozero", row=1, col=col)
    if chosen is not None:
        _mark_layer(figure, chosen, len(measures))
    return _style(figure, 360, titled=True)


def time_metrics_figure(
    epochs: list[int], layers: list[str], values: dict[str, np.ndarray], epoch: int | None = None
) -> go.Figure:
    """The same measures over training; `values` maps each measure to (epochs, layers)."""
    measures = _measured(values)
    figure = make_subplots(
        rows=1, cols=len(measures), subplot_titles=[title for _, title in measures], horizontal_spacing=0.07
    )
    colours = depth_colours(len(layers))
    for col, (key, _) in enumerate(measures, start=1):
        for index, name in enumerate(layers):
            figure.add_trace(
                go.Scatter(
                    x=epochs,
                    y=_clean(values[key][:, index]),
                    mode="lines",
                    name=name,
                    line=dict(color=colours[index], width=2),
                    legendgroup=name,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        if epoch is not None:
            figure.add_vline(x=epoch, line=dict(color="grey", dash="dot"), row=1, col=col)
        figure.update_xaxes(title_text="epoch", row=1, col=col)
        figure.update_yaxes(rangemode="tozero", row=1, col=col)
    return _style(figure, 360, titled=True)


# ------------------------------------------------------------------------------------------------------------
# Units over the input plane (2-D data sets)


def unit_scale(responses: np.ndarray) -> np.ndarray:
    """(points, units) responses divided by each unit's largest |response|, so every unit spans [-1, 1]."""
    responses = np.asarray(responses, dtype=np.float32)
    peak = np.nanmax(np.abs(responses), axis=0) if len(responses) else np.zeros(responses.shape[1:])
    return responses / np.where(peak > 0, peak, 1.0)


def unit_grid_figure(
    plane_units: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    chosen: int | None = None,
    dead=None,
    limit: int = MAX_GRID_UNITS,
) -> go.Figure:
    """Every unit's response over the input-plane grid (G², units) as small heatmaps, TensorFlow Playground style."""
    side = len(xs)
    units = min(plane_units.shape[1], limit)
    scaled = unit_scale(plane_units[:, :units])
    dead = np.zeros(units, bool) if dead is None else np.asarray(dead, bool)[:units]
    titles = [f"{u}" + (" · dead" if dead[u] else "") for u in range(units)]
    figure = _small_multiples(units, titles)
    rows, width = grid_shape(units)
    for unit in range(units):
        figure.add_trace(
            go.Heatmap(
                z=scaled[:, unit].reshape(side, side),
                x=xs,
                y=ys,
                coloraxis="coloraxis",
                hovertemplate=f"unit {unit}<br>x1 %{{x:.2f}}, x2 %{{y:.2f}}<br>response %{{z:.2f}} of its "
                "max<extra></extra>",
            ),
            row=unit // width + 1,
            col=unit % width + 1,
        )
    figure.update_layout(coloraxis=dict(colorscale=UNIT_SCALE, cmin=-1, cmax=1, cmid=0, showscale=False))
    _square(figure, units, width)
    if chosen is not None and 0 <= chosen < units:
        _outline(figure, chosen)
    return _style(figure, 30 + PLANE_CELL_HEIGHT * rows)


def _class_surface(plane_probs: np.ndarray, side: int) -> tuple[np.ndarray, dict]:
    """A heatmap z and colour settings for the decision: P(second class) for 2 classes, the predicted value for a
    single output (a regression), else the argmax class."""
    probs = np.asarray(plane_probs, dtype=np.float32)
    if probs.shape[1] == 1:
        return probs[:, 0].reshape(side, side), dict(colorscale="Viridis", showscale=False)
    if probs.shape[1] == 2:
        return probs[:, 1].reshape(side, side), dict(
            colorscale=[[0, PALETTE[0]], [0.5, "#ffffff"], [1, PALETTE[1]]], zmin=0, zmax=1, showscale=False
        )
    count = probs.shape[1]
    scale = []
    for i in range(count):
        scale += [[i / count, PALETTE[i % len(PALETTE)]], [(i + 1) / count, PALETTE[i % len(PALETTE)]]]
    return probs.argmax(axis=1).reshape(side, side), dict(
        colorscale=scale, zmin=-0.5, zmax=count - 0.5, showscale=False
    )


def unit_plane_figure(
    unit_response: np.ndarray,
    plane_probs: np.ndarray | None,
    xs: np.ndarray,
    ys: np.ndarray,
    x: np.ndarray | None,
    labels: np.ndarray | None,
    top,
    bottom,
    unit: int,
    class_names: list[str] | None = None,
) -> go.Figure:
    """Left: one unit's response (G²,) with its top/bottom probe samples. Right: the decision with the probe set."""
    side = len(xs)
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=[f"unit {unit}", "decision of the network"], horizontal_spacing=0.08
    )
    scaled = unit_scale(np.asarray(unit_response, np.float32).reshape(-1, 1))[:, 0]
    figure.add_trace(
        go.Heatmap(
            z=scaled.reshape(side, side),
            x=xs,
            y=ys,
            colorscale=UNIT_SCALE,
            zmin=-1,
            zmax=1,
            zmid=0,
            showscale=False,
            zsmooth="best",
            hovertemplate="x1 %{x:.2f}, x2 %{y:.2f}<br>response %{z:.2f} of max<extra></extra>",
        ),
        row=1,
        col=1,
    )
    if x is not None:
        for rows, symbol, name in ((top, "triangle-up", "most active"), (bottom, "triangle-down", "least active")):
            rows = np.asarray(rows, dtype=np.int64)
            figure.add_trace(
                go.Scatter(
                    x=x[rows, 0],
                    y=x[rows, 1],
                    mode="markers",
                    name=name,
                    customdata=rows,
                    marker=dict(
                        symbol=symbol,
                        size=11,
                        color="#111111" if symbol == "triangle-up" else "#ffffff",
                        line=dict(color="#111111", width=1.5),
                    ),
                    hovertemplate="row %{customdata}<extra>" + name + "</extra>",
                ),
                row=1,
                col=1,
            )
    if plane_probs is not None:
        z, colours = _class_surface(plane_probs, side)
        figure.add_trace(
            go.Heatmap(z=z, x=xs, y=ys, opacity=0.55, hoverinfo="skip", zsmooth="best", **colours), row=1, col=2
        )
    if x is not None:
        picks = (
            np.arange(len(x))
            if len(x) <= MAX_PLANE_POINTS
            else np.random.default_rng(0).choice(len(x), MAX_PLANE_POINTS, replace=False)
        )
        names = list(class_names or [])
        truth = np.zeros(len(x), np.int64) if labels is None else np.asarray(labels, np.int64)
        for label in np.unique(truth[picks]):
            rows = picks[truth[picks] == label]
            name = names[label] if label < len(names) else str(label)
            figure.add_trace(
                go.Scatter(
                    x=x[rows, 0],
                    y=x[rows, 1],
                    mode="markers",
                    name=name if labels is not None else "probe",
                    marker=dict(size=4, color=PALETTE[int(label) % len(PALETTE)], line=dict(color="white", width=0.5)),
                    hoverinfo="skip",
                ),
                row=1,
                col=2,
            )
    for col in (1, 2):
        figure.update_xaxes(range=[float(xs[0]), float(xs[-1])], title_text="x1", row=1, col=col)
        figure.update_yaxes(
            range=[float(ys[0]), float(ys[-1])],
            title_text="x2",
            scaleanchor=f"x{'' if col == 1 else 2}",
            row=1,
            col=col,
        )
    return _style(figure, 420, titled=True)


def mesh_lines(points: np.ndarray, side: int) -> tuple[list, list]:
    """x and y of a deformed grid: the G rows and G columns of `points` (G², 2) as polylines separated by gaps."""
    grid = np.asarray(points, dtype=np.float64).reshape(side, side, 2)
    xs, ys = [], []
    for line in list(grid) + list(grid.transpose(1, 0, 2)):  # rows (constant x2), then columns (constant x1)
        xs += line[:, 0].tolist() + [None]
        ys += line[:, 1].tolist() + [None]
    return xs, ys


def bent_plane_figure(
    panels: list[tuple[str, np.ndarray]],
    plane_probs: np.ndarray | None,
    side: int,
    chosen: str | None = None,
    axis_titles: tuple[str, str] | list[tuple[str, str]] = ("PC1", "PC2"),
    raw_first: bool = True,
) -> go.Figure:
    """The input-plane grid in each layer's PCA space (one panel per layer): `panels` are (name, (G², 2) coords).

    `axis_titles` names the axes of every panel, or is a list with each panel's own. With `raw_first`, the first
    panel is the grid itself in input coordinates (axes x1, x2).
    """
    if not panels:
        return _no_data("This run has no input-plane grid.")
    titles = [f"<b>{name}</b>" if name == chosen else name for name, _ in panels]
    figure = _small_multiples(len(panels), titles, columns=min(5, len(panels)), spacing=0.04)
    rows, width = grid_shape(len(panels), min(5, len(panels)))
    decision = None if plane_probs is None else np.asarray(plane_probs, np.float32)
    for index, (name, coords) in enumerate(panels):
        row, col = index // width + 1, index % width + 1
        line_x, line_y = mesh_lines(coords[:, :2], side)
        figure.add_trace(
            go.Scatter(
                x=line_x,
                y=line_y,
                mode="lines",
                line=dict(color="rgba(120, 120, 120, 0.45)", width=0.7),
                hoverinfo="skip",
                showlegend=False,
            ),
            row=row,
            col=col,
        )
        marker: dict[str, Any] = dict(size=3.5)
        if decision is not None:
            if decision.shape[1] == 1:
                marker.update(color=decision[:, 0], colorscale="Viridis")
            elif decision.shape[1] == 2:
                marker.update(
                    color=decision[:, 1],
                    colorscale=[[0, PALETTE[0]], [0.5, "#dddddd"], [1, PALETTE[1]]],
                    cmin=0,
                    cmax=1,
                )
            else:
                marker.update(color=[PALETTE[c % len(PALETTE)] for c in decision.argmax(axis=1)])
        figure.add_trace(
            go.Scatter(
                x=coords[:, 0],
                y=coords[:, 1],
                mode="markers",
                marker=marker,
                showlegend=False,
                hovertemplate=f"{name}<br>grid point %{{pointNumber}}<extra></extra>",
            ),
            row=row,
            col=col,
        )
        names = axis_titles[index] if isinstance(axis_titles, list) else axis_titles
        names = ("x1", "x2") if raw_first and index == 0 else names
        figure.update_xaxes(
            visible=True, showticklabels=False, title_text=names[0], title_font_size=10, row=row, col=col
        )
        figure.update_yaxes(
            visible=True, showticklabels=False, title_text=names[1], title_font_size=10, row=row, col=col
        )
        if name == chosen:
            _outline(figure, index)
    figure.update_annotations(font_size=12)
    return _style(figure, 40 + 250 * rows)


# ------------------------------------------------------------------------------------------------------------
# Units of image data


def as_images(x: np.ndarray, rows, image_shape) -> np.ndarray:
    """(len(rows), H, W) grey images of probe rows; colour images are averaged over their channels."""
    shape = tuple(int(d) for d in image_shape)
    images = np.asarray(x, dtype=np.float32)[np.asarray(rows, dtype=np.int64)].reshape((-1,) + shape)
    if images.ndim == 4:
        images = images.mean(axis=-1)
    return images


def image_grid_figure(
    images: np.ndarray,
    titles: list[str],
    columns: int,
    scale: str = "Greys",
    symmetric: bool = False,
    chosen: int | None = None,
    zrange: tuple[float, float] | None = None,
) -> go.Figure:
    """Small multiples of (count, H, W) images in one figure; `symmetric` centres the colour scale on 0 per image."""
    count = len(images)
    if count == 0:
        return _no_data("No images to show.")
    figure = _small_multiples(count, titles, columns=columns, spacing=0.01)
    rows, width = grid_shape(count, columns)
    if symmetric:
        peaks = np.nanmax(np.abs(images.reshape(count, -1)), axis=1)
        images = images / np.where(peaks > 0, peaks, 1.0)[:, None, None]
        low, high = -1.0, 1.0
    else:
        low, high = zrange if zrange is not None else (float(np.nanmin(images)), float(np.nanmax(images)))
    for index, image in enumerate(images):
        blank = not np.isfinite(image).any()  # a dead unit: drawn invisibly, since NaN-only heatmaps upset plotly.js
        figure.add_trace(
            go.Heatmap(
                z=np.nan_to_num(image),
                coloraxis="coloraxis",
                opacity=0.0 if blank else 1.0,
                hoverinfo="skip" if blank else None,
                hovertemplate=None if blank else "%{z:.2f}<extra></extra>",
            ),
            row=index // width + 1,
            col=index % width + 1,
        )
    _square(figure, count, width)
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(
        coloraxis=dict(colorscale=scale, cmin=low, cmax=high, showscale=False, **({"cmid": 0} if symmetric else {}))
    )
    if chosen is not None and 0 <= chosen < count:
        _outline(figure, chosen)
    return _style(figure, 40 + int(CELL_HEIGHT * 1.1) * rows)


def unit_images_figure(x: np.ndarray, top, bottom, image_shape, labels=None, class_names=None) -> go.Figure:
    """The chosen unit's most activating probe images (first row) and least activating ones (second row)."""
    top, bottom = np.asarray(top, np.int64), np.asarray(bottom, np.int64)
    rows = np.concatenate([top, bottom])
    names = list(class_names or [])

    def title(row: int, rank: str) -> str:
        if labels is None:
            return f"{rank} · row {row}"
        label = int(labels[row])
        return f"{rank} · {names[label] if label < len(names) else label}"

    titles = [title(r, f"top {i + 1}") for i, r in enumerate(top)] + [
        title(r, f"low {i + 1}") for i, r in enumerate(bottom)
    ]
    return image_grid_figure(
        as_images(x, rows, image_shape), titles, columns=max(len(top), 1), zrange=(float(np.min(x)), float(np.max(x)))
    )


def prototype_images(
    x: np.ndarray, unit_top: np.ndarray, image_shape, dead=None, limit: int = MAX_GRID_UNITS
) -> np.ndarray:
    """(units, H, W): per unit, the mean of its most activating probe images; blank (NaN) for dead units,
    whose "most activating" samples are arbitrary ties at zero."""
    tops = np.asarray(unit_top, dtype=np.int64)[:limit]  # (units, count)
    if not len(tops):
        return np.zeros((0,) + tuple(int(d) for d in image_shape)[:2], np.float32)
    images = np.stack([as_images(x, rows, image_shape).mean(axis=0) for rows in tops])
    if dead is not None:
        images[np.asarray(dead, bool)[: len(images)]] = np.nan
    return images


def kernel_images(kernel: np.ndarray, image_shape, limit: int = MAX_GRID_UNITS) -> np.ndarray | None:
    """(units, H, W) first-layer weights as images (Dense kernel (pixels, units) or Conv2D kernel (kh, kw, c, units));
    None when a Dense kernel's inputs are not one image."""
    kernel = np.asarray(kernel, dtype=np.float32)
    shape = tuple(int(d) for d in image_shape)
    if kernel.ndim == 4:  # a convolution (kh, kw, channels in, filters): each filter averaged over its inputs
        return kernel.mean(axis=2)[..., :limit].transpose(2, 0, 1)
    if kernel.ndim != 2 or kernel.shape[0] != int(np.prod(shape)):
        return None
    images = kernel[:, :limit].T.reshape((-1,) + shape)  # (units, H, W[, C])
    return images.mean(axis=-1) if images.ndim == 4 else images


# ------------------------------------------------------------------------------------------------------------
# Units of tabular data


def unit_feature_figure(x: np.ndarray, top, bottom, feature_names=None, limit: int = 40) -> go.Figure:
    """Rows: the top and bottom probe samples of a unit; columns: features as z-scores against the probe set."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)[:, :limit]
    names = list(feature_names or [])[: x.shape[1]]
    names += [f"x{i + 1}" for i in range(len(names), x.shape[1])]
    mean, std = x.mean(axis=0), x.std(axis=0)
    rows = np.concatenate([np.asarray(top, np.int64), np.asarray(bottom, np.int64)])
    scores = (x[rows] - mean) / np.where(std > 0, std, 1.0)
    labels = [f"top {i + 1} · row {r}" for i, r in enumerate(top)] + [
        f"low {i + 1} · row {r}" for i, r in enumerate(bottom)
    ]
    figure = go.Figure(
        go.Heatmap(
            z=np.clip(scores, -3, 3),
            x=names,
            y=labels,
            customdata=x[rows],
            colorscale=UNIT_SCALE,
            zmin=-3,
            zmax=3,
            zmid=0,
            colorbar=dict(title="z-score", thickness=12),
            hovertemplate="%{y}<br>%{x} = %{customdata:.3g} (z %{z:.1f})<extra></extra>",
        )
    )
    figure.update_yaxes(autorange="reversed")
    figure.add_hline(y=len(top) - 0.5, line=dict(color="#111111", width=2))
    return _style(figure, 80 + 22 * len(labels))


def unit_examples_table(
    x: np.ndarray | None, labels, probs, top, bottom, class_names=None, feature_names=None, limit: int = 12
) -> list[dict]:
    """One dict per top/bottom sample: rank, probe row, label, prediction and (up to `limit`) feature values."""
    names = list(class_names or [])
    name = lambda i: names[i] if 0 <= i < len(names) else str(i)  # noqa: E731
    fnames = list(feature_names or [])
    table = []
    for rank, rows in (("top", top), ("low", bottom)):
        for position, row in enumerate(np.asarray(rows, np.int64)):
            entry = {"rank": f"{rank} {position + 1}", "row": int(row)}
            if labels is not None:
                entry["label"] = name(int(labels[row]))
            if probs is not None:
                entry["prediction"] = (
                    round(float(probs[row, 0]), 4) if probs.shape[1] == 1 else name(int(np.argmax(probs[row])))
                )
            if x is not None:
                for i, value in enumerate(np.asarray(x[row]).reshape(-1)[:limit]):
                    entry[fnames[i] if i < len(fnames) else f"x{i + 1}"] = round(float(value), 4)
            table.append(entry)
    return table
