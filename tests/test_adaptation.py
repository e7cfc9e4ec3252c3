"""Adapting a model to drawn classes (fewshot.adaptation), and the checkpoints the Draw page offers."""

import copy
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import pytest
import torch
from safetensors.torch import save_file
from torch.func import functional_call

from canvas_drawings import QUERY, SHAPES, canvas_image
from waiting import outcomes_at_once
from fewshot import adaptation, limits, maml
from fewshot.adaptation import (DEFAULT_CHECKPOINT, MAX_RUNS_OFFERED, MAX_UPLOAD_NAME, SHIPPED, UNFAMILIAR,
                                adapt_and_classify, adaptation_settings, character_name, checkpoint_label, classify,
                                describe_checkpoint, find_checkpoints, idle_threads, load_uploaded_checkpoint, novelty,
                                omniglot_examples, upload_name)
from fewshot.checkpoints import CheckpointError, checkpoint_metadata, load_checkpoint, save_checkpoint
from fewshot.config import Config
from fewshot.drawing import drawing_to_ink
from fewshot.models import build_model
from fewshot.omniglot import split_characters


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("conv", ways=5, channels=16, blocks=3)


@pytest.fixture(scope="module")
def drawn_task():
    """Two drawings of each of the five shapes, the second a little smaller and shifted, and a query."""
    def ink(strokes):
        return drawing_to_ink(canvas_image(strokes))[None]
    moved = {name: [[(0.8 * x + 20, 0.8 * y + 5) for x, y in stroke] for stroke in strokes]
             for name, strokes in SHAPES.items()}
    support_x = torch.stack([ink(strokes) for shape in SHAPES for strokes in (SHAPES[shape], moved[shape])])
    return support_x, torch.arange(5).repeat_interleave(2), ink(QUERY)[None]


def test_adaptation_fits_the_drawn_support_set(model, drawn_task):
    support_x, support_y, query_x = drawn_task
    adaptation = adapt_and_classify(model, support_x, support_y, inner_lr=0.4, steps=5, query_x=query_x)
    assert len(adaptation.support_loss) == len(adaptation.support_accuracy) == 6  # before any step, then 5
    losses = adaptation.support_loss
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])) and losses[-1] < losses[0] / 2
    assert adaptation.support_accuracy[0] < 1 and adaptation.support_accuracy[-1] == 1
    assert adaptation.before.shape == adaptation.after.shape == (1, 5)
    assert torch.allclose(adaptation.after.sum(-1), torch.ones(1))
    assert adaptation.after[0].argmax() == list(SHAPES).index("circle")  # the query is a new circle
    assert set(adaptation.params) == {name for name, _ in model.named_parameters()}


def test_adaptation_is_mamls_first_order_inner_loop_and_query_logits(model, drawn_task):
    """adapt_and_classify rewrites maml.adapt (first order) and maml.query_logits with plain autograd, for speed
    on one task: in float64 both give the same support losses, weights and query probabilities, to rounding."""
    model = copy.deepcopy(model).double()
    support_x, support_y, query_x = drawn_task
    support_x = support_x.double()
    queries = torch.cat([query_x.double(), torch.rand(3, 1, 28, 28, dtype=torch.float64)])
    steps, inner_lr = 3, 0.4
    adaptation = adapt_and_classify(model, support_x, support_y, inner_lr, steps, queries)
    theta = dict(model.named_parameters())
    for step in range(steps + 1):
        params = maml.adapt(model, theta, support_x, support_y, inner_lr, step, first_order=True)
        loss = maml.loss(model, params, support_x, support_y).item()
        accuracy = (functional_call(model, params, (support_x,)).argmax(-1) == support_y).double().mean().item()
        assert adaptation.support_loss[step] == pytest.approx(loss, rel=1e-10, abs=1e-12), step
        assert adaptation.support_accuracy[step] == pytest.approx(accuracy, abs=1e-6), step  # a float32 mean
    for name, weight in params.items():  # params: after all the steps
        torch.testing.assert_close(adaptation.params[name], weight, rtol=0, atol=1e-10)
    for probabilities, weights in ((adaptation.before, theta), (adaptation.after, params)):
        expected = maml.query_logits(model, weights, support_x, queries).softmax(-1)
        torch.testing.assert_close(probabilities, expected, rtol=0, atol=1e-12)


