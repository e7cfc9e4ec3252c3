"""Adapting a meta-learned model to new classes someone drew, and classifying new drawings with it.

This is MAML's test time for a single task whose support set is given rather than sampled: the math of
maml.adapt (first order) and maml.query_logits, a few gradient steps on the drawings recorded step by step so
that the app can plot how the support loss falls, then class probabilities of a query before and after those
steps. It is written with plain autograd rather than torch.func, which is faster for one task on the CPU.
"""

import functools
import math
import os
import re
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.func import functional_call
from torch.nn import functional as F

from . import limits
from .checkpoints import inner_lr_of, load_checkpoint
from .maml import last_step, query_logits, step_size
from .omniglot import Omniglot

DEFAULT_CHECKPOINT = "maml-conv-5way.safetensors"  # shipped in checkpoints/
MAX_UPLOAD_NAME = 60  # characters
MAX_RUNS_OFFERED = 8  # the runs' newest checkpoints that the Draw page offers
ALL_THREADS = torch.get_num_threads()  # torch's threads as the process started: what idle_threads goes back to
# The models shipped in checkpoints/ (checkpoints/README.md): file name -> (the iterations in its metadata, which
# count its last run only, and its whole training). Two were trained in several runs, each from the last.
SHIPPED = {
    "maml-conv-5way.safetensors": (9499, "three phases: 19,538 iterations of 5-way 1-shot tasks from random "
                                         "weights, 7,793 of 20-way, then 9,499 of 5-way again"),
    "maml-conv-5way-scratch.safetensors": (19538, "19,538 iterations of 5-way 1-shot tasks from random weights"),
    "fomaml-conv-5way.safetensors": (9429, "9,429 iterations of 5-way 1-shot tasks from random weights"),
    "maml-conv-20way.safetensors": (14237, "two phases: 19,538 iterations of 5-way 1-shot tasks from random "
                                          "weights, then 14,237 of 20-way"),
}
# A query whose novelty (see `novelty`) is above this is unlike every support drawing: maybe none of the classes.
# Measured with the shipped 5-way model on two samples of 300 5-way 1-shot tasks of unseen alphabets, with one new
# drawing of a support character, one of a sixth character and a random scribble as queries: above it were 13 and
# 18 % of the first, 76 and 85 % of the second, 81 and 82 % of the scribbles (at 5 shots: 1, 61 and 64 %). The
# novelty told the first from the others with an AUC of 0.90-0.92 at 1 shot and 0.97-0.98 at 5, the probabilities'
# entropy with 0.84-0.89 and 0.92-0.95.
UNFAMILIAR = 0.5
# torch.func.functional_call puts `params` in the module's place for the call, and the module's own weights back
# after it. The pages' browser sessions share one model per checkpoint (st.cache_resource), each in a thread of
# the server: two calls at once computed with each other's weights, raised, and left the model's weights
# changed for good (a load test of 8 sessions). So one computation at a time uses the models, which also bounds
# the memory and the threads of a class adapting at once. A turn is one inner step, not a whole adaptation: 50
# steps of 20 classes of 5 drawings on the largest model the app trains (256 x 6) take about 11 s, which every
# other session waited for; between two of its steps, the others take theirs (scripts/shared_model_latency.py).
MODEL_IN_USE = threading.Lock()


def one_at_a_time(function):
    """`function`, run under MODEL_IN_USE."""
    @functools.wraps(function)
    def locked(*args, **kwargs):
        with MODEL_IN_USE:
            return function(*args, **kwargs)
    return locked


@dataclass
class Adaptation:
    params: dict  # the adapted parameters, theta'
    support_loss: list  # support cross-entropy after 0, 1, ..., steps inner steps
    support_accuracy: list  # support accuracy after 0, 1, ..., steps inner steps
    before: torch.Tensor  # class probabilities of the queries at theta, the meta-learned start: [queries, ways]
    after: torch.Tensor  # and at theta', after the inner steps


def adaptation_settings(metadata: dict) -> dict:
    """What a checkpoint was meta-trained for: ways, shots, the inner learning rate (a number, or its learned
    rates: checkpoints.inner_lr_of) and the test-time inner steps, from metadata that load_checkpoint has checked."""
    return {"ways": metadata["ways"], "shots": metadata["shots"], "inner_lr": inner_lr_of(metadata),
            "steps": metadata.get("test_inner_steps", metadata["inner_steps"])}


def ways_of(model: torch.nn.Module) -> int:
    return model.classifier.out_features


