"""The Draw page's figures (fewshot/adaptation_plots.py) with class names anyone may type: each class keeps its own
bar, in the order given, under its name as typed (Plotly reads labels as a little HTML and decodes entities)."""

import plotly.io as pio
import pytest

from browser import CHROMIUM, launch_chromium
from fewshot.adaptation_plots import probability_bars

# Two classes of one name, Plotly's HTML (a link, bold) and entities it decodes (&lt; &mu; &#60;) or does not (&quot;)
NAMES = ["A", "A", '<a href="https://example.com">cat</a>', "<b>B</b>", "x&lt;y &mu; &#60;i&#62; & <br>", "&quot;q'"]
BEFORE, AFTER = [0.1, 0.2, 0.3, 0.1, 0.2, 0.1], [0.05, 0.6, 0.1, 0.1, 0.1, 0.05]


def test_each_class_has_a_bar_of_its_own_in_the_order_given():
    figure = probability_bars(NAMES, BEFORE, AFTER, steps=5)
    before, after = figure.data
    assert len(set(before.y)) == len(set(after.y)) == len(NAMES)  # no two classes on one bar
    assert list(before.x) == BEFORE and list(after.x) == AFTER
    assert list(before.y) == list(after.y) == list(figure.layout.yaxis.tickvals)  # each bar under its class' label
    assert after.marker.color[1] != after.marker.color[0]  # the winner, class 2, highlighted, not its namesake


@pytest.mark.browser
def test_names_show_as_typed_in_a_browser(tmp_path):
    """The figure drawn by Plotly.js in Chromium: its class labels, top to bottom, are the names as typed; no link,
    no bold; a hover names the class as typed."""
    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    html = tmp_path / "figure.html"
    html.write_text(pio.to_html(probability_bars(NAMES, BEFORE, AFTER, steps=5), include_plotlyjs=True))
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page()
        page.goto(html.as_uri())
        page.wait_for_selector(".ytick text")
        labels = page.eval_on_selector_all(".ytick text", """texts => texts
            .map(text => [text.getBoundingClientRect().top, text.textContent])
            .sort((a, b) => a[0] - b[0]).map(pair => pair[1])""")
        formatted = page.locator(".main-svg a, .main-svg tspan[style*=bold], .main-svg tspan[style*=italic]").count()
        hovers = []
        for bar in (4, 9):  # class 5's bar before adaptation, class 4's after (the traces' bars in order)
            page.locator(".trace.bars .point path").nth(bar).hover(force=True)  # Plotly's drag layer lies above
            page.wait_for_selector(".hoverlayer .hovertext")
            hovers.append(page.locator(".hoverlayer .hovertext text.nums").text_content())
            page.mouse.move(0, 0)  # off the plot: the label goes
            page.wait_for_selector(".hoverlayer .hovertext", state="detached")
        browser.close()
    assert labels == NAMES
    assert formatted == 0
    assert hovers == [f"{NAMES[4]}: 20%", f"{NAMES[3]}: 10%"]
