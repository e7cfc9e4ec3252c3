"""Figures for the Draw page (plotly): the inner loop step by step, and a query's class probabilities."""

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .adaptation import Adaptation

WINNER, OTHERS, CURVE = "#d62728", "#9aa5b1", "#1f77b4"


def adaptation_curves(adaptation: Adaptation, height: int = 300) -> go.Figure:
    """Support loss and accuracy after 0, 1, ..., steps inner steps."""
    steps = list(range(len(adaptation.support_loss)))
    figure = make_subplots(rows=1, cols=2, subplot_titles=("support loss", "support accuracy"))
    figure.add_scatter(x=steps, y=adaptation.support_loss, mode="lines+markers", line=dict(color=CURVE),
                       showlegend=False, row=1, col=1)
    figure.add_scatter(x=steps, y=adaptation.support_accuracy, mode="lines+markers", line=dict(color=CURVE),
                       showlegend=False, row=1, col=2)
    figure.update_xaxes(title_text="inner steps (0 = the meta-learned start)", dtick=1 if len(steps) <= 12 else None)
    figure.update_yaxes(rangemode="tozero", row=1, col=1)
    figure.update_yaxes(range=[0, 1.05], tickformat=".0%", row=1, col=2)
    figure.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10))
    return figure


def probability_bars(names: list, before, after, steps: int, height: int = 300) -> go.Figure:
    """Class probabilities of one query before and after adaptation, the most probable class highlighted."""
    figure = make_subplots(rows=1, cols=2, shared_yaxes=True,
                           subplot_titles=("before adaptation (θ)", f"after {steps} inner steps (θ')"))
    for column, probabilities in ((1, before), (2, after)):
        values = [float(p) for p in probabilities]
        winner = max(range(len(values)), key=values.__getitem__)
        figure.add_bar(x=names, y=values, text=[f"{v:.0%}" for v in values], textposition="outside",
                       marker_color=[WINNER if i == winner else OTHERS for i in range(len(values))],
                       showlegend=False, row=1, col=column)
    figure.update_yaxes(range=[0, 1.15], tickformat=".0%")
    figure.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10))
    return figure
