"""Figures for the app: training curves (plotly) and a picture of a task (an image array). No streamlit here."""

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .tasks import TaskBatch

X_AXES = {"iterations": "iteration", "seconds": "seconds"}  # the x axis' name in the app -> the record's key
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
MAX_POINTS = 2000  # per training curve; longer runs are thinned for the browser's sake


def training_curves(runs: dict, x: str = "iterations", chance: float | None = None, height: int = 360) -> go.Figure:
    """Loss and accuracy of one or more runs, meta-train (thin) and validation (bold), against `x`.

    `runs` maps a label ("" for a single run) to its metrics records; `chance` draws accuracy's chance level.
    """
    key = X_AXES[x]
    figure = make_subplots(rows=1, cols=2, subplot_titles=("loss (query set, after adaptation)",
                                                            "accuracy (query set, after adaptation)"))
    for index, (label, records) in enumerate(runs.items()):
        color = COLORS[index % len(COLORS)]
        train = _thin(records, MAX_POINTS)
        validation = [r for r in records if "val_loss" in r]
        for column, metric in ((1, "loss"), (2, "accuracy")):
            figure.add_scatter(x=[r[key] for r in train], y=[r[f"train_{metric}"] for r in train],
                               mode="lines" if len(train) > 20 else "lines+markers",  # a lone point shows too
                               line=dict(color=color, width=1), opacity=0.45, legendgroup=f"{label} train",
                               name=_name(label, "meta-train"), showlegend=column == 1, row=1, col=column)
            figure.add_scatter(x=[r[key] for r in validation], y=[r[f"val_{metric}"] for r in validation],
                               mode="lines+markers", line=dict(color=color, width=2.5), marker=dict(size=5),
                               legendgroup=f"{label} val", name=_name(label, "validation"),
                               showlegend=column == 1, row=1, col=column)
    if chance is not None:
        figure.add_hline(y=chance, line=dict(color="grey", dash="dot", width=1), annotation_text="chance",
                         annotation_position="bottom right", row=1, col=2)
    figure.update_yaxes(rangemode="tozero", row=1, col=1)
    figure.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    figure.update_xaxes(title_text="meta-iterations" if x == "iterations" else "seconds of training")
    figure.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), uirevision=x,
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
