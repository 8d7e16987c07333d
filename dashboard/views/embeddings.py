"""Pure view functions of the Embeddings page: arrays in, plotly figures and plain tables out (no Streamlit).

Point clouds are decimated deterministically above a documented cap, so a probe set of 100,000 points stays
responsive: at most `POINTS_PER_PANEL` points per strip panel and `POINTS_PER_FRAME` per animation frame reach
the browser, and selected points are always kept. The strip is an SVG overview (no WebGL context to set up, which
costs a software-rendered browser most of a second before the first point shows); a box or lasso on it still
selects every probe sample inside the region (`selection_rows`). The focus view switches to `scattergl` above
`SVG_POINTS`. Each class is one trace with one flat colour: browsers style a trace once instead of every point.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from plotly.colors import qualitative

POINTS_PER_PANEL = 500  # strip panels are ~250 px overviews: 8 panels x 500 SVG points draw in ~0.3 s
POINTS_PER_FRAME = 3_000  # focus view: every frame ships at once, so frames x points is the payload
SVG_POINTS = 2_500  # the focus view draws up to this many points as SVG, more with WebGL (`scattergl`)
CLASS_TRACES = 24  # up to this many categories get a trace each; more share one trace coloured point by point
MAX_FRAMES = 60  # longer runs show every k-th captured epoch in the animation (the chosen epoch always)
STRIP_COLUMNS = 5
PANEL_HEIGHT = 250
SELECTED_OUTLINE = "#111111"
THUMBNAIL_BORDER = 3  # pixels of light frame around each thumbnail
PALETTE = qualitative.Plotly + qualitative.Dark24  # 34 distinct colours; more classes cycle
CONFIDENCE_SCALE = "Viridis"


def decimate(count: int, cap: int, keep=(), seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `cap` of `count` points (all of them when count <= cap), always with `keep`.

    The choice depends only on (count, cap, seed), so the same points are shown in every panel and every rerun.
    """
    if count <= cap:
        return np.arange(count)
    chosen = np.random.default_rng(seed).choice(count, size=cap, replace=False)
    keep = np.asarray([k for k in keep if 0 <= k < count], dtype=np.int64)
    return np.union1d(chosen, keep)


# ------------------------------------------------------------------------------------------------------------
# Colour


@dataclass(frozen=True)
class Coloring:
    """Per-point colour values: category indices into `names`, or numbers from `low` to `high` when `names` is
    empty (confidence, or the predicted value of a model with one non-probability output, such as a regression)."""

    values: np.ndarray  # (n,)
    names: tuple[str, ...]
    title: str
    low: float = 0.0
    high: float = 1.0
    scale_title: str = "conf."

    @property
    def categorical(self) -> bool:
        return bool(self.names)

    def marker(self, rows: np.ndarray) -> dict:
        """Plotly marker colour settings for the points `rows`."""
        if not self.categorical:
            return dict(color=plain(self.values[rows]), colorscale=CONFIDENCE_SCALE, cmin=self.low, cmax=self.high)
        count = len(self.names)
        return dict(color=plain(self.values[rows]), colorscale=_discrete_scale(count), cmin=-0.5, cmax=count - 0.5)


def _discrete_scale(count: int) -> list:
    """A stepped colourscale so the integers 0..count-1 map to flat palette colours."""
    scale = []
    for i in range(count):
        colour = PALETTE[i % len(PALETTE)]
        scale += [[i / count, colour], [(i + 1) / count, colour]]
    return scale


