"""Meta-training runs: the one training function that the CLI and the app both use.

A run lives in a directory:
    config.json                   the Config it was started with
    metrics.jsonl                 one JSON record per iteration, appended as training goes (metrics.py)
    checkpoint.safetensors        the model, with metadata (see checkpoints.py)
    training_state.safetensors    the model and Adam's state together, to resume exactly
    evaluation.json               test accuracy with its 95 % interval, once training has finished
    train.lock                    locked while a process trains the run, so that a second one is refused
Stopping (Ctrl-C, SIGTERM, or `should_stop()` returning True) ends the current iteration, saves, and
returns; `resume=True` continues from the last saved iteration, on this device or another. Every file is
written so that a crash or a kill at any moment leaves a run that resumes, its records matching its state.
The same seed gives the same curve on a CPU.
"""

import fcntl
import json
import math
import os
import resource
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from . import files, maml, metrics, probe
from .checkpoints import (CheckpointError, checkpoint_metadata, load_checkpoint, load_training_state,
                          record_accuracy, save_checkpoint, save_training_state)
from .config import Config, changes_refused_on_resume
from .evaluation import adapted_task_losses, evaluate
from .models import build_model
from .omniglot import load_omniglot, split_characters
from .tasks import TaskSampler

CHECKPOINT, TRAINING_STATE, METRICS, CONFIG, EVALUATION, LOCK = (
    "checkpoint.safetensors", "training_state.safetensors", "metrics.jsonl", "config.json", "evaluation.json",
    "train.lock")
ENDED = "ended"  # written by `python -m fewshot train` as it exits, whatever the outcome: a run without it died
COSINE_FLOOR = 0.01  # cosine annealing's last outer learning rate, over outer_lr: MAML++'s 1e-5 for its 1e-3
CPU_IMAGES_AT_ONCE = 240  # a conv net's group of tasks on a CPU: about this many drawings in the query pass at 64
# channels (twice as many at 32). Fewer leave each operation too small to run at full speed; more run no faster and
# hold more memory. Against groups of 1 to 16 tasks (issue 15; interleaved in one process, one thread, freed memory
# kept as training keeps it): 5-way 1-shot (30 drawings a task) was fastest at 8, 4 at 0.96 of its speed; 5-shot
# (50) and 20-way 1-shot (120) were within 5 % of their fastest from 2 to 16 tasks, and 4 and 2 held a half and a
# quarter of 8's memory; at 32 and 128 channels the group that this rule picks was within 5 % of the fastest. Tuned
# for one thread, as the app trains: two threads want larger groups (5-shot's 4 tasks at 1.07-1.10 of 8's time,
# 20-way's 2 at 1.03-1.10 of 4's), a price paid for the memory.
CPU_TASKS_AT_ONCE = 8  # an fc net's group on a CPU, whose layers' outputs are small: within 17 % of the fastest of 2, 8
# and 32 tasks, with a third of 32's memory
STOP_GRACE = 3.0  # seconds a stop waits for the current iteration before it saves the last one and exits


def meta_backward_of(engine: str, tasks_at_once: int = 0):
    """The function that computes the meta-gradient: this library's, adapting `tasks_at_once` tasks at a time
    (0: all), or the notebook's learn2learn loop."""
    if engine == "learn2learn":
        from . import notebook_loop  # imports learn2learn, and with it gym, only when asked for
        return notebook_loop.meta_backward
    return partial(maml.meta_backward, tasks_at_once=tasks_at_once)


