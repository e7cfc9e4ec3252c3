"""MAML++'s per-step batch norm (--per-step-bn): each batch norm has a scale and shift per inner step.

The meta-gradient is checked against autograd through a hand-written inner loop that knows nothing of the step
argument: it runs the plain network with the per-step parameters' row j put in place at inner step j."""

import argparse
import dataclasses
import json

import pytest
import torch
from torch.func import functional_call
from torch.nn import functional as F

from fewshot import maml, metrics
from fewshot.adaptation import adapt_and_classify, adaptation_settings, novelty
from fewshot.checkpoints import load_checkpoint
from fewshot.cli import add_config_options, config_from_args, main
from fewshot.config import KEPT_ON_RESUME, Config, changes_refused_on_resume
from fewshot.evaluation import evaluate
from fewshot.models import build_model
from fewshot.omniglot import split_characters
from fewshot.tasks import TaskSampler
from fewshot.training import task_seed, train

TIMING = ("seconds", "tasks_per_second", "peak_memory_mb", "training_memory_mb")  # differ from run to run


def is_norm(name: str) -> bool:
    return ".norm." in name


def per_step_model(steps: int, backbone: str = "conv"):
    """A float64 model with per-step batch norm, every row of scale and shift different, so that a row mixed up
    with another shows; and the plain model of the same weights but for batch norm."""
    torch.manual_seed(0)
    model = build_model(backbone, 5, channels=8, blocks=2, norm_steps=steps).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_norm(name):
                p.uniform_(*(0.5, 1.5) if name.endswith("weight") else (-0.5, 0.5))
    return model, build_model(backbone, 5, channels=8, blocks=2).double()


def float64_batch():
    sampler = TaskSampler(torch.rand(30, 20, 28, 28), list(range(30)), 5, 2, 3)
    return sampler.sample(4, seed=1).to(torch.float64)


def at_step(params: dict, step: int) -> dict:
    """The per-step model's parameters as the plain model's at inner step `step`: each batch norm's row `step`."""
    return {name: p[step] if is_norm(name) else p for name, p in params.items()}


def hand_written_meta_loss(plain, params: dict, batch, inner_lr: float, steps: int, first_order: bool):
    """Eq. 2's loss, task after task, with an inner loop of plain autograd: the support loss of inner step j on
    the plain network with batch norm's row j, Eq. 1 on every parameter (the rows too), and the queries on the
    last step's row."""
    total = 0.0
    for i in range(len(batch)):
        support_x, support_y, adapted = batch.support_x[i], batch.support_y[i], dict(params)
        for step in range(steps):
            support_loss = F.cross_entropy(functional_call(plain, at_step(adapted, step), (support_x,)), support_y)
            grads = torch.autograd.grad(support_loss, list(adapted.values()), create_graph=not first_order)
            adapted = {name: adapted[name] - inner_lr * g for name, g in zip(adapted, grads)}
        inputs = torch.cat([support_x, batch.query_x[i]])
        logits = functional_call(plain, at_step(adapted, steps - 1), (inputs, len(support_x)))[len(support_x):]
        total = total + F.cross_entropy(logits, batch.query_y[i])
    return total / len(batch)


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
@pytest.mark.parametrize("steps", [1, 3])
def test_the_meta_gradient_is_autograds_through_a_hand_written_inner_loop(first_order, steps):
    model, plain = per_step_model(steps)
    batch = float64_batch()
    params = dict(model.named_parameters())
    model.zero_grad()
    loss, _ = maml.meta_backward(model, batch, 0.4, steps, first_order)
    reference = hand_written_meta_loss(plain, params, batch, 0.4, steps, first_order)
    expected = torch.autograd.grad(reference, list(params.values()))
    assert loss == pytest.approx(reference.item(), rel=1e-12)
    for (name, p), gradient in zip(params.items(), expected):
        assert gradient.abs().max() > 0, name
        torch.testing.assert_close(p.grad, gradient, rtol=1e-9, atol=1e-12, msg=name)
    rows_learned = [(params[name].grad.abs().amax(1) > 0).tolist() for name in params if is_norm(name)]
    # Second order, every step's row gets a meta-gradient; first order (FOMAML), the inner gradients are constants,
    # so only the queries' row, the last, does (MAML++'s multi-step loss would reach the others).
    assert rows_learned == [[not first_order] * (steps - 1) + [True]] * len(rows_learned)