def category_colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def coloring(
    mode: str,
    labels: np.ndarray | None,
    probs: np.ndarray | None,
    class_names,
    values: np.ndarray | None = None,
    value_title: str = "true value",
) -> Coloring:
    """Colour by true `label`, predicted label (`pred`), `correct`/incorrect, or `confidence` (max probability).

    Falls back to what the data allow: without labels, `label` and `correct` colour by prediction; without
    predictions, everything colours by label. A single output column that is not a probability (a regression)
    colours every mode but `label` by the predicted value. `values` (n,) are a target that is not classes (a
    regression's true value, a multi-label row's number of labels): `label` colours by them on a continuous scale
    (`value_title`), and `correct` by the absolute error of a one-column prediction of them.
    """
    if values is not None and mode == "label":
        return _value_coloring(np.asarray(values, np.float32), value_title, "true")
    if values is not None and mode == "correct" and probs is not None and probs.ndim == 2 and probs.shape[1] == 1:
        return _value_coloring(np.abs(probs[:, 0] - np.asarray(values, np.float32)), "absolute error", "error")
    names = tuple(class_names or ())
    if probs is not None and probs.ndim == 2 and probs.shape[1] == 1 and not (mode == "label" and labels is not None):
        return _value_coloring(probs[:, 0])
    predicted = None if probs is None else np.argmax(probs, axis=1)
    if probs is not None and len(names) < probs.shape[1]:  # probs is not None exactly when predicted is not None
        names = names + tuple(str(i) for i in range(len(names), probs.shape[1]))
    if labels is not None and len(names) <= int(labels.max(initial=0)):
        names = names + tuple(str(i) for i in range(len(names), int(labels.max()) + 1))
    if predicted is None and labels is not None:
        return Coloring(labels.astype(np.int16), names, "true label")
    if mode == "confidence" and probs is not None:
        return Coloring(np.max(probs, axis=1).astype(np.float32), (), "confidence")
    if mode == "correct" and labels is not None and predicted is not None:  # with labels, predicted is set here
        return Coloring((predicted != labels).astype(np.int16), ("correct", "wrong"), "prediction")
    if mode == "label" and labels is not None:
        return Coloring(labels.astype(np.int16), names, "true label")
    if predicted is None:
        return Coloring(np.zeros(0 if probs is None else len(probs), np.int16), ("all",), "")
    return Coloring(predicted.astype(np.int16), names, "predicted label")


def _value_coloring(values: np.ndarray, title: str = "predicted value", scale_title: str = "pred.") -> Coloring:
    """A continuous colouring of `values` from their smallest to their largest finite value."""
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return Coloring(values.astype(np.float32), (), title, low, high, scale_title)


def _groups(color: Coloring, rows: np.ndarray) -> list[tuple[int | None, np.ndarray]]:
    """(category, the rows it draws) per cloud trace: one per category, or (None, rows) for a single trace coloured
    point by point (continuous values, or more than `CLASS_TRACES` categories)."""
    if not color.categorical or len(color.names) > CLASS_TRACES:
        return [(None, rows)]
    values = color.values[rows]
    return [(index, rows[values == index]) for index in range(len(color.names))]


def axis_title(component: int, variance: np.ndarray | None) -> str:
    """ "PC2 · 18%": the component (counted from 1) and the share of the layer's variance it explains. A component
    the layer does not have (a 1-unit layer has one) is drawn flat at 0, and says so."""
    if variance is not None and component > len(variance):
        return component_title(component, len(variance))
    if variance is None or variance[component - 1] is None:
        return f"PC{component}"
    if not np.any(np.asarray(variance, np.float64) > 0):  # a constant layer: shares of nothing are not "0%"
        return f"PC{component} · no variance"
    share = float(variance[component - 1])
    return f"PC{component} · {share:.0%}" if math.isfinite(share) else f"PC{component}"


def component_title(component: int, count: int, short: bool = False) -> str:
    """ "PC2" for a layer with `count` components, or "no PC2 (the layer has 1): 0" where it has too few
    ("no PC2: 0" when `short`, for a small panel)."""
    if component <= count:
        return f"PC{component}"
    return f"no PC{component}: 0" if short else f"no PC{component} (the layer has {count}): 0"


def columns(coords: np.ndarray, components: tuple[int, ...]) -> list[np.ndarray]:
    """The coordinate columns for 1-based `components`; zeros where the layer stores fewer components."""
    return [coords[:, c - 1] if c <= coords.shape[1] else np.zeros(len(coords), coords.dtype) for c in components]


# The look of Streamlit's light chart theme, written into each layout. The pages draw these figures with
# `theme=None`: Streamlit's theme arrives as a `layout.template`, and plotly.js redraws a figure from scratch
# whenever it is handed a template object it has not seen, which Streamlit does on every mount.
INK, MUTED, GRID = "#262730", "#808495", "#e6eaf1"
FONT = dict(family='"Source Sans", sans-serif', size=12, color=MUTED)
AXIS_STYLE = dict(
    gridcolor=GRID,
    zerolinecolor=GRID,
    tickcolor=GRID,
    linecolor=GRID,
    tickfont=dict(color=MUTED, size=12),
    automargin=True,
)