def test_a_query_alone_gets_the_probabilities_it_gets_among_others(model, drawn_task):
    support_x, support_y, _ = drawn_task
    queries = torch.rand(7, 1, 28, 28)
    together = adapt_and_classify(model, support_x, support_y, 0.4, 3, queries)
    for i in (0, 4):
        alone = adapt_and_classify(model, support_x, support_y, 0.4, 3, queries[i:i + 1])
        assert torch.allclose(alone.before[0], together.before[i], atol=1e-5)
        assert torch.allclose(alone.after[0], together.after[i], atol=1e-5)


def test_classifying_with_an_adaptation_made_without_the_queries_gives_what_adapting_with_them_gives(model,
                                                                                                    drawn_task):
    """The Draw page adapts once, then classifies each new query with that adaptation (classify)."""
    support_x, support_y, _ = drawn_task
    queries = torch.rand(3, 1, 28, 28)
    together = adapt_and_classify(model, support_x, support_y, 0.4, 3, queries)
    alone = classify(model, adapt_and_classify(model, support_x, support_y, 0.4, 3), support_x, queries, 3)
    torch.testing.assert_close(alone.before, together.before, rtol=0, atol=1e-6)
    torch.testing.assert_close(alone.after, together.after, rtol=0, atol=1e-6)
    assert not torch.allclose(alone.before, alone.after, atol=1e-3)  # the steps changed the answers


def test_no_steps_leave_the_model_as_it_was(model, drawn_task):
    support_x, support_y, query_x = drawn_task
    adaptation = adapt_and_classify(model, support_x, support_y, 0.4, 0, query_x)
    assert len(adaptation.support_loss) == 1 and torch.equal(adaptation.before, adaptation.after)


def test_sessions_adapting_one_shared_model_at_once_get_their_own_answers_and_leave_it_as_it_was(drawn_task):
    """The pages' browser sessions share a cached model, each in a thread of the server."""
    torch.manual_seed(0)
    shared = build_model("conv", ways=5, channels=16, blocks=3)
    weights = copy.deepcopy(shared.state_dict())
    support_x, support_y, query_x = drawn_task
    alone = adapt_and_classify(shared, support_x, support_y, 0.4, 3, query_x)
    alone_novelty = novelty(shared, alone.params, support_x, support_y, query_x)

    def session():  # as the Draw page does
        answers = []
        for _ in range(10):
            adaptation = adapt_and_classify(shared, support_x, support_y, 0.4, 3, query_x)
            answers.append((adaptation.after, novelty(shared, adaptation.params, support_x, support_y, query_x)))
        return all(torch.equal(after, alone.after) and torch.equal(near, alone_novelty) for after, near in answers)

    assert outcomes_at_once(session, threads=4) == [True] * 4  # not an exception, nor another session's answer
    assert all(torch.equal(value, weights[name]) for name, value in shared.state_dict().items())


def test_a_short_adaptation_takes_turns_with_a_long_one_rather_than_waiting_for_its_end(drawn_task):
    """A class shares the model a step at a time: a session's 1-step adaptation does not wait for the end of
    another session's 200 steps (with a lock per adaptation it did: the largest model took 11 s)."""
    torch.manual_seed(0)
    shared = build_model("conv", ways=5, channels=32, blocks=4)
    support_x, support_y, _ = drawn_task
    stepping = threading.Event()
    shared.classifier.register_forward_hook(lambda *_: stepping.set())
    long = threading.Thread(target=adapt_and_classify, args=(shared, support_x, support_y, 0.01, 200))
    long.start()
    stepping.wait()
    short = adapt_and_classify(shared, support_x, support_y, 0.4, 1)
    still_adapting = long.is_alive()
    long.join()
    assert still_adapting
    assert len(short.support_loss) == 2


