"""Widget values a tampered browser may send, whatever bounds the page gave the widget: the Draw page shows one plain
line, or ignores or clamps them, and keeps its cost bounded. (Streamlit's server clamps a number input to its bounds,
cuts a text input to its max_chars and resets a radio or selectbox to an option; a value of another type than the
widget's fails in Streamlit itself, before any page runs, with its generic message.)"""

import pytest

import app_ui as ui
from apptests import open_page
from canvas_drawings import QUERY, QUERY_NAME, SHAPES, canvas_image, data_url
from fewshot import desks

URL = data_url(canvas_image(SHAPES["X"]))  # a drawing, as the canvas sends it
STROKES = {"objects": []}


@pytest.fixture(autouse=True)
def folders(shipped_default_only):
    return shipped_default_only


def send(app, slot: str, value: dict) -> None:
    """`value` as the canvas of `slot` ("<class>_<drawing>" or "query") sends its state: any JSON object."""
    app.session_state[f"draw_canvas_{slot}_0"] = value


def empty_slots(app) -> int:
    return sum(caption.value == "empty" for caption in app.caption)


def there_and_back(app) -> None:
    """To another page and back: every canvas is redrawn with its kept strokes."""
    app.switch_page("pages/home.py").run()
    app.switch_page("pages/draw.py").run()


@pytest.mark.parametrize("value", [
    {"drawing": 5},
    {"drawing": ["raw", "data"]},
    {"drawing": {"raw": STROKES, "data": 5}},
    {"drawing": {"raw": STROKES, "data": URL}, "backgroundFit": {}},
    {"drawing": {"raw": STROKES, "data": URL}, "backgroundFit": "fit"},
], ids=["drawing-number", "drawing-list", "data-number", "fit-without-fields", "fit-string"])
def test_a_canvas_message_of_another_shape_leaves_the_slot_empty_not_a_traceback(value):
    app = open_page("pages/draw.py", timeout=120)
    send(app, "0_0", value)
    app.run()
    assert not app.exception, app.exception
    assert empty_slots(app) == 6


@pytest.mark.parametrize("strokes", ["strokes", [["path", 1, 2]]], ids=["string", "list"])
def test_strokes_that_are_no_json_object_are_not_kept_to_redraw_the_canvas(strokes):
    """A redraw with them raised in st_canvas, on every run of the page, from the first one that redrew it on."""
    app = open_page("pages/draw.py", timeout=120)
    send(app, "0_0", {"drawing": {"raw": strokes, "data": URL}})
    app.run()
    there_and_back(app)
    assert not app.exception, app.exception
    assert empty_slots(app) == 5  # the drawing's ink is kept
    assert app.session_state["draw_kept"][(0, 0)][0] is None


def test_strokes_beyond_the_bound_are_not_kept_and_cost_no_more_than_it():
    """A message may carry 25 MB of strokes for each canvas: kept, every run packed them all into the desk (4 s a
    run for 3 canvases of 19 MB)."""
    app = open_page("pages/draw.py", timeout=120)
    huge = {"objects": [{"type": "path", "path": [["Q", 10.5, 20.5, 30.5, 40.5]] * 20_000}]}  # 500 KB
    send(app, "0_0", {"drawing": {"raw": huge, "data": URL}})
    send(app, "1_0", {"drawing": {"raw": STROKES, "data": URL}})
    app.run()
    assert not app.exception, app.exception
    kept = app.session_state["draw_kept"]
    assert kept[(0, 0)][0] is None and kept[(0, 0)][1] is not None  # its ink, not its strokes
    assert kept[(1, 0)][0] == STROKES
    saved = desks.Desks(desks.db_path()).load(app.query_params["desk"])
    assert saved is not None and len(saved) < 10_000


def test_class_names_show_as_typed_not_as_markdown():
    """A character drawn may well be named "*", "$" or "[": in markdown they made bold, formulas or links."""
    names = [f"{name} [$*_]" for name in SHAPES]
    app = open_page("pages/draw.py", timeout=120)
    for c, name in enumerate(names):
        app.text_input(key=f"draw_name_{c}").set_value(name)
    app.run()
    assert ui.literal(names[0]) + ", " in app.info[0].value
    for c, name in enumerate(SHAPES):
        send(app, f"{c}_0", {"drawing": {"raw": STROKES, "data": data_url(canvas_image(SHAPES[name]))}})
    send(app, "query", {"drawing": {"raw": STROKES, "data": data_url(canvas_image(QUERY))}})
    app.run()
    next(button for button in app.button if button.label == "Adapt").click().run()
    assert not app.exception and not app.error
    winner = ui.literal(f"{QUERY_NAME} [$*_]")
    assert f"#### Prediction after adaptation: **{winner}**" in "\n".join(m.value for m in app.markdown)


@pytest.mark.parametrize("label, forged, bound", [
    ("Inner steps", 10**18, 50), ("Inner steps", -1, 50), ("Classes", 10**6, 20), ("Drawings", 1e300, 5),
    ("Inner learning rate", float("inf"), 10.0), ("Inner learning rate", float("nan"), 10.0),
])
def test_settings_out_of_their_bounds_are_brought_within_them(label, forged, bound):
    """Streamlit's server resets a number input's value outside its bounds: a forged number of inner steps or
    classes cannot make an adaptation's cost unbounded."""
    app = open_page("pages/draw.py", timeout=120)
    next(number for number in app.number_input if number.label.startswith(label)).set_value(forged)
    app.run()
    assert not app.exception, app.exception
    value = next(number for number in app.number_input if number.label.startswith(label)).value
    assert 0 <= value <= bound
