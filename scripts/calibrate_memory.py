"""Measures what fewshot/limits.py's memory_gb estimates: the peak resident memory of two meta-updates
(fewshot.maml.meta_backward, a group of tasks at a time, as training on a CPU), or of a validation, on random
tasks, each size in a fresh process, one thread.

    python3 scripts/calibrate_memory.py        # about 5 minutes on 2 cores; prints measured and estimated GB
"""

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fewshot.config import Config  # noqa: E402
from fewshot.limits import memory_gb  # noqa: E402

# Changes from Config's sizes. With val_tasks, a validation of that many tasks; else a meta-update.
SIZES = [dict(), dict(algorithm="fomaml"), dict(meta_batch=1, channels=8), dict(meta_batch=8), dict(tasks_at_once=32),
         dict(tasks_at_once=64, meta_batch=64), dict(channels=32), dict(channels=128), dict(channels=256),
         dict(shots=5), dict(queries=15), dict(inner_steps=3), dict(inner_steps=5),
         dict(inner_steps=5, multi_step_loss=1000), dict(blocks=2), dict(blocks=6), dict(ways=20, meta_batch=16),
         dict(ways=20, shots=5, queries=15, meta_batch=4), dict(backbone="fc"),
         dict(backbone="fc", ways=20, shots=5, queries=15), dict(channels=256, blocks=6, meta_batch=8),
         dict(channels=256, blocks=6, meta_batch=8, inner_steps=3), dict(channels=512, meta_batch=4),
         dict(channels=128, blocks=3, shots=5), dict(channels=128, blocks=3, shots=5, algorithm="fomaml"),
         dict(val_tasks=32), dict(val_tasks=256), dict(val_tasks=128, inner_steps=5),
         dict(val_tasks=32, ways=20, shots=5, queries=15), dict(val_tasks=100, channels=128, blocks=3, shots=5)]

MEASURE = """
import json, sys, torch
from fewshot import maml
from fewshot.config import Config
from fewshot.evaluation import adapted_task_losses
from fewshot.memory import keep_freed_memory
from fewshot.models import build_model
from fewshot.tasks import TaskBatch
from fewshot.training import multi_step_weights, tasks_at_once

keep_freed_memory()  # as training does
config, validation = Config(**json.loads(sys.argv[1])), sys.argv[2] == "validation"
model = build_model(config.backbone, config.ways, config.channels, config.blocks)
tasks, ways = config.val_tasks if validation else config.meta_batch, config.ways

def labels(per_class):
    return torch.arange(ways).repeat_interleave(per_class).expand(tasks, -1)

batch = TaskBatch(torch.rand(tasks, ways * config.shots, 1, 28, 28), labels(config.shots),
                  torch.rand(tasks, ways * config.queries, 1, 28, 28), labels(config.queries))

def kilobytes(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))

open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from here
before = kilobytes("VmRSS")
for _ in range(2):
    model.zero_grad()
    if validation:  # as training validates, a group of tasks at a time
        adapted_task_losses(model, batch, config.inner_lr, config.inner_steps)
    else:  # as training meta-trains on a CPU, a group of tasks at a time
        maml.meta_backward(model, batch, config.inner_lr, config.inner_steps, config.first_order,
                           multi_step_weights(config, 1), tasks_at_once(config, torch.device("cpu")))
print((kilobytes("VmHWM") - before) * 1024 / 1e9)
"""


def measured_gb(config: Config, validation: bool) -> float:
    values = {name: value for name, value in config.to_dict().items() if name != "data_root"}
    output = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(values), "validation" if validation else ""],
                            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    return float(output.stdout)


def main() -> None:
    print(f"{'sizes (changes from Config)':<62} {'measured GB':>11} {'estimate GB':>11} {'ratio':>6}")
    for change in SIZES:
        validation = "val_tasks" in change
        measured_only = {"meta_batch": 1} if validation else {"val_tasks": 1}  # what is not measured costs nothing
        config = Config(**{**measured_only, "test_tasks": 0, **change})
        measured, estimate = measured_gb(config, validation), memory_gb(config)
        label = ("validation " if validation else "meta-update ") + json.dumps(change)
        print(f"{label:<62} {measured:>11.2f} {estimate:>11.2f} {measured / estimate:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
