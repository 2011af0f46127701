"""Trainer: LR schedules, learning on real data, and exact resume after an interruption."""
import math

import pytest
import torch
from torch.utils.data import Subset

from suite.config import TaskOptions, TrainConfig
from suite.errors import UserError
from suite.modalities.image import ImageClassification
from suite.registry import METHODS, TASKS
from suite.train import lr_factor, train


def test_step_schedule_is_the_papers():
    # 100 epochs of 10 steps: x0.1 at epoch 75 and again at epoch 90
    cfg = TrainConfig(epochs=100, schedule="step")
    f = [lr_factor(cfg, s, 1000, 10) for s in range(1000)]
    assert f[749] == 1.0 and f[750] == pytest.approx(0.1) and f[899] == pytest.approx(0.1)
    assert f[900] == pytest.approx(0.01) and f[-1] == pytest.approx(0.01)


def test_warmup_then_cosine_and_linear():
    cfg = TrainConfig(epochs=10, schedule="cosine", warmup_epochs=1)
    assert lr_factor(cfg, 0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(cfg, 9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 55, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    lin = TrainConfig(epochs=10, schedule="linear", warmup_epochs=1)
    assert lr_factor(lin, 55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(lin, 99, 100, 10) == pytest.approx(1 / 90)


def _digits(n_train=256):
    task = TASKS.get("digits")
    data = task.build_data(TaskOptions())
    data.train = Subset(data.train, range(n_train))
    return task, data


def _final_state(method_name, cfg, data, task, checkpoint=None, interrupt_after=None, run_id="r", params=None):
    torch.manual_seed(0)
    model = task.build_model(TaskOptions())
    method = METHODS.get(method_name)(**{**task.method_defaults.get(method_name, {}), **(params or {})})

    def stop(epoch, entry):
        if interrupt_after is not None and epoch == interrupt_after:
            raise KeyboardInterrupt

    res = train(model, method, ImageClassification(task), data, cfg, seed=3, device=torch.device("cpu"),
                checkpoint=checkpoint, run_id=run_id, progress=False, on_epoch_end=stop)
    return model.state_dict(), res


@pytest.mark.parametrize("method_name", ["at", "esam"])  # both draw random numbers inside the step
def test_resume_after_interrupt_reproduces_weights_exactly(tmp_path, method_name):
    task, data = _digits()
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, schedule="step", milestones=(0.5,))
    full, full_res = _final_state(method_name, cfg, data, task)
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        _final_state(method_name, cfg, data, task, checkpoint=ckpt, interrupt_after=1)
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1
    resumed, res = _final_state(method_name, cfg, data, task, checkpoint=ckpt)
    assert res.resumed_from_epoch == 1
    assert [h["loss"] for h in res.history] == [h["loss"] for h in full_res.history]
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_awp_warmup_follows_the_trainers_epochs_through_a_resume(tmp_path):
    # AWP's warm-up (plain PGD-AT while epoch < warmup) needs the trainer's epoch, also after a resume
    task, data = _digits(128)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, schedule="step", milestones=(0.5,))
    threat = {"norm": "linf", "eps": 0.1, "steps": 2, "gamma": 0.05}
    at, _ = _final_state("at", cfg, data, task, params={k: threat[k] for k in ("norm", "eps", "steps")})
    all_warm, _ = _final_state("awp", cfg, data, task, params={**threat, "warmup": 3})
    none, _ = _final_state("awp", cfg, data, task, params={**threat, "warmup": 0})
    warm1, _ = _final_state("awp", cfg, data, task, params={**threat, "warmup": 1})
    assert all(torch.equal(at[k], all_warm[k]) for k in at)  # three warm-up epochs: PGD-AT exactly
    assert any(not torch.equal(at[k], warm1[k]) for k in at)  # AWP from epoch 1 on
    assert any(not torch.equal(none[k], warm1[k]) for k in at)  # but not from epoch 0
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        _final_state("awp", cfg, data, task, checkpoint=ckpt, interrupt_after=1, params={**threat, "warmup": 1})
    resumed, res = _final_state("awp", cfg, data, task, checkpoint=ckpt, params={**threat, "warmup": 1})
    assert res.resumed_from_epoch == 1
    for k in warm1:
        assert torch.equal(warm1[k], resumed[k]), k


def test_checkpoint_of_another_run_is_refused(tmp_path):
    task, data = _digits(64)
    cfg = TrainConfig(epochs=1, batch_size=64)
    ckpt = tmp_path / "checkpoint.pt"
    _final_state("st", cfg, data, task, checkpoint=ckpt, run_id="aaa")
    with pytest.raises(UserError, match="belongs to run 'aaa'"):
        _final_state("st", cfg, data, task, checkpoint=ckpt, run_id="bbb")


def test_training_lowers_the_loss_on_real_digits():
    task, data = _digits(512)
    cfg = TrainConfig(epochs=6, batch_size=64, lr=0.05, schedule="constant")
    _, res = _final_state("sam", cfg, data, task)
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < 0.5 * losses[0], losses


class _PooledBN(torch.nn.Module):
    """A pooled branch with BatchNorm, like DeepLabv3's ASPP image pooling: one value per channel."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.bn(torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 1)).flatten(1))


def test_a_trailing_one_example_batch_is_skipped_for_batchnorm_models():
    task, data = _digits(65)  # 64 + 1: the last batch holds one example
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, schedule="constant")
    model = _PooledBN()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model.train()(torch.zeros(1, 1, 8, 8))  # what the skipped batch would do
    res = train(model, METHODS.get("st")(), ImageClassification(task), data, cfg, seed=0,
                device=torch.device("cpu"), progress=False)
    assert res.steps == 4 and len(res.history) == 2
    assert all(math.isfinite(h["loss"]) for h in res.history)


def test_a_log_hears_from_a_long_epoch_before_it_ends(monkeypatch):
    # an hour-long text epoch on a CPU must not be silent until it ends: `on_progress` reports the
    # steps done and the mean loss so far (here at every step), and its last report is the epoch's mean
    import suite.train as trainer

    monkeypatch.setattr(trainer, "PROGRESS_LINE_EVERY_S", 0.0)
    task, data = _digits(256)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05)
    torch.manual_seed(0)
    model = task.build_model(TaskOptions())
    calls = []
    res = train(model, METHODS.get("st")(), ImageClassification(task), data, cfg, seed=0, device=torch.device("cpu"),
                progress=False, on_progress=lambda *a: calls.append(a))
    assert [(e, d, s) for e, d, s, _, _ in calls] == [(e, d, 4) for e in (1, 2) for d in (1, 2, 3, 4)]
    assert calls[3][3] == pytest.approx(res.history[0]["loss"]) and calls[7][3] == pytest.approx(res.history[1]["loss"])
    assert all(t > 0 for *_, t in calls)


def test_the_runners_progress_line_says_where_the_epoch_is():
    from suite.runner import step_line

    class Plan:
        class cfg:
            epochs = 3

        class method:
            name = "sam_at"

    lines = []
    step_line(Plan, lines.append)(2, 100, 400, 0.61234, 500.0)
    assert lines == ["epoch 2/3 sam_at: step 100/400, loss 0.6123 so far, 5.00 s/step, "
                     "about 25 min left in the epoch"]


@pytest.mark.parametrize("method_name", ["at", "esam"])  # both draw random numbers inside the step
def test_an_interruption_within_an_epoch_resumes_from_the_step_after_the_last_save(tmp_path, monkeypatch, method_name):
    # text epochs take an hour on a CPU: a checkpoint is written within the epoch, and resuming from it
    # gives exactly the weights and history of the uninterrupted run
    import suite.train as trainer

    monkeypatch.setattr(trainer, "MID_EPOCH_SAVE_EVERY_S", 0.0)
    monkeypatch.setattr(trainer, "PROGRESS_LINE_EVERY_S", 0.0)
    task, data = _digits(256)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05)

    def run(checkpoint=None, stop_at=None):
        torch.manual_seed(0)
        model = task.build_model(TaskOptions())
        method = METHODS.get(method_name)(**task.method_defaults.get(method_name, {}))
        lines = []

        def progress(epoch, done, steps, loss, seconds):
            lines.append((epoch, done))
            if (epoch, done) == stop_at:
                raise KeyboardInterrupt

        res = train(model, method, ImageClassification(task), data, cfg, seed=3, device=torch.device("cpu"),
                    checkpoint=checkpoint, run_id="r", progress=False, on_progress=progress,
                    log=lines.append)
        return model.state_dict(), res, lines

    full, full_res, _ = run()
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        run(ckpt, stop_at=(2, 2))
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == 1 and state["mid"]["step"] == 2
    # several processes cannot take it up where one left off (their data order differs): refused, named
    with monkeypatch.context() as m:
        m.setattr(trainer.distributed, "world_size", lambda: 2)
        m.setattr(trainer.distributed, "wrap", lambda model, device, ctx: model)  # no process group here
        with pytest.raises(UserError, match="written within epoch 2 by one process; resume it with one process"):
            run(ckpt)
    resumed, res, lines = run(ckpt)
    assert any("and 2 of epoch 2's 4 steps" in str(x) for x in lines)
    assert [x for x in lines if isinstance(x, tuple)] == [(2, 3), (2, 4)]  # only the steps left were taken
    assert [h["loss"] for h in res.history] == pytest.approx([h["loss"] for h in full_res.history], rel=1e-12)
    assert res.history[1]["train_acc"] == full_res.history[1]["train_acc"]
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
