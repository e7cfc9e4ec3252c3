"""The meta-gradient of fewshot.maml equals learn2learn's, MAML.clone() then adapt() per task; with MAML++'s
options, references built from plain MAML's losses or from autograd through a hand-written inner loop."""

import pytest
import torch
from torch.func import functional_call
from torch.nn import functional as F

from fewshot import maml, notebook_loop
from fewshot.models import build_model
from fewshot.tasks import TaskSampler

TOLERANCE = 1e-10  # relative to the largest gradient entry; measured agreement is ~1e-15 in float64


def meta_gradient(meta_backward, model, batch, steps, first_order):
    model.zero_grad()
    meta_backward(model, batch, 0.4, steps, first_order)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("backbone", ["conv", "fc"])
@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
@pytest.mark.parametrize("steps", [1, 5])
def test_meta_gradient_equals_learn2learn(backbone, first_order, steps):
    torch.manual_seed(0)
    model = build_model(backbone, 5, channels=8, blocks=4).double()
    batch = TaskSampler(torch.rand(30, 20, 28, 28), list(range(30)), 5, 2, 3).sample(4, seed=1).to(torch.float64)
    ours = meta_gradient(maml.meta_backward, model, batch, steps, first_order)
    theirs = meta_gradient(notebook_loop.meta_backward, model, batch, steps, first_order)
    assert theirs.abs().max() > 0
    assert (ours - theirs).abs().max() / theirs.abs().max() < TOLERANCE


def test_first_order_differs_from_second_order():
    """The dropped Hessian term is really there: otherwise the two tests above would prove little."""
    torch.manual_seed(0)
    model = build_model("conv", 5, channels=16, blocks=2).double()
    batch = TaskSampler(torch.rand(30, 20, 28, 28), list(range(30)), 5, 2, 3).sample(4, seed=1).to(torch.float64)
    second = meta_gradient(maml.meta_backward, model, batch, 1, False)
    first = meta_gradient(maml.meta_backward, model, batch, 1, True)
    assert (second - first).abs().max() / second.abs().max() > 1e-3


def test_adaptation_fits_the_support_set():
    torch.manual_seed(0)
    model = build_model("conv", 5, channels=16, blocks=2)
    batch = TaskSampler(torch.rand(30, 20, 28, 28), list(range(30)), 5, 1, 1).sample(1, seed=0)
    params = dict(model.named_parameters())
    before = maml.loss(model, params, batch.support_x[0], batch.support_y[0])
    adapted = maml.adapt(model, params, batch.support_x[0], batch.support_y[0], 0.4, 10, first_order=True)
    assert maml.loss(model, adapted, batch.support_x[0], batch.support_y[0]) < before / 2


def test_transductive_queries_use_their_own_statistics():
    """Support statistics: a query's logits ignore the other queries. Transductive: they do not."""
    torch.manual_seed(0)
    model = build_model("conv", 5, channels=8, blocks=2).double()
    params = dict(model.named_parameters())
    support, queries = torch.rand(5, 28, 28).double(), torch.rand(10, 28, 28).double()
    for transductive in (False, True):
        all_queries = maml.query_logits(model, params, support, queries, transductive)
        half = maml.query_logits(model, params, support, queries[:5], transductive)
        assert torch.allclose(all_queries[:5], half) != transductive
    assert torch.allclose(maml.query_logits(model, params, support, queries, True), model(queries))


def float64_task():
    torch.manual_seed(0)
    model = build_model("conv", 5, channels=8, blocks=2).double()
    batch = TaskSampler(torch.rand(30, 20, 28, 28), list(range(30)), 5, 2, 3).sample(4, seed=1).to(torch.float64)
    return model, batch


def loss_and_meta_gradient(model, batch, inner_lr, steps, first_order, step_weights=None):
    params = dict(model.named_parameters())
    loss = maml.task_losses(model, batch, inner_lr, steps, first_order, step_weights=step_weights)[0].mean()
    return loss, torch.autograd.grad(loss, list(params.values()))


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
def test_multi_step_loss_is_the_weighted_sum_of_the_query_losses_after_each_step(first_order):
    """MAML++'s MSL: sum_j w_j L(theta'_j), L(theta'_j) the query loss after j + 1 steps as plain MAML computes it."""
    model, batch = float64_task()
    weights = [0.2, 0.3, 0.5]
    loss, gradient = loss_and_meta_gradient(model, batch, 0.4, 3, first_order, weights)
    after_each_step = [loss_and_meta_gradient(model, batch, 0.4, steps, first_order) for steps in (1, 2, 3)]
    expected_loss = sum(w * step_loss.item() for w, (step_loss, _) in zip(weights, after_each_step))
    assert loss.item() == pytest.approx(expected_loss, rel=1e-12)
    for i, g in enumerate(gradient):
        expected = sum(w * step_gradient[i] for w, (_, step_gradient) in zip(weights, after_each_step))
        torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-13)
    last_step_only = after_each_step[-1][1]
    assert max((g - h).abs().max() for g, h in zip(gradient, last_step_only)) > 1e-4  # the early steps count


