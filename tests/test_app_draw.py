"""The Draw page with Streamlit's AppTest: drawings are injected through the canvases' widget state (AppTest
cannot draw; tests/test_browser_draw.py draws with the mouse)."""

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest
from torch.func import functional_call

from canvas_drawings import QUERY, QUERY_NAME, SHAPES, canvas_image, data_url
from fake_omniglot import write_fake_omniglot
from apptests import APP, open_page
from fewshot import desks, limits, maml
from fewshot.adaptation import DEFAULT_CHECKPOINT
from fewshot.checkpoints import checkpoint_metadata, load_checkpoint, save_checkpoint
from fewshot.config import Config
from fewshot.drawing import drawing_to_ink
from fewshot.models import build_model
from fewshot.omniglot import split_characters

REPO = Path(__file__).resolve().parents[1]
NAMES = list(SHAPES)


@pytest.fixture(autouse=True)
def folders(shipped_default_only):
    return shipped_default_only


def open_draw_page() -> AppTest:
    return open_page("pages/draw.py", timeout=120)


def draw(app: AppTest, slot: str, strokes: list, **options) -> None:
    """Puts a drawing in a canvas, as the browser sends it: `slot` is "<class>_<drawing>" or "query"."""
    canvas_message(app, slot, data_url(canvas_image(strokes, **options)))


def canvas_message(app: AppTest, slot: str, url: str, strokes: dict | None = None) -> None:
    """What the browser sends for the canvas of `slot`: its strokes (fabric.js' JSON: none unless given) and
    `url`, the PNG as a data URL."""
    app.session_state[f"draw_canvas_{slot}_0"] = {"drawing": {"raw": strokes or {"objects": []}, "data": url}}


def draw_all_classes(app: AppTest, classes=range(len(NAMES))) -> None:
    for c in classes:
        app.text_input(key=f"draw_name_{c}").set_value(NAMES[c])
        draw(app, f"{c}_0", SHAPES[NAMES[c]])
    draw(app, "query", QUERY)


def button(app: AppTest, label: str):
    return next(b for b in app.button if b.label == label)


def classes_input(app: AppTest):
    """The Classes (N ways) setting."""
    return next(number for number in app.number_input if number.label.startswith("Classes"))


def texts(app: AppTest, kind: str) -> str:
    return "\n".join(element.value for element in app.get(kind))


def empty_slots(app: AppTest) -> int:
    """Canvases with nothing the model could see: a slot with a drawing shows its 28x28 image instead."""
    return sum(caption.value == "empty" for caption in app.caption)


def chart_data(app: AppTest, index: int, axis: str = "y") -> list:
    """The values along `axis` of each trace of the page's index-th plotly chart."""
    return [trace[axis] for trace in json.loads(app.get("plotly_chart")[index].proto.spec)["data"]]


def expected_adaptation(folders: Path) -> dict:
    """What the page should find, computed apart from it: maml.adapt (first order) and maml.query_logits, with the
    checkpoint's inner learning rate and test-time steps, on the 28x28 ink of what draw_all_classes draws."""
    model, metadata = load_checkpoint(folders / "checkpoints" / DEFAULT_CHECKPOINT)
    steps, inner_lr = metadata["test_inner_steps"], metadata["inner_lr"]
    support_x = torch.stack([drawing_to_ink(canvas_image(SHAPES[name]))[None] for name in NAMES])
    support_y = torch.arange(len(NAMES))
    query_x = drawing_to_ink(canvas_image(QUERY))[None, None]
    theta = dict(model.named_parameters())
    adapted = maml.adapt(model, theta, support_x, support_y, inner_lr, steps, first_order=True)
    with torch.no_grad():
        return {
            "steps": steps,
            "loss": [maml.loss(model, params, support_x, support_y).item() for params in (theta, adapted)],
            "accuracy": [(functional_call(model, params, (support_x,)).argmax(-1) == support_y).float().mean().item()
                         for params in (theta, adapted)],
            "probabilities": [maml.query_logits(model, params, support_x, query_x)[0].softmax(-1).tolist()
                              for params in (theta, adapted)]}


