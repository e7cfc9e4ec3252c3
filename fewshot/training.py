"""Meta-training runs: the one training function that the CLI and the app both use.

A run lives in a directory:
    config.json             the Config it was started with
    metrics.jsonl           one JSON record per iteration, appended as training goes
    checkpoint.safetensors  the model, with metadata (see checkpoints.py)
    optimizer.safetensors   Adam's state, to resume exactly
    evaluation.json         test accuracy with its 95 % interval, once training has finished
    train.lock              locked while a process trains the run, so that a second one is refused
Stopping (Ctrl-C, SIGTERM, or `should_stop()` returning True) ends the current iteration, saves, and
returns; `resume=True` continues from the last checkpoint, on this device or another. The same seed gives the
same curve on a CPU.
"""

import fcntl
import json
import resource
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from . import maml
from .checkpoints import (checkpoint_metadata, load_checkpoint, load_training_state, record_accuracy,
                          save_checkpoint, save_training_state)
from .config import Config
from .evaluation import evaluate
from .models import build_model
from .omniglot import load_omniglot, split_characters
from .tasks import TaskSampler

CHECKPOINT, OPTIMIZER, METRICS, CONFIG, EVALUATION, LOCK = (
    "checkpoint.safetensors", "optimizer.safetensors", "metrics.jsonl", "config.json", "evaluation.json",
    "train.lock")


def meta_backward_of(engine: str):
    """The function that computes the meta-gradient: this library's, or the notebook's learn2learn loop."""
    if engine == "learn2learn":
        from . import notebook_loop  # imports learn2learn, and with it gym, only when asked for
        return notebook_loop.meta_backward
    return maml.meta_backward


def task_seed(seed: int, iteration: int) -> int:
    """The seed of iteration i's meta-batch: the task sequence depends on nothing but the run's seed."""
    return seed * 1_000_000 + iteration


def make_samplers(config: Config) -> dict:
    data = load_omniglot(config.data_root)
    return {name: TaskSampler(data.ink, characters, config.ways, config.shots, config.queries,
                              augment=config.augment if name == "train" else "none")
            for name, characters in split_characters(data, config.split).items()}


def training_device(name: str) -> torch.device:
    """The device that `Config.device` names; "auto" takes a CUDA GPU when torch sees one.

    On a GPU, convolutions and matrix products keep full float32 (no TF32), so that a run there computes
    what it would on a CPU, up to rounding.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda: this torch sees no CUDA GPU; choose device cpu or auto")
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    return torch.device(name)


def initial_model(config: Config) -> torch.nn.Module:
    torch.manual_seed(config.seed)
    return build_model(config.backbone, config.ways, config.channels, config.blocks)


def warm_start(model: torch.nn.Module, path: str) -> None:
    """Copies a trained checkpoint's weights into `model`, all but a classifier of another shape.

    A model meta-trained on 5-way tasks thus starts a 20-way run: its conv blocks are kept, and only the
    20-way classifier starts from random weights.
    """
    trained, _ = load_checkpoint(Path(path))
    own, weights = model.state_dict(), trained.state_dict()
    body = [name for name in own if not name.startswith("classifier.")]
    if set(own) != set(weights) or any(own[name].shape != weights[name].shape for name in body):
        raise ValueError(f"{path} holds another network than this run's {type(model).__name__}: "
                         f"--init-from needs the same backbone, channels and blocks")
    model.load_state_dict({n: weights[n] if weights[n].shape == own[n].shape else own[n] for n in own})


class RunInUse(RuntimeError):
    """Another process is training this run directory."""


def train(config: Config, run_dir: Path, resume: bool = False, should_stop=None, on_record=None,
          progress: bool = True) -> list:
    """Meta-trains `config` in `run_dir`; returns the metrics records written by this call.

    Only one process at a time may train a run directory: two would write over each other's records.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _sole_trainer(run_dir):
        return _train(config, run_dir, resume, should_stop, on_record, progress)


