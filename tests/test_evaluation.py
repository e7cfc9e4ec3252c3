import math

import torch

from fewshot.evaluation import confidence_interval, evaluate
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
