"""Seconds per meta-iteration: the original notebook's loop against this library's engine, in one process.

Three meta-gradients of the same setting, timed iteration by iteration in turn (interleaved, so that a busy
machine slows all three alike), each on the same meta-batches:
    notebook     the notebook's exact loop: learn2learn's OmniglotCNN (torch's BatchNorm) in l2l.algorithms.MAML,
                 clone() and adapt() task by task
    all at once  this library's engine, torch.func and vmap (maml.py), all 32 tasks at once (--tasks-at-once 32)
    fewshot      the same engine, adapting --tasks-at-once tasks at a time (default: 8 on a CPU)
GFLOP/s is the work of one meta-iteration, counted on the task-by-task loop (FlopCounterMode miscounts the
grouped convolutions that vmap makes), over its seconds; a large matrix product's rate is printed for scale.
Peak memory is measured after the times, engine after engine (peak_memory_of).
"""

import dataclasses
import time
from functools import partial

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import Config
from .memory import release_freed_memory
from .tasks import TaskBatch
from .training import (initial_model, make_samplers, meta_backward_of, peak_memory_mb, reset_peak_memory, task_seed,
                       tasks_at_once)

ENGINES = ("notebook", "all at once", "fewshot")
SETTINGS = [(algorithm, ways, shots, steps) for algorithm in ("maml", "fomaml")
            for ways, shots, steps in ((5, 1, 1), (5, 5, 1), (20, 1, 1), (5, 1, 5))]
MATMUL_SIZE = 2048


def engines(config: Config) -> dict:
    """Each engine's meta_backward and its own model and Adam, all from the seed's initial weights."""
    from . import notebook_loop  # imports learn2learn, and with it gym, only for the bench
    torch.manual_seed(config.seed)
    notebook_model = notebook_loop.notebook_model(config.ways, config.channels, config.blocks)
    pairs = {"notebook": (partial(notebook_loop.meta_backward, query_logits=notebook_loop.logits_with_own_statistics),
                          notebook_model),
             "all at once": (meta_backward_of("fewshot"), initial_model(config)),
             "fewshot": (meta_backward_of("fewshot", tasks_at_once(config, torch.device("cpu"))),
                         initial_model(config))}
    return {name: (backward, model, torch.optim.Adam(model.parameters(), lr=config.outer_lr))
            for name, (backward, model) in pairs.items()}


