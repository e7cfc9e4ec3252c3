"""Draw: invent a few characters, draw one to five examples of each, adapt the meta-learned model to them in a
few gradient steps, and let it recognise a new drawing.

Each canvas' drawing lives in the canvas widget's state, under the key canvas_key(slot); a slot is a
(class, drawing) pair or "query". Clearing a slot gives its canvas a new key, so a new, empty canvas.
A canvas hidden by fewer classes or drawings per class, or by another page, comes back empty in the browser:
each slot's last strokes are kept in draw_kept, and a canvas that the last run did not show is redrawn with
them. The settings and class names survive both too: their widgets persist for the session.
"""

import hashlib
import io
import time
from pathlib import Path

import numpy as np
import streamlit as st
import torch
from PIL import Image
from streamlit_drawable_canvas import st_canvas  # imported here only: it needs a running Streamlit

from fewshot import runs
from fewshot.adaptation import (adapt_and_classify, adaptation_settings, find_checkpoints, load_uploaded_checkpoint,
                                omniglot_examples, idle_threads, upload_name, ways_of)
from fewshot.adaptation_plots import adaptation_curves, probability_bars
from fewshot.checkpoints import CheckpointError, load_checkpoint
from fewshot.config import REPO_ROOT, Config
from fewshot.drawing import BlankDrawing, drawing_to_ink
from fewshot.omniglot import DatasetNotFound, load_omniglot, split_characters

CANVAS_SIZE, STROKE_WIDTH, PREVIEW_SIZE = 140, 8, 56
MAX_WAYS, MAX_SHOTS, MAX_STEPS = 20, 5, 50
BESIDE = 3  # drawings per class that leave room for the model's view beside each
UPLOAD = "upload"
QUERY = "query"

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


def canvas_key(slot) -> str:
    name = QUERY if slot == QUERY else f"{slot[0]}_{slot[1]}"
    return f"draw_canvas_{name}_{state.draw_versions.get(slot, 0)}"


@st.cache_resource(show_spinner="Loading the checkpoint ...", max_entries=8)
def checkpoint_from_file(path: str, modified: float):
    return warmed_up(Path(path).name, *load_checkpoint(Path(path)))


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
    adapt_and_classify(model, torch.zeros(ways, 1, 28, 28), torch.arange(ways), inner_lr=0.0, steps=1)
    return model, metadata


@st.cache_resource(show_spinner="Loading Omniglot ...")
def omniglot(data_root: str):
    return load_omniglot(data_root, download=False)


@st.cache_resource(show_spinner=False, max_entries=1024)
def model_input(png: bytes) -> np.ndarray | None:
    """The 28x28 ink image the model sees for a canvas' PNG; None for a blank canvas."""
    try:
        return drawing_to_ink(np.asarray(Image.open(io.BytesIO(png)))).numpy()
    except BlankDrawing:
        return None


