"""Few-shot accuracy over many test tasks, with its 95 % confidence interval."""

import math
from dataclasses import asdict, dataclass

import torch

from . import maml
from .tasks import TaskSampler

TASKS_AT_ONCE = 100  # tasks sampled together (which tasks an evaluation draws depends on it: keep it)
CPU_GROUP = 16  # tasks adapted together on a CPU, whose caches then hold their layers' outputs: 200 tasks of
# 5w1s took 1.15 s on conv 64x4 against 3.1 s all at once (8 at a time as 16; one thread, 2-core machine)
TEST_SEED = 2_000_000_000  # test tasks are the same for every model, whatever its training seed


@dataclass
class Evaluation:
    accuracy: float  # mean query accuracy over tasks
    ci95: float  # half-width of the 95 % confidence interval of that mean
    loss: float
    tasks: int
    inner_steps: int
    ways: int
    shots: int
    queries: int
    transductive: bool = False  # batch norm used the queries' statistics, not the support set's

    @property
    def task(self) -> str:
        return f"{self.ways}w{self.shots}s"

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        statistics = ", transductive batch norm" if self.transductive else ""
        return (f"accuracy {100 * self.accuracy:.2f} % +- {100 * self.ci95:.2f} % (95 % interval, "
                f"{self.tasks} tasks, {self.inner_steps} inner steps{statistics})")


def confidence_interval(values: torch.Tensor) -> tuple[float, float]:
    """Mean and the half-width of its 95 % normal-approximation interval: 1.96 * sample std / sqrt(n)."""
    values = values.double()
    if len(values) < 2:
        return values.mean().item(), float("nan")
    return values.mean().item(), 1.96 * values.std(unbiased=True).item() / math.sqrt(len(values))


def adapted_task_metrics(model, sampler: TaskSampler, tasks: int, seed: int, inner_lr, steps: int,
                         chunk: int = TASKS_AT_ONCE, on_progress=None, transductive: bool = False):
    """Query loss and accuracy of each of `tasks` tasks after `steps` inner steps: two tensors of [tasks].

    `inner_lr` is alpha, or a checkpoint's learned inner learning rates (checkpoints.inner_lr_of; maml.step_size).
    """
    losses, accuracies = [], []
    parameter = next(model.parameters())
    for start in range(0, tasks, chunk):  # task k is task k - start of seed + start: see TaskSampler.sample
        batch = sampler.sample(min(chunk, tasks - start), seed=seed + start).to(parameter.dtype, parameter.device)
        task_loss, task_accuracy = adapted_task_losses(model, batch, inner_lr, steps, transductive)
        losses.append(task_loss.cpu())
        accuracies.append(task_accuracy.cpu())
        if on_progress:
            on_progress(min(start + chunk, tasks), tasks)
    return torch.cat(losses), torch.cat(accuracies)


def adapted_task_losses(model, batch, inner_lr, steps: int, transductive: bool = False):
    """maml.task_losses without a meta-gradient (validation, tests), CPU_GROUP tasks at a time on a CPU, all at
    once elsewhere."""
    size = CPU_GROUP if batch.support_x.device.type == "cpu" else 0  # 0: all at once
    with torch.no_grad():  # no meta-gradient; torch.func still takes the inner gradients
        results = [maml.task_losses(model, group, inner_lr, steps, first_order=True, transductive=transductive)
                   for group in batch.groups(size)]
    return torch.cat([losses for losses, _ in results]), torch.cat([accuracies for _, accuracies in results])


def evaluate(model, sampler: TaskSampler, inner_lr, steps: int, tasks: int = 600,
             seed: int = TEST_SEED, on_progress=None, transductive: bool = False) -> Evaluation:
    losses, accuracies = adapted_task_metrics(model, sampler, tasks, seed, inner_lr, steps,
                                              on_progress=on_progress, transductive=transductive)
    accuracy, ci95 = confidence_interval(accuracies)
    return Evaluation(accuracy, ci95, losses.mean().item(), tasks, steps, sampler.ways, sampler.shots,
                      sampler.queries, transductive)
