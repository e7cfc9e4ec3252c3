import copy
import math
from collections import Counter

import pytest
import torch
from torch.nn import functional as F

from fewshot.evaluation import adapted_task_metrics, confidence_interval, evaluate
from fewshot.models import build_model
from fewshot.tasks import TaskSampler


def test_interval_formula():
    values = torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0])
    mean, half_width = confidence_interval(values)
    assert math.isclose(mean, 0.6, rel_tol=1e-6)
    assert math.isclose(half_width, 1.96 * values.std().item() / math.sqrt(5), rel_tol=1e-6)


def test_interval_covers_the_true_mean_95_percent_of_the_time():
    generator = torch.Generator().manual_seed(0)
    covered = 0
    for _ in range(1000):
        sample = (torch.rand(600, generator=generator) < 0.7).float()  # task accuracies, true mean 0.7
        mean, half_width = confidence_interval(sample)
        covered += abs(mean - 0.7) <= half_width
    assert 930 <= covered <= 970


def test_evaluate_counts_tasks_and_is_repeatable():
    torch.manual_seed(0)
    model = build_model("conv", 5, channels=8, blocks=2)
    sampler = TaskSampler(torch.rand(20, 20, 28, 28), list(range(20)), 5, 1, 2)
    first = evaluate(model, sampler, inner_lr=0.4, steps=1, tasks=30)
    second = evaluate(model, sampler, inner_lr=0.4, steps=1, tasks=30)
    assert first.tasks == 30 and first.inner_steps == 1
    assert first.accuracy == second.accuracy and 0 < first.ci95 < 0.5


def adapted_by_hand(model, batch, inner_lr: float, steps: int, transductive: bool) -> tuple[float, float]:
    """Mean query loss and accuracy over the batch's tasks, each adapted by `steps` plain SGD steps on its
    support set: a copy of the model per task, autograd and torch.optim, none of maml.py's torch.func."""
    losses, accuracies = [], []
    for i in range(len(batch)):
        task, adapted = batch.task(i), copy.deepcopy(model)
        support_x, support_y, query_x, query_y = task.support_x[0], task.support_y[0], task.query_x[0], task.query_y[0]
        sgd = torch.optim.SGD(adapted.parameters(), lr=inner_lr)
        for _ in range(steps):
            sgd.zero_grad()
            F.cross_entropy(adapted(support_x), support_y).backward()
            sgd.step()
        with torch.no_grad():  # queries normalised by the support set's statistics, or by their own
            logits = adapted(query_x) if transductive else adapted(torch.cat([support_x, query_x]),
                                                                   len(support_x))[len(support_x):]
        losses.append(F.cross_entropy(logits, query_y).item())
        accuracies.append((logits.argmax(1) == query_y).float().mean().item())
    return sum(losses) / len(losses), sum(accuracies) / len(accuracies)


@pytest.mark.parametrize("transductive", [False, True])
def test_evaluate_adapts_each_task_to_its_support_set(transductive):
    """Its loss and accuracy are those of the model adapted on each task's support set, not the unadapted one's."""
    torch.manual_seed(0)
    model = build_model("conv", 5, channels=8, blocks=2)
    sampler = TaskSampler(torch.rand(20, 20, 28, 28), list(range(20)), 5, 1, 3)
    result = evaluate(model, sampler, inner_lr=0.4, steps=2, tasks=12, seed=7, transductive=transductive)
    batch = sampler.sample(12, seed=7)  # the tasks evaluate draws with this seed
    loss, accuracy = adapted_by_hand(model, batch, 0.4, 2, transductive)
    unadapted_loss, _ = adapted_by_hand(model, batch, 0.4, 0, transductive)
    assert result.loss == pytest.approx(loss, rel=1e-4) and result.accuracy == pytest.approx(accuracy, abs=1e-6)
    assert result.loss != pytest.approx(unadapted_loss, rel=1e-2)  # so the comparison above can tell


def test_an_evaluation_within_one_alphabet_gives_the_alphabets_equal_turns_whatever_its_chunks():
    """15 tasks over 3 alphabets, adapted 4 at a time as evaluate does 100 at a time: 5 tasks each, in the same
    turns as when adapted all at once."""
    ink = torch.zeros(9, 20, 28, 28)
    for c in range(9):
        ink[c, :, c] = 1.0  # character c inks row c
    alphabets = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    drawn = []

    class RecordingSampler(TaskSampler):
        def sample(self, tasks, seed):
            batch = super().sample(tasks, seed)
            drawn.extend(alphabets[int(task[0, 0].sum(1).argmax())] for task in batch.support_x)
            return batch

    torch.manual_seed(0)
    model = build_model("conv", 3, channels=8, blocks=2)
    sampler = RecordingSampler(ink, list(range(9)), 3, 1, 2, rotations=False, alphabets=alphabets)
    adapted_task_metrics(model, sampler, 15, seed=11, inner_lr=0.4, steps=1, chunk=4)
    assert len(drawn) == 15 and Counter(drawn) == {"a": 5, "b": 5, "c": 5}
    adapted_task_metrics(model, sampler, 15, seed=11, inner_lr=0.4, steps=1, chunk=15)
    assert drawn[15:] == drawn[:15]