def tasks_at_once(config: Config, device: torch.device) -> int:
    """How many tasks this library's engine adapts at once: config.tasks_at_once, or where it is 0 (automatic) the
    whole meta-batch on a GPU, which is fastest with the most work at once, and on a CPU a group just large enough
    to run at full speed: a conv net's tasks whose query pass holds about CPU_IMAGES_AT_ONCE drawings at 64
    channels, fewer at more channels; an fc net's, CPU_TASKS_AT_ONCE."""
    if config.tasks_at_once:
        return config.tasks_at_once
    if device.type != "cpu":
        return config.meta_batch
    if config.backbone != "conv":
        return CPU_TASKS_AT_ONCE
    drawings = config.ways * (config.shots + config.queries)  # a task's query pass: its support and queries together
    return max(1, CPU_IMAGES_AT_ONCE * 64 // (drawings * config.channels))


def task_seed(seed: int, iteration: int) -> int:
    """The seed of iteration i's meta-batch: the task sequence depends on nothing but the run's seed."""
    return seed * 1_000_000 + iteration


def make_samplers(config: Config) -> dict:
    data = load_omniglot(config.data_root)
    return {name: TaskSampler(data.ink, characters, config.ways, config.shots, config.queries,
                              augment=config.augment if name == "train" else "none")
            for name, characters in split_characters(data, config.split).items()}


def training_device(name: str) -> torch.device:
    """The device that `Config.device` names; "auto" takes a CUDA GPU when torch sees one, else an Apple GPU
    (mps, on a Mac), else the CPU.

    On a CUDA GPU, convolutions and matrix products keep full float32 (no TF32), so that a run there computes
    what it would on a CPU, up to rounding.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda: this torch sees no CUDA GPU; choose device cpu or auto")
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device mps: this torch sees no Apple GPU (mps needs a Mac); choose device cpu or auto")
    return torch.device(name)


def initial_model(config: Config) -> torch.nn.Module:
    torch.manual_seed(config.seed)
    norm_steps = config.inner_steps if config.per_step_bn else None  # MAML++'s per-step batch norm: a row per step
    return build_model(config.backbone, config.ways, config.channels, config.blocks, norm_steps)


def warm_start(model: torch.nn.Module, path: str) -> None:
    """Copies a trained checkpoint's weights into `model`, all but a classifier of another shape.

    A model meta-trained on 5-way tasks thus starts a 20-way run: its conv blocks are kept, and only the
    20-way classifier starts from random weights.
    """
    trained, _ = load_checkpoint(Path(path))
    own, weights = model.state_dict(), trained.state_dict()
    body = [name for name in own if not name.startswith("classifier.")]
    if set(own) != set(weights) or any(own[name].shape != weights[name].shape for name in body):
        raise ValueError(f"{path} holds another network than this run's {type(model).__name__}: --init-from needs "
                         f"the same backbone, channels and blocks, and per_step_bn (with it, inner_steps)")
    model.load_state_dict({n: weights[n] if weights[n].shape == own[n].shape else own[n] for n in own})


class RunInUse(RuntimeError):
    """Another process is training this run directory."""


def train(config: Config, run_dir: Path, resume: bool = False, should_stop=None, on_record=None,
          progress: bool = True) -> list:
    """Meta-trains `config` in `run_dir`; returns the metrics records written by this call.

    Only one process at a time may train a run directory: two would write over each other's records.
    """
    run_dir = Path(run_dir)
    if resume and (run_dir / CONFIG).exists():
        _refuse_changes(Config.load(run_dir / CONFIG), config, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _sole_trainer(run_dir), _stop_on_signals() as stop:  # a stop while loading data ends it too
        return _train(config, run_dir, resume, stop, should_stop, on_record, progress)


def _train(config: Config, run_dir: Path, resume: bool, stop, should_stop, on_record, progress: bool) -> list:
    config.save(run_dir / CONFIG)  # first: from now on, whenever the process dies, the run can be resumed
    device = training_device(config.device)
    samplers = make_samplers(config)
    model = initial_model(config).to(device)
    # MAML++'s learned inner learning rates, one per parameter and inner step, which Adam learns with the weights
    inner_lrs = maml.learned_inner_lrs(model, config.inner_lr, config.inner_steps) if config.learned_inner_lr else None
    inner_lr = inner_lrs or config.inner_lr  # what the inner loop steps with: them, else alpha
    optimizer = torch.optim.Adam([*model.parameters(), *(inner_lrs or {}).values()], lr=config.outer_lr)
    start, seconds = _restore(run_dir, model, optimizer, config, inner_lrs) if resume else _begin(run_dir)
    if start == 0 and config.init_from:
        warm_start(model, config.init_from)
    val_batch = samplers["val"].sample(config.val_tasks, seed=task_seed(config.seed, 0)).to(device=device)
    meta_backward = meta_backward_of(config.engine, tasks_at_once(config, device))
    saver = stop.saves_with(_Saver(run_dir, model, optimizer, config, start, inner_lrs))
    baseline_mb = reset_peak_memory()  # the process before its first meta-update: data, model, libraries

    records, iteration = [], start
    # The bar closes on an error too, before the traceback is printed: drawn at exit instead, its line would end
    # the log, whose last line the pages show as why a run failed.
    with tqdm(total=config.iterations, initial=start, desc=f"{config.algorithm} {config.ways}w{config.shots}s",
              unit="it", disable=not progress) as bar, open(run_dir / METRICS, "a") as metrics_file:
        while iteration < config.iterations and not (stop.is_set() or (should_stop and should_stop())):
            iteration += 1
            tick = time.perf_counter()
            batch = samplers["train"].sample(config.meta_batch, seed=task_seed(config.seed, iteration))
            batch = batch.to(device=device)
            optimizer.zero_grad()
            step_weights = multi_step_weights(config, iteration)
            multi_step = {} if step_weights is None else {"step_weights": step_weights}  # engine fewshot only
            loss, accuracy = meta_backward(model, batch, inner_lr, config.inner_steps,
                                           first_order_at(config, iteration), **multi_step)
            record = {"iteration": iteration, "train_loss": loss, "train_accuracy": accuracy}
            if baseline_mb is not None:  # read before this iteration's probe and validation
                record["training_memory_mb"] = round(_status_mb("VmHWM") - baseline_mb, 1)
            probe_seconds = 0.0
            if probes(config, iteration):  # first against second order, on this batch, before the update
                record["probe"] = measure_probe(model, batch, config, inner_lr)
                probe_seconds = record["probe"]["seconds"]
            with saver.lock:  # the update and its record: a stop never comes between them
                for group in optimizer.param_groups:  # the configuration's, not the saved one: --resume
                    group["lr"] = outer_lr_at(config, iteration)  # --outer-lr lowers it
                optimizer.step()
                if iteration % config.val_every == 0 or iteration == config.iterations:
                    record.update(validate(model, val_batch, config, inner_lr))
                elapsed = time.perf_counter() - tick - probe_seconds  # the run's own pace, probe left out
                seconds += elapsed
                record.update(seconds=round(seconds, 4), tasks_per_second=round(config.meta_batch / elapsed, 2),
                              peak_memory_mb=peak_memory_mb())
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                saver.done = iteration
                if iteration % config.checkpoint_every == 0:
                    saver.save()
            records.append(record)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}", refresh=False)
            bar.update(1)  # redraws at most every `mininterval` seconds (the app's runs: TQDM_MININTERVAL)
            if on_record:
                on_record(record)
    with saver.lock:
        saver.save()
    if iteration == config.iterations and config.test_tasks and not stop.is_set():
        finish(run_dir, model, config, samplers["test"], progress, saver.lock, inner_lr)
    return records


def outer_lr_at(config: Config, iteration: int) -> float:
    """beta at this iteration: outer_lr; with MAML++'s cosine annealing, a cosine from outer_lr at the first
    iteration down to COSINE_FLOOR * outer_lr after the last (torch's CosineAnnealingLR with T_max = iterations).
    It depends on the iteration alone, so a resumed run follows it too."""
    if not config.cosine_annealing:
        return config.outer_lr
    floor = COSINE_FLOOR * config.outer_lr
    return floor + (config.outer_lr - floor) * (1 + math.cos(math.pi * (iteration - 1) / config.iterations)) / 2


def multi_step_weights(config: Config, iteration: int) -> list | None:
    """The weights w_j of MAML++'s multi-step loss (maml.multi_step_query_loss) at this iteration, or None for
    plain MAML's loss, the last inner step's alone.

    Of N inner steps, step j weighs (1 - t) / N, plus t for the last one, t = iteration / multi_step_loss: equal
    weights at first, going linearly to the last step alone, which is plain MAML's loss from iteration
    multi_step_loss on. (MAML++ anneals the same way, and leaves the other steps a floor of 0.03 / N until then.)
    """
    if iteration >= config.multi_step_loss:  # also when it is 0: off
        return None
    t, steps = iteration / config.multi_step_loss, config.inner_steps
    return [(1 - t) / steps + (t if step == steps - 1 else 0.0) for step in range(steps)]


def first_order_at(config: Config, iteration: int) -> bool:
    """Whether this iteration's meta-gradient is first order: always for fomaml; for maml, before iteration
    second_order_from (MAML++'s derivative-order annealing: cheap first-order updates first, MAML's after)."""
    return config.first_order or iteration < config.second_order_from


def probes(config: Config, iteration: int) -> bool:
    """Whether this iteration measures first- against second-order MAML (probe.py). Only second-order iterations
    of this library's engine do: a first-order one would pay for a second-order pass, which distorts its pace.
    Not while MAML++'s multi-step loss is on either: the probe compares meta-gradients of plain MAML's loss."""
    return (not first_order_at(config, iteration) and config.engine == "fewshot" and config.probe_every > 0
            and iteration % config.probe_every == 0 and multi_step_weights(config, iteration) is None)


def measure_probe(model, batch, config: Config, inner_lr) -> dict:
    """probe.first_versus_second_order, after MAML's meta_backward on `batch`, with the seconds it took."""
    tick = time.perf_counter()
    measured = probe.first_versus_second_order(model, batch, inner_lr, config.inner_steps,
                                               tasks_at_once(config, batch.support_x.device))
    return {**measured, "seconds": round(time.perf_counter() - tick, 4)}


def validate(model, val_batch, config: Config, inner_lr) -> dict:
    """Mean query loss and accuracy on the fixed held-out tasks, adapted as in training."""
    losses, accuracies = adapted_task_losses(model, val_batch, inner_lr, config.inner_steps)
    return {"val_loss": losses.mean().item(), "val_accuracy": accuracies.mean().item()}


def finish(run_dir: Path, model, config: Config, test_sampler: TaskSampler, progress: bool = True,
           lock=None, inner_lr=None) -> dict:
    """Evaluates on the test split, records the accuracy in the checkpoint and writes evaluation.json
    (both under `lock`, so that a stop ending the process writes both or neither). `inner_lr`: the run's learned
    inner learning rates, if it has them (default: config.inner_lr)."""
    inner_lr = config.inner_lr if inner_lr is None else inner_lr
    with tqdm(total=config.test_tasks, desc="test tasks", disable=not progress) as bar:
        result = evaluate(model, test_sampler, inner_lr, config.test_inner_steps, config.test_tasks,
                          on_progress=lambda done, total: bar.update(done - bar.n))
    summary = {"split": f"{config.split}/test", **result.to_dict()}
    with lock or nullcontext():
        record_accuracy(run_dir / CHECKPOINT, summary)
        files.write_text(run_dir / EVALUATION, json.dumps(summary, indent=2) + "\n")
    return summary


def peak_memory_mb() -> float:
    """This process' peak resident memory so far (Linux reports ru_maxrss in KiB); since reset_peak_memory, once
    that has run."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def reset_peak_memory() -> float | None:
    """Sets this process' peak resident memory to its resident memory now, and returns that in MB; None where
    Linux's /proc cannot do it.

    Records then carry training_memory_mb, the peak since minus this baseline, read right after the meta-update:
    the memory that meta-training itself needed (a meta-update's activations and, for MAML, the second-order
    graph), without the dataset and the libraries (about 1.2 GB) that the whole process' peak includes. The peak
    only grows, and memory freed stays with the process (memory.py): once a validation or a probe has run, the
    figure includes theirs (runs.training_memory_mb reads it before).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size (Linux 4.0)
        return _status_mb("VmRSS")
    except (OSError, ValueError):
        return None


def _status_mb(key: str) -> float:
    """A memory figure of /proc/self/status (VmRSS: resident now, VmHWM: its peak), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {key} in /proc/self/status")


class _Saver:
    """Saves a run's model and optimizer; knows the iterations done and the iterations saved.

    Its `lock` is held while an iteration updates the model and writes its record, and while saving; so a
    stop that cannot wait for the end of an iteration can take the lock, save the last one done, and end.
    """

    def __init__(self, run_dir: Path, model, optimizer, config: Config, iteration: int, inner_lrs: dict | None):
        # The parameters themselves, which the optimizer updates in place: while torch.func transforms run,
        # the model's attributes hold their stand-ins, which another thread cannot save.
        self.weights = dict(model.named_parameters())
        self.inner_lrs = inner_lrs  # learned inner learning rates, if any, also updated in place
        self.run_dir, self.optimizer, self.config = run_dir, optimizer, config
        self.done = self.saved = iteration
        self.lock = threading.Lock()

    def save(self) -> None:
        """Saves the iterations done, unless they are saved already. The training state, one file, is what
        resumes a run; the checkpoint (the model for the app) follows it, and _restore rewrites it from the
        training state, should the process die between the two."""
        if self.done == self.saved:
            return
        save_training_state(self.run_dir / TRAINING_STATE, self.weights, self.optimizer, self.done, self.inner_lrs)
        save_checkpoint(self.run_dir / CHECKPOINT, self.weights,
                        checkpoint_metadata(self.config, self.done, inner_lrs=self.inner_lrs))
        self.saved = self.done


def _refuse_changes(saved: Config, config: Config, run_dir: Path) -> None:
    """ValueError if `config` changes what a resumed run must keep (see config.changes_refused_on_resume)."""
    changed = changes_refused_on_resume(saved, config)
    if not changed:
        return
    asked = ", ".join(f"{name} (the run has {getattr(saved, name)}, you asked for {getattr(config, name)})"
                      for name in changed)
    network = {"backbone", "channels", "blocks", "per_step_bn"} | ({"inner_steps"} if saved.per_step_bn else set())
    same_network = not network & set(changed)  # what --init-from needs
    start = f" (--init-from {run_dir / CHECKPOINT} starts it from this run's weights)" if same_network else ""
    raise ValueError(f"--resume cannot change {asked}; start a new run in another --run-dir{start}")


def _begin(run_dir: Path) -> tuple[int, float]:
    """A new run: no records, no saved state. Returns (iteration, seconds trained), both zero."""
    files.write_text(run_dir / METRICS, "")
    (run_dir / TRAINING_STATE).unlink(missing_ok=True)
    return 0, 0.0


def _restore(run_dir: Path, model, optimizer, config: Config, inner_lrs: dict | None) -> tuple[int, float]:
    """Loads the last saved training state (with the learned `inner_lrs`, if the run has them), rewrites the
    checkpoint from it, and cuts the metrics back to it (all of them if the run died before its first save).
    Returns (iteration, seconds trained)."""
    if (run_dir / TRAINING_STATE).exists():
        iteration = load_training_state(run_dir / TRAINING_STATE, model, optimizer, inner_lrs)
        save_checkpoint(run_dir / CHECKPOINT, model, checkpoint_metadata(config, iteration, inner_lrs=inner_lrs))
    elif (run_dir / CHECKPOINT).exists():
        raise CheckpointError(f"{run_dir} has a checkpoint but no {TRAINING_STATE} to resume from (saved by an "
                              f"earlier fewshot?); start a new run with --init-from {run_dir / CHECKPOINT}")
    else:
        iteration = 0
    kept = metrics.truncate(run_dir / METRICS, iteration)
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


class _StopRequest:
    """Set by the first Ctrl-C or SIGTERM: training ends after the current iteration and saves it.

    An iteration of a large model, the final test evaluation, or loading the data can take minutes; so
    STOP_GRACE seconds after the request, if the process still runs, a timer takes the saver's lock (never
    held inside an update), saves the last iteration done, and ends the process. Python runs signal handlers
    only between the main thread's bytecodes, late when that thread is in a long torch call; so the signal
    also wakes a watcher thread at once, through the wakeup file descriptor, which starts that timer.
    """

    def __init__(self):
        self.event, self.saver, self.timer, self.interrupts = threading.Event(), None, None, 0
        self._once = threading.Lock()

    def is_set(self) -> bool:
        return self.event.is_set()

    def saves_with(self, saver: _Saver) -> _Saver:
        self.saver = saver
        return saver

    def request(self) -> None:
        with self._once:
            if self.is_set():
                return
            self.event.set()
            print("\nStopping after this iteration and saving the checkpoint ...", flush=True)
            self.timer = threading.Timer(STOP_GRACE, self._end_now)
            self.timer.daemon = True
            self.timer.start()

    def on_signal(self, signum, frame) -> None:
        """The signal handler, in the main thread."""
        self.interrupts += signum == signal.SIGINT
        if self.interrupts > 1:
            raise KeyboardInterrupt  # a second Ctrl-C: at once (every file is written atomically)
        self.request()

    def watch(self, wakeups: socket.socket) -> None:
        """The watcher thread: each byte is a signal received; the end of the stream, the end of training."""
        while wakeups.recv(1):
            self.request()

    def _end_now(self) -> None:
        with self.saver.lock if self.saver else nullcontext():
            if self.saver:
                self.saver.save()
            saved = f"; saved iteration {self.saver.saved}" if self.saver else ""
            print(f"Stopped without waiting for the iteration under way{saved}.", flush=True)
            sys.stderr.flush()
            os._exit(0)


@contextmanager
def _stop_on_signals():
    """A _StopRequest that Ctrl-C and SIGTERM set, while training runs in this (main) thread."""
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals reach the main thread only; callers there pass should_stop instead
        return
    wakeups, wakeup_writer = socket.socketpair()
    wakeup_writer.setblocking(False)
    previous_wakeup = signal.set_wakeup_fd(wakeup_writer.fileno(), warn_on_full_buffer=False)
    previous = {s: signal.signal(s, stop.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    watcher = threading.Thread(target=stop.watch, args=(wakeups,), daemon=True)
    watcher.start()
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(previous_wakeup)
        wakeup_writer.close()  # the watcher reads the end of the stream, and ends
        watcher.join()
        wakeups.close()
        if stop.timer:
            stop.timer.cancel()
