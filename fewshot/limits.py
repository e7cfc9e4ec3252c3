"""What one server lets a class ask of it: the largest sizes the app's form takes, the memory a run may use,
and how many runs may train at once. The app enforces them (runs.start); the command line does not.

The defaults fit the machine the app was written on, 2 cores and 24 GB shared by the server, its pages and
the runs. An instructor changes any of them with an environment variable before starting the server:
FEWSHOT_MAX_CHANNELS=512, FEWSHOT_MAX_MEMORY_GB=16, FEWSHOT_MAX_RUNS=4, ... A value that is no number, or that
no form could use, is an error (ValueError naming the variable): the app checks them all first (setting_problems)
and shows what to fix, never a traceback.
"""

import functools
import math
import os

import torch

from .config import DRAWINGS_PER_CHARACTER, FIELDS, Config
from .evaluation import CPU_GROUP
from .models import FCNet
from .training import tasks_at_once

MAXIMA = {  # the largest value of each Config field that the app accepts; FEWSHOT_MAX_<FIELD> overrides it
    "channels": 256,  # 4 times the paper's 64; a model of 256 x 6 blocks is a 12 MB checkpoint
    "blocks": 6,  # a drawing is 1 pixel wide after 5 blocks (28, 14, 7, 4, 2, 1); more add only weights
    "ways": 50,  # 2.5 times the paper's largest, 20; the smallest split (validation) has 400 classes
    "shots": DRAWINGS_PER_CHARACTER - 1,  # Omniglot has 20 drawings per character, and Config takes
    "queries": DRAWINGS_PER_CHARACTER - 1,  # shots + queries <= 20
    "meta_batch": 128,  # 4 times the paper's 32
    "iterations": 100_000,  # the paper's 60,000 and more; each adds a line to metrics.jsonl, which the pages read
    "inner_steps": 10,  # the paper trains with 1 to 5; a meta-update's time and memory grow with each step
    "test_inner_steps": 50,  # the paper tests with 3 to 10; only time grows: no meta-gradient is kept
    "val_tasks": 500,  # only time grows: validation adapts them a group at a time (evaluation.CPU_GROUP)
    "test_tasks": 2000,  # the paper's 600 and more; only time grows: they are adapted 100 at a time
}
MAX_MEMORY_GB = 8  # per run. The original notebook's sizes (conv 128x3, 5-way 5-shot, meta-batch 32) measured
# 3.5-4.0 GB a meta-update and 5.4 GB testing 100 tasks at once (7.2 estimated). Two runs at this limit, with
# their libraries and data (0.5 GB each), leave 7 of the 24 GB to the server, its pages and the system.

# The memory estimate, calibrated on the peak resident memory of real meta-updates (fewshot.maml.meta_backward)
# and validations on random tasks, one thread (scripts/calibrate_memory.py): 28 sizes, MAML and FOMAML, conv
# and fc, 0.2 to 5.8 GB, measured 0.5 to 1.1 times the estimate (FOMAML and the fc net the least; one size
# measured twice can differ by 20 %).
BASE_BYTES = 0.27e9  # a meta-update's fixed cost: torch.func and vmap, and the kernels they page in
BYTES_PER_ACTIVATION = 44  # each number a layer outputs is kept about 11 times (float32: forward and backward)
BYTES_PER_WEIGHT = 8  # each task's adapted copy of the weights, and its gradient, at every inner step
EVALUATION_SHARE = 0.6  # a validation or test task keeps no meta-gradient: 0.5 to 0.6 of a meta-update's task
LARGEST_SETTING = 10**9  # no whole-number setting above it: no Config field takes more (iterations' at_most), and a
# form's number field takes at most 2**53 - 1 (Streamlit raises above it)


def maximum(name: str) -> int | None:
    """The largest value the app accepts for Config field `name`, or None where it sets none. Never below the
    field's own least value, nor 1: the form's field for it would take no value (a task has 2 ways or more)."""
    if name not in MAXIMA:
        return None
    return _setting(f"FEWSHOT_MAX_{name.upper()}", MAXIMA[name], least=max(1, FIELDS[name].metadata["at_least"]))


def max_memory_gb() -> float:
    """The memory (GB) that one run's meta-updates and evaluations may need: FEWSHOT_MAX_MEMORY_GB."""
    return _setting("FEWSHOT_MAX_MEMORY_GB", MAX_MEMORY_GB, float)


