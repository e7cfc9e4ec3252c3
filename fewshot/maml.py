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

Three options of MAML++ (Antoniou, Edwards & Storkey, 2019, "How to train your MAML") change these equations; all
are off unless asked for:
    learned inner learning rates (LSLR): alpha is one number per parameter tensor and per inner step, learned by
        the outer loop like theta (learned_inner_lrs, step_size);
    the multi-step loss (MSL): the outer loss of Eq. 2 is sum_j w_j L_Ti(f_theta'_ij(x_q), y_q), the query loss
        after every inner step j, not the last one's alone (multi_step_query_loss);
    per-step batch norm (BNWB): each batch norm's scale and shift have one row per inner step, and the network
        at inner step j, f_theta'_ij, uses row j; the queries after the last step use the last step's row
        (models.TaskBatchNorm, the `step` that loss and query_logits pass to the network).
Their two others are schedules of the training loop (training.py): first order before second (derivative-order
annealing), and a cosine-annealed beta.

The per-step rows are parameters of theta like any other, so Eq. 1 adapts them too, as it adapts every parameter
here, batch norm's included (MAML++'s code instead keeps batch norm out of the inner loop: meta-learned only).
That keeps Eq. 1 one line over all of theta, and changes little: the support loss at step j depends on row j
alone, so each step's gradient changes its own row only, and row j is still the meta-learned one when step j
uses it. Only the queries see an adapted row, the last, adapted by the last step. With one inner step the option
is plain MAML exactly. A first-order meta-gradient reaches row j only through a query loss after step j: without
the multi-step loss, FOMAML learns the last row alone (as it would with MAML++'s inner loop).
"""

from functools import partial

import torch
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from .tasks import TaskBatch


def loss(model, params: dict, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> torch.Tensor:
    """L_T(f_params(x), y): cross-entropy, batch norm using the statistics of x itself (and, with per-step batch
    norm, the scale and shift of inner step `step`)."""
    return F.cross_entropy(functional_call(model, params, (x,), {"step": step}), y)


def adapt(model, params: dict, support_x, support_y, inner_lr, steps: int, first_order: bool) -> dict:
    """The inner loop, Eq. 1: `steps` gradient steps on the support set."""
    for step in range(steps):
        params = inner_step(model, params, support_x, support_y, inner_lr, step, first_order)
    return params


def inner_step(model, params: dict, support_x, support_y, inner_lr, step: int, first_order: bool) -> dict:
    """One step of Eq. 1: theta'_i <- theta'_i - alpha * grad_theta'_i L_Ti(f_theta'_i(x_s), y_s)."""
    grads = grad(partial(loss, model))(params, support_x, support_y, step)
    if first_order:  # FOMAML: the inner gradient is a constant to the outer loop
        grads = {name: g.detach() for name, g in grads.items()}
    return {name: params[name] - step_size(inner_lr, name, step) * grads[name] for name in params}


def step_size(inner_lr, name: str, step: int):
    """alpha for parameter `name` at inner step `step` (from 0): `inner_lr` itself when it is a number.

    With MAML++'s learned rates (LSLR), `inner_lr` is a dict of learned_inner_lrs: each parameter tensor has its
    own rate at each step. Test time may take more steps than training did: those reuse the last step's rate.
    """
    if not isinstance(inner_lr, dict):
        return inner_lr
    rates = inner_lr[name]
    return rates[min(step, len(rates) - 1)]


def learned_inner_lrs(model, inner_lr: float, steps: int) -> dict:
    """MAML++'s learned inner learning rates (LSLR) before any learning: {parameter name: `steps` rates, each
    `inner_lr`}, tensors that the outer loop's optimizer learns along with the weights."""
    return {name: torch.full((steps,), float(inner_lr), dtype=p.dtype, device=p.device, requires_grad=True)
            for name, p in model.named_parameters()}


