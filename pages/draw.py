"""Draw: invent a few characters, draw one to five examples of each, adapt the meta-learned model to them in a
few gradient steps, and let it recognise a new drawing.

Each canvas' drawing lives in the canvas widget's state, under the key canvas_key(slot); a slot is a
(class, drawing) pair or "query". Clearing a slot gives its canvas a new key, so a new, empty canvas.
A canvas hidden by fewer classes or drawings per class, or by another page, comes back empty in the browser:
each slot's last strokes are kept in draw_kept, and a canvas that the last run did not show is redrawn with
them. The settings and class names survive both too: their widgets persist for the session.
A reload of the page, or a restart of the server, starts a new session: the session's desk (fewshot/desks.py),
named in the URL, gives it back the drawings, names and settings, saved whenever they change.
"""

import hashlib
import io
import json
import re
import time
from pathlib import Path

import numpy as np
import streamlit as st
import torch
from PIL import Image
from streamlit_drawable_canvas import st_canvas  # imported here only: it needs a running Streamlit

from fewshot import desks, runs
from fewshot.adaptation import (UNFAMILIAR, adapt_and_classify, adaptation_settings, checkpoint_label, classify,
                                describe_checkpoint, find_checkpoints, idle_threads, load_adaptable,
                                load_uploaded_checkpoint, novelty, omniglot_examples, upload_name, ways_of)
from fewshot.adaptation_plots import adaptation_curves, probability_bars
from fewshot.checkpoints import CheckpointError
from fewshot.config import Config
from fewshot.drawing import BlankDrawing, drawing_to_ink
from fewshot.maml import last_step
from fewshot.omniglot import MAX_DRAWING_PIXELS, DatasetNotFound, split_characters
from fewshot.plots import ink_picture
import app_ui as ui

CANVAS_SIZE, STROKE_WIDTH, PREVIEW_SIZE = 140, 8, 56
TOOLBAR_WIDTH = 40  # the canvas' undo, redo and reset buttons, beside it (CANVAS_STYLE)
SLOT_WIDTH = CANVAS_SIZE + TOOLBAR_WIDTH + PREVIEW_SIZE + 8  # a drawing, its toolbar and what the model sees
GAP = 16  # pixels between a class' slots: Streamlit's "small" gap, 1rem
MAX_WAYS, MAX_SHOTS, MAX_STEPS = 20, 5, 50
MAX_NAME = 60  # characters in a class name
MAX_STROKES_BYTES = 100_000  # a canvas' strokes (fabric.js' JSON) kept to redraw it; a drawing's take 4 to 20 KB
CHART_WIDTH = 440  # two charts side by side on a wide screen, one above the other on a projector
STILL = {"displayModeBar": False}  # no zoom buttons over the charts' titles
UPLOAD = "upload"
QUERY = desks.QUERY
# The session state a desk keeps besides the drawings: the class names, the settings of each checkpoint, the
# Omniglot fills' count and the filled query's class. (Not the last adaptation: a restarted server's reloading
# room would all adapt at once; Adapt does it again.)
DESK_VALUES = re.compile(r"draw_(name_\d+|(ways|shots|lr|steps)_[\w-]+|fills|query_answer)")
MAX_SEED = 2**31  # Fill from Omniglot's presses: the next fill's seed
# The canvas' toolbar shows on hover above its top right corner, over what is above: the heading, a name, the
# canvas above. Before it shows, it lies unseen over the canvas' top 30 px and takes the strokes that start
# there. The canvas keeps its styles in a shadow root, out of the page's CSS: this script adds a rule to each
# canvas' shadow root that sets the toolbar upright to the canvas' right, in a space the page leaves for it.
CANVAS_STYLE = """<script>
if (!window.fewshotCanvasStyle) {
  window.fewshotCanvasStyle = true;
  const rule = `.dc-toolbar { top: 0 !important; left: 100% !important; right: auto !important;
                              padding: 0 0 0 .25rem !important; }
                .dc-toolbar-card, .dc-toolbar-contextual { flex-direction: column !important; }`;
  const style = root => {
    if (root.querySelector("style[data-fewshot]")) return;
    const element = document.createElement("style");
    element.dataset.fewshot = "";
    element.textContent = rule;
    root.appendChild(element);
  };
  let again = false;  // whether a look at the next frame is due
  const watch = () => document.querySelectorAll('[data-testid="stBidiComponentIsolated"]').forEach(host => {
    if (!host.shadowRoot) {  // attached a moment after the host: look again at the next frame, once
      if (!again) requestAnimationFrame(() => { again = false; watch(); });
      again = true;
      return;
    }
    if (host.fewshotWatched) return;
    host.fewshotWatched = true;
    style(host.shadowRoot);
    new MutationObserver(() => style(host.shadowRoot)).observe(host.shadowRoot, {childList: true});
  });
  new MutationObserver(watch).observe(document.body, {childList: true, subtree: true});
  watch();
}
</script>"""