def _train(config: Config, run_dir: Path, resume: bool, should_stop, on_record, progress: bool) -> list:
    device = training_device(config.device)
    samplers = make_samplers(config)
    model = initial_model(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.outer_lr)
    start, seconds = _restore(run_dir, model, optimizer) if resume else (0, 0.0)
    if start == 0 and config.init_from:
        warm_start(model, config.init_from)
    for group in optimizer.param_groups:  # the configuration's, not the saved one: --resume --outer-lr lowers it
        group["lr"] = config.outer_lr
    if not resume:
        (run_dir / METRICS).write_text("")
    config.save(run_dir / CONFIG)
    val_batch = samplers["val"].sample(config.val_tasks, seed=task_seed(config.seed, 0)).to(device=device)
    meta_backward = meta_backward_of(config.engine)

    records, iteration = [], start
    bar = tqdm(total=config.iterations, initial=start, desc=f"{config.algorithm} {config.ways}w{config.shots}s",
               unit="it", disable=not progress)
    with _stop_on_signals() as signalled, open(run_dir / METRICS, "a") as metrics:
        while iteration < config.iterations and not (signalled.is_set() or (should_stop and should_stop())):
            iteration += 1
            tick = time.perf_counter()
            batch = samplers["train"].sample(config.meta_batch, seed=task_seed(config.seed, iteration))
            batch = batch.to(device=device)
            optimizer.zero_grad()
            loss, accuracy = meta_backward(model, batch, config.inner_lr, config.inner_steps, config.first_order)
            optimizer.step()
            record = {"iteration": iteration, "train_loss": loss, "train_accuracy": accuracy}
            if iteration % config.val_every == 0 or iteration == config.iterations:
                record.update(validate(model, val_batch, config))
            elapsed = time.perf_counter() - tick
            seconds += elapsed
            record.update(seconds=round(seconds, 4), tasks_per_second=round(config.meta_batch / elapsed, 2),
                          peak_memory_mb=peak_memory_mb())
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            records.append(record)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}", refresh=False)
            bar.update(1)  # redraws at most every `mininterval` seconds (the app's runs: TQDM_MININTERVAL)
            if on_record:
                on_record(record)
            if iteration % config.checkpoint_every == 0:
                _save(run_dir, model, optimizer, config, iteration)
    bar.close()
    _save(run_dir, model, optimizer, config, iteration)
    if iteration == config.iterations and config.test_tasks:
        finish(run_dir, model, config, samplers["test"], progress)
    return records


def validate(model, val_batch, config: Config) -> dict:
    """Mean query loss and accuracy on the fixed held-out tasks, adapted as in training."""
    with torch.no_grad():
        losses, accuracies = maml.task_losses(model, val_batch, config.inner_lr, config.inner_steps, True)
    return {"val_loss": losses.mean().item(), "val_accuracy": accuracies.mean().item()}


def finish(run_dir: Path, model, config: Config, test_sampler: TaskSampler, progress: bool = True) -> dict:
    """Evaluates on the test split, writes evaluation.json and records the accuracy in the checkpoint."""
    bar = tqdm(total=config.test_tasks, desc="test tasks", disable=not progress)
    result = evaluate(model, test_sampler, config.inner_lr, config.test_inner_steps, config.test_tasks,
                      on_progress=lambda done, total: bar.update(done - bar.n))
    bar.close()
    summary = {"split": f"{config.split}/test", **result.to_dict()}
    (run_dir / EVALUATION).write_text(json.dumps(summary, indent=2) + "\n")
    record_accuracy(run_dir / CHECKPOINT, summary)
    return summary


def peak_memory_mb() -> float:
    """This process' peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def read_metrics(run_dir: Path) -> list:
    """The records written so far. A line still being written, without its newline, is left out."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    complete = path.read_text().rpartition("\n")[0]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def _save(run_dir: Path, model, optimizer, config: Config, iteration: int) -> None:
    # Optimizer first: a checkpoint is only ever newer than or as new as the state that resumes it.
    save_training_state(run_dir / OPTIMIZER, optimizer, iteration)
    save_checkpoint(run_dir / CHECKPOINT, model, checkpoint_metadata(config, iteration))


def _restore(run_dir: Path, model, optimizer) -> tuple[int, float]:
    """Loads the last checkpoint; drops metrics recorded after it. Returns (iteration, seconds trained)."""
    if not (run_dir / CHECKPOINT).exists():
        return 0, 0.0
    saved, metadata = load_checkpoint(run_dir / CHECKPOINT)
    model.load_state_dict(saved.state_dict())
    iteration = metadata["iterations"]
    if load_training_state(run_dir / OPTIMIZER, optimizer) != iteration:
        raise RuntimeError(f"{run_dir}: the optimizer state and the checkpoint are from different iterations")
    kept = [r for r in read_metrics(run_dir) if r["iteration"] <= iteration]
    (run_dir / METRICS).write_text("".join(json.dumps(r) + "\n" for r in kept))
    return iteration, kept[-1]["seconds"] if kept else 0.0


@contextmanager
def _sole_trainer(run_dir: Path):
    """Holds an exclusive lock on run_dir/train.lock; the system releases it when the process ends."""
    with open(run_dir / LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInUse(f"{run_dir} is being trained by another process; stop that one first, "
                           f"or choose another run directory") from None
        yield


@contextmanager
def _stop_on_signals():
    """An Event set by the first Ctrl-C or SIGTERM (a second Ctrl-C interrupts at once)."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event  # signals reach the main thread only; callers there pass should_stop instead
        return

    def request_stop(signum, frame):
        if event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        event.set()
        print("\nStopping after this iteration and saving the checkpoint ...", flush=True)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