def seconds_per_iteration(config: Config, sampler, repeats: int) -> dict:
    """Each engine's median seconds per meta-iteration, the engines taking turns; the first is a warm-up."""
    times = {name: [] for name in ENGINES}
    timed = engines(config)
    for iteration in range(repeats + 1):
        batch = sampler.sample(config.meta_batch, seed=task_seed(config.seed, iteration))
        for name, (meta_backward, model, optimizer) in timed.items():
            tick = time.perf_counter()
            optimizer.zero_grad()
            meta_backward(model, batch, config.inner_lr, config.inner_steps, config.first_order)
            optimizer.step()
            times[name].append(time.perf_counter() - tick)
    return {name: sorted(values[1:])[len(values[1:]) // 2] for name, values in times.items()}


def peak_memory_of(config: Config) -> dict:
    """Each engine's peak memory (MB) for `config`'s meta-iterations, one engine after another. Memory that one
    engine frees stays with the process (memory.py) and would hide what the next one needs, so it goes back to the
    kernel first. Against a fresh process for each engine (MAML 5w1s, conv 64x4, 32 tasks, 1 thread): this
    engine's figure within 10 % of it in either order, the notebook loop's 15 to 40 % below it."""
    figures = {}
    for name in ENGINES:
        release_freed_memory()
        figures[name] = engine_peak_memory_mb(config, name)
    return figures


def engine_peak_memory_mb(config: Config, name: str, iterations: int = 2) -> float | None:
    """The peak resident memory (MB) of `iterations` meta-iterations of engine `name`, above what the process held
    before the first: its model and one meta-batch of random drawings (memory depends on the sizes only). None
    where Linux's /proc cannot reset the peak."""
    meta_backward, model, optimizer = engines(config)[name]
    tasks, ways = config.meta_batch, config.ways
    batch = TaskBatch(torch.rand(tasks, ways * config.shots, 1, 28, 28),
                      torch.arange(ways).repeat_interleave(config.shots).repeat(tasks, 1),
                      torch.rand(tasks, ways * config.queries, 1, 28, 28),
                      torch.arange(ways).repeat_interleave(config.queries).repeat(tasks, 1))
    baseline = reset_peak_memory()
    for _ in range(iterations):
        optimizer.zero_grad()
        meta_backward(model, batch, config.inner_lr, config.inner_steps, config.first_order)
        optimizer.step()
    return None if baseline is None else peak_memory_mb() - baseline


def flops_per_iteration(config: Config, sampler) -> float:
    """Floating-point operations of one meta-iteration, counted on the task-by-task loop."""
    model = initial_model(config)
    batch = sampler.sample(config.meta_batch, seed=task_seed(config.seed, 0))
    with FlopCounterMode(display=False) as counter:
        meta_backward_of("learn2learn")(model, batch, config.inner_lr, config.inner_steps, config.first_order)
    return counter.get_total_flops()


def matmul_gflops(size: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """The best rate of a size x size float32 matrix product on this machine, in GFLOP/s."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    best = float("inf")
    for _ in range(repeats):
        tick = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - tick)
    return 2 * size**3 / best / 1e9


def bench(base: Config, repeats: int = 5) -> list:
    rows = []
    print(f"{'algorithm':<9} {'task':<5} {'steps':>5} {'notebook s/it':>14} {'all at once s/it':>17} "
          f"{'fewshot s/it':>13} {'speed-up':>9} {'vs all at once':>15} {'GFLOP/s':>8} {'notebook MB':>12} "
          f"{'all at once MB':>15} {'fewshot MB':>11} {'memory ratio':>13}")
    for algorithm, ways, shots, steps in SETTINGS:
        config = dataclasses.replace(base, algorithm=algorithm, backbone="conv", ways=ways, shots=shots,
                                     inner_steps=steps, meta_batch=32)
        sampler = make_samplers(config)["train"]
        seconds = seconds_per_iteration(config, sampler, repeats)
        gflops = flops_per_iteration(config, sampler) / seconds["fewshot"] / 1e9
        memory = peak_memory_of(config)
        rows.append({"algorithm": algorithm, "ways": ways, "shots": shots, "steps": steps, **seconds,
                     "speedup": seconds["notebook"] / seconds["fewshot"], "gflops": gflops,
                     "memory_mb": memory})
        print(f"{algorithm:<9} {f'{ways}w{shots}s':<5} {steps:>5} {seconds['notebook']:>14.3f} "
              f"{seconds['all at once']:>17.3f} {seconds['fewshot']:>13.3f} "
              f"{seconds['notebook'] / seconds['fewshot']:>8.2f}x "
              f"{seconds['all at once'] / seconds['fewshot']:>14.2f}x "
              f"{gflops:>8.1f} {megabytes(memory['notebook']):>12} {megabytes(memory['all at once']):>15} "
              f"{megabytes(memory['fewshot']):>11} {memory_ratio(memory):>13}", flush=True)
    print(f"a {MATMUL_SIZE}x{MATMUL_SIZE} float32 matrix product: {matmul_gflops():.1f} GFLOP/s")
    return rows


def megabytes(value: float | None) -> str:
    """To a tenth of a MB: a tiny model's notebook loop can peak at a quarter of one."""
    return "n/a" if value is None else f"{value:.1f}"


def memory_ratio(memory: dict) -> str:
    """This engine's peak memory over the notebook loop's."""
    if memory["notebook"] is None or memory["fewshot"] is None:
        return "n/a"
    return f"{memory['fewshot'] / max(memory['notebook'], 1.0):.2f}x"
