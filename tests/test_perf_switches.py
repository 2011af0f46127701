"""Speed switches and mixed precision: off by default and changing nothing then; within stated
tolerances when on; the fp16 scaler correct for SAM's two passes; the trainer adds nothing to the step.

Tolerances, each measured here first and then given room:
- channels_last, CPU fp32, one epoch (3 steps) of SAM on the digits CNN: the same arithmetic in
  another memory order (another summation order inside the convolutions); observed max |dw| 3e-7
  -> 1e-5. (Training amplifies such differences: after 2 epochs they reach 3e-4, as they would
  between two thread counts.)
- one SAM step (rho 0.1, lr 0.5, batch 64) in bf16 autocast vs fp32 on the digits CNN: bf16 keeps 8
  significant bits, and BatchNorm's backward subtracts nearly equal numbers; observed relative error
  of the update 6.3%, cosine 0.998 -> bounds 15% and 0.99. (With the autocast cache left stale at
  w + e, the bug this guards against, both are 29% and 0.957.)
- the same in fp16 with the gradient scaler, on an MLP with BatchNorm (PyTorch's fp16 convolution
  backward on a CPU is a slow reference kernel): observed 0.5%, cosine 0.99999 -> 3% and 0.999.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from suite.config import TaskOptions, TrainConfig
from suite.data.batches import train_batches
from suite.errors import UserError
from suite.methods.base import StepContext
from suite.modalities.image import ImageClassification
from suite.plugins import load_builtins
from suite.registry import METHODS, TASKS
from suite.train import lr_factor, train

load_builtins()  # (conftest.py does too) METHODS.names() below is read when the file is collected

ADAPTER = ImageClassification()


def digits(n=192):
    task = TASKS.get("digits")
    data = task.build_data(TaskOptions())
    x, y = data.train.tensors
    data.train = TensorDataset(x[:n], y[:n])
    return task, data


def bn_mlp():
    """Fast in fp16 on a CPU (unlike convolutions), with BatchNorm for the two-pass rules."""
    from torch import nn
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def fit(method_name, cfg, params=None, epochs_data=192, seed=2, build=None):
    task, data = digits(epochs_data)
    torch.manual_seed(0)
    model = task.build_model(TaskOptions()) if build is None else build()
    method = METHODS.get(method_name)(**(params or task.method_defaults.get(method_name, {})))
    res = train(model, method, ADAPTER, data, cfg, seed=seed, device=torch.device("cpu"), progress=False)
    return model, res


BASE = {"epochs": 2, "batch_size": 64, "lr": 0.05, "schedule": "cosine", "warmup_epochs": 0.5}


# --- off by default: nothing changes ---------------------------------------------------------------
def bare_loop(method_name, seed=2):
    """The trainer's documented semantics, written out: seeded shuffling and augmentation per epoch,
    SGD with momentum, the per-iteration schedule, the method's step. Nothing else."""
    import random

    import numpy as np

    task, data = digits()
    cfg = TrainConfig(**BASE)
    torch.manual_seed(0)
    model = task.build_model(TaskOptions())
    method = METHODS.get(method_name)(**task.method_defaults.get(method_name, {}))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    x, y = data.train.tensors
    per_epoch = math.ceil(len(y) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, per_epoch * cfg.epochs, per_epoch))
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        aug = torch.Generator().manual_seed(seed * 100_019 + epoch)
        for i in range(0, len(y), cfg.batch_size):
            batch = data.train_transform((x[perm[i:i + cfg.batch_size]], y[perm[i:i + cfg.batch_size]]), aug)
            method.train_step(model, batch, opt, ADAPTER)
            sched.step()
    return model


@pytest.mark.parametrize("method_name", METHODS.names())  # every registered method, at the task's defaults
def test_trainer_adds_nothing_to_the_step(method_name):
    expected = bare_loop(method_name).state_dict()
    model, _ = fit(method_name, TrainConfig(**BASE))
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k  # bit for bit