@pytest.mark.parametrize("backbone", ["conv", "fc"])
def test_with_one_inner_step_and_copied_rows_it_is_the_plain_network_and_plain_maml(backbone):
    model, plain = per_step_model(1, backbone)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            p.copy_(model.get_parameter(name)[0] if is_norm(name) else model.get_parameter(name))
    x = torch.rand(7, 1, 28, 28, dtype=torch.float64)
    for step in (0, 1, 4):  # steps beyond the one learned take its row
        assert torch.equal(model(x, 3, step=step), plain(x, 3))
    assert not torch.equal(model(x, 3), build_model(backbone, 5, 8, 2, norm_steps=1).double()(x, 3))
    batch = float64_batch()
    for first_order in (False, True):
        model.zero_grad()
        plain.zero_grad()
        assert maml.meta_backward(model, batch, 0.4, 1, first_order) == maml.meta_backward(plain, batch, 0.4, 1,
                                                                                           first_order)
        for name, p in plain.named_parameters():
            assert torch.equal(model.get_parameter(name).grad.reshape(p.shape), p.grad), name


def test_test_time_steps_beyond_the_learned_ones_use_the_last_steps_scale_and_shift():
    model, _ = per_step_model(2)
    x = torch.rand(7, 1, 28, 28, dtype=torch.float64)
    assert not torch.equal(model(x, step=0), model(x, step=1))
    assert torch.equal(model(x, step=2), model(x, step=1)) and torch.equal(model(x, step=9), model(x, step=1))


def test_the_learned_inner_lrs_and_the_multi_step_loss_take_the_per_step_rows_too():
    """With learned rates of shape [steps] for [steps, C] rows, and the query loss after each step on that
    step's row: the multi-step loss is the weighted sum of the losses after 1, 2 and 3 steps."""
    model, _ = per_step_model(3)
    batch = float64_batch()
    rates = maml.learned_inner_lrs(model, 0.4, 3)
    weights = [0.2, 0.3, 0.5]
    params = dict(model.named_parameters())
    loss = maml.task_losses(model, batch, rates, 3, False, step_weights=weights)[0].mean()
    after_each_step = [maml.task_losses(model, batch, rates, steps, False)[0].mean() for steps in (1, 2, 3)]
    assert loss.item() == pytest.approx(sum(w * step_loss.item() for w, step_loss in zip(weights, after_each_step)),
                                        rel=1e-12)
    gradient = torch.autograd.grad(loss, list(params.values()) + list(rates.values()))
    assert all(g.abs().max() > 0 for g in gradient)


def test_the_option_is_a_flag_refused_where_it_cannot_apply_and_kept_on_resume():
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    assert config_from_args(parser.parse_args(["--per-step-bn"])).per_step_bn
    assert not Config(data_root="x").per_step_bn
    with pytest.raises(ValueError, match="per_step_bn needs engine fewshot: the notebook's learn2learn loop has one"):
        Config(data_root="x", per_step_bn=True, engine="learn2learn")
    with pytest.raises(ValueError, match="per_step_bn .* needs inner_steps of 1 or more"):
        Config(data_root="x", per_step_bn=True, inner_steps=0)
    assert "per_step_bn" in KEPT_ON_RESUME
    saved = Config(data_root="x", per_step_bn=True)
    assert changes_refused_on_resume(saved, dataclasses.replace(saved, per_step_bn=False)) == ["per_step_bn"]
    assert changes_refused_on_resume(saved, dataclasses.replace(saved, inner_steps=2)) == ["inner_steps"]


def records_in(run_dir):
    return metrics.read(run_dir / "metrics.jsonl")[0]


def measured(records):
    """Every metric of every record but the timing (the probe's seconds too)."""
    return [{key: {**value, "seconds": None} if key == "probe" else value for key, value in record.items()
             if key not in TIMING} for record in records]