def adapt_and_classify(model, support_x: torch.Tensor, support_y: torch.Tensor, inner_lr, steps: int,
                       query_x: torch.Tensor | None = None) -> Adaptation:
    """`steps` inner-loop steps on one task's support set ([examples, 1, 28, 28] ink, labels 0..ways-1),
    recording the support loss and accuracy at each step, and the queries' class probabilities before and
    after. Batch norm uses the support set's statistics, so a query's probabilities do not depend on the
    other queries: one drawing can be classified alone. `inner_lr` is alpha, or the learned inner learning
    rates of a checkpoint that has them (maml.step_size). With per-step batch norm, step j uses step j's scale and
    shift, and what follows the last step (its metrics, the queries after) the last step's, as in maml.py."""
    check_supports(model, support_y)
    query_x = support_x[:0] if query_x is None else query_x
    inputs, supports = torch.cat([support_x, query_x]), len(support_x)

    def support_loss(params, step):  # the queries ride along: batch norm ignores them and so does the loss
        logits = functional_call(model, params, (inputs, supports), {"step": step})
        return F.cross_entropy(logits[:supports], support_y), logits

    with MODEL_IN_USE:  # between two turns, another session's step may have its weights in the model's place
        params = {name: p.detach().requires_grad_() for name, p in model.named_parameters()}
    losses, accuracies, query_probabilities = [], [], []
    for step in range(steps + 1):
        # One forward gives this step's metrics and the queries' probabilities; a turn of the model per step.
        with MODEL_IN_USE, torch.set_grad_enabled(step < steps):
            loss, logits = support_loss(params, min(step, last_step(steps)))
            if step < steps:  # Eq. 1, first order: plain autograd, faster here than torch.func's transforms
                grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        losses.append(loss.item())
        accuracies.append((logits[:supports].argmax(-1) == support_y).float().mean().item())
        if step in (0, steps):
            query_probabilities.append(logits[supports:].detach().softmax(-1))
        if step < steps:
            params = {name: (params[name] - step_size(inner_lr, name, step) * grads[name]).detach().requires_grad_()
                      for name in params}
    if not all(map(math.isfinite, losses)) or not all(p.isfinite().all() for p in query_probabilities):
        raise ValueError("the model's outputs overflow to NaN or infinity (its weights or inner learning rates are "
                         "too large for these drawings, or the inner loop diverged): lower α or the inner steps, or "
                         "choose another checkpoint.")
    return Adaptation(params, losses, accuracies, query_probabilities[0], query_probabilities[-1])


@one_at_a_time
def classify(model, adaptation: Adaptation, support_x: torch.Tensor, query_x: torch.Tensor, steps: int) -> Adaptation:
    """`adaptation` (of `steps` steps on `support_x`) with new queries' class probabilities before and after, as
    adapt_and_classify gives them: adapting once, a page classifies each new drawing with two forwards."""
    theta = dict(model.named_parameters())
    with torch.no_grad():
        before = query_logits(model, theta, support_x, query_x, step=0).softmax(-1)
        after = query_logits(model, adaptation.params, support_x, query_x, step=last_step(steps)).softmax(-1)
    return replace(adaptation, before=before, after=after)


def novelty(model, params: dict, support_x: torch.Tensor, support_y: torch.Tensor,
            query_x: torch.Tensor, step: int = 0) -> torch.Tensor:
    """How unlike the support drawings each query is, to the model at `params`: the distance from its features
    (what the classifier layer sees) to the nearest support drawing's, over the mean distance between support
    drawings of different classes. The classifier must pick one of the classes whatever the query, so its
    probabilities cannot say "none of these"; a query far from every drawing it adapted to may be none of them.
    `step`: with per-step batch norm, the inner step whose scale and shift to use; at the params of
    adapt_and_classify's `steps` steps, maml.last_step(steps)."""
    supports = len(support_x)
    features = classifier_inputs(model, params, torch.cat([support_x, query_x]), supports, step)
    support_features, query_features = features[:supports], features[supports:]
    between_classes = support_y[:, None] != support_y[None, :]
    spread = torch.cdist(support_features, support_features)[between_classes].mean()
    return torch.cdist(query_features, support_features).min(dim=1).values / spread


