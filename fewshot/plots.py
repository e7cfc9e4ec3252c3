"""Figures for the app: training curves (plotly) and a picture of a task (an image array). No streamlit here."""

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .tasks import TaskBatch

X_AXES = {"iterations": "iteration", "seconds": "seconds"}  # the x axis' name in the app -> the record's key
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
MAX_POINTS = 2000  # per training curve; longer runs are thinned for the browser's sake


def training_curves(runs: dict, metric: str, x: str = "iterations", chance: float | None = None,
                    height: int = 300) -> tuple[dict, list]:
    """One metric (loss or accuracy) of one or more runs, meta-train (thin) and validation (bold, with points),
    against `x`: a Vega-Lite chart, as (spec, rows).

    `runs` maps a label ("" for a single run) to its metrics records; `chance` draws accuracy's chance level.
    The spec depends on the labels, the axes and the chance level, not on the records: a live chart redrawn
    with new rows and the same spec is updated in place by the browser. (Streamlit re-creates a plotly chart
    whenever its figure changes, and the chart is blank until the new one is drawn: 38 to 74 % of frames while
    a comparison trained.)
    """
    key, rows = X_AXES[x], []
    for label, records in runs.items():
        train = _thin(records, MAX_POINTS)
        rows += [_row(label, "meta-train", r[key], r[f"train_{metric}"]) for r in train]
        rows += [_row(label, "validation", r[key], r[f"val_{metric}"]) for r in records if "val_loss" in r]
    labels = list(runs)
    color = {"field": "run", "type": "nominal", "title": None, "scale": {"domain": labels, "range": COLORS},
             "legend": {"orient": "bottom"} if labels != [""] else None}
    encoding = {"x": {"field": "x", "type": "quantitative", "title": "meta-iterations" if x == "iterations"
                      else "seconds of training"},
                "y": {"field": "y", "type": "quantitative", "title": None,
                      "scale": {"domain": [0, 1]} if metric == "accuracy" else {"zero": True},
                      "axis": {"format": ".0%"} if metric == "accuracy" else {}},
                "color": color, "detail": {"field": "series", "type": "nominal"}}
    few = max((len(records) for records in runs.values()), default=0) <= 20  # a lone point shows too
    layers = [{"transform": [{"filter": {"field": "curve", "equal": "meta-train"}}],
               "mark": {"type": "line", "strokeWidth": 1, "opacity": 0.45, "point": few}, "encoding": encoding},
              {"transform": [{"filter": {"field": "curve", "equal": "validation"}}],
               "mark": {"type": "line", "strokeWidth": 2.5, "point": {"size": 25}}, "encoding": encoding}]
    if chance is not None:
        once = {"values": [{}]}  # one rule and one word, not one per row of the curves
        layers += [{"data": once, "mark": {"type": "rule", "color": "grey", "strokeDash": [2, 3]},
                    "encoding": {"y": {"datum": chance}}},
                   {"data": once, "mark": {"type": "text", "text": "chance", "color": "grey", "x": 0,
                                           "align": "left", "baseline": "bottom", "dx": 2, "dy": -2},
                    "encoding": {"y": {"datum": chance}}}]
    spec = {"height": height, "title": {"text": f"query {metric} after adaptation", "anchor": "start",
                                         "subtitle": "thin: meta-train · bold: validation", "fontSize": 13},
            "layer": layers}
    return spec, rows


def _row(label: str, curve: str, x: float, y: float) -> dict:
    return {"run": label, "curve": curve, "series": _name(label, curve), "x": x, "y": y}


def probe_curves(records: list, title: str = "", height: int = 340) -> go.Figure:
    """A MAML run's first- against second-order measurements (probe.py) against iterations, for all weights
    (black) and for each layer: cosine(g1, g2), |g1| / |g2|, and the dropped term |g2 - g1| beside |g2|."""
    probed = _thin([r for r in records if "probe" in r], MAX_POINTS)
    figure = make_subplots(rows=1, cols=3, subplot_titles=("cosine(g1, g2)", "|g1| / |g2|",
                                                            "dropped |g2 - g1| (dashed: |g2|)"))
    iterations = [r["iteration"] for r in probed]
    mode = "lines" if len(probed) > 20 else "lines+markers"
    layers = probed[-1]["probe"]["layers"] if probed else {}
    groups = {"all weights": [r["probe"] for r in probed]}  # a hand-edited record may lack a layer: a gap
    groups.update({layer: [r["probe"]["layers"].get(layer, {}) for r in probed] for layer in layers})
    for index, (name, values) in enumerate(groups.items()):
        color, width = ("black", 2.5) if index == 0 else (COLORS[(index - 1) % len(COLORS)], 1)
        line = dict(color=color, width=width)
        for column, key in ((1, "cosine"), (2, "norm_ratio"), (3, "dropped_norm")):
            figure.add_scatter(x=iterations, y=[value.get(key) for value in values], mode=mode, line=line, name=name,
                               legendgroup=name, showlegend=column == 1, row=1, col=column)
        figure.add_scatter(x=iterations, y=[value.get("g2_norm") for value in values], mode="lines",
                           line=dict(line, dash="dash"), opacity=0.5, name=f"{name} |g2|", legendgroup=name,
                           showlegend=False, row=1, col=3)
    for column in (1, 2):  # where first order would equal second order
        figure.add_hline(y=1, line=dict(color="grey", dash="dot", width=1), row=1, col=column)
    figure.update_yaxes(rangemode="tozero", row=1, col=3)
    figure.update_xaxes(title_text="meta-iterations")
    figure.update_layout(title=dict(text=title, x=0, y=0.98), height=height, margin=dict(l=10, r=10, t=70, b=10),
                         legend=dict(orientation="h", yanchor="top", y=-0.22))
    return figure


def task_picture(batch: TaskBatch, task: int = 0, scale: int = 3, gap: int = 4) -> np.ndarray:
    """One task as a uint8 grey image, black ink on white: a row per class, its support drawings on the left,
    then a wider gap, then its query drawings."""
    ways = int(batch.support_y[task].max()) + 1
    support = batch.support_x[task, :, 0].reshape(ways, -1, 28, 28)
    query = batch.query_x[task, :, 0].reshape(ways, -1, 28, 28)
    blank = np.ones((28, 28), np.float32)  # white, between support and queries
    rows = []
    for c in range(ways):
        cells = [1 - d.numpy() for d in support[c]] + [blank] + [1 - d.numpy() for d in query[c]]
        rows.append(np.concatenate(_spaced(cells, np.ones((28, gap), np.float32)), axis=1))
    picture = np.concatenate(_spaced(rows, np.ones((gap, rows[0].shape[1]), np.float32)), axis=0)
    return (np.kron(picture, np.ones((scale, scale), np.float32)) * 255).astype(np.uint8)


def _spaced(parts: list, spacer: np.ndarray) -> list:
    out = []
    for part in parts:
        out += [part, spacer]
    return out[:-1]


def _thin(records: list, max_points: int) -> list:
    step = max(1, -(-len(records) // max_points))
    return records[::step] if step > 1 else records


def _name(label: str, curve: str) -> str:
    return f"{label} · {curve}" if label else curve
