"""The app's pages in Streamlit's AppTest, for the page tests."""

from pathlib import Path

import pyarrow
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def open_page(page: str | None = None, timeout: float = 60) -> AppTest:
    """app.py run, then the page `page` ("pages/draw.py"; Home when None); fails on an exception in either."""
    app = AppTest.from_file(APP, default_timeout=timeout).run()
    if page:
        app.switch_page(page).run()
    assert not app.exception, app.exception
    return app


def chart_rows(chart) -> list:
    """The rows of one of a page's Vega-Lite charts (Arrow), as dicts."""
    return pyarrow.ipc.open_stream(chart.proto.data.data).read_all().to_pylist()