def query_logits(model, params: dict, support_x, query_x, transductive: bool = False, step: int = 0) -> torch.Tensor:
    """Logits for the queries, batch norm using the support set's statistics (see models.py), and with per-step
    batch norm, inner step `step`'s scale and shift (last_step).

    `transductive` uses the queries' own statistics instead, as the MAML reference code does: a query's
    prediction then depends on the other queries, so the evaluation can report the paper's protocol.
    """
    if transductive:
        return functional_call(model, params, (query_x,), {"step": step})
    logits = functional_call(model, params, (torch.cat([support_x, query_x]), len(support_x)), {"step": step})
    return logits[len(support_x):]


def last_step(steps: int) -> int:
    """The inner step whose per-step batch norm classifies the queries after `steps` steps: the last step taken
    (the first, 0, when none is)."""
    return max(steps - 1, 0)


def task_query_loss(model, params, support_x, support_y, query_x, query_y, inner_lr, steps, first_order,
                    transductive=False, step_weights=None):
    """L_Ti(f_theta'_i(x_q), y_q) and query accuracy for one task, theta'_i adapted from `params`.

    Given `step_weights`, one per inner step, the loss is MAML++'s multi-step loss (multi_step_query_loss).
    """
    if step_weights is not None:
        return multi_step_query_loss(model, params, support_x, support_y, query_x, query_y, inner_lr, step_weights,
                                     first_order, transductive)
    adapted = adapt(model, params, support_x, support_y, inner_lr, steps, first_order)
    logits = query_logits(model, adapted, support_x, query_x, transductive, last_step(steps))
    return F.cross_entropy(logits, query_y), (logits.argmax(-1) == query_y).float().mean()


def multi_step_query_loss(model, params, support_x, support_y, query_x, query_y, inner_lr, step_weights: list,
                          first_order, transductive=False):
    """MAML++'s multi-step loss (MSL): sum_j w_j L_Ti(f_theta'_ij(x_q), y_q), theta'_ij the parameters after inner
    step j, w_j = step_weights[j]; and the query accuracy after the last step. The queries then guide every
    step, not only through the last one."""
    total = 0.0
    for step, weight in enumerate(step_weights):
        params = inner_step(model, params, support_x, support_y, inner_lr, step, first_order)
        logits = query_logits(model, params, support_x, query_x, transductive, step)
        total = total + weight * F.cross_entropy(logits, query_y)
    return total, (logits.argmax(-1) == query_y).float().mean()


def task_losses(model, batch: TaskBatch, inner_lr, steps: int, first_order: bool, transductive: bool = False,
                step_weights: list | None = None):
    """Query loss and accuracy of every task of the batch after adaptation: two tensors of [tasks].

    `inner_lr` is alpha, or MAML++'s learned rates (step_size); `step_weights`, MAML++'s multi-step loss.
    """
    per_task = vmap(partial(task_query_loss, model, steps=steps, first_order=first_order, transductive=transductive,
                            step_weights=step_weights), in_dims=(None, 0, 0, 0, 0, None))
    params = dict(model.named_parameters())
    return per_task(params, batch.support_x, batch.support_y, batch.query_x, batch.query_y, inner_lr)


def meta_backward(model, batch: TaskBatch, inner_lr, steps: int, first_order: bool, step_weights=None,
                  tasks_at_once: int = 0):
    """Accumulates the meta-gradient, Eq. 2's grad_theta (averaged over tasks), into the parameters' .grad, and
    into the .grad of MAML++'s learned inner learning rates when `inner_lr` holds them.

    The tasks are adapted `tasks_at_once` at a time (0: all at once), each group's part of the sum added to .grad
    before the next group is adapted: only one group's graph is held, and the gradient is the same.
    Returns the mean query loss and accuracy after adaptation, as floats.
    """
    loss_sum, accuracy_sum = 0.0, 0.0
    for group in batch.groups(tasks_at_once):
        losses, accuracies = task_losses(model, group, inner_lr, steps, first_order, step_weights=step_weights)
        (losses.sum() / len(batch)).backward()
        loss_sum, accuracy_sum = loss_sum + losses.sum().item(), accuracy_sum + accuracies.sum().item()
    return loss_sum / len(batch), accuracy_sum / len(batch)
