"""Adapting a meta-learned model to new classes someone drew, and classifying new drawings with it.

This is MAML's test time for a single task whose support set is given rather than sampled: the math of
maml.adapt (first order) and maml.query_logits, a few gradient steps on the drawings recorded step by step so
that the app can plot how the support loss falls, then class probabilities of a query before and after those
steps. It is written with plain autograd rather than torch.func, which is faster for one task on the CPU.
"""

import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.func import functional_call
from torch.nn import functional as F

from .checkpoints import load_checkpoint
from .omniglot import Omniglot

DEFAULT_CHECKPOINT = "maml-conv-5way.safetensors"  # shipped in checkpoints/
MAX_UPLOAD_NAME = 60  # characters


@dataclass
class Adaptation:
    params: dict  # the adapted parameters, theta'
    support_loss: list  # support cross-entropy after 0, 1, ..., steps inner steps
    support_accuracy: list  # support accuracy after 0, 1, ..., steps inner steps
    before: torch.Tensor  # class probabilities of the queries at theta, the meta-learned start: [queries, ways]
    after: torch.Tensor  # and at theta', after the inner steps


def adaptation_settings(metadata: dict) -> dict:
    """What a checkpoint was meta-trained for: ways, shots, the inner learning rate and the test-time inner
    steps, from metadata that load_checkpoint has checked."""
    return {"ways": metadata["ways"], "shots": metadata["shots"], "inner_lr": metadata["inner_lr"],
            "steps": metadata.get("test_inner_steps", metadata["inner_steps"])}


def ways_of(model: torch.nn.Module) -> int:
    return model.classifier.out_features


def adapt_and_classify(model, support_x: torch.Tensor, support_y: torch.Tensor, inner_lr: float, steps: int,
                       query_x: torch.Tensor | None = None) -> Adaptation:
    """`steps` inner-loop steps on one task's support set ([examples, 1, 28, 28] ink, labels 0..ways-1),
    recording the support loss and accuracy at each step, and the queries' class probabilities before and
    after. Batch norm uses the support set's statistics, so a query's probabilities do not depend on the
    other queries: one drawing can be classified alone."""
    check_supports(model, support_y)
    query_x = support_x[:0] if query_x is None else query_x
    inputs, supports = torch.cat([support_x, query_x]), len(support_x)

    def support_loss(params):  # the queries ride along: batch norm ignores them and so does the loss
        logits = functional_call(model, params, (inputs, supports))
        return F.cross_entropy(logits[:supports], support_y), logits

    params = {name: p.detach().requires_grad_() for name, p in model.named_parameters()}
    losses, accuracies, query_probabilities = [], [], []
    for step in range(steps + 1):
        with torch.set_grad_enabled(step < steps):  # the same forward gives this step's metrics and the queries'
            loss, logits = support_loss(params)
        losses.append(loss.item())
        accuracies.append((logits[:supports].argmax(-1) == support_y).float().mean().item())
        if step in (0, steps):
            query_probabilities.append(logits[supports:].detach().softmax(-1))
        if step < steps:  # Eq. 1, first order: plain autograd, faster here than torch.func's transforms
            grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
            params = {name: (params[name] - inner_lr * grads[name]).detach().requires_grad_() for name in params}
    return Adaptation(params, losses, accuracies, query_probabilities[0], query_probabilities[-1])


@contextmanager
def idle_threads():
    """Runs torch meanwhile on as many threads as the machine has idle cores (at least one). Adapting to a
    few drawings is a string of small operations: on an idle 2-core machine two threads cut its time by about
    a quarter, but beside training runs that keep the cores busy, threads wait on each other and take several
    times longer than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, round(os.cpu_count() - os.getloadavg()[0]))))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def check_supports(model, support_y: torch.Tensor) -> None:
    """ValueError unless the support set has at least one example of each of the model's classes."""
    ways = ways_of(model)
    present = set(support_y.tolist())
    if present != set(range(ways)):
        raise ValueError(f"This model tells exactly {ways} classes apart (it was meta-trained on {ways}-way "
                         f"tasks), so it needs drawings of {ways} classes; got drawings of {len(present)}.")


def find_checkpoints(checkpoints_dir: Path, runs_root: Path) -> list:
    """Checkpoints to offer: the shipped default first, the other kept ones, then runs' (newest first)."""
    kept = sorted(Path(checkpoints_dir).glob("*.safetensors"), key=lambda p: (p.name != DEFAULT_CHECKPOINT, p.name))
    trained = sorted(Path(runs_root).glob("*/checkpoint.safetensors"), key=_modified, reverse=True)
    return kept + trained


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # a run deleted meanwhile
        return 0.0


def load_uploaded_checkpoint(name: str, data: bytes):
    """A checkpoint from uploaded bytes: (model, metadata), or CheckpointError naming the upload."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / upload_name(name)
        path.write_bytes(data)
        return load_checkpoint(path)


def upload_name(name: str) -> str:
    """The name an upload goes by, in messages and as a file: its base name, with other characters than letters,
    digits, "_", "." and "-" replaced by "_", no leading dot, and its last MAX_UPLOAD_NAME characters only,
    at most 4 bytes each: file systems take at most 255 bytes."""
    return re.sub(r"[^\w.-]", "_", Path(name).name)[-MAX_UPLOAD_NAME:].lstrip(".") or "upload.safetensors"


def omniglot_examples(data: Omniglot, characters: list, ways: int, shots: int, seed: int):
    """A task to show instead of drawing: `ways` random characters from `characters`, `shots` drawings of
    each and one more drawing of one of them as the query.

    Returns support ink [ways, shots, 28, 28], the query's ink [28, 28], the query's class, and the
    characters' names ("Alphabet / characterNN").
    """
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.tensor(characters)[torch.randperm(len(characters), generator=generator)[:ways]].tolist()
    drawings = torch.randperm(data.ink.shape[1], generator=generator)[:shots + 1]
    support = data.ink[chosen][:, drawings[:shots]]
    query_class = int(torch.randint(ways, (), generator=generator))
    query = data.ink[chosen[query_class], drawings[shots]]
    names = [f"{data.alphabet(c).replace('_', ' ')} / {data.characters[c].split('/')[-1]}" for c in chosen]
    return support, query, query_class, names