def test_multi_step_loss_with_the_last_step_alone_is_plain_mamls_bit_for_bit():
    model, batch = float64_task()
    plain_loss, plain_gradient = loss_and_meta_gradient(model, batch, 0.4, 3, False)
    loss, gradient = loss_and_meta_gradient(model, batch, 0.4, 3, False, [0.0, 0.0, 1.0])
    assert torch.equal(loss, plain_loss)
    assert all(torch.equal(g, h) for g, h in zip(gradient, plain_gradient))


def hand_written_meta_loss(model, batch, rates: dict, steps: int, first_order: bool):
    """Eq. 2's loss with an inner loop of plain autograd, task after task, alpha the rate of each parameter at
    each step: the reference for the meta-gradient w.r.t. MAML++'s learned rates."""
    total = 0.0
    for i in range(len(batch)):
        support_x, support_y = batch.support_x[i], batch.support_y[i]
        params = dict(model.named_parameters())
        for step in range(steps):
            support_loss = F.cross_entropy(functional_call(model, params, (support_x,)), support_y)
            grads = torch.autograd.grad(support_loss, list(params.values()), create_graph=not first_order)
            params = {name: params[name] - rates[name][step] * g for name, g in zip(params, grads)}
        inputs = torch.cat([support_x, batch.query_x[i]])
        logits = functional_call(model, params, (inputs, len(support_x)))[len(support_x):]
        total = total + F.cross_entropy(logits, batch.query_y[i])
    return total / len(batch)


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
def test_the_meta_gradient_of_learned_inner_lrs_is_autograds_through_a_hand_written_inner_loop(first_order):
    model, batch = float64_task()
    rates = maml.learned_inner_lrs(model, 0.4, 2)
    with torch.no_grad():  # a different rate for every parameter and step, so that a mixed-up index shows
        for rate in rates.values():
            rate.uniform_(0.1, 0.6)
    model.zero_grad()
    maml.meta_backward(model, batch, rates, 2, first_order)
    reference = hand_written_meta_loss(model, batch, rates, 2, first_order)
    tensors = list(model.parameters()) + list(rates.values())
    expected = torch.autograd.grad(reference, tensors)
    assert all(rate.grad.abs().max() > 0 for rate in rates.values())
    for tensor, gradient in zip(tensors, expected):
        torch.testing.assert_close(tensor.grad, gradient, rtol=1e-9, atol=1e-12)


def test_learned_inner_lrs_all_equal_to_alpha_give_plain_mamls_loss_and_meta_gradient():
    model, batch = float64_task()
    rates = maml.learned_inner_lrs(model, 0.4, 3)
    for first_order in (False, True):
        plain_loss, plain_gradient = loss_and_meta_gradient(model, batch, 0.4, 3, first_order)
        loss, gradient = loss_and_meta_gradient(model, batch, rates, 3, first_order)
        assert torch.equal(loss, plain_loss)
        assert all(torch.equal(g, h) for g, h in zip(gradient, plain_gradient))


def test_steps_beyond_the_learned_ones_take_the_last_steps_rates():
    model, batch = float64_task()
    params = dict(model.named_parameters())
    two = {name: torch.tensor([0.3, 0.5], dtype=torch.float64) for name in params}
    four = {name: torch.tensor([0.3, 0.5, 0.5, 0.5], dtype=torch.float64) for name in params}
    support_x, support_y = batch.support_x[0], batch.support_y[0]
    with_two, with_four = (maml.adapt(model, params, support_x, support_y, rates, 4, first_order=True)
                           for rates in (two, four))
    assert all(torch.equal(with_two[name], with_four[name]) for name in params)


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
def test_tasks_adapted_a_group_at_a_time_give_the_same_loss_accuracy_and_meta_gradient(first_order):
    """Groups of 1 and of 3 of 4 tasks (the last group smaller), two inner steps, learned inner rates: the
    meta-gradient of the weights and of the rates, the loss and the accuracy are those of all tasks at once."""
    model, batch = float64_task()
    rates = maml.learned_inner_lrs(model, 0.4, 2)
    tensors = [*model.parameters(), *rates.values()]
    results = {}
    for tasks_at_once in (0, 1, 3):
        for tensor in tensors:
            tensor.grad = None
        loss, accuracy = maml.meta_backward(model, batch, rates, 2, first_order, tasks_at_once=tasks_at_once)
        results[tasks_at_once] = loss, accuracy, torch.cat([tensor.grad.flatten() for tensor in tensors])
    loss, accuracy, gradient = results[0]
    assert gradient.abs().max() > 0
    for tasks_at_once in (1, 3):
        grouped_loss, grouped_accuracy, grouped_gradient = results[tasks_at_once]
        assert grouped_loss == pytest.approx(loss, rel=1e-12) and grouped_accuracy == pytest.approx(accuracy)
        assert (grouped_gradient - gradient).abs().max() / gradient.abs().max() < TOLERANCE
