"""Seconds per meta-iteration: the original notebook's loop against this library's engine, in one process.

Three meta-gradients of the same setting, timed iteration by iteration in turn (interleaved, so that a busy
machine slows all three alike), each on the same meta-batches:
    notebook    the notebook's exact loop: learn2learn's OmniglotCNN (torch's BatchNorm) in l2l.algorithms.MAML,
                clone() and adapt() task by task
    l2l loop    the same loop on this library's model (its task batch norm): `--engine learn2learn`
    fewshot     this library's engine: every task at once, torch.func and vmap (maml.py)
GFLOP/s is the work of one meta-iteration, counted on the task-by-task loop (FlopCounterMode miscounts the
grouped convolutions that vmap makes), over its seconds; a large matrix product's rate is printed for scale.
"""

import dataclasses
import time
from functools import partial

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import Config
from .training import initial_model, make_samplers, meta_backward_of, task_seed

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
             "l2l loop": (meta_backward_of("learn2learn"), initial_model(config)),
             "fewshot": (meta_backward_of("fewshot"), initial_model(config))}
    return {name: (backward, model, torch.optim.Adam(model.parameters(), lr=config.outer_lr))
            for name, (backward, model) in pairs.items()}


def seconds_per_iteration(config: Config, sampler, repeats: int) -> dict:
    """Each engine's median seconds per meta-iteration, the engines taking turns; the first is a warm-up."""
    times = {name: [] for name in ("notebook", "l2l loop", "fewshot")}
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
    print(f"{'algorithm':<9} {'task':<5} {'steps':>5} {'notebook s/it':>14} {'l2l loop s/it':>14} "
          f"{'fewshot s/it':>13} {'speed-up':>9} {'vs l2l loop':>12} {'GFLOP/s':>8}")
    for algorithm, ways, shots, steps in SETTINGS:
        config = dataclasses.replace(base, algorithm=algorithm, backbone="conv", ways=ways, shots=shots,
                                     inner_steps=steps, meta_batch=32)
        sampler = make_samplers(config)["train"]
        seconds = seconds_per_iteration(config, sampler, repeats)
        gflops = flops_per_iteration(config, sampler) / seconds["fewshot"] / 1e9
        rows.append({"algorithm": algorithm, "ways": ways, "shots": shots, "steps": steps, **seconds,
                     "speedup": seconds["notebook"] / seconds["fewshot"], "gflops": gflops})
        print(f"{algorithm:<9} {f'{ways}w{shots}s':<5} {steps:>5} {seconds['notebook']:>14.3f} "
              f"{seconds['l2l loop']:>14.3f} {seconds['fewshot']:>13.3f} "
              f"{seconds['notebook'] / seconds['fewshot']:>8.2f}x {seconds['l2l loop'] / seconds['fewshot']:>11.2f}x "
              f"{gflops:>8.1f}", flush=True)
    print(f"a {MATMUL_SIZE}x{MATMUL_SIZE} float32 matrix product: {matmul_gflops():.1f} GFLOP/s")
    return rows