def test_draw_adapt_and_classify_end_to_end(folders):
    expected = expected_adaptation(folders)
    app = open_draw_page()
    assert app.selectbox(key="draw_checkpoint").options[0] == "Shipped: " + DEFAULT_CHECKPOINT.removesuffix(".safetensors")
    assert "meta-trained for three phases" in texts(app, "caption")  # its history, not its last phase's iterations
    draw_all_classes(app)
    app.run()
    assert not app.exception and not app.error
    assert empty_slots(app) == 0  # a 28x28 image beside each of the five drawings and the query
    assert "Press **Adapt**" in texts(app, "info")

    button(app, "Adapt").click().run()
    assert not app.exception and not app.error, app.error
    text = texts(app, "markdown")
    (first, last), (before, after) = expected["accuracy"], expected["probabilities"]
    assert f"{expected['steps']} inner steps on 5 drawings" in text
    assert f"Support accuracy {first:.0%} → **{last:.0%}**" in text  # fifths: no rounding at stake
    shown_loss = re.search(r"loss (\S+) → \*\*(\S+)\*\*", text).groups()
    assert [float(loss) for loss in shown_loss] == pytest.approx(expected["loss"], abs=0.006)  # to 2 decimals
    bars, curves = chart_data(app, 0, axis="x"), chart_data(app, 1)  # the query's probabilities, the inner loop's curves
    assert [curves[0][0], curves[0][-1]] == pytest.approx(expected["loss"], rel=1e-4)
    assert [curves[1][0], curves[1][-1]] == pytest.approx(expected["accuracy"])
    assert bars[0] == pytest.approx(before, abs=1e-5) and bars[1] == pytest.approx(after, abs=1e-5)
    winner = max(range(len(NAMES)), key=after.__getitem__)
    assert f"Prediction after adaptation: **{NAMES[winner]}** ({after[winner]:.0%})" in text
    assert NAMES[winner] == QUERY_NAME  # and the shipped model gets this new circle right

    draw(app, "query", SHAPES["X"])  # a new query is classified without adapting again
    app.run()
    assert "Prediction after adaptation: **X**" in texts(app, "markdown")
    draw(app, "0_0", SHAPES["X"])  # a changed support set needs a new adaptation
    app.run()
    assert "press **Adapt** again" in texts(app, "info") and "Prediction" not in texts(app, "markdown")


# A scribble of none of the five shapes, which the adapted model still gives one class 99 %.
ZIGZAG = [[(20, 30), (120, 50), (30, 90), (110, 120)], [(60, 20), (40, 130)]]


def test_a_query_of_none_of_the_classes_is_called_maybe_none_of_these():
    app = open_draw_page()
    draw_all_classes(app)  # the query: a new circle
    app.run()
    button(app, "Adapt").click().run()
    assert "Maybe none of these" not in texts(app, "warning")
    assert "looks like your drawings" in texts(app, "caption")
    draw(app, "query", ZIGZAG)
    app.run()
    assert not app.exception
    [warning] = [w.value for w in app.warning if "Maybe none of these" in w.value]
    winner = re.search(r"Prediction after adaptation: \*\*.+\*\* \((\d+%)\)", texts(app, "markdown")).group(1)
    assert f"its {winner} only says which one is least unlike" in warning  # however sure the model is


def test_names_settings_and_drawings_survive_another_page():
    """Streamlit forgets a page's widgets while another page is shown; the Draw page gets them all back."""
    app = open_draw_page()
    draw_all_classes(app)
    steps = next(n for n in app.number_input if n.label == "Inner steps")
    steps.set_value(2).run()
    button(app, "Adapt").click().run()
    assert "2 inner steps on 5 drawings" in texts(app, "markdown")
    [prediction] = [line for line in texts(app, "markdown").splitlines() if "Prediction after adaptation" in line]
    app.switch_page("pages/home.py").run()
    app.switch_page("pages/draw.py").run()
    assert not app.exception and not app.warning, app.warning
    assert [app.text_input(key=f"draw_name_{c}").value for c in range(len(NAMES))] == NAMES
    assert next(n for n in app.number_input if n.label == "Inner steps").value == 2
    assert empty_slots(app) == 0
    assert prediction in texts(app, "markdown").splitlines()


