"""Figures for the app: training curves and the probe's measures (Vega-Lite), and a picture of a task (an image
array). No streamlit here."""

import numpy as np

from .tasks import TaskBatch

X_AXES = {"iterations": "iteration", "seconds": "seconds"}  # the x axis' name in the app -> the record's key
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
          "#7f7f7f")  # as many as the layers of Config's largest network (8 conv blocks, a classifier), and more
# Points per meta-train curve: two pixels apart on a chart half a page wide (~500 px). Longer runs are thinned:
# every viewer gets every point of a live chart at every redraw (scripts/live_bytes.py: with 2,000 points a curve,
# two runs of 100,000 iterations sent each viewer of Compare 2.4 MB every 2 s).
MAX_POINTS = 250
MAX_VALIDATION_POINTS = MAX_POINTS // 2  # each a dot of 5 px: closer, validation's dots merge into a band
MAX_PROBE_POINTS = MAX_POINTS // 8  # per layer's line of a probe panel, which draws up to len(COLORS) + 1 of them


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
        validation = _thin([r for r in records if "val_loss" in r], MAX_VALIDATION_POINTS)
        rows += [_row(label, "meta-train", r[key], r[f"train_{metric}"]) for r in train]
        rows += [_row(label, "validation", r[key], r[f"val_{metric}"]) for r in validation]
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


PROBE_PANELS = {"cosine": "cosine(g1, g2)", "norm_ratio": "|g1| / |g2|",
                "dropped_norm": "dropped |g2 - g1| (dashed: |g2|)"}  # probe.py's measures, each a chart
ALL_WEIGHTS = "all weights"


def probe_curves(records: list, measure: str, height: int = 260) -> tuple[dict, list]:
    """One of a MAML run's first- against second-order measures (probe.py, PROBE_PANELS) against iterations,
    for all weights (bold, black) and for each layer: a Vega-Lite chart, as (spec, rows). Its spec depends on
    the run's layers only, so that a live chart is updated in place, as training_curves' are."""
    probed = _thin([r for r in records if "probe" in r], MAX_PROBE_POINTS)
    layers = [ALL_WEIGHTS, *list(probed[-1]["probe"]["layers"] if probed else {})[:len(COLORS)]]  # the latest's
    measures = (measure, "g2_norm") if measure == "dropped_norm" else (measure,)
    rows = []
    for record in probed:
        groups = {ALL_WEIGHTS: record["probe"], **record["probe"]["layers"]}
        rows += [{"iteration": record["iteration"], "layer": layer, "measure": key, "value": groups[layer][key]}
                 for layer in layers if layer in groups for key in measures]
    encoding = {"x": {"field": "iteration", "type": "quantitative", "title": "meta-iterations"},
                "y": {"field": "value", "type": "quantitative", "title": None},
                "color": {"field": "layer", "type": "nominal", "title": None,
                          "legend": {"orient": "bottom", "columns": 3, "labelLimit": 70},
                          "scale": {"domain": layers, "range": ["black", *COLORS]}},
                "strokeWidth": {"condition": {"test": f"datum.layer === '{ALL_WEIGHTS}'", "value": 2.5},
                                "value": 1}}
    chart = [{"transform": [{"filter": {"field": "measure", "equal": measure}}],
              "mark": {"type": "line", "point": len(probed) <= 20}, "encoding": encoding}]
    if measure == "dropped_norm":  # beside |g2|, for scale
        chart.append({"transform": [{"filter": {"field": "measure", "equal": "g2_norm"}}],
                      "mark": {"type": "line", "strokeDash": [4, 3], "opacity": 0.5}, "encoding": encoding})
    else:  # where first order would equal second order
        chart.append({"data": {"values": [{}]}, "mark": {"type": "rule", "color": "grey", "strokeDash": [2, 3]},
                      "encoding": {"y": {"datum": 1}}})
    spec = {"height": height, "title": {"text": PROBE_PANELS[measure], "anchor": "start", "fontSize": 13},
            "layer": chart}
    return spec, rows


def ink_picture(ink: np.ndarray, scale: int) -> np.ndarray:
    """A drawing's ink (1.0 on 0.0) as black on white, each pixel a square of scale x scale: sharp, not blurred."""
    return np.kron(1 - ink, np.ones((scale, scale))).clip(0, 1)


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
    """At most `max_points` of `records`, evenly spaced from the first, and the last (the run's latest). The
    points kept stay the same as records are appended, until the spacing widens: a live curve does not change
    shape from one redraw to the next."""
    if len(records) <= max_points:
        return records
    step = -(-(len(records) - 1) // (max_points - 1))  # rounded up
    return records[:-1:step] + records[-1:]


def _name(label: str, curve: str) -> str:
    return f"{label} · {curve}" if label else curve
