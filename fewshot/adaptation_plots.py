"""Figures for the Draw page (plotly): the inner loop step by step, and a query's class probabilities."""

import html

import plotly.graph_objects as go
from plotly.subplots import make_subplots

WINNER, BEFORE, AFTER, CURVE = "#d62728", "#c5ccd3", "#7b8794", "#1f77b4"


def adaptation_curves(support_loss: list, support_accuracy: list, height: int = 280) -> go.Figure:
    """Support loss and accuracy after 0, 1, ..., steps inner steps (step 0: the meta-learned start θ)."""
    steps = list(range(len(support_loss)))
    figure = make_subplots(rows=1, cols=2, subplot_titles=("support loss", "support accuracy"),
                           horizontal_spacing=0.18)
    figure.add_scatter(x=steps, y=support_loss, mode="lines+markers", line=dict(color=CURVE),
                       showlegend=False, row=1, col=1)
    figure.add_scatter(x=steps, y=support_accuracy, mode="lines+markers", line=dict(color=CURVE),
                       showlegend=False, row=1, col=2)
    figure.update_xaxes(title_text="inner step", dtick=1 if len(steps) <= 12 else None)
    figure.update_yaxes(rangemode="tozero", row=1, col=1)
    figure.update_yaxes(range=[0, 1.05], tickformat=".0%", row=1, col=2)
    figure.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10))
    return figure


def plotly_text(text: str) -> str:
    """`text` for a Plotly label, hover or title, to show as it is: Plotly reads those as a little HTML (`<b>`,
    `<br>`, `<a href>`) and decodes entities (`&lt;`, `&mu;`, `&#60;`), once; so & < > go in as entities it
    decodes. (Quotes stay: `&quot;` is not among the entities Plotly decodes.)"""
    return html.escape(text, quote=False)


def probability_bars(names: list, before, after, steps: int) -> go.Figure:
    """Class probabilities of one query before and after adaptation, as horizontal bars beside the class names
    (readable however long), the most probable class after adaptation highlighted. The names are anyone's text:
    each class has a bar at its own position, labelled with its name as typed (on Plotly's category axis, two
    classes of one name would share a bar). Made from one dict: with add_bar and the update_* methods, which parse
    their keywords one by one, it took 10 ms, at every query of every student of a class."""
    before, after = [float(p) for p in before], [float(p) for p in after]
    winner = max(range(len(after)), key=after.__getitem__)
    positions, labels = list(range(len(names))), [plotly_text(name) for name in names]
    bars = dict(type="bar", orientation="h", y=positions, textposition="outside", customdata=labels,
                hovertemplate="%{customdata}: %{x:.0%}")
    return go.Figure(dict(
        data=[dict(bars, x=before, name="before adaptation (θ)", marker=dict(color=BEFORE),
                   text=[f"{p:.0%}" for p in before]),
              dict(bars, x=after, name=f"after {steps} inner steps (θ')",
                   marker=dict(color=[WINNER if i == winner else AFTER for i in range(len(after))]),
                   text=[f"{p:.0%}" for p in after])],
        layout=dict(xaxis=dict(range=[0, 1.2], tickformat=".0%"),
                    yaxis=dict(tickmode="array", tickvals=positions, ticktext=labels, autorange="reversed",
                               automargin=True),  # class 1 on top, as on the page
                    height=90 + 44 * len(names), margin=dict(l=10, r=10, t=40, b=10), barmode="group",
                    title=dict(text="the query's class probabilities", font=dict(size=14)),
                    legend=dict(orientation="h", y=-0.15 - 0.6 / len(names), x=0))))