def test_a_class_without_drawing_and_a_blank_canvas_are_named():
    app = open_draw_page()
    draw_all_classes(app, classes=range(3))
    draw(app, "3_0", [], background=(255, 255, 255, 255))  # drawn, then erased: white, no ink
    app.run()
    assert empty_slots(app) == 2
    assert button(app, "Adapt").disabled  # and the page says why, not "Press Adapt"
    assert "Class 4, Class 5 have no drawing yet" in texts(app, "info") and "Press" not in texts(app, "info")


def test_another_number_of_classes_than_the_checkpoints_is_explained():
    app = open_draw_page()
    classes_input(app).set_value(3).run()
    assert not app.exception
    assert "tells exactly 5 classes apart" in texts(app, "error")
    assert button(app, "Adapt").disabled
    assert "Set Classes to 5 to adapt" in texts(app, "info") and "Press" not in texts(app, "info")


def odd_metadata_checkpoint(path: Path) -> bytes:
    metadata = checkpoint_metadata(Config(channels=16, blocks=3), iterations=0) | {"shots": "many"}
    save_checkpoint(path, build_model("conv", 5, 16, 3), metadata)
    return path.read_bytes()


def foreign_safetensors(path: Path) -> bytes:
    save_file({"weight": torch.zeros(3)}, str(path))
    return path.read_bytes()


def checkpoint_with(path: Path, name: str, value: float) -> bytes:
    """The shipped default checkpoint with every number of tensor `name` set to `value`."""
    model, metadata = load_checkpoint(REPO / "checkpoints" / DEFAULT_CHECKPOINT)
    model.state_dict()[name].fill_(value)
    save_checkpoint(path, model, metadata)
    return path.read_bytes()


@pytest.mark.parametrize("content, message", [
    (lambda path: b"\x00\x01 certainly not a checkpoint", "not a readable safetensors file"),
    (foreign_safetensors, "not a fewshot checkpoint"),
    (odd_metadata_checkpoint, "its metadata gives shots as 'many', which is not a whole number"),
    (lambda path: checkpoint_with(path, "classifier.weight", 3e38), "the model's outputs overflow"),
])
def test_a_corrupt_or_foreign_upload_shows_an_error(tmp_path, content, message):
    content = content(tmp_path / "upload.safetensors")
    app = open_draw_page()
    app.selectbox(key="draw_checkpoint").set_value("upload").run()
    app.get("file_uploader")[0].upload("model.safetensors", content).run()
    assert not app.exception
    assert message in texts(app, "error") and "model.safetensors" in texts(app, "error")


def wide_checkpoint(path: Path) -> None:
    """A valid checkpoint, but of 30 ways: more classes than the page takes."""
    config = Config(channels=16, blocks=3, ways=30)
    save_checkpoint(path, build_model("conv", 30, 16, 3), checkpoint_metadata(config, iterations=0))


def overflowing_checkpoint(path: Path) -> None:
    """An inner learning rate of 10**400 written as a JSON integer: float() of it overflows."""
    metadata = checkpoint_metadata(Config(channels=16, blocks=3), iterations=0) | {"inner_lr": 10**400}
    save_checkpoint(path, build_model("conv", 5, 16, 3), metadata)


@pytest.mark.parametrize("write, message", [
    (wide_checkpoint, "its classifier tells 30 classes apart, more than the 20 the Draw page takes"),
    (overflowing_checkpoint, "its metadata gives inner_lr as 1000"),
])
def test_a_checkpoint_the_page_cannot_use_shows_an_error(folders, write, message):
    path = folders / "checkpoints" / "crafted.safetensors"
    write(path)
    app = open_draw_page()
    app.selectbox(key="draw_checkpoint").set_value(str(path)).run()
    assert not app.exception
    assert f"Cannot use this checkpoint: crafted.safetensors: {message}" in texts(app, "error")