state = st.session_state
state.setdefault("draw_versions", {})  # slot -> how many times it was cleared, part of its canvas' key
state.setdefault("draw_filled", {})  # slot -> 28x28 ink of an Omniglot drawing shown instead of a canvas
state.setdefault("draw_fills", 0)  # "Fill from Omniglot" presses so far: the seed of the next fill
state.setdefault("draw_kept", {})  # slot -> (strokes, 28x28 ink) of its canvas' last drawing
state.setdefault("draw_restored", {})  # slot -> the kept drawing its canvas was last redrawn with
state.setdefault("draw_shown", set())  # the slots whose canvases the last run showed
shown_now = set()  # ... and this run
if state.get("page_before", "Draw") != "Draw":  # back from another page (app.py): the browser shows every canvas
    state.draw_shown = set()  # blank, so every one is redrawn with its kept strokes


def open_desk(desk: str) -> None:
    """At a session's first visit (a first visit, a reload, a restarted server): the drawings, names and settings
    of the tab's desk (ui.tab_desk) put back, before any canvas is drawn."""
    try:
        state.desk_store = desks.Desks(desks.db_path())
        saved = state.desk_store.load(desk)
        if saved:
            state.draw_kept, state.draw_filled, values = desks.unpack(saved)
            state.update({key: value for key, value in values.items() if restorable(key, value)})
            state.desk_saved = hashlib.sha1(saved.encode()).hexdigest()
    except desks.DeskError as error:
        stop_keeping(error)


def restorable(key: str, value) -> bool:
    """Whether a desk's value may go back into the session state: one the page keeps (DESK_VALUES), of the type
    and within the bounds of the widget or counter it goes to. A desk file is on the server's disk, edited or
    damaged maybe: a name of any length, or a class of 2.5, would reach the page. (Settings out of range are
    brought within it by `setting`.)"""
    if not DESK_VALUES.fullmatch(key) or isinstance(value, bool):
        return False
    if key.startswith("draw_name_"):
        return isinstance(value, str) and len(value) <= MAX_NAME
    if key == "draw_fills":
        return type(value) is int and 0 <= value < MAX_SEED
    if key == "draw_query_answer":
        return type(value) is int and 0 <= value < MAX_WAYS
    return type(value) in (float, int) if key.startswith("draw_lr_") else type(value) is int


def keep_desk() -> None:
    """Saves the drawings, names and settings to the session's desk, if they changed since its last save."""
    if state.desk_store is None or ("desk_saved" not in state and not anything_drawn()):  # no room taken for nothing
        return
    values = {key: state[key] for key in state if DESK_VALUES.fullmatch(key)}
    contents = desks.pack(state.draw_kept, state.draw_filled, values)
    digest = hashlib.sha1(contents.encode()).hexdigest()
    if digest == state.get("desk_saved"):
        return
    try:
        state.desk_store.save(state.desk, contents)
        state.desk_saved = digest
    except desks.DeskTooLarge as error:  # the desk keeps its last save; a smaller one may come
        say_once(f"A reload of this page would lose your latest drawings: {error}.")
    except desks.DeskError as error:
        stop_keeping(error)


def anything_drawn() -> bool:
    return (any(ink is not None for _, ink in state.draw_kept.values()) or bool(state.draw_filled)
            or any(state.get(f"draw_name_{c}") for c in range(MAX_WAYS)))


def stop_keeping(error: desks.DeskError) -> None:
    """The page goes on without its desk for the rest of the session."""
    state.desk_store = None
    say_once(f"A reload of this page would lose your drawings: {error}.")


def say_once(message: str) -> None:
    if not state.get("desk_said"):
        st.toast(message, icon=":material/warning:", duration="long")
        state.desk_said = True