@one_at_a_time
def classifier_inputs(model, params: dict, inputs: torch.Tensor, supports: int, step: int = 0) -> torch.Tensor:
    """The features the model's classifier layer gets for `inputs` at `params` (batch norm with the first
    `supports` inputs' statistics, as in adapt_and_classify, and per-step batch norm at inner step `step`)."""
    seen = []
    hook = model.classifier.register_forward_pre_hook(lambda layer, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            functional_call(model, params, (inputs, supports), {"step": step})
    finally:
        hook.remove()
    return seen[0]


@contextmanager
def idle_threads():
    """Runs torch meanwhile on as many threads as the machine has idle cores (at least one). Adapting to a
    few drawings is a string of small operations: on an idle 2-core machine two threads cut its time by about
    a quarter, but beside training runs that keep the cores busy, threads wait on each other and take several
    times longer than one. The count is the process's, shared by every session: each goes back to ALL_THREADS, not
    to what it found, which may be another session's lowered count."""
    torch.set_num_threads(max(1, min(ALL_THREADS, round(os.cpu_count() - os.getloadavg()[0]))))
    try:
        yield
    finally:
        torch.set_num_threads(ALL_THREADS)


def check_supports(model, support_y: torch.Tensor) -> None:
    """ValueError unless the support set has at least one example of each of the model's classes."""
    ways = ways_of(model)
    present = set(support_y.tolist())
    if present != set(range(ways)):
        raise ValueError(f"This model tells exactly {ways} classes apart (it was meta-trained on {ways}-way "
                         f"tasks), so it needs drawings of {ways} classes; got drawings of {len(present)}.")


def find_checkpoints(checkpoints_dir: Path, runs_root: Path) -> list:
    """Checkpoints to offer: the shipped ones (the default first), the other kept ones, then the runs' newest
    MAX_RUNS_OFFERED."""
    kept = sorted(Path(checkpoints_dir).glob("*.safetensors"),
                  key=lambda p: (p.name != DEFAULT_CHECKPOINT, p.name not in SHIPPED, p.name))
    trained = sorted(Path(runs_root).glob("*/checkpoint.safetensors"), key=_modified, reverse=True)
    return kept + trained[:MAX_RUNS_OFFERED]


def checkpoint_label(path: Path, checkpoints_dir: Path) -> str:
    """How the checkpoint menu names a checkpoint: its group (shipped, kept, run), then its file or run."""
    path = Path(path)
    if path.parent != Path(checkpoints_dir):
        return f"Run: {path.parent.name}"
    return f"{'Shipped' if path.name in SHIPPED else 'Kept'}: {path.stem}"


def describe_checkpoint(name: str, metadata: dict) -> str:
    """One line on a checkpoint: its algorithm, backbone, training and test accuracy. A shipped model trained in
    several runs, whose metadata counts the last run's iterations only, gets its whole history."""
    iterations, history = SHIPPED.get(name, (None, None))
    if metadata["iterations"] != iterations:  # not the shipped model, whatever its name
        history = f"{metadata['iterations']:,} iterations of {metadata['ways']}-way {metadata['shots']}-shot tasks"
    parts = [f"{str(metadata['algorithm']).upper()}, {metadata['backbone']} backbone, meta-trained for {history}"]
    accuracy = metadata.get("accuracy")
    for task, result in (accuracy.items() if isinstance(accuracy, dict) else ()):
        if isinstance(result, dict) and isinstance(result.get("accuracy"), float) and 0 <= result["accuracy"] <= 1:
            parts.append(f"test accuracy {result['accuracy']:.0%} ({task})")
    return " · ".join(parts)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # a run deleted meanwhile
        return 0.0


def load_adaptable(path: Path):
    """The checkpoint at `path` for the pages to adapt: (model, metadata), or CheckpointError, also for a model
    larger than the Train form allows (limits.maximum of channels and blocks). Every session adapts on one model at
    a time (MODEL_IN_USE): an upload of 16 MB of weights, or a file of a command-line run with 512 channels, can
    take 5 times the compute of the largest model the form trains, all sessions waiting."""
    return load_checkpoint(path, largest={key: limits.maximum(key) for key in ("channels", "blocks")})


def load_uploaded_checkpoint(name: str, data: bytes):
    """A checkpoint from uploaded bytes: (model, metadata), or CheckpointError naming the upload (load_adaptable)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / upload_name(name)
        path.write_bytes(data)
        return load_adaptable(path)


def upload_name(name: str) -> str:
    """The name an upload goes by, in messages and as a file: its base name, with other characters than letters,
    digits, "_", "." and "-" replaced by "_", no leading dot, and its last MAX_UPLOAD_NAME characters only,
    at most 4 bytes each: file systems take at most 255 bytes."""
    return re.sub(r"[^\w.-]", "_", Path(name).name)[-MAX_UPLOAD_NAME:].lstrip(".") or "upload.safetensors"


def omniglot_examples(data: Omniglot, characters: list, ways: int, shots: int, seed: int):
    """A task to show instead of drawing: `ways` random characters from `characters`, `shots` drawings of
    each and one more drawing of one of them as the query.

    Returns support ink [ways, shots, 28, 28], the query's ink [28, 28], the query's class, and the
    characters' names (character_name).
    """
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.tensor(characters)[torch.randperm(len(characters), generator=generator)[:ways]].tolist()
    drawings = torch.randperm(data.ink.shape[1], generator=generator)[:shots + 1]
    support = data.ink[chosen][:, drawings[:shots]]
    query_class = int(torch.randint(ways, (), generator=generator))
    query = data.ink[chosen[query_class], drawings[shots]]
    return support, query, query_class, [character_name(data, c) for c in chosen]


def character_name(data: Omniglot, character: int) -> str:
    """A character's name, short enough for a class name: its alphabet and number ("Old Church Slavonic
    (Cyrillic) #07" for Old_Church_Slavonic_(Cyrillic)/character07)."""
    number = data.characters[character].split("/")[-1].removeprefix("character")
    return f"{data.alphabet(character).replace('_', ' ')} #{number}"