def test_a_run_checkpoint_larger_than_the_train_form_allows_is_one_line_and_the_others_stay_usable(folders):
    """A command-line run may train more channels than the form allows (limits.py): adapting its model would
    make every session wait, as an upload of it would. Uploads and files on disk meet one check."""
    channels = limits.maximum("channels") + 1
    path = folders / "runs" / "cli-run" / "checkpoint.safetensors"
    path.parent.mkdir(parents=True)
    save_checkpoint(path, build_model("conv", 5, channels, 2),
                    checkpoint_metadata(Config(channels=channels, blocks=2), iterations=1))
    app = open_draw_page()
    menu = app.selectbox(key="draw_checkpoint")
    assert "Run: cli-run" in menu.options  # listed still
    menu.set_value(str(path)).run()
    assert not app.exception
    assert texts(app, "error") == (f"Cannot use this checkpoint: checkpoint.safetensors: its model is larger than "
                                   f"this server adapts: channels {channels} (at most {channels - 1}).")
    app.selectbox(key="draw_checkpoint").set_value(str(folders / "checkpoints" / DEFAULT_CHECKPOINT)).run()
    draw_all_classes(app)
    app.run()
    button(app, "Adapt").click().run()
    assert not app.exception and not app.error and f"**{QUERY_NAME}**" in texts(app, "markdown")


def test_an_uploaded_checkpoint_is_used(folders):
    app = open_draw_page()
    app.selectbox(key="draw_checkpoint").set_value("upload").run()
    upload = (folders / "checkpoints" / DEFAULT_CHECKPOINT).read_bytes()
    app.get("file_uploader")[0].upload("mine.safetensors", upload).run()
    assert not app.exception and not app.error
    assert "meta-trained for 9,499 iterations of 5-way 1-shot tasks" in texts(app, "caption")  # not known as shipped


def test_without_any_checkpoint_the_page_says_where_to_get_one(folders):
    (folders / "checkpoints" / DEFAULT_CHECKPOINT).unlink()
    app = open_draw_page()
    assert app.selectbox(key="draw_checkpoint").options == ["Upload a checkpoint ..."]
    assert "No checkpoint in checkpoints/ or runs/ yet" in texts(app, "info")