desk = ui.tab_desk()
if "desk_store" not in state:
    open_desk(desk)


def canvas_key(slot) -> str:
    return f"draw_canvas_{desks.slot_name(slot)}_{state.draw_versions.get(slot, 0)}"


@st.cache_resource(show_spinner="Loading the checkpoint ...", max_entries=8)
def checkpoint_from_file(path: str, modified: float):
    return warmed_up(Path(path).name, *load_adaptable(Path(path)))


@st.cache_resource(show_spinner="Loading the checkpoint ...", max_entries=4)
def checkpoint_from_upload(name: str, data: bytes):
    return warmed_up(upload_name(name), *load_uploaded_checkpoint(name, data))


def warmed_up(name: str, model, metadata):
    """torch.func's first call in a process takes seconds: make it now rather than at the first Adapt. It
    adapts on one drawing per class: CheckpointError for more classes than the page can show."""
    ways = ways_of(model)
    if ways > MAX_WAYS:
        raise CheckpointError(f"{name}: its classifier tells {ways} classes apart, more than the {MAX_WAYS} the "
                              f"Draw page takes; choose a checkpoint meta-trained on at most {MAX_WAYS}-way tasks.")
    try:
        adapt_and_classify(model, torch.zeros(ways, 1, 28, 28), torch.arange(ways), inner_lr=0.0, steps=1)
    except ValueError as error:  # outputs that overflow even on blank drawings
        raise CheckpointError(f"{name}: {error}") from None
    return model, metadata


@st.cache_resource(show_spinner=False, max_entries=1024)
def model_input(png: bytes) -> np.ndarray | None:
    """The 28x28 ink image the model sees for a canvas' PNG; None for a blank canvas, and for what no canvas sends
    (a tampered browser's bytes that are no PNG, or a PNG that would take gigabytes to decode)."""
    try:
        image = Image.open(io.BytesIO(png))  # reads the header only
        if image.width * image.height > MAX_DRAWING_PIXELS:  # a canvas sends a CANVAS_SIZE-square PNG
            return None
        return drawing_to_ink(np.asarray(image.convert("RGBA"))).numpy()
    except (BlankDrawing, OSError, ValueError, Image.DecompressionBombError):  # PIL's errors are OSError's
        return None


@st.cache_resource(show_spinner=False, max_entries=32)  # a class' sessions' latest; one evicted is made again
def adapted(fingerprint: str, _model, _support_x, _support_y, _inner_lr, steps: int):
    """The adaptation to the drawings that `fingerprint` names, and its milliseconds: made once, after Adapt; each
    new query is then classified with it (adaptation.classify)."""
    tick = time.perf_counter()
    with idle_threads():
        adaptation = adapt_and_classify(_model, _support_x, _support_y, _inner_lr, steps)
    return adaptation, 1000 * (time.perf_counter() - tick)


@st.cache_resource(show_spinner=False, max_entries=256)
def curves_figure(support_loss: tuple, support_accuracy: tuple):
    """The inner loop's curves, drawn once per adaptation: a new query's rerun draws only its probabilities."""
    return adaptation_curves(list(support_loss), list(support_accuracy))


