"""MAML and first-order MAML (Finn, Abbeel & Levine, 2017, Algorithm 2), written as the paper's equations.

For each task T_i of a meta-batch, with a support set (x_s, y_s) and a query set (x_q, y_q):

    inner loop, `steps` times, starting from theta'_i = theta:
        theta'_i <- theta'_i - alpha * grad_theta'_i L_Ti(f_theta'_i(x_s), y_s)            (Eq. 1)
    outer loop, one meta-update:
        theta <- theta - beta * grad_theta sum_i L_Ti(f_theta'_i(x_q), y_q)                 (Eq. 2)

MAML differentiates the outer loss through the inner loop, so grad_theta carries the second-order term
d theta'_i / d theta = I - alpha * Hessian. First-order MAML (FOMAML) drops that term: it treats each inner
gradient as a constant, and its meta-gradient is the query-loss gradient taken at theta'_i.

The inner loop is plain math on a dict of parameters (torch.func); `vmap` runs it for all tasks of the
meta-batch at once. The outer update is ordinary autograd plus Adam, as in the paper's experiments.
"""

from functools import partial

import torch
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from .tasks import TaskBatch


def loss(model, params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L_T(f_params(x), y): cross-entropy, batch norm using the statistics of x itself."""
    return F.cross_entropy(functional_call(model, params, (x,)), y)


def adapt(model, params: dict, support_x, support_y, inner_lr: float, steps: int, first_order: bool) -> dict:
    """The inner loop, Eq. 1: `steps` gradient steps on the support set."""
    for _ in range(steps):
        grads = grad(partial(loss, model))(params, support_x, support_y)
        if first_order:  # FOMAML: the inner gradient is a constant to the outer loop
            grads = {name: g.detach() for name, g in grads.items()}
        params = {name: params[name] - inner_lr * grads[name] for name in params}
    return params


def query_logits(model, params: dict, support_x, query_x, transductive: bool = False) -> torch.Tensor:
    """Logits for the queries, batch norm using the support set's statistics (see models.py).

    `transductive` uses the queries' own statistics instead, as the MAML reference code does: a query's
    prediction then depends on the other queries, so the evaluation can report the paper's protocol.
    """
    if transductive:
        return functional_call(model, params, (query_x,))
    logits = functional_call(model, params, (torch.cat([support_x, query_x]), len(support_x)))
    return logits[len(support_x):]


def task_query_loss(model, params, support_x, support_y, query_x, query_y, inner_lr, steps, first_order,
                    transductive=False):
    """L_Ti(f_theta'_i(x_q), y_q) and query accuracy for one task, theta'_i adapted from `params`."""
    adapted = adapt(model, params, support_x, support_y, inner_lr, steps, first_order)
    logits = query_logits(model, adapted, support_x, query_x, transductive)
    return F.cross_entropy(logits, query_y), (logits.argmax(-1) == query_y).float().mean()


def task_losses(model, batch: TaskBatch, inner_lr: float, steps: int, first_order: bool,
                transductive: bool = False):
    """Query loss and accuracy of every task of the batch after adaptation: two tensors of [tasks]."""
    per_task = vmap(partial(task_query_loss, model, inner_lr=inner_lr, steps=steps, first_order=first_order,
                            transductive=transductive), in_dims=(None, 0, 0, 0, 0))
    params = dict(model.named_parameters())
    return per_task(params, batch.support_x, batch.support_y, batch.query_x, batch.query_y)


def meta_backward(model, batch: TaskBatch, inner_lr: float, steps: int, first_order: bool):
    """Accumulates the meta-gradient, Eq. 2's grad_theta (averaged over tasks), into the parameters' .grad.

    Returns the mean query loss and accuracy after adaptation, as floats.
    """
    losses, accuracies = task_losses(model, batch, inner_lr, steps, first_order)
    meta_loss = losses.mean()
    meta_loss.backward()
    return meta_loss.item(), accuracies.mean().item()