def test_switches_explicitly_off_are_the_default_bit_for_bit():
    default, _ = fit("sam", TrainConfig(**BASE))
    off, _ = fit("sam", TrainConfig(**BASE, channels_last=False, compile=False, sync_bn=False, sam_ascent="global",
                                    amp="off"))
    for k, v in default.state_dict().items():
        assert torch.equal(v, off.state_dict()[k]), k


def test_channels_last_on_cpu_fp32_within_tight_tolerance():
    one = {**BASE, "epochs": 1}
    default, _ = fit("sam", TrainConfig(**one))
    cl, _ = fit("sam", TrainConfig(**one, channels_last=True))
    conv = cl.features[3].weight  # (the first conv has one input channel: both formats coincide)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    diffs = {k: (v - cl.state_dict()[k]).abs().max().item() for k, v in default.state_dict().items()
             if v.is_floating_point()}
    assert max(diffs.values()) < 1e-5, diffs
    torch.manual_seed(0)
    start = TASKS.get("digits").build_model(TaskOptions()).state_dict()
    assert max((v - start[k]).abs().max().item() for k, v in default.state_dict().items()
               if v.is_floating_point()) > 1e-2  # the tolerance is far below what training changes


def test_in_memory_data_never_goes_through_a_dataloader():
    ds = TensorDataset(torch.arange(10.0), torch.arange(10))
    cfg = TrainConfig(batch_size=4, num_workers=2)
    batches = train_batches(ds, cfg, torch.Generator().manual_seed(0), None, pin=False)
    assert isinstance(batches, list) and [len(b[1]) for b in batches] == [4, 4, 2]
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([b[1] for b in batches]), perm)  # a DataLoader's RandomSampler order


# --- mixed precision -------------------------------------------------------------------------------
def one_sam_step(autocast_dtype=None, scaler=None, build=None, rho=0.1, lr=0.5):
    task, data = digits(64)
    torch.manual_seed(0)
    model = task.build_model(TaskOptions()) if build is None else build()
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = data.train.tensors
    method = METHODS.get("sam")(rho=rho)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    amp = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else torch.autocast("cpu", enabled=False)
    with amp:
        stats = method.train_step(model, (x, y), opt, ADAPTER, StepContext(scaler=scaler))
    update = torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters()])
    return update, stats, model


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item(), torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def test_bf16_sam_step_on_cpu_within_tolerance_of_fp32():
    ref, _, _ = one_sam_step()
    bf16, stats, _ = one_sam_step(torch.bfloat16)
    err, cos = rel_err(bf16, ref)
    assert err < 0.15 and cos > 0.99, (err, cos)
    assert ref.norm() > 1e-2 and not torch.equal(bf16, ref)  # a real step, really taken in bf16
    assert math.isfinite(float(stats["loss"]))


def test_fp16_sam_step_with_scaler_within_tolerance_of_fp32():
    ref, _, _ = one_sam_step(build=bn_mlp)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    fp16, _, _ = one_sam_step(torch.float16, scaler, build=bn_mlp)
    err, cos = rel_err(fp16, ref)
    assert err < 0.03 and cos > 0.999, (err, cos)
    assert not torch.equal(fp16, ref)
    assert scaler.get_scale() == 2.0 ** 12  # no overflow, no growth yet (growth after 2000 good steps)


def test_fp16_overflow_in_the_first_pass_skips_the_step_and_lowers_the_scale():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 60)  # the scaled first backward overflows in fp16
    update, _, model = one_sam_step(torch.float16, scaler, build=bn_mlp)
    assert torch.equal(update, torch.zeros_like(update))  # no step
    assert scaler.get_scale() == 2.0 ** 59
    for name, buf in model.named_buffers():  # the pass at w + e saw e = 0, not NaN: statistics intact
        assert torch.isfinite(buf.float()).all(), name