def test_support_sets_with_another_number_of_classes_are_refused(model, drawn_task):
    support_x, support_y, _ = drawn_task
    keep = support_y < 3
    with pytest.raises(ValueError, match="exactly 5 classes"):
        adapt_and_classify(model, support_x[keep], support_y[keep], 0.4, 1)


def test_idle_threads_uses_idle_cores_and_restores_the_thread_count(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.2, 0.0, 0.0))  # busy: one thread
    with idle_threads():
        assert torch.get_num_threads() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 0.0, 0.0))  # three idle cores
    with idle_threads():
        assert torch.get_num_threads() == min(3, threads)
    assert torch.get_num_threads() == threads


def test_idle_threads_of_overlapping_sessions_give_back_every_thread(monkeypatch):
    """Session A lowers the count, B starts meanwhile, A ends, then B: B once put back A's lowered count, for good."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(adaptation, "ALL_THREADS", 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 0.0, 0.0))  # one idle core
    torch.set_num_threads(2)
    try:
        first, second = idle_threads(), idle_threads()
        first.__enter__()
        second.__enter__()
        assert torch.get_num_threads() == 1
        first.__exit__(None, None, None)
        second.__exit__(None, None, None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_uploaded_checkpoints_load_and_foreign_or_corrupt_ones_are_refused(tmp_path, model):
    path = tmp_path / "mine.safetensors"
    config = Config(algorithm="fomaml", channels=16, blocks=3)
    save_checkpoint(path, model, checkpoint_metadata(config, iterations=1))
    loaded, metadata = load_uploaded_checkpoint("mine.safetensors", path.read_bytes())
    assert metadata["ways"] == 5 and torch.equal(loaded.classifier.weight, model.classifier.weight)

    with pytest.raises(CheckpointError, match="upload.safetensors is not a readable safetensors file"):
        load_uploaded_checkpoint("../../upload.safetensors", b"\x00 not a checkpoint at all")
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a fewshot checkpoint"):
        load_uploaded_checkpoint("foreign.safetensors", (tmp_path / "foreign.safetensors").read_bytes())


def test_an_upload_larger_than_the_train_form_allows_is_refused(tmp_path):
    """16 MB of weights (the upload limit) can be a model that takes minutes to adapt, all sessions waiting."""
    path = tmp_path / "deep.safetensors"
    config = Config(channels=8, blocks=limits.maximum("blocks") + 1)
    save_checkpoint(path, build_model("conv", 5, 8, config.blocks), checkpoint_metadata(config, iterations=1))
    with pytest.raises(CheckpointError, match=f"larger than this server adapts: blocks {config.blocks} "):
        load_uploaded_checkpoint("deep.safetensors", path.read_bytes())


def test_outputs_that_overflow_are_an_error_not_nan_probabilities(drawn_task):
    support_x, support_y, query_x = drawn_task
    huge = build_model("conv", 5, 16, 3)
    huge.classifier.weight.data.fill_(3e38)
    with pytest.raises(ValueError, match="the model's outputs overflow to NaN or infinity"):
        adapt_and_classify(huge, support_x, support_y, 0.4, 1, query_x)


def test_long_or_odd_upload_names_are_shortened_and_the_temp_folder_is_never_shown(tmp_path, model):
    """A file system takes names of at most 255 bytes: 200 "é" and 300 "x" take more."""
    path = tmp_path / "mine.safetensors"
    save_checkpoint(path, model, checkpoint_metadata(Config(channels=16, blocks=3), iterations=1))
    loaded, _ = load_uploaded_checkpoint("é" * 200 + ".safetensors", path.read_bytes())
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)

    name = upload_name("../" + "x" * 300 + " (1).safetensors")
    assert name == "x" * 44 + "__1_.safetensors" and len(name) == MAX_UPLOAD_NAME
    with pytest.raises(CheckpointError) as refused:
        load_uploaded_checkpoint("../" + "x" * 300 + " (1).safetensors", b"not a checkpoint")
    assert str(refused.value).startswith(f"{name} is not a readable safetensors file")
    assert tempfile.gettempdir() not in str(refused.value)
    assert upload_name("...") == "upload.safetensors" and upload_name(".hidden") == "hidden"


def test_adaptation_settings_come_from_the_metadata():
    metadata = checkpoint_metadata(Config(ways=5, shots=1, inner_lr=0.4, test_inner_steps=3), iterations=1)
    assert adaptation_settings(metadata) == {"ways": 5, "shots": 1, "inner_lr": 0.4, "steps": 3}
    del metadata["test_inner_steps"]  # written by older versions: the training inner steps then
    assert adaptation_settings(metadata)["steps"] == 1


def test_checkpoints_on_offer_shipped_default_first_then_kept_then_the_newest_runs_grouped(tmp_path):
    kept, runs = tmp_path / "checkpoints", tmp_path / "runs"
    run_names = [f"run{i}" for i in range(MAX_RUNS_OFFERED + 2)]  # run0 the oldest
    for path in [kept / "a.safetensors", kept / "fomaml-conv-5way.safetensors", kept / "maml-conv-5way.safetensors",
                 kept / "z.safetensors"] + [runs / name / "checkpoint.safetensors" for name in run_names]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    for age, name in enumerate(reversed(run_names)):
        os.utime(runs / name / "checkpoint.safetensors", (1000 - age, 1000 - age))
    found = find_checkpoints(kept, runs)
    assert [checkpoint_label(path, kept) for path in found] == [
        "Shipped: maml-conv-5way", "Shipped: fomaml-conv-5way", "Kept: a", "Kept: z"] + [
        f"Run: {name}" for name in reversed(run_names[-MAX_RUNS_OFFERED:])]  # the newest runs only
    assert found[-1] == runs / run_names[2] / "checkpoint.safetensors"
    assert find_checkpoints(tmp_path / "none", tmp_path / "none") == []


def test_a_shipped_checkpoint_is_described_with_its_whole_training():
    repo_checkpoints = Path(__file__).resolve().parents[1] / "checkpoints"
    for name in SHIPPED:  # the table's iterations are those of the shipped files
        assert load_checkpoint(repo_checkpoints / name)[1]["iterations"] == SHIPPED[name][0]
    metadata = checkpoint_metadata(Config(algorithm="maml", ways=5, shots=1), iterations=9499)
    assert "three phases" in describe_checkpoint(DEFAULT_CHECKPOINT, metadata)
    assert "9,499 iterations of 5-way 1-shot" in describe_checkpoint("mine.safetensors", metadata)
    other = checkpoint_metadata(Config(algorithm="maml", ways=5, shots=1), iterations=120)  # a file of that name
    assert "120 iterations of 5-way 1-shot" in describe_checkpoint(DEFAULT_CHECKPOINT, other)
    metadata["accuracy"] = {"5w1s": {"accuracy": 0.9717}}
    assert describe_checkpoint("mine.safetensors", metadata).endswith("test accuracy 97% (5w1s)")
    for nonsense in (float("inf"), float("nan"), 1.5, -0.1):  # a JSON of 1e400, NaN, ... edited by hand
        metadata["accuracy"] = {"5w1s": {"accuracy": nonsense}}
        assert "test accuracy" not in describe_checkpoint("mine.safetensors", metadata)


def test_a_query_identical_to_a_support_drawing_has_novelty_zero(model, drawn_task):
    support_x, support_y, query_x = drawn_task
    params = dict(model.named_parameters())
    queries = torch.cat([support_x[3:4], query_x])
    scores = novelty(model, params, support_x, support_y, queries)
    assert scores[0].item() == pytest.approx(0, abs=1e-4) and scores[1].item() > 0.01


def test_novelty_is_the_nearest_supports_distance_over_the_mean_distance_between_classes(model, drawn_task):
    """Computed apart: the features from a copy of the model without its classifier, distances pair by pair."""
    support_x, support_y, query_x = drawn_task
    headless = copy.deepcopy(model)
    headless.classifier = torch.nn.Identity()
    with torch.no_grad():
        features = headless(torch.cat([support_x, query_x]), len(support_x))
    supports, query = features[:-1], features[-1]
    between = [(a - b).norm() for i, a in enumerate(supports) for j, b in enumerate(supports)
               if support_y[i] != support_y[j]]
    expected = min((query - a).norm() for a in supports) / (sum(between) / len(between))
    found = novelty(model, dict(model.named_parameters()), support_x, support_y, query_x)
    assert found.item() == pytest.approx(expected.item(), rel=1e-4)


def scribble(generator: np.random.Generator) -> torch.Tensor:
    """A random scribble of one to three strokes, as drawn on the canvas: no character."""
    image = Image.new("L", (140, 140), 255)
    draw = ImageDraw.Draw(image)
    for _ in range(generator.integers(1, 4)):
        points = np.cumsum(generator.normal(0, 18, (generator.integers(3, 12), 2)), 0) + generator.uniform(30, 110, 2)
        draw.line([tuple(point) for point in points.clip(5, 135)], fill=0, width=8, joint="curve")
    return drawing_to_ink(np.asarray(image))


def test_scribbles_are_unfamiliar_and_new_drawings_of_the_classes_are_not(omniglot):
    """With the shipped model on 40 real 5-way 1-shot tasks of unseen alphabets: a new drawing of a support
    character is flagged as maybe none of these far less often than a random scribble is."""
    model, metadata = load_checkpoint(Path(__file__).resolve().parents[1] / "checkpoints" / DEFAULT_CHECKPOINT)
    test = split_characters(omniglot, metadata["split"])["test"]
    generator = np.random.default_rng(0)
    flagged = {"in class": [], "scribble": []}
    for seed in range(40):
        support, query, _, _ = omniglot_examples(omniglot, test, ways=5, shots=1, seed=seed)
        support_x, support_y = support.reshape(-1, 1, 28, 28), torch.arange(5)
        queries = torch.stack([query, scribble(generator)])[:, None]
        adaptation = adapt_and_classify(model, support_x, support_y, metadata["inner_lr"],
                                        metadata["test_inner_steps"], queries)
        scores = novelty(model, adaptation.params, support_x, support_y, queries)
        flagged["in class"].append(scores[0].item() > UNFAMILIAR)
        flagged["scribble"].append(scores[1].item() > UNFAMILIAR)
    assert np.mean(flagged["in class"]) <= 0.3 and np.mean(flagged["scribble"]) >= 0.7, flagged


def test_omniglot_examples_come_from_unseen_characters(omniglot):
    test = split_characters(omniglot, "lake")["test"]
    support, query, answer, names = omniglot_examples(omniglot, test, ways=5, shots=3, seed=1)
    assert support.shape == (5, 3, 28, 28) and query.shape == (28, 28) and 0 <= answer < 5
    drawn = [next(c for c in test if omniglot.ink[c].eq(support[k, 0]).all(-1).all(-1).any()) for k in range(5)]
    assert names == [character_name(omniglot, c) for c in drawn] and len(set(names)) == 5
    alphabets = {name.rsplit(" #", 1)[0].replace(" ", "_") for name in names}
    assert alphabets <= {omniglot.alphabet(c) for c in test}
    character = [c for c in test if omniglot.ink[c].eq(support[answer, 0]).all(-1).all(-1).any()]
    drawings = omniglot.ink[character[0]]
    assert any(torch.equal(query, d) for d in drawings) and not any(torch.equal(query, s) for s in support[answer])
    again = omniglot_examples(omniglot, test, ways=5, shots=3, seed=1)
    assert torch.equal(again[0], support) and again[3] == names


def test_character_names_keep_the_alphabet_and_the_character_number(omniglot):
    slavonic = omniglot.characters.index("images_evaluation/Old_Church_Slavonic_(Cyrillic)/character12")
    assert character_name(omniglot, slavonic) == "Old Church Slavonic (Cyrillic) #12"