def figure(data: list[dict], layout: dict, frames: list[dict] | None = None) -> dict:
    """A plotly figure spec: plain dicts; traces carry `plain` lists and animation frames `typed` arrays.

    Streamlit's chart component hands plotly.js fresh copies of the spec twice while it mounts. `datarevision`
    names the data, so plotly.js draws it once; the click mode is the one Streamlit would settle on, so it does not
    restyle the chart after the first draw. Draw these figures with `theme=None` (see `FONT`).
    """
    digest = hashlib.blake2b(json.dumps(data, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()
    layout = _styled({**layout, "datarevision": digest})
    if layout.get("dragmode") in ("lasso", "select"):
        layout.setdefault("clickmode", "event")
    spec = {"data": data, "layout": layout}
    if frames:
        spec["frames"] = frames
    return spec


def _styled(layout: dict) -> dict:
    """`layout` in the dashboard's chart style; what the layout sets itself wins."""
    styled: dict[str, Any] = dict(
        font=FONT,
        paper_bgcolor="#ffffff",
        plot_bgcolor="#ffffff",
        hoverlabel=dict(bgcolor="#ffffff", bordercolor="rgba(31, 36, 48, 0.2)", font=dict(FONT, color=INK)),
    )
    styled.update(layout)
    legend = styled.get("legend")
    if legend is not None:
        styled["legend"] = {"font": dict(size=12, color=INK), "bordercolor": "transparent", **legend}
    for key, value in layout.items():
        if key.startswith(("xaxis", "yaxis")) and isinstance(value, dict):
            axis = {**AXIS_STYLE, "showgrid": key.startswith("y"), **value}
            if isinstance(axis.get("title"), dict):
                axis["title"] = {**axis["title"], "font": {"color": MUTED, "size": 14, **axis["title"].get("font", {})}}
            styled[key] = axis
    scene = styled.get("scene")
    if isinstance(scene, dict):
        styled["scene"] = {
            k: ({**AXIS_STYLE, **v} if k.endswith("axis") and isinstance(v, dict) else v) for k, v in scene.items()
        }
        for axis_name in ("xaxis", "yaxis", "zaxis"):
            styled["scene"].get(axis_name, {}).pop("automargin", None)
    return styled


def typed(values) -> dict:
    """A numpy array in plotly.js's typed-array form: base64 bytes instead of a JSON list (smaller, faster)."""
    array = np.asarray(values)
    if array.dtype.kind == "f":
        array = array.astype("<f4")  # coordinates need no more precision than a screen has
    elif array.dtype.kind == "b":
        array = array.astype("<u1")
    elif array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        array = array.astype("<i4")
    array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<")))
    return {"dtype": array.dtype.str[1:], "bdata": base64.b64encode(array.tobytes()).decode("ascii")}


def plain(values) -> list:
    """A numpy array as a JSON list, floats rounded to 4 significant digits of the largest (finer than a pixel).

    A figure's traces use lists, its animation frames `typed` arrays: plotly.js skips redrawing a trace whose
    lists are unchanged under the same `datarevision`, but redraws every binary array each time it is handed
    one, and Streamlit hands every chart over twice while mounting it.
    """
    array = np.asarray(values)
    if array.dtype.kind != "f":
        return array.tolist()
    finite = np.isfinite(array)
    largest = float(np.abs(array[finite]).max()) if finite.any() else 0.0
    decimals = 4 - math.floor(math.log10(largest)) if largest > 0 else 4
    rounded = np.round(array.astype(np.float64), max(0, decimals)).tolist()
    return rounded if finite.all() else [v if math.isfinite(v) else None for v in rounded]


def untyped(value) -> np.ndarray:
    """The inverse of `typed`, for tests and for reading a spec back."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]).newbyteorder("<"))
    return np.asarray(value)


def grid(
    count: int, width: int, titles: list[str], hgap: float = 0.04, vgap: float = 0.14
) -> tuple[dict, list[tuple[str, str]]]:
    """Layout of `count` small 2-D panels in rows of `width`, and each panel's (xaxis, yaxis) trace references."""
    width = max(1, min(width, count))
    height = max(1, math.ceil(count / width))
    w = (1 - hgap * (width - 1)) / width
    h = (1 - vgap * (height - 1)) / height
    layout: dict = {"annotations": []}
    refs = []
    for index in range(count):
        row, col = divmod(index, width)
        n = "" if index == 0 else str(index + 1)
        x0, y1 = col * (w + hgap), 1 - row * (h + vgap)
        layout[f"xaxis{n}"] = dict(domain=_unit([x0, x0 + w]), anchor=f"y{n}", type="linear")  # no type sniffing
        layout[f"yaxis{n}"] = dict(domain=_unit([y1 - h, y1]), anchor=f"x{n}", type="linear")
        layout["annotations"].append(
            dict(
                text=titles[index] if index < len(titles) else "",
                x=x0 + w / 2,
                y=y1,
                xref="paper",
                yref="paper",
                xanchor="center",
                yanchor="bottom",
                showarrow=False,
                font=dict(size=12),
            )
        )
        refs.append((f"x{n}", f"y{n}"))
    return layout, refs


def _unit(interval: list[float]) -> list[float]:
    return [min(1.0, max(0.0, round(v, 6))) for v in interval]


def _base_layout(height: int, legend_title: str = "", margin: dict | None = None) -> dict:
    """Margins are sized for what plotly would push them to (the legend above, axis titles), so the browser does
    not draw the whole figure a second time after measuring them; a wider legend still pushes."""
    return dict(
        height=height,
        margin=margin or dict(l=10, r=10, t=40, b=10),
        legend=dict(
            title=dict(text=legend_title),
            orientation="h",
            yanchor="bottom",
            y=1.04,
            xanchor="left",
            x=0,
            itemsizing="constant",
        ),
        hovermode="closest",
        uirevision="strata",  # keep zoom and legend toggles across reruns that only restyle
    )


def _clouds(
    kind: str,
    coords: list[np.ndarray],
    rows: np.ndarray,
    color: Coloring,
    size: float,
    opacity: float,
    legend: bool = True,
    **extra,
) -> list[dict]:
    """The probe `rows` as one trace per category (see `_groups`); `legend` lists the categories (and a colour bar
    for continuous values). Every trace carries its probe rows as `customdata` and `meta="points"`."""
    traces = []
    for category, members in _groups(color, rows):
        if category is None:
            marker = dict(size=size, opacity=opacity, **color.marker(members))
            if legend and not color.categorical:
                marker.update(showscale=True, colorbar=dict(title=dict(text=color.scale_title), thickness=10))
            trace = dict(
                name="points", showlegend=False, marker=marker, hovertemplate="row %{customdata}<extra></extra>"
            )
        else:
            name = color.names[category]
            trace = dict(
                name=name,
                showlegend=legend,
                hovertemplate=f"row %{{customdata}} · {name}<extra></extra>",
                marker=dict(size=size, opacity=opacity, color=category_colour(category)),
            )
        trace.update(type=kind, mode="markers", customdata=plain(members), meta="points", **extra)
        traces.append(trace | _positions(coords, members, plain))
    return traces


def _highlight(kind: str, coords: list[np.ndarray], rows: np.ndarray, color: Coloring, size: float, **extra) -> dict:
    """The selected `rows`, drawn large and outlined on top (`meta="selected"`)."""
    marker = dict(size=size + 4, opacity=1.0, line=dict(width=1.5, color=SELECTED_OUTLINE), **color.marker(rows))
    trace = dict(
        type=kind,
        mode="markers",
        name="selected",
        meta="selected",
        showlegend=False,
        customdata=plain(rows),
        marker=marker,
        hovertemplate="row %{customdata} (selected)<extra></extra>",
        **extra,
    )
    return trace | _positions(coords, rows, plain)


def _positions(coords: list[np.ndarray], rows: np.ndarray, encode) -> dict:
    """The x, y (and z) of the probe `rows`, each column encoded by `plain` (traces) or `typed` (frames)."""
    return {axis: encode(values[rows]) for axis, values in zip("xyz", coords)}


def _moved(kind: str, coords: list[np.ndarray], rows: np.ndarray, color: Coloring, recolour: bool) -> list[dict]:
    """What an animation frame changes in `_clouds`: positions, and when colours change (predictions), which rows
    each category trace draws."""
    traces = []
    for category, members in _groups(color, rows):
        trace: dict[str, Any] = dict(type=kind)
        if recolour:
            trace["customdata"] = typed(members)
            if category is None:
                trace["marker"] = dict(color=typed(color.values[members]))
        traces.append(trace | _positions(coords, members, typed))
    return traces


# ------------------------------------------------------------------------------------------------------------
# 1. Layer strip


@dataclass(frozen=True)
class Panel:
    """One layer's probe coordinates at one snapshot."""

    name: str
    coords: np.ndarray  # (n, k) on the snapshot's principal components, PC1 first
    variance: np.ndarray | None  # (k,) explained variance ratio in the same column order


def strip_figure(
    panels: list[Panel],
    color: Coloring,
    components: tuple[int, int] = (1, 2),
    selected=(),
    size: float = 4,
    opacity: float = 0.8,
    cap: int = POINTS_PER_PANEL,
) -> dict:
    """Every layer's 2-D PCA as small multiples in one SVG figure, read left to right.

    Each panel draws the same (at most `cap`) probe rows; selected rows are drawn on top with an outline in every
    panel, and the rest fade back. The legend is a colour key.
    """
    count = len(panels[0].coords) if panels else 0
    rows = decimate(count, cap, keep=selected)
    chosen = _valid_rows(selected, count)
    layout, refs = grid(len(panels), STRIP_COLUMNS, [p.name for p in panels])
    height = PANEL_HEIGHT * math.ceil(len(panels) / STRIP_COLUMNS) + 40
    top = 84 if _legend_key(color) else 40  # room for the colour key above the panels' titles
    layout.update(_base_layout(height, color.title, dict(l=30, r=10, t=top, b=30)), dragmode="lasso")
    faded = opacity * (0.35 if len(chosen) else 1.0)
    data = []
    for index, (panel, (xref, yref)) in enumerate(zip(panels, refs)):
        coords = columns(panel.coords, components)
        data += _clouds("scatter", coords, rows, color, size, faded, legend=False, xaxis=xref, yaxis=yref)
        if index == len(panels) - 1 and not color.categorical and data[-1]["marker"].get("colorscale"):
            data[-1]["marker"].update(showscale=True, colorbar=dict(title=dict(text=color.scale_title), thickness=10))
        if len(chosen):
            data.append(_highlight("scatter", coords, chosen, color, size, xaxis=xref, yaxis=yref))
        n = xref[1:]
        ranges = _balanced([_span([coords[0][rows]]), _span([coords[1][rows]])])
        for axis, component, span in (("xaxis", components[0], ranges[0]), ("yaxis", components[1], ranges[1])):
            layout[axis + n].update(
                title=dict(text=axis_title(component, panel.variance), font=dict(size=11), standoff=2),
                range=span,
                showticklabels=False,
                zeroline=False,
            )
    layout["legend"].update(itemclick=False, itemdoubleclick=False, y=1.07)  # a colour key: one entry per class
    return figure(data + _legend_key(color), layout)


def _legend_key(color: Coloring) -> list[dict]:
    """Empty traces that only draw the legend, one per category. The strip's own traces stay out of the legend:
    linking ~80 traces by legend group costs the browser a fifth of a second before the first chart shows."""
    return [
        dict(
            type="scatter",
            x=[None],
            y=[None],
            mode="markers",
            name=name,
            showlegend=True,
            hoverinfo="skip",
            marker=dict(color=category_colour(index), size=9),
        )
        for index, name in enumerate(color.names if len(color.names) <= CLASS_TRACES else ())
    ]


def _valid_rows(selected, count: int) -> np.ndarray:
    return np.asarray(sorted({int(s) for s in selected if 0 <= int(s) < count}), dtype=np.int64)


# ------------------------------------------------------------------------------------------------------------
# 2. Focus view


@dataclass(frozen=True)
class Frame:
    """One layer at one capture, for the animation: an epoch's end, or a batch capture within an epoch."""

    epoch: int  # epochs completed when captured
    coords: np.ndarray  # (n, k)
    variance: np.ndarray | None
    color: Coloring  # predictions change with the epoch, so colours may too
    label: str = ""  # the slider's label and the frame's name; the epoch when empty

    @property
    def name(self) -> str:
        return self.label or str(self.epoch)


def frame_subset(epochs: Sequence[float], chosen: int | None, limit: int = MAX_FRAMES) -> list[int]:
    """Positions of at most `limit` epochs spread evenly over `epochs`, always including the first, the last and
    `chosen`."""
    if len(epochs) <= limit:
        return list(range(len(epochs)))
    picks = set(np.linspace(0, len(epochs) - 1, limit - 1).round().astype(int).tolist())
    if chosen in epochs:
        picks.add(epochs.index(chosen))
    return sorted(picks)


def focus_figure(
    frames: list[Frame],
    start: int,
    dims: str = "2d",
    components: tuple[int, int, int] = (1, 2, 3),
    selected=(),
    size: float = 5,
    opacity: float = 0.8,
    cap: int = POINTS_PER_FRAME,
) -> dict:
    """One layer in 2-D or 3-D with an epoch slider and a Play button that animate in the browser.

    Each frame shows its own snapshot's top components in variance order (the recorder only matches their signs
    to the frame before), and the axis ranges cover every frame, so the cloud moves only as much as the
    representation does; each frame's axis titles give its own shares of variance. `start` is the position of the frame
    shown first.
    """
    three = dims == "3d"
    count = len(frames[0].coords)
    rows = decimate(count, cap, keep=selected)
    kind = "scatter3d" if three else ("scatter" if len(rows) <= SVG_POINTS else "scattergl")
    chosen = _valid_rows(selected, count)
    axes = components if three else components[:2]
    ranges = _balanced([_span([columns(f.coords, axes)[i][rows] for f in frames]) for i in range(len(axes))])
    point_size = max(1.5, size * 0.6) if three else size
    shown = frames[start]
    faded = opacity * (0.35 if len(chosen) else 1.0)
    coords = columns(shown.coords, axes)
    traces = _clouds(kind, coords, rows, shown.color, point_size, faded)
    traces.append(_highlight(kind, coords, chosen, shown.color, point_size))
    recolour = not all(np.array_equal(f.color.values, shown.color.values) for f in frames)

    def moved(frame: Frame) -> list[dict]:
        coords = columns(frame.coords, axes)
        highlight = (
            dict(type=kind, marker=dict(color=typed(frame.color.values[chosen]))) if recolour else dict(type=kind)
        )
        return _moved(kind, coords, rows, frame.color, recolour) + [highlight | _positions(coords, chosen, typed)]

    layout = _base_layout(620, shown.color.title, dict(l=68, r=10, t=104, b=128))
    titles = [axis_title(c, shown.variance) for c in axes]
    axis_specs = [dict(title=dict(text=t), range=r, zeroline=False, type="linear") for t, r in zip(titles, ranges)]
    if three:
        layout["scene"] = dict(xaxis=axis_specs[0], yaxis=axis_specs[1], zaxis=axis_specs[2], aspectmode="cube")
    else:
        layout["xaxis"], layout["yaxis"] = axis_specs
    layout.update(
        dragmode="orbit" if three else "lasso",
        updatemenus=[_play_buttons()],
        sliders=[_epoch_slider(frames, start)],
    )
    indices = list(range(len(traces)))
    animation = [dict(name=f.name, data=moved(f), traces=indices, layout=_frame_axes(f, axes, three)) for f in frames]
    return figure(traces, layout, animation)


def _span(values: list[np.ndarray]) -> list[float]:
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    if not finite.size:
        return [-1.0, 1.0]
    low, high = float(finite.min()), float(finite.max())
    pad = 0.05 * max(high - low, 1e-6)
    return [low - pad, high + pad]


def _balanced(ranges: list[list[float]], least: float = 0.05) -> list[list[float]]:
    """Axis ranges each at least `least` of the widest one, so a direction with no variance stays flat instead
    of blowing float noise up to full height."""
    widest = max(high - low for low, high in ranges)
    balanced = []
    for low, high in ranges:
        half = max(high - low, least * widest) / 2
        middle = (low + high) / 2
        balanced.append([middle - half, middle + half])
    return balanced


def _frame_axes(frame: Frame, axes: tuple[int, ...], three: bool) -> dict:
    """Axis titles of one frame (the explained variance changes as the layer learns); ranges stay fixed."""
    titles = [dict(text=axis_title(c, frame.variance)) for c in axes]
    if three:
        scene = {name: dict(title=t) for name, t in zip(("xaxis", "yaxis", "zaxis"), titles)}
        return {"scene": scene}
    return {"xaxis": {"title": titles[0]}, "yaxis": {"title": titles[1]}}


def _play_buttons() -> dict:
    play = dict(frame=dict(duration=400, redraw=True), fromcurrent=True, transition=dict(duration=0), mode="immediate")
    pause = dict(frame=dict(duration=0, redraw=False), mode="immediate", transition=dict(duration=0))
    return dict(
        type="buttons",
        direction="left",
        x=0,
        y=0,
        xanchor="left",
        yanchor="top",
        pad=dict(t=58, r=8),
        showactive=False,
        buttons=[
            dict(label="▶ Play", method="animate", args=[None, play]),
            dict(label="❚❚ Pause", method="animate", args=[[None], pause]),
        ],
    )


def _epoch_slider(frames: list[Frame], start: int) -> dict:
    step = dict(frame=dict(duration=0, redraw=True), mode="immediate", transition=dict(duration=0))
    return dict(
        active=start,
        x=0.2,
        len=0.8,
        y=0,
        yanchor="top",
        pad=dict(t=40, b=0),
        currentvalue=dict(prefix="epoch ", font=dict(size=12)),
        steps=[dict(label=f.name, method="animate", args=[[f.name], step]) for f in frames],
    )


# ------------------------------------------------------------------------------------------------------------
# 3. Selected samples


def selection_rows(
    event: dict | None, panels: list[Panel] | None = None, components: tuple[int, int] = (1, 2)
) -> tuple[int, ...]:
    """Probe rows picked in a plotly selection event.

    Clicked points carry their row as `customdata`. With `panels` (the strip's, in grid order), a box or lasso
    selects every probe row inside the region of its panel, not only the rows the decimated panel draws.
    """
    if not event:
        return ()
    selection = event.get("selection") or {}
    rows = set()
    for point in selection.get("points") or []:
        value = point.get("customdata")
        value = value[0] if isinstance(value, (list, tuple)) and value else value
        if isinstance(value, (int, float)) and math.isfinite(value):
            rows.add(int(value))
    regions = [("box", r) for r in selection.get("box") or []] + [("lasso", r) for r in selection.get("lasso") or []]
    if panels and regions:
        rows = set()
        for shape, region in regions:
            panel = _panel_of(region.get("xref"), len(panels))
            xs, ys = _floats(region.get("x")), _floats(region.get("y"))
            if panel is None or xs is None or ys is None or len(xs) != len(ys) or len(xs) < 2:
                continue
            x, y = columns(panels[panel].coords, components)
            if shape == "box":
                inside = (x >= xs.min()) & (x <= xs.max()) & (y >= ys.min()) & (y <= ys.max())
            else:
                inside = inside_polygon(x, y, xs, ys)
            rows.update(np.flatnonzero(inside).tolist())
    return tuple(sorted(rows))


def _panel_of(xref, count: int) -> int | None:
    """The strip panel an axis reference ("x", "x2", ...) belongs to (see `grid`)."""
    if not isinstance(xref, str) or not xref.startswith("x"):
        return None
    number = xref[1:] or "1"
    if not number.isdigit() or not 1 <= int(number) <= count:
        return None
    return int(number) - 1


def _floats(values) -> np.ndarray | None:
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return array if np.all(np.isfinite(array)) else None


def inside_polygon(x: np.ndarray, y: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Whether each point (x, y) lies inside the polygon (px, py), by the even-odd rule (a lasso's closed path)."""
    inside = np.zeros(len(x), dtype=bool)
    j = len(px) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(px)):
            straddles = (py[i] > y) != (py[j] > y)
            crossing = px[i] + (px[j] - px[i]) * (y - py[i]) / (py[j] - py[i])
            inside ^= straddles & (x < crossing)
            j = i
    return inside


def sample_table(
    rows, labels, probs, class_names, features=None, feature_names=None, limit: int = 200, values=None
) -> list[dict]:
    """One dict per selected row: probe row, true label (or `values`: the true value of a target that is not
    classes), predicted label, confidence, and (tabular data) features."""
    names = list(class_names or [])
    name = lambda i: names[i] if 0 <= i < len(names) else str(i)  # noqa: E731
    table = []
    for row in list(rows)[:limit]:
        entry: dict[str, Any] = {"row": int(row)}
        if labels is not None:
            entry["label"] = name(int(labels[row]))
        elif values is not None:
            entry["true value"] = round(float(values[row]), 4)
        if probs is not None and probs.shape[1] == 1:  # one value per sample: a regression's prediction
            entry["prediction"] = round(float(probs[row, 0]), 4)
        elif probs is not None:
            predicted = int(np.argmax(probs[row]))
            entry["prediction"] = name(predicted)
            entry["confidence"] = round(float(probs[row, predicted]), 3)
            if labels is not None:
                entry["correct"] = bool(predicted == labels[row])
        if features is not None:
            flat = np.asarray(features[row]).reshape(-1)
            fnames = list(feature_names or [])
            for i, value in enumerate(flat[:32]):  # wider inputs are images, shown as thumbnails instead
                entry[fnames[i] if i < len(fnames) else f"x{i + 1}"] = round(float(value), 4)
        table.append(entry)
    return table


def thumbnails(x: np.ndarray, rows, image_shape, scale: int | None = None, limit: int = 48) -> list[np.ndarray]:
    """Images of the selected rows as float arrays in [0, 1], enlarged by pixel repetition so they stay sharp,
    each in a thin light frame."""
    shape = tuple(int(d) for d in image_shape)
    images = []
    for row in list(rows)[:limit]:
        image = np.asarray(x[row], dtype=np.float32).reshape(shape)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        low, high = float(image.min()), float(image.max())
        image = (image - low) / (high - low) if high > low else np.zeros_like(image)
        factor = scale or max(1, 64 // max(shape[0], 1))
        image = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
        frame = ((THUMBNAIL_BORDER, THUMBNAIL_BORDER),) * 2 + ((0, 0),) * (image.ndim - 2)
        images.append(np.pad(image, frame, constant_values=0.85))  # a light frame keeps dark images apart
    return images


# ------------------------------------------------------------------------------------------------------------
# 4. Explained variance


def components_for(variance, share: float = 0.9) -> int | None:
    """Components needed for `share` of the variance, from ratios of the top components; None if they fall short."""
    ratios = np.sort(np.asarray([v for v in variance if v is not None], dtype=np.float64))[::-1]
    reached = np.flatnonzero(np.cumsum(ratios) >= share - 1e-9)
    return int(reached[0] + 1) if reached.size else None


def scree_figure(names: list[str], variances: list, n90: list[int | None] | None = None) -> dict:
    """Left: cumulative explained variance by component for every layer. Right: components for 90% per layer.

    `n90` may come from the recorder (computed on the full spectrum); otherwise it is read off the stored ratios.
    """
    layout, refs = grid(2, 2, ["cumulative explained variance", "components for 90%"], hgap=0.12)
    layout["xaxis"]["domain"], layout["xaxis2"]["domain"] = [0, 0.55], [0.68, 1]
    layout["annotations"][0]["x"], layout["annotations"][1]["x"] = 0.275, 0.84
    data, counts = [], []
    for index, (name, variance) in enumerate(zip(names, variances)):
        ratios = np.sort(
            np.asarray([v for v in (variance if variance is not None else []) if v is not None], dtype=np.float64)
        )[::-1]
        counts.append((n90[index] if n90 and n90[index] is not None else None) or components_for(ratios))
        data.append(
            dict(
                type="scatter",
                x=list(range(1, len(ratios) + 1)),
                y=np.cumsum(ratios).round(4).tolist(),
                mode="lines+markers",
                name=name,
                line=dict(color=category_colour(index)),
                showlegend=False,
                hovertemplate=f"{name}: %{{y:.0%}} in %{{x}} components<extra></extra>",
            )
        )
    stored = [len(v) if v is not None else 0 for v in variances]
    data.append(
        dict(
            type="bar",
            x=names,
            y=[c or k for c, k in zip(counts, stored)],
            text=[str(c) if c else f"> {k}" for c, k in zip(counts, stored)],
            textposition="outside",
            showlegend=False,
            xaxis="x2",
            yaxis="y2",
            marker=dict(color=[category_colour(i) for i in range(len(names))]),
        )
    )
    layout["xaxis"].update(title=dict(text="component"), dtick=1)
    layout["yaxis"].update(range=[0, 1.05], tickformat=".0%")
    layout["xaxis2"]["type"] = "category"
    layout["yaxis2"].update(title=dict(text="components"), rangemode="tozero")
    layout["shapes"] = [
        dict(type="line", xref="x domain", yref="y", x0=0, x1=1, y0=0.9, y1=0.9, line=dict(dash="dot", color="grey"))
    ]
    layout.update(_base_layout(360, margin=dict(l=50, r=10, t=40, b=80)))  # the bars name the layers: no legend
    return figure(data, layout)


# ------------------------------------------------------------------------------------------------------------
# 5. Training curves


def curves_figure(history: dict, epoch: int | None = None) -> dict:
    """Loss and accuracy per epoch, training solid and validation dashed; a line marks the epoch on view."""
    epochs = history.get("epoch") or []
    metrics = [m for m in ("loss", "accuracy") if any(v is not None for v in history.get(m) or [])]
    layout, refs = grid(max(1, len(metrics)), 2, metrics or ["no epochs yet"], hgap=0.1)
    data, shapes = [], []
    for (xref, yref), metric in zip(refs, metrics):
        for key, dash, colour in ((metric, "solid", PALETTE[0]), (f"val_{metric}", "dash", PALETTE[1])):
            values = history.get(key)
            if values and any(v is not None for v in values):
                label = "train" if key == metric else "validation"
                data.append(
                    dict(
                        type="scatter",
                        x=epochs,
                        y=[None if v is None else v for v in values],
                        mode="lines",
                        name=label,
                        line=dict(dash=dash, color=colour),
                        legendgroup=label,
                        showlegend=xref == "x",
                        xaxis=xref,
                        yaxis=yref,
                    )
                )
        if epoch is not None:
            shapes.append(
                dict(
                    type="line",
                    xref=xref,
                    yref=f"{yref} domain",
                    x0=epoch,
                    x1=epoch,
                    y0=0,
                    y1=1,
                    line=dict(color="grey", dash="dot"),
                )
            )
        layout["xaxis" + xref[1:]]["title"] = dict(text="epoch")
    layout.update(_base_layout(300, margin=dict(l=28, r=10, t=64, b=68)), shapes=shapes)
    layout["legend"].update(y=1.12, x=1, xanchor="right")
    return figure(data, layout)