def test_a_run_learns_saves_resumes_validates_probes_and_is_evaluated_with_per_step_bn(tiny_config, omniglot,
                                                                                    tmp_path, capsys):
    """A MAML run of 2 inner steps learns a row per step; stopped and resumed, the run an uninterrupted one is;
    validation, the final evaluation, `evaluate` and the Draw page adapt with the rows, their third test-time step
    with the second step's row."""
    config = dataclasses.replace(tiny_config, algorithm="maml", inner_steps=2, per_step_bn=True, test_inner_steps=3,
                                 probe_every=2)
    full, run = tmp_path / "full", tmp_path / "run"
    records = train(config, full, progress=False)
    train(config, run, progress=False, should_stop=lambda: len(records_in(run)) >= 4)
    train(config, run, resume=True, progress=False)
    assert measured(records_in(run)) == measured(records)
    assert [r["iteration"] for r in records if "probe" in r] == [2, 4, 6]
    model, metadata = load_checkpoint(full / "checkpoint.safetensors")
    assert metadata["per_step_bn"] is True
    norms = {name: p for name, p in model.named_parameters() if is_norm(name)}
    assert norms and all(p.shape == (2, 8) for p in norms.values())
    assert all(not torch.equal(p[0], p[1]) for p in norms.values())  # each step's row learned its own values
    assert all(torch.equal(p, load_checkpoint(run / "checkpoint.safetensors")[0].get_parameter(name))
               for name, p in norms.items())
    for change in ({"per_step_bn": False}, {"inner_steps": 3}):  # the weights would not fit: no --init-from either
        with pytest.raises(ValueError, match=f"--resume cannot change {next(iter(change))} ") as refused:
            train(dataclasses.replace(config, iterations=7, **change), full, resume=True, progress=False)
        assert "--init-from" not in str(refused.value)

    split = split_characters(omniglot, "lake")
    val_batch = TaskSampler(omniglot.ink, split["val"], 5, 1, 5).sample(config.val_tasks, seed=task_seed(0, 0))
    with torch.no_grad():
        val_loss = maml.task_losses(model, val_batch, config.inner_lr, 2, first_order=True)[0].mean().item()
    assert records[-1]["val_loss"] == pytest.approx(val_loss, rel=1e-6)
    test_tasks = TaskSampler(omniglot.ink, split["test"], 5, 1, 5)
    result = evaluate(model, test_tasks, config.inner_lr, 3, tasks=10)
    assert json.loads((full / "evaluation.json").read_text()) == {"split": "lake/test", **result.to_dict()}
    main(["evaluate", str(full / "checkpoint.safetensors"), "--tasks", "10", "--data-root", config.data_root])
    assert str(result) in capsys.readouterr().out

    settings = adaptation_settings(metadata)  # the Draw page's
    assert settings["steps"] == 3 and settings["inner_lr"] == config.inner_lr
    model = model.double()
    support_x, support_y = val_batch.support_x[0].double(), val_batch.support_y[0]
    query_x = val_batch.query_x[0][:3].double()
    theta = dict(model.named_parameters())
    for steps in (1, 3):  # fewer test-time steps than trained, and more
        adaptation = adapt_and_classify(model, support_x, support_y, settings["inner_lr"], steps, query_x)
        for step in range(steps + 1):  # support loss before step 0, 1, ..., and after the last step
            params = maml.adapt(model, theta, support_x, support_y, config.inner_lr, step, first_order=True)
            loss = maml.loss(model, params, support_x, support_y, min(step, steps - 1)).item()
            assert adaptation.support_loss[step] == pytest.approx(loss, rel=1e-10), (steps, step)
        for name, weight in params.items():
            torch.testing.assert_close(adaptation.params[name], weight, rtol=0, atol=1e-10)
        expected = maml.query_logits(model, params, support_x, query_x, step=steps - 1).softmax(-1)
        torch.testing.assert_close(adaptation.after, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(adaptation.after, maml.query_logits(model, params, support_x, query_x).softmax(-1))
    assert not torch.equal(novelty(model, params, support_x, support_y, query_x, step=2),
                           novelty(model, params, support_x, support_y, query_x))


def test_init_from_refuses_a_checkpoint_without_per_step_bn(tiny_config, tmp_path):
    plain = dataclasses.replace(tiny_config, iterations=1, test_tasks=0)
    train(plain, tmp_path / "plain", progress=False)
    per_step = dataclasses.replace(plain, per_step_bn=True, init_from=str(tmp_path / "plain" / "checkpoint.safetensors"))
    with pytest.raises(ValueError, match="needs the same backbone, channels and blocks, and per_step_bn"):
        train(per_step, tmp_path / "per_step", progress=False)
