"""The Draw page with Streamlit's AppTest: drawings are injected through the canvases' widget state (AppTest
cannot draw; tests/test_browser_draw.py draws with the mouse)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

from canvas_drawings import QUERY, QUERY_NAME, SHAPES, canvas_image, data_url
from fewshot.checkpoints import checkpoint_metadata, save_checkpoint
from fewshot.config import Config
from fewshot.models import build_model

APP = str(Path(__file__).resolve().parents[1] / "app.py")
NAMES = list(SHAPES)


@pytest.fixture(autouse=True)
def folders(tmp_path, monkeypatch):
    """Kept checkpoints and runs in temporary folders, with one small checkpoint: 5-way, 1 shot, 5 inner steps."""
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FEWSHOT_CHECKPOINTS", str(tmp_path / "checkpoints"))
    (tmp_path / "checkpoints").mkdir()
    torch.manual_seed(0)
    config = Config(algorithm="fomaml", channels=16, blocks=3, ways=5, shots=1, inner_lr=0.4, test_inner_steps=5)
    save_checkpoint(tmp_path / "checkpoints" / "small.safetensors", build_model("conv", 5, 16, 3),
                    checkpoint_metadata(config, iterations=0))
    return tmp_path


def open_draw_page() -> AppTest:
    app = AppTest.from_file(APP, default_timeout=120).run()
    app.switch_page("pages/draw.py").run()
    assert not app.exception, app.exception
    return app


def draw(app: AppTest, slot: str, strokes: list, **options) -> None:
    """Puts a drawing in a canvas, as the browser sends it: `slot` is "<class>_<drawing>" or "query"."""
    app.session_state[f"draw_canvas_{slot}_0"] = {"drawing": {"raw": {"objects": []},
                                                              "data": data_url(canvas_image(strokes, **options))}}


def draw_all_classes(app: AppTest, classes=range(len(NAMES))) -> None:
    for c in classes:
        app.text_input(key=f"draw_name_{c}").set_value(NAMES[c])
        draw(app, f"{c}_0", SHAPES[NAMES[c]])
    draw(app, "query", QUERY)


def button(app: AppTest, label: str):
    return next(b for b in app.button if b.label == label)


def texts(app: AppTest, kind: str) -> str:
    return "\n".join(element.value for element in app.get(kind))


def empty_slots(app: AppTest) -> int:
    """Canvases with nothing the model could see: a slot with a drawing shows its 28x28 image instead."""
    return sum(caption.value == "empty" for caption in app.caption)


def test_draw_adapt_and_classify_end_to_end():
    app = open_draw_page()
    assert app.selectbox(key="draw_checkpoint").options[0].endswith("small.safetensors")
    assert "meta-trained on 5-way 1-shot tasks" in texts(app, "caption")
    draw_all_classes(app)
    app.run()
    assert not app.exception and not app.error
    assert empty_slots(app) == 0  # a 28x28 image beside each of the five drawings and the query
    assert "Press **Adapt**" in texts(app, "info")

    button(app, "Adapt").click().run()
    assert not app.exception and not app.error, app.error
    text = texts(app, "markdown")
    assert "5 inner steps on 5 drawings" in text and "Support accuracy 20% → **100%**" in text
    assert f"Prediction after adaptation: **{QUERY_NAME}**" in text
    assert len(app.get("plotly_chart")) == 2  # the inner loop's curves, and the query's probabilities

    draw(app, "query", SHAPES["X"])  # a new query is classified without adapting again
    app.run()
    assert "Prediction after adaptation: **X**" in texts(app, "markdown")
    draw(app, "0_0", SHAPES["X"])  # a changed support set needs a new adaptation
    app.run()
    assert "press **Adapt** again" in texts(app, "info") and "Prediction" not in texts(app, "markdown")


def test_names_settings_and_drawings_survive_another_page():
    """Streamlit forgets a page's widgets while another page is shown; the Draw page gets them all back."""
    app = open_draw_page()
    draw_all_classes(app)
    steps = next(n for n in app.number_input if n.label == "Inner steps")
    steps.set_value(2).run()
    button(app, "Adapt").click().run()
    assert "2 inner steps on 5 drawings" in texts(app, "markdown")
    app.switch_page("pages/home.py").run()
    app.switch_page("pages/draw.py").run()
    assert not app.exception and not app.warning, app.warning
    assert [app.text_input(key=f"draw_name_{c}").value for c in range(len(NAMES))] == NAMES
    assert next(n for n in app.number_input if n.label == "Inner steps").value == 2
    assert empty_slots(app) == 0
    assert f"Prediction after adaptation: **{QUERY_NAME}**" in texts(app, "markdown")


def test_a_class_without_drawing_and_a_blank_canvas_are_named():
    app = open_draw_page()
    draw_all_classes(app, classes=range(3))
    draw(app, "3_0", [], background=(255, 255, 255, 255))  # drawn, then erased: white, no ink
    app.run()
    assert empty_slots(app) == 2
    button(app, "Adapt").click().run()
    assert not app.exception
    assert "Class 4, Class 5 have no drawing yet" in texts(app, "error")


def test_another_number_of_classes_than_the_checkpoints_is_explained():
    app = open_draw_page()
    next(n for n in app.number_input if n.label.startswith("Classes")).set_value(3).run()
    assert not app.exception
    assert "tells exactly 5 classes apart" in texts(app, "error")
    assert button(app, "Adapt").disabled


def odd_metadata_checkpoint(path: Path) -> bytes:
    metadata = checkpoint_metadata(Config(channels=16, blocks=3), iterations=0) | {"shots": "many"}
    save_checkpoint(path, build_model("conv", 5, 16, 3), metadata)
    return path.read_bytes()


def foreign_safetensors(path: Path) -> bytes:
    save_file({"weight": torch.zeros(3)}, str(path))
    return path.read_bytes()


@pytest.mark.parametrize("content, message", [
    (lambda path: b"\x00\x01 certainly not a checkpoint", "not a readable safetensors file"),
    (foreign_safetensors, "not a fewshot checkpoint"),
    (odd_metadata_checkpoint, "its metadata gives shots as 'many', which is not a whole number"),
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


def test_an_uploaded_checkpoint_is_used(folders):
    app = open_draw_page()
    app.selectbox(key="draw_checkpoint").set_value("upload").run()
    upload = (folders / "checkpoints" / "small.safetensors").read_bytes()
    app.get("file_uploader")[0].upload("small.safetensors", upload).run()
    assert not app.exception and not app.error
    assert "meta-trained on 5-way 1-shot tasks" in texts(app, "caption")


def test_without_any_checkpoint_the_page_says_where_to_get_one(folders):
    (folders / "checkpoints" / "small.safetensors").unlink()
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


def test_fill_from_omniglot_then_adapt(data_root, monkeypatch):
    monkeypatch.setenv("FEWSHOT_DATA", data_root)
    app = open_draw_page()
    button(app, "Fill from Omniglot").click().run()
    assert not app.exception and not app.error
    names = [app.text_input(key=f"draw_name_{c}").value for c in range(5)]
    assert len(set(names)) == 5 and all(" / character" in name for name in names)
    assert empty_slots(app) == 0
    button(app, "Adapt").click().run()
    assert not app.exception and not app.error
    assert "Prediction after adaptation" in texts(app, "markdown")
    assert "The Omniglot query is a drawing of" in texts(app, "caption")
    button(app, "Clear all").click().run()
    assert empty_slots(app) == 6