def picture(ink: np.ndarray, size: int) -> np.ndarray:
    """Ink as black on white, enlarged without blurring to about `size` pixels."""
    return ink_picture(ink, max(1, size // ink.shape[0]))


def choose_checkpoint():
    """(model, metadata, its adaptation settings, an id, its file name) of the checkpoint chosen, or None after saying why
    there is none; CheckpointError for a file that is no usable checkpoint."""
    found = find_checkpoints(runs.checkpoints_dir(), runs.runs_root())
    labels = {str(path): checkpoint_label(path, runs.checkpoints_dir()) for path in found}
    labels[UPLOAD] = "Upload a checkpoint ..."
    choice = st.selectbox("Checkpoint", list(labels), format_func=labels.get, key="draw_checkpoint",
                          persist_state="session",
                          help="Shipped: the models that come with the app (checkpoints/README.md). Kept: those "
                               "kept from the Train page (checkpoints/). Run: the newest runs' (runs/).")
    if choice == UPLOAD:
        upload = st.file_uploader("A fewshot checkpoint (.safetensors)", type=["safetensors"], key="draw_upload")
        if upload is None:
            st.info("Upload a checkpoint saved by this app or by `python -m fewshot train`." if found else
                    "No checkpoint in checkpoints/ or runs/ yet: train one on the Train page, or upload one.")
            return None
        data = upload.getvalue()
        model, metadata = checkpoint_from_upload(upload.name, data)
        model_id = "upload-" + hashlib.sha1(data).hexdigest()[:12]
    else:
        try:
            modified = Path(choice).stat().st_mtime
        except OSError:
            raise CheckpointError(f"{labels[choice]} is gone; choose another checkpoint.") from None
        model, metadata = checkpoint_from_file(choice, modified)
        model_id = hashlib.sha1(f"{choice}:{modified}".encode()).hexdigest()[:12]
    name = upload_name(upload.name) if choice == UPLOAD else Path(choice).name
    return model, metadata, adaptation_settings(metadata), model_id, name


def settings(defaults: dict, model_id: str) -> tuple:
    """Classes, drawings per class, inner learning rate and steps: the checkpoint's, unless overridden."""
    with st.container(horizontal=True):  # side by side, as many as the width allows
        ways = setting("Classes (N ways)", 2, MAX_WAYS, defaults["ways"], f"draw_ways_{model_id}")
        shots = setting("Drawings per class (K shots)", 1, MAX_SHOTS, defaults["shots"], f"draw_shots_{model_id}")
        if isinstance(defaults["inner_lr"], dict):  # MAML++'s learned rates, one per layer and inner step
            inner_lr = defaults["inner_lr"]
        else:
            inner_lr = float(setting("Inner learning rate α", 0.0, 10.0, float(defaults["inner_lr"]),
                                     f"draw_lr_{model_id}", step=0.05, format="%g"))
        steps = setting("Inner steps", 0, MAX_STEPS, defaults["steps"], f"draw_steps_{model_id}",
                        help="Gradient steps on your drawings. The checkpoint's test-time setting by default.")
    return int(ways), int(shots), inner_lr, int(steps)


def setting(label: str, low, high, default, key: str, **options):
    """A setting's number input, persisted for the session: the checkpoint's default, or the desk's (open_desk),
    brought within bounds (a desk saved by a version of the page with other bounds)."""
    if key not in state or not low <= state[key] <= high:  # not value=: Streamlit warns of a widget given both
        state[key] = min(max(state.get(key, default), low), high)
    return st.number_input(label, low, high, key=key, persist_state="session", width=200, **options)


def clear(slots: list, names: int = 0) -> None:
    """Empties the slots, and the first `names` class names."""
    for c in range(names):
        state[f"draw_name_{c}"] = ""
    for slot in slots:
        state.draw_versions[slot] = state.draw_versions.get(slot, 0) + 1
        for drawings in (state.draw_filled, state.draw_kept, state.draw_restored):
            drawings.pop(slot, None)
    if QUERY in slots:
        state.pop("draw_query_answer", None)


def fill_from_omniglot(metadata: dict, ways: int, shots: int) -> None:
    """Fills every slot with Omniglot drawings of characters the checkpoint never saw (its test split)."""
    data = ui.omniglot(Config().data_root)
    characters = split_characters(data, metadata["split"])["test"]
    support, query, answer, names = omniglot_examples(data, characters, ways, shots, seed=state.draw_fills)
    state.draw_fills += 1
    clear([(c, d) for c in range(ways) for d in range(shots)] + [QUERY])
    for c in range(ways):
        state[f"draw_name_{c}"] = names[c]
        for d in range(shots):
            state.draw_filled[(c, d)] = support[c, d].numpy()
    state.draw_filled[QUERY] = query.numpy()
    state.draw_query_answer = answer


def slot(slot_id, clear_button: dict | None = None) -> np.ndarray | None:
    """Shows a slot, a canvas or the Omniglot drawing filling it, with room for the canvas' toolbar and the
    28x28 image the model sees beside it, and under that an eraser button if given (st.button's arguments);
    returns that image, or None while the slot is empty."""
    with st.container(horizontal=True, gap=None, wrap=False, width=SLOT_WIDTH):
        filled = state.draw_filled.get(slot_id)
        with st.container(width=CANVAS_SIZE + TOOLBAR_WIDTH):
            if filled is not None:
                st.image(picture(filled, CANVAS_SIZE), width=CANVAS_SIZE)
                ink = filled
            else:
                ink = canvas(slot_id)
        with st.container(width=PREVIEW_SIZE):
            if ink is None:
                st.caption("empty")
            else:
                st.image(picture(ink, PREVIEW_SIZE), width=PREVIEW_SIZE)
            if clear_button:
                st.button(":material/ink_eraser:", on_click=clear, **clear_button)
    return ink


def canvas(slot_id) -> np.ndarray | None:
    """The slot's canvas; returns the ink it holds. A canvas back from hiding is redrawn with its kept
    strokes (its `initial_drawing` then stays the same until it is hidden again, or the canvas would reload)."""
    if slot_id not in state.draw_shown and slot_id in state.draw_kept:
        state.draw_restored[slot_id] = state.draw_kept[slot_id]
    shown_now.add(slot_id)
    restored_strokes, restored_ink = state.draw_restored.get(slot_id, (None, None))
    try:
        result = st_canvas(stroke_width=STROKE_WIDTH, stroke_color="#000000", background_color="#ffffff",
                           width=CANVAS_SIZE, height=CANVAS_SIZE, return_image_data=True,
                           initial_drawing=restored_strokes, key=canvas_key(slot_id))
        png = result.image_bytes
    except (AttributeError, KeyError, TypeError, ValueError):  # a tampered browser's message, of any JSON: a number
        png = None  # for the drawing or its data URL, a background fit without its fields, no base64 data URL, ...
    if not png:  # nothing drawn since the canvas appeared
        return restored_ink
    ink = model_input(png)
    kept_strokes = state.draw_kept.get(slot_id, (None, None))[0]
    state.draw_kept[slot_id] = (keepable(result.json_data, kept_strokes), ink)
    return ink


def keepable(strokes, kept):
    """A canvas' strokes, if they may be kept to redraw it (draw_kept, and the desk): a JSON object of at most
    MAX_STROKES_BYTES; else None, and a redraw shows the canvas blank beside its ink. A tampered browser may send
    any JSON, up to Streamlit's 25 MB a message, for each of 101 canvases: a string fails the redraw, and every
    rerun packs each kept drawing into the desk. `kept`, the strokes kept last, passes unmeasured: most reruns
    send them again."""
    if strokes == kept:
        return kept
    if not isinstance(strokes, dict):
        return None
    size = 0
    try:
        for chunk in json.JSONEncoder().iterencode(strokes):  # piece by piece: measuring stops at the bound
            size += len(chunk)
            if size > MAX_STROKES_BYTES:
                return None
    except RecursionError:  # objects nested a thousand deep
        return None
    return strokes


def class_cards(ways: int, shots: int) -> tuple:
    """A card per class, side by side as the width allows: its name, its Clear button and its drawings.
    Returns the class names and, for each class, its drawings' ink."""
    names, inks = [], []
    with st.container(horizontal=True, gap="medium"):
        for c in range(ways):
            with st.container(width=shots * SLOT_WIDTH + (shots - 1) * GAP):  # at most the page's width
                name = st.text_input(f"Class {c + 1}", key=f"draw_name_{c}", placeholder=f"Class {c + 1}",
                                     max_chars=MAX_NAME, persist_state="session", label_visibility="collapsed").strip()
                eraser = {"key": f"draw_clear_{c}", "help": f"Clear class {c + 1}'s drawings",
                          "args": ([(c, d) for d in range(shots)],)}
                with st.container(horizontal=True, gap="small"):
                    inked = [slot((c, d), eraser if d == 0 else None) for d in range(shots)]
                drawings = [ink for ink in inked if ink is not None]
            names.append(name or f"Class {c + 1}")
            inks.append(drawings)
    return names, inks


def support_set(inks: list) -> tuple:
    support_x = torch.from_numpy(np.stack([ink for drawings in inks for ink in drawings])).float()[:, None]
    support_y = torch.tensor([c for c, drawings in enumerate(inks) for _ in drawings])
    return support_x, support_y


def fingerprint(*parts) -> str:
    digest = hashlib.sha1()
    for part in parts:
        digest.update(part.numpy().tobytes() if isinstance(part, torch.Tensor) else repr(part).encode())
    return digest.hexdigest()


def show_prediction(adaptation, names: list, unlike: float) -> None:
    """The adapted model's answer for the query, and whether the query looks like any of the classes at all."""
    names = [ui.literal(name) for name in names]  # as typed, in markdown: a class named "*" or "$" stays one
    before, after = adaptation.before[0], adaptation.after[0]
    winner = int(after.argmax())
    st.markdown(f"#### Prediction after adaptation: **{names[winner]}** ({after[winner]:.0%})")
    if not np.isfinite(unlike):  # every class's drawings the same to the model: no spread to measure against
        st.warning("**Your classes look alike.** To the model, every class's drawings are the same drawing (once "
                   "cropped and centred, a shape is the same wherever it is drawn, and at whatever size), so it "
                   "cannot tell them apart: draw each class differently.", icon=":material/help:")
    elif unlike > UNFAMILIAR:
        st.warning(f"**Maybe none of these.** To the adapted model this drawing looks unlike every drawing of "
                   f"your classes: the nearest is {unlike:.2f} times as far from it as your classes are from each "
                   f"other (above {UNFAMILIAR} counts as unlike). The model must pick one of your classes, so its "
                   f"{after[winner]:.0%} only says which one is least unlike.", icon=":material/help:")
    else:
        st.caption(f"The drawing looks like your drawings to the model: the nearest is {unlike:.2f} times as far "
                   f"from it as your classes are from each other (above {UNFAMILIAR} would count as unlike).")
    answer = state.get("draw_query_answer")
    if answer is not None and answer < len(names) and state.draw_filled.get(QUERY) is not None:  # (a filled
        # query of class 9 of 20 has no verdict among 5 classes)
        verdict = "right" if answer == winner else "wrong"
        st.caption(f"The Omniglot query is a drawing of {names[answer]}: the model is {verdict}.")
    st.caption(f"Before adaptation, the meta-learned start θ said {names[int(before.argmax())]} "
               f"({before.max():.0%}): its outputs mean nothing for your classes until it adapts to them.")


def missing_for_adapt(names: list, inks: list, model_ways: int, ways: int) -> str | None:
    """What the page still needs before Adapt can run, in a line; None when nothing."""
    if ways != model_ways:
        return f"Set Classes to {model_ways} to adapt: this checkpoint tells exactly {model_ways} classes apart."
    empty = [ui.literal(name) for name, drawings in zip(names, inks) if not drawings]
    if empty:
        return (f"{', '.join(empty)} {'has' if len(empty) == 1 else 'have'} no drawing yet: draw at least one "
                f"example in every class to adapt.")
    return None


st.title("Draw your own characters")
ui.settings_checked()  # a fresh server serves this page alone, without app.py; an upload reads the limits
st.markdown("""
Invent a few characters and draw examples of each (the **support set**); **Adapt** takes MAML's inner loop, a few
gradient steps on them. Then draw a new example (the **query**): does the adapted model recognise it? Beside each
drawing is what the model sees: cropped, centred, redrawn with Omniglot's stroke width, at 28×28 pixels.
""")
st.html(CANVAS_STYLE, unsafe_allow_javascript=True)

with st.expander("Model and settings", icon=":material/tune:"):
    try:
        chosen = choose_checkpoint()
    except CheckpointError as error:
        chosen = error
    if isinstance(chosen, tuple):
        model, metadata, defaults, model_id, checkpoint_name = chosen
        st.caption(describe_checkpoint(checkpoint_name, metadata))
        ways, shots, inner_lr, steps = settings(defaults, model_id)
if isinstance(chosen, CheckpointError):
    st.error(f"Cannot use this checkpoint: {chosen}", icon=":material/error:")
    st.stop()
if chosen is None:
    st.info("Open **Model and settings** to choose or upload a checkpoint.", icon=":material/info:")
    st.stop()
st.caption(f"{Path(checkpoint_name).stem}: {ways} classes, {shots} drawing{'s' if shots > 1 else ''} per "
           f"class, {steps} inner step{'s' if steps != 1 else ''} " + ("with its learned α per layer and step"
           if isinstance(inner_lr, dict) else f"of size α = {inner_lr:g}") + " (Model and settings).")
mismatch = st.container()  # always there, so that the error does not move, and so remount, the canvases
if ways != ways_of(model):
    mismatch.error(f"This checkpoint tells exactly {ways_of(model)} classes apart: it was meta-trained on "
                   f"{metadata['ways']}-way tasks, and its classifier has {ways_of(model)} outputs. Set Classes "
                   f"to {ways_of(model)}, or choose a checkpoint meta-trained on {ways}-way tasks.",
                   icon=":material/error:")

missing_data = runs.missing_dataset_help(Config().data_root)
with st.container(horizontal=True):
    if st.button("Fill from Omniglot", icon=":material/auto_awesome:", disabled=missing_data is not None,
                 help="Fill every canvas with drawings of characters from alphabets the model never saw."
                 if missing_data is None else "Omniglot is not on this machine; draw your own characters."):
        try:
            fill_from_omniglot(metadata, ways, shots)
        except (DatasetNotFound, OSError, ValueError) as error:  # OSError: a folder that cannot be read
            st.error(f"Could not fill from Omniglot: {error}", icon=":material/error:")
    st.button("Clear all", icon=":material/delete_sweep:", on_click=clear,
              args=([(c, d) for c in range(MAX_WAYS) for d in range(MAX_SHOTS)] + [QUERY], MAX_WAYS))

st.subheader("1. Your classes: the support set")
names, inks = class_cards(ways, shots)

st.subheader("2. Adapt, and classify a new drawing")


@st.fragment
def adapt_and_classify_section(model, model_id: str, names: list, inks: list, inner_lr, steps: int) -> None:
    """The query, Adapt, and the adapted model's answer. A fragment: a stroke on the query, Clear the query and
    Adapt rerun this part only, not the page's other canvases and settings, so a class of sessions on one
    server costs the server a fraction of the work (issue 14's load test)."""
    with st.container(horizontal=True, gap="large"):
        with st.container(width=SLOT_WIDTH):
            st.markdown("**Query**: a new drawing of one of your classes")
            query = slot(QUERY)
            keep_desk()  # here, after every canvas: a stroke on the query reruns this fragment alone
            st.button("Clear the query", key="draw_clear_query", on_click=clear, args=([QUERY],),
                      icon=":material/ink_eraser:")
        result = st.container(width="stretch")
    missing = missing_for_adapt(names, inks, ways_of(model), len(names))
    adapt = result.button("Adapt", type="primary", icon=":material/model_training:", disabled=missing is not None)
    if missing:
        result.info(missing, icon=":material/info:")
        return
    support_x, support_y = support_set(inks)
    current = fingerprint(model_id, support_x, support_y, inner_lr, steps)
    if adapt:
        state.draw_adapted = current
    if state.get("draw_adapted") is None:
        result.info("Press **Adapt** to run the inner loop on your drawings.")
        return
    if state.draw_adapted != current:
        result.info("The drawings or the settings changed since the last adaptation: press **Adapt** again.")
        return
    try:
        adaptation, milliseconds = adapted(current, model, support_x, support_y, inner_lr, steps)
    except ValueError as error:
        result.error(f"Cannot adapt: {error}", icon=":material/error:")
        return
    if query is not None:
        query_x = torch.from_numpy(query).float()[None, None]
        adaptation = classify(model, adaptation, support_x, query_x, steps)
        unlike = float(novelty(model, adaptation.params, support_x, support_y, query_x, step=last_step(steps))[0])
    with result:
        if query is None:
            st.info("Draw a query on the left to classify it.")
        else:
            show_prediction(adaptation, names, unlike)
    loss, accuracy = adaptation.support_loss, adaptation.support_accuracy
    st.markdown(f"Adapted in {milliseconds:.0f} ms: {steps} inner steps on {len(support_y)} drawings. "
                f"Support accuracy {accuracy[0]:.0%} → **{accuracy[-1]:.0%}**, loss {loss[0]:.2f} → "
                f"**{loss[-1]:.2f}**.")
    with st.container(horizontal=True, gap="medium"):  # the query's first, nearer its prediction
        if query is not None:
            st.plotly_chart(probability_bars(names, adaptation.before[0], adaptation.after[0], steps),
                            key="draw_probabilities", width=CHART_WIDTH, config=STILL)
        st.plotly_chart(curves_figure(tuple(loss), tuple(accuracy)), key="draw_curves", width=CHART_WIDTH,
                        config=STILL)


adapt_and_classify_section(model, model_id, names, inks, inner_lr, steps)
state.draw_shown = shown_now  # after the query's canvas: a rerun of the fragment alone leaves it as it is
