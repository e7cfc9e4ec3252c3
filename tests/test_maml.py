"""The meta-gradient of fewshot.maml equals learn2learn's, MAML.clone() then adapt() per task."""

import pytest
import torch

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