def picture(ink: np.ndarray, size: int) -> np.ndarray:
    """Ink as black on white, enlarged without blurring to about `size` pixels."""
    scale = max(1, size // ink.shape[0])
    return np.kron(1 - ink, np.ones((scale, scale))).clip(0, 1)


def choose_checkpoint():
    """(model, metadata, its adaptation settings, an id) of the checkpoint chosen, or None after saying why
    there is none; CheckpointError for a file that is no usable checkpoint."""
    found = find_checkpoints(runs.checkpoints_dir(), runs.runs_root())
    labels = {str(path): _shown_path(path) for path in found}
    labels[UPLOAD] = "Upload a checkpoint ..."
    choice = st.selectbox("Checkpoint", list(labels), format_func=labels.get, key="draw_checkpoint",
                          persist_state="session",
                          help="Kept checkpoints (checkpoints/) come first, then the runs' (runs/), newest first.")
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
    return model, metadata, adaptation_settings(metadata), model_id


def _shown_path(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def describe(metadata: dict) -> str:
    parts = [f"{str(metadata['algorithm']).upper()}, {metadata['backbone']} backbone, meta-trained on "
             f"{metadata['ways']}-way {metadata['shots']}-shot tasks for {metadata['iterations']} iterations"]
    accuracy = metadata.get("accuracy")
    for task, result in (accuracy.items() if isinstance(accuracy, dict) else ()):
        if isinstance(result, dict) and isinstance(result.get("accuracy"), float):
            parts.append(f"test accuracy {result['accuracy']:.0%} ({task})")
    return " · ".join(parts)


def settings(defaults: dict, model_id: str) -> tuple:
    """Classes, drawings per class, inner learning rate and steps: the checkpoint's, unless overridden."""
    columns = st.columns(4)
    ways = columns[0].number_input("Classes (N ways)", 2, MAX_WAYS, min(max(defaults["ways"], 2), MAX_WAYS),
                                   key=f"draw_ways_{model_id}", persist_state="session")
    shots = columns[1].number_input("Drawings per class (K shots)", 1, MAX_SHOTS,
                                    min(max(defaults["shots"], 1), MAX_SHOTS), key=f"draw_shots_{model_id}",
                                    persist_state="session")
    inner_lr = columns[2].number_input("Inner learning rate α", 0.0, 10.0, min(float(defaults["inner_lr"]), 10.0),
                                       step=0.05, format="%g", key=f"draw_lr_{model_id}", persist_state="session")
    steps = columns[3].number_input("Inner steps", 0, MAX_STEPS, min(defaults["steps"], MAX_STEPS),
                                    key=f"draw_steps_{model_id}", persist_state="session",
                                    help="Gradient steps on your drawings. The checkpoint's test-time setting "
                                         "by default.")
    return int(ways), int(shots), float(inner_lr), int(steps)


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
    data = omniglot(Config().data_root)
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


def slot(slot_id, beside: bool) -> np.ndarray | None:
    """Shows a slot, a canvas or the Omniglot drawing filling it, with the 28x28 image the model sees beside
    or under it; returns that image, or None while the slot is empty."""
    drawing, seen = st.columns([CANVAS_SIZE, PREVIEW_SIZE + 16], gap="small") if beside else (st.container(),) * 2
    filled = state.draw_filled.get(slot_id)
    with drawing:
        if filled is not None:
            st.image(picture(filled, CANVAS_SIZE), width=CANVAS_SIZE)
            ink = filled
        else:
            ink = canvas(slot_id)
    with seen:
        if ink is None:
            st.caption("empty")
        else:
            st.image(picture(ink, PREVIEW_SIZE), width=PREVIEW_SIZE)
    return ink


def canvas(slot_id) -> np.ndarray | None:
    """The slot's canvas; returns the ink it holds. A canvas back from hiding is redrawn with its kept
    strokes (its `initial_drawing` then stays the same until it is hidden again, or the canvas would reload)."""
    if slot_id not in state.draw_shown and slot_id in state.draw_kept:
        state.draw_restored[slot_id] = state.draw_kept[slot_id]
    shown_now.add(slot_id)
    restored_strokes, restored_ink = state.draw_restored.get(slot_id, (None, None))
    result = st_canvas(stroke_width=STROKE_WIDTH, stroke_color="#000000", background_color="#ffffff",
                       width=CANVAS_SIZE, height=CANVAS_SIZE, return_image_data=True,
                       initial_drawing=restored_strokes, key=canvas_key(slot_id))
    if not result.image_bytes:  # nothing drawn since the canvas appeared
        return restored_ink
    ink = model_input(result.image_bytes)
    state.draw_kept[slot_id] = (result.json_data, ink)
    return ink


def class_rows(ways: int, shots: int) -> tuple:
    """One row of canvases per class; returns the class names and, for each class, its drawings' ink.
    Up to BESIDE drawings per class, the name is on the left and the image the model sees beside each
    drawing; with more, the name is above and that image under each drawing."""
    beside = shots <= BESIDE
    names, inks = [], []
    for c in range(ways):
        if beside:
            name_place, *slots = st.columns([1.2] + [2.2] * BESIDE, gap="small")
            button_place = name_place
        else:
            name_place, button_place, _ = st.columns([2, 1, 3], vertical_alignment="bottom")
        with name_place:
            name = st.text_input(f"Class {c + 1}", key=f"draw_name_{c}", placeholder=f"Class {c + 1}",
                                 max_chars=30, persist_state="session").strip()
        with button_place:
            st.button("Clear", key=f"draw_clear_{c}", on_click=clear, args=([(c, d) for d in range(shots)],),
                      icon=":material/ink_eraser:")
        if not beside:
            slots = st.columns(shots, gap="small")
        drawings = []
        for d in range(shots):
            with slots[d]:
                ink = slot((c, d), beside)
            if ink is not None:
                drawings.append(ink)
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


def show_prediction(adaptation, names: list, steps: int) -> None:
    before, after = adaptation.before[0], adaptation.after[0]
    winner = int(after.argmax())
    st.markdown(f"#### Prediction after adaptation: **{names[winner]}** ({after[winner]:.0%})")
    answer = state.get("draw_query_answer")
    if answer is not None and state.draw_filled.get(QUERY) is not None:
        verdict = "right" if answer == winner else "wrong"
        st.caption(f"The Omniglot query is a drawing of {names[answer]}: the model is {verdict}.")
    st.caption(f"Before adaptation, the meta-learned start θ said {names[int(before.argmax())]} "
               f"({before.max():.0%}): its outputs mean nothing for your classes until it adapts to them.")
    st.plotly_chart(probability_bars(names, before, after, steps), key="draw_probabilities", width="stretch")


st.title("Draw: teach the model your own characters")
st.markdown("""
Invent a few characters nobody has seen, draw one to five examples of each (the **support set**), and press
**Adapt**: the meta-learned model takes a few gradient steps on your drawings, the inner loop of MAML. Then draw
a new example of one of them (the **query**) and see whether the adapted model recognises it. Next to each
drawing is what the model sees: your drawing cropped, centred, redrawn with Omniglot's stroke width and
shrunk to 28×28 pixels, like the training data.
""")

try:
    chosen = choose_checkpoint()
except CheckpointError as error:
    st.error(f"Cannot use this checkpoint: {error}", icon=":material/error:")
    st.stop()
if chosen is None:
    st.stop()
model, metadata, defaults, model_id = chosen
st.caption(describe(metadata))
ways, shots, inner_lr, steps = settings(defaults, model_id)
mismatch = st.container()  # always there, so that the error does not move, and so remount, the canvases
if ways != ways_of(model):
    mismatch.error(f"This checkpoint tells exactly {ways_of(model)} classes apart: it was meta-trained on "
                   f"{metadata['ways']}-way tasks, and its classifier has {ways_of(model)} outputs. Set Classes "
                   f"to {ways_of(model)}, or choose a checkpoint meta-trained on {ways}-way tasks.",
                   icon=":material/error:")

missing_data = runs.missing_dataset_help(Config().data_root)
buttons = st.columns([1, 1, 3])
if buttons[0].button("Fill from Omniglot", icon=":material/auto_awesome:", disabled=missing_data is not None,
                     help="Fill every canvas with drawings of characters from alphabets the model never saw."
                     if missing_data is None else "Omniglot is not on this machine; draw your own characters."):
    try:
        fill_from_omniglot(metadata, ways, shots)
    except (DatasetNotFound, ValueError) as error:
        st.error(f"Could not fill from Omniglot: {error}", icon=":material/error:")
buttons[1].button("Clear all", icon=":material/delete_sweep:", on_click=clear,
                  args=([(c, d) for c in range(ways) for d in range(shots)] + [QUERY], ways))

st.subheader("1. Your classes: the support set")
names, inks = class_rows(ways, shots)

st.subheader("2. Adapt, and classify a new drawing")
query_column, result_column = st.columns([1, 3])
with query_column:
    st.markdown("**Query**")
    query = slot(QUERY, beside=True)
    state.draw_shown = shown_now
    st.caption("A new drawing of one of your classes, for the adapted model to recognise.")
    st.button("Clear the query", key="draw_clear_query", on_click=clear, args=([QUERY],),
              icon=":material/ink_eraser:")

with result_column:
    adapt = st.button("Adapt", type="primary", icon=":material/model_training:", disabled=ways != ways_of(model))
    empty = [name for name, drawings in zip(names, inks) if not drawings]
    if empty:
        if adapt:
            st.error(f"{', '.join(empty)} {'has' if len(empty) == 1 else 'have'} no drawing yet: draw at least "
                     "one example in every class' row, then press Adapt.", icon=":material/error:")
        st.stop()
    support_x, support_y = support_set(inks)
    current = fingerprint(model_id, support_x, support_y, inner_lr, steps)
    if adapt:
        state.draw_adapted = current
    if state.get("draw_adapted") is None:
        st.info("Press **Adapt** to run the inner loop on your drawings.")
        st.stop()
    if state.draw_adapted != current:
        st.info("The drawings or the settings changed since the last adaptation: press **Adapt** again.")
        st.stop()
    query_x = None if query is None else torch.from_numpy(query).float()[None, None]
    try:  # adapting again at each rerun gives the same result as the first time, in well under a second
        tick = time.perf_counter()
        with idle_threads():
            adaptation = adapt_and_classify(model, support_x, support_y, inner_lr, steps, query_x)
        milliseconds = 1000 * (time.perf_counter() - tick)
    except ValueError as error:
        st.error(f"Cannot adapt: {error}", icon=":material/error:")
        st.stop()
    loss, accuracy = adaptation.support_loss, adaptation.support_accuracy
    st.markdown(f"Adapted in {milliseconds:.0f} ms: {steps} inner steps on {len(support_y)} drawings. "
                f"Support accuracy {accuracy[0]:.0%} → **{accuracy[-1]:.0%}**, loss {loss[0]:.2f} → "
                f"**{loss[-1]:.2f}**.")
    st.plotly_chart(adaptation_curves(adaptation), key="draw_curves", width="stretch")
    if query is None:
        st.info("Draw a query on the left to classify it.")
    else:
        show_prediction(adaptation, names, steps)
