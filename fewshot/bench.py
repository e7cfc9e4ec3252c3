"""Seconds per meta-iteration: the original notebook's learn2learn loop against this library's engine.

Both run in this process, on the same initial weights and the same meta-batches, for MAML and FOMAML at
5-way 1-shot and 5-way 5-shot, meta-batch 32 as in the notebook.
"""

import dataclasses
import time

import torch

from .config import Config
from .training import initial_model, meta_backward_of, make_samplers, task_seed

SETTINGS = [(algorithm, ways, shots) for algorithm in ("maml", "fomaml") for ways, shots in ((5, 1), (5, 5))]


def seconds_per_iteration(engine: str, config: Config, sampler, repeats: int) -> float:
    model = initial_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.outer_lr)
    times = []
    for iteration in range(repeats + 1):  # the first iteration warms up and is not counted
        batch = sampler.sample(config.meta_batch, seed=task_seed(config.seed, iteration))
        tick = time.perf_counter()
        optimizer.zero_grad()
        meta_backward_of(engine)(model, batch, config.inner_lr, config.inner_steps, config.first_order)
        optimizer.step()
        times.append(time.perf_counter() - tick)
    return sorted(times[1:])[len(times[1:]) // 2]  # the median


def bench(base: Config, repeats: int = 5) -> list:
    rows = []
    print(f"{'algorithm':<9} {'task':<5} {'learn2learn s/it':>17} {'fewshot s/it':>13} {'speed-up':>9}")
    for algorithm, ways, shots in SETTINGS:
        config = dataclasses.replace(base, algorithm=algorithm, ways=ways, shots=shots, meta_batch=32)
        sampler = make_samplers(config)["train"]
        notebook = seconds_per_iteration("learn2learn", config, sampler, repeats)
        ours = seconds_per_iteration("fewshot", config, sampler, repeats)
        rows.append({"algorithm": algorithm, "ways": ways, "shots": shots, "learn2learn": notebook,
                     "fewshot": ours, "speedup": notebook / ours})
        print(f"{algorithm:<9} {f'{ways}w{shots}s':<5} {notebook:>17.3f} {ours:>13.3f} {notebook / ours:>8.2f}x",
              flush=True)
    return rows