def max_runs() -> int:
    """How many runs may train at once, on this server or its Ray cluster: FEWSHOT_MAX_RUNS, else one per
    core but one, left to the pages, and at least the two of a comparison (on two cores, the runs' lower
    priority leaves the pages their share). More runs than cores slow every run and every page alike: ten
    runs on two cores took 9.8 GB, and the Draw page 50 s to load. Runs started beyond it wait in a queue."""
    return _setting("FEWSHOT_MAX_RUNS", max(2, _cores() - 1))


def threads_per_run() -> int:
    """The torch threads of each run: the cores but one shared out among max_runs() runs, at least one, so
    that running trainers never fight over cores."""
    return max(1, (_cores() - 1) // max_runs())


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def memory_gb(config: Config) -> float:
    """The estimated peak memory, in GB, of what a run computes on a CPU, beyond its libraries and data: a
    meta-update's group of tasks adapted at once (training.tasks_at_once), or a validation's or test's
    (evaluation.CPU_GROUP), whichever is most."""
    group = min(config.meta_batch, tasks_at_once(config, torch.device("cpu")))
    query_passes = config.inner_steps if config.multi_step_loss else 1  # MAML++'s loss: the queries after each step
    meta_update = group * task_bytes(config, config.inner_steps, query_passes)
    evaluation_tasks = min(max(config.val_tasks, config.test_tasks), CPU_GROUP)
    evaluation = evaluation_tasks * EVALUATION_SHARE * task_bytes(config, 1)
    return (BASE_BYTES + max(meta_update, evaluation)) / 1e9


def task_bytes(config: Config, steps: int, query_passes: int = 1) -> float:
    """Memory of one task in a meta-update with `steps` inner steps: the layer outputs of every forward pass
    (the support set at each step, then support and queries together, `query_passes` times), and a copy of the
    weights per step."""
    images = config.ways * (config.shots * steps + (config.shots + config.queries) * query_passes)
    if config.backbone == "conv":
        side, pixels = 28, 0
        for _ in range(config.blocks):  # each block's stride-2 conv halves the side, rounding up
            side = (side + 1) // 2
            pixels += side * side
        outputs, weights = config.channels * pixels, 9 * config.channels ** 2 * (config.blocks - 1)
    else:
        sizes = (28 * 28,) + FCNet.SIZES
        outputs, weights = sum(FCNet.SIZES), sum(a * b for a, b in zip(sizes, sizes[1:]))
    return BYTES_PER_ACTIVATION * images * outputs + BYTES_PER_WEIGHT * (steps + 1) * weights


def check(config: Config) -> list:
    """Every way in which `config` asks more of this server than it allows, one line each; [] if none."""
    problems = [f"{name} must be at most {maximum(name)} here, got {getattr(config, name)} "
                f"(FEWSHOT_MAX_{name.upper()} sets this limit)"
                for name in MAXIMA if getattr(config, name) > maximum(name)]
    if memory_gb(config) > max_memory_gb():
        problems.append(f"this run would need about {memory_gb(config):.1f} GB of memory, over the "
                        f"{max_memory_gb():g} GB a run may use here (FEWSHOT_MAX_MEMORY_GB): lower channels, "
                        "ways, shots, queries, inner_steps or tasks_at_once")
    return problems


def setting_problems() -> list:
    """What is wrong with this server's FEWSHOT_MAX_* variables, one line each; [] if nothing."""
    problems = []
    for read in [functools.partial(maximum, name) for name in MAXIMA] + [max_memory_gb, max_runs]:
        try:
            read()
        except ValueError as error:
            problems.append(str(error))
    return problems


def _setting(variable: str, default, kind=int, least: int = 1):
    """The number in environment variable `variable`, else `default`: a whole number from `least` to
    LARGEST_SETTING, or (kind float) a positive finite number; ValueError saying what it must be otherwise."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:  # "abc", "1.5" for a whole number
        value = math.nan
    if kind is float and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{variable} must be a positive number, got {text!r}")
    if kind is int and not least <= value <= LARGEST_SETTING:
        raise ValueError(f"{variable} must be a whole number from {least} to {LARGEST_SETTING:,}, got {text!r}")
    return value