def test_the_page_works_without_omniglot(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_DATA", str(tmp_path / "no-omniglot"))
    app = open_draw_page()
    assert button(app, "Fill from Omniglot").disabled
    draw_all_classes(app)
    app.run()
    button(app, "Adapt").click().run()
    assert not app.exception and f"**{QUERY_NAME}**" in texts(app, "markdown")


def test_omniglot_that_cannot_be_cached_fills_all_the_same(tmp_path, monkeypatch):
    """A first load preprocesses the drawings and writes them to a cache: a full disk or a read-only home (here a
    cache folder under a file) made Fill from Omniglot a traceback, then an error at every press."""
    small = {"images_background": {"Alpha": 2}, "images_evaluation": {"Beta": 3, "Gamma": 3}}  # 5 unseen and more
    monkeypatch.setattr("fewshot.omniglot.ALPHABETS", small)
    write_fake_omniglot(tmp_path / "data", small)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("FEWSHOT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "a-file" / "cache"))
    app = open_draw_page()
    button(app, "Fill from Omniglot").click().run()
    assert not app.exception and not app.error and empty_slots(app) == 0


def drawn_characters(omniglot, ink) -> list:
    """The characters of which `ink` is one of the drawings."""
    return omniglot.ink.eq(torch.as_tensor(ink)).all(-1).all(-1).any(-1).nonzero()[:, 0].tolist()


def test_fill_from_omniglot_draws_characters_the_checkpoint_never_saw_then_adapts(omniglot, data_root, monkeypatch,
                                                                                  folders):
    monkeypatch.setenv("FEWSHOT_DATA", data_root)
    app = open_draw_page()
    button(app, "Fill from Omniglot").click().run()
    assert not app.exception and not app.error
    names = [app.text_input(key=f"draw_name_{c}").value for c in range(5)]
    assert len(set(names)) == 5 and all(re.fullmatch(r".+ #\d\d", name) for name in names)
    assert empty_slots(app) == 0
    split = load_checkpoint(folders / "checkpoints" / DEFAULT_CHECKPOINT)[1]["split"]
    unseen = set(split_characters(omniglot, split)["test"])
    filled = app.session_state["draw_filled"]
    classes = [drawn_characters(omniglot, filled[(c, 0)]) for c in range(5)]
    assert all(len(characters) == 1 and characters[0] in unseen for characters in classes), classes
    assert drawn_characters(omniglot, filled["query"]) in classes  # a new drawing of one of them
    button(app, "Adapt").click().run()
    assert not app.exception and not app.error
    assert "Prediction after adaptation" in texts(app, "markdown")
    assert "The Omniglot query is a drawing of" in texts(app, "caption")
    button(app, "Clear all").click().run()
    assert empty_slots(app) == 6


@pytest.mark.parametrize("url", [
    "data:image/png,no-base64",  # no ";base64,"
    "data:image/png;base64," + base64.b64encode(b"no png at all").decode(),
    data_url(np.zeros((140, 140, 2), np.uint8)),  # grey and alpha, not RGBA
    data_url(canvas_image([[(500, 500), (3500, 3500)]], size=2000, width=400)),  # 4 million pixels
], ids=["not-base64", "not-a-png", "grey-and-alpha", "huge"])
def test_a_tampered_canvas_message_leaves_the_slot_empty_not_a_traceback(url):
    """A browser's devtools can send any canvas data: each of these once raised, or took gigabytes to decode."""
    app = open_draw_page()
    canvas_message(app, "0_0", url)
    app.run()
    assert not app.exception, app.exception
    assert empty_slots(app) == 6


def test_classes_drawn_alike_are_called_alike_not_infinitely_unlike():
    """A dot in each class: once cropped and centred, the same drawing, so the classes' spread is 0."""
    app = open_draw_page()
    for c in range(len(NAMES)):
        draw(app, f"{c}_0", [[(30 + 10 * c, 40), (30 + 10 * c, 40)]])
    draw(app, "query", QUERY)
    app.run()
    button(app, "Adapt").click().run()
    assert not app.exception, app.exception
    assert "Your classes look alike" in texts(app, "warning") and "inf" not in texts(app, "warning")


def test_a_filled_query_of_a_class_no_longer_shown_has_no_verdict(omniglot, data_root, monkeypatch):
    """Fill with 20 classes, then Classes back to the checkpoint's 5: a query of class 19 is of none of them."""
    monkeypatch.setenv("FEWSHOT_DATA", data_root)
    app = open_draw_page()
    classes_input(app).set_value(20).run()
    button(app, "Fill from Omniglot").click().run()
    app.session_state["draw_query_answer"] = 19
    classes_input(app).set_value(5).run()
    button(app, "Adapt").click().run()
    assert not app.exception, app.exception
    assert "Prediction after adaptation" in texts(app, "markdown")
    assert "The Omniglot query is a drawing of" not in texts(app, "caption")


def test_clear_all_empties_the_classes_hidden_by_fewer_classes_too():
    app = open_draw_page()
    draw_all_classes(app)
    app.run()
    classes_input(app).set_value(3).run()
    button(app, "Clear all").click().run()
    classes_input(app).set_value(5).run()
    assert not app.exception, app.exception
    assert empty_slots(app) == 6
    assert all(app.text_input(key=f"draw_name_{c}").value == "" for c in range(5))


def reopened_draw_page(desk: str) -> AppTest:
    """The Draw page in a new session whose URL names `desk`: the page reloaded, or the browser reconnected to a
    restarted server."""
    app = AppTest.from_file(APP, default_timeout=120)
    app.query_params["desk"] = desk
    app.run().switch_page("pages/draw.py").run()
    assert not app.exception, app.exception
    return app


def initial_drawings(app: AppTest) -> dict:
    """Canvas key -> the strokes its canvas is drawn with as it appears (None for an empty canvas)."""
    canvases = [json.loads(element.proto.json) | {"key": element.proto.id.rsplit("-", 1)[-1]}
                for element in app.get("bidi_component")]
    return {canvas["key"]: canvas["initialDrawing"] for canvas in canvases}


def shots_input(app: AppTest):
    return next(number for number in app.number_input if number.label.startswith("Drawings per class"))


def test_drawings_names_and_settings_survive_a_reload_or_a_restarted_server():
    app = open_draw_page()
    desk = app.query_params["desk"]
    assert desks.is_desk(desk)  # put in the URL at once
    shots_input(app).set_value(2).run()
    draw_all_classes(app)
    strokes = {"version": "4.4.0", "objects": [{"type": "path", "path": [["M", 30, 40], ["L", 90, 100]]}]}
    canvas_message(app, "4_1", data_url(canvas_image([[(30, 40), (90, 100)]])), strokes)
    app.run()
    assert not app.exception and empty_slots(app) == 4  # 5 classes of 2 and the query: 7 drawn
    drawn = app.session_state["draw_kept"]

    again = reopened_draw_page(desk)
    assert again.query_params["desk"] == desk and not again.toast
    assert [again.text_input(key=f"draw_name_{c}").value for c in range(len(NAMES))] == NAMES
    assert shots_input(again).value == 2
    assert empty_slots(again) == 4 and "Press **Adapt**" in texts(again, "info")  # every class has a drawing
    restored = again.session_state["draw_kept"]
    assert restored.keys() == drawn.keys()
    assert all(np.array_equal(restored[slot][1], drawn[slot][1]) for slot in drawn)  # what the model sees
    assert initial_drawings(again)["draw_canvas_4_1_0"]["objects"] == strokes["objects"]  # redrawn in the browser

    button(again, "Clear all").click().run()  # and what is cleared stays cleared
    cleared = reopened_draw_page(desk)
    assert empty_slots(cleared) == 11 and all(cleared.text_input(key=f"draw_name_{c}").value == "" for c in range(5))


@pytest.mark.parametrize("forged", ["../x", "a" * 10_000], ids=["path", "10-KB"])
def test_a_forged_desk_in_the_url_is_ignored(folders, forged):
    app = reopened_draw_page(forged)
    assert not app.toast and not app.error and empty_slots(app) == 6
    desk = app.query_params["desk"]
    assert desks.is_desk(desk) and desk != forged  # a new desk instead
    draw(app, "0_0", SHAPES["X"])
    app.run()
    store = desks.Desks(folders / "runs" / desks.DB_FILE)
    assert store.load(desk) is not None and store.load(forged) is None


def test_a_damaged_desks_file_leaves_the_page_working_and_says_so_once(folders, monkeypatch):
    path = folders / "desks.sqlite3"
    path.write_bytes(b"certainly not a database " * 100)
    monkeypatch.setenv("FEWSHOT_DESKS", str(path))
    app = open_draw_page()
    [toast] = app.toast
    assert toast.value.startswith("A reload of this page would lose your drawings") and str(path) in toast.value
    draw_all_classes(app)
    app.run()
    assert not app.exception and not app.toast  # said once
    button(app, "Adapt").click().run()
    assert not app.exception and f"**{QUERY_NAME}**" in texts(app, "markdown")


def test_drawings_beyond_a_desks_bound_are_said_once_and_the_last_save_stays(monkeypatch):
    monkeypatch.setattr(desks, "MAX_DESK_BYTES", 4_000)  # one drawing (1 KB of ink), not six
    app = open_draw_page()
    draw(app, "0_0", SHAPES["X"])
    app.run()
    assert not app.toast
    draw_all_classes(app)
    app.run()
    [toast] = app.toast
    assert toast.value.startswith("A reload of this page would lose your latest drawings") and "4 KB" in toast.value
    draw(app, "query", SHAPES["circle"])
    app.run()
    assert not app.exception and not app.toast  # said once
    again = reopened_draw_page(app.query_params["desk"])
    assert empty_slots(again) == 5 and again.session_state["draw_kept"].keys() == {(0, 0)}


def test_a_desk_edited_on_disk_gives_back_only_values_of_the_right_type_and_bounds(folders):
    """A desk file is on the server's disk: a name of 1,000 characters, a class of 2.5 or a fill count of 10**30
    must not reach the page (a traceback at Fill from Omniglot, a float index of the names)."""
    desk = desks.new_desk()
    values = {"draw_name_0": "x" * 1000, "draw_name_1": "kept", "draw_name_2": 7, "draw_fills": 10**30,
              "draw_query_answer": 2.5, "draw_unknown": "no"}
    desks.Desks(folders / "runs" / desks.DB_FILE).save(desk, desks.pack({}, {}, values))
    app = reopened_draw_page(desk)
    assert not app.exception and not app.toast
    assert [app.text_input(key=f"draw_name_{c}").value for c in range(3)] == ["", "kept", ""]
    assert app.session_state["draw_fills"] == 0 and "draw_query_answer" not in app.session_state
    assert "draw_unknown" not in app.session_state