def test_fp16_overflow_in_the_second_pass_only_skips_the_step(monkeypatch):
    from suite.methods import sam

    original = sam.WeightAscentMethod._second_pass

    def overflowing(self, model, batch, adapter, first_out, first_loss, ctx):
        original(self, model, batch, adapter, first_out, first_loss, ctx)
        next(model.parameters()).grad.view(-1)[0] = float("inf")

    monkeypatch.setattr(sam.WeightAscentMethod, "_second_pass", overflowing)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    update, _, _ = one_sam_step(torch.float16, scaler, build=bn_mlp)
    assert torch.equal(update, torch.zeros_like(update))
    assert scaler.get_scale() == 2.0 ** 7


def test_fp16_training_runs_and_refuses_methods_without_scaling():
    three = {**BASE, "epochs": 3, "lr": 0.1}
    _, ref = fit("sam", TrainConfig(**three), epochs_data=384, build=bn_mlp)
    _, res = fit("sam", TrainConfig(**three, amp="fp16"), epochs_data=384, build=bn_mlp)
    assert res.amp == "fp16" and res.history[-1]["loss"] < 0.85 * res.history[0]["loss"]
    assert res.history[-1]["loss"] == pytest.approx(ref.history[-1]["loss"], rel=0.02)
    with pytest.raises(UserError, match="does not support amp=fp16"):
        fit("at", TrainConfig(**{**BASE, "amp": "fp16", "epochs": 1}), build=bn_mlp)


def test_bf16_training_on_cpu_learns_like_fp32():
    three = {**BASE, "epochs": 3, "lr": 0.1}
    _, ref = fit("sam", TrainConfig(**three), epochs_data=384)
    _, res = fit("sam", TrainConfig(**three, amp="bf16"), epochs_data=384)
    assert res.amp == "bf16" and res.history[-1]["loss"] < 0.85 * res.history[0]["loss"]
    assert res.history[-1]["loss"] == pytest.approx(ref.history[-1]["loss"], rel=0.02)


# --- the inner attack of AT touches no parameter gradient ------------------------------------------
def test_pgd_leaves_parameter_gradients_alone():
    from suite.attacks.engine import pgd

    task, data = digits(32)
    torch.manual_seed(0)
    model = task.build_model(TaskOptions()).train()
    x, y = data.train.tensors
    grads_seen = []
    hooks = [p.register_hook(lambda g: grads_seen.append(g)) for p in model.parameters()]
    pgd(model, ADAPTER, (x, y), norm="linf", eps=0.1, step_size=0.03, steps=3)
    for h in hooks:
        h.remove()
    assert grads_seen == []  # no weight gradient was even computed
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


# --- configuration -----------------------------------------------------------------------------------
def test_switch_validation():
    with pytest.raises(UserError, match="sam_ascent"):
        fit("sam", TrainConfig(**{**BASE, "sam_ascent": "sideways"}))


def test_switches_parse_validate_and_keep_earlier_run_ids():
    from suite.runner import LATER_TRAIN_FIELDS, plan_run

    cfg = TrainConfig().override({"channels_last": "true", "compile": "no", "amp": "bf16", "sam_ascent": "per_replica"})
    assert cfg.channels_last is True and cfg.compile is False and cfg.amp == "bf16"
    with pytest.raises(UserError, match="sam_ascent"):
        TrainConfig().override({"sam_ascent": "sideways"})
    plain = plan_run("digits", "sam", overrides={"epochs": "1"})
    off = plan_run("digits", "sam", overrides={"epochs": "1", "channels_last": "false"})
    on = plan_run("digits", "sam", overrides={"epochs": "1", "channels_last": "true"})
    # switches at their defaults are not part of what a run is: ids recorded before they existed hold
    assert set(plain.identity["train"]) == set(TrainConfig.field_names()) - set(LATER_TRAIN_FIELDS)
    assert plain.run_id == off.run_id != on.run_id
    assert on.identity["train"]["channels_last"] is True


@pytest.mark.slow
def test_compile_matches_eager_within_tolerance():
    default, _ = fit("sam", TrainConfig(**{**BASE, "epochs": 1}))
    compiled, _ = fit("sam", TrainConfig(**{**BASE, "epochs": 1, "compile": True}))
    for k, v in default.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(compiled.state_dict()[k], v, rtol=1e-4, atol=1e-5)
