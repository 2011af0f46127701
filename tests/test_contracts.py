"""Contract tests over the registries: every registered method, attack, task and modality adapter is
run through the contract of its kind the moment it registers (as timm tests every registered model).

The cases are generated from METHODS, ATTACKS, TASKS and MODALITIES after `load_builtins()`, so a
plug-in in suite/methods/, suite/attacks/, suite/modalities/ or tasks/ needs nothing here to be
covered. The contracts are those of suite/methods/base.py, suite/attacks/base.py, suite/config.py's
`Task` and suite/modalities/base.py:

- method, on every modality: a few `train_step`s (with and without a `StepContext`) at the method's
  defaults lower the training loss of a fixed batch, each returns a finite "loss", and each calls
  `optimizer.step()` once;
- attack, on every modality it declares and every norm it offers: at a large budget it lowers the
  score of a tiny trained model; returned adversarial inputs have the surface's shape, stay in the
  input box and off masked coordinates, and within eps for the norm-bounded attacks; the weights are
  left as they were;
- task: its defaults (recipe, evaluation, headline, analyses, per-method defaults) and every preset
  sweep plan without data;
- modality adapter: shapes, losses, per-example verdicts, the surface round trip, subset and
  batch_size on a tiny batch.

A new *modality* needs a tiny problem in PROBLEMS (its cases fail until it has one). User files
loaded with `--include` (the README's examples under examples/) are listed in INCLUDED and go
through the same checks. About 15 s on one core, half of it imports.
"""
from __future__ import annotations

import io
import math
import re
import subprocess
import sys
from collections.abc import Callable
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import TinySeg, TinyText, colour_data, fit, text_batch
from torch import nn

from suite import plugins
from suite.attacks.base import AttackResult, AttackSpec
from suite.cli import load_grid, main
from suite.config import TrainConfig
from suite.errors import UserError
from suite.leaderboard import HEADLINE_WORST, _spec_matches
from suite.methods.base import StepContext
from suite.modalities.base import Adapter
from suite.plugins import include, load_builtins
from suite.registry import ANALYSES, ATTACKS, METHODS, MODALITIES, TASKS
from suite.runner import plan_run

load_builtins()

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# --- what is not run, and why ------------------------------------------------------------------------
# Attacks left out of the attack contract, each with its reason. The list cannot go stale:
# test_attacks_left_out_are_still_registered fails when a name here is no longer registered.
TEXTATTACK = ("a TextAttack recipe: importing TextAttack alone takes ~10 s, and a recipe needs a real "
              "tokenizer and vocabulary; deepwordbug runs offline on a tiny DistilBERT in tests/test_text.py")
TEXTATTACK_DOWNLOADS = TEXTATTACK + "; this one also needs downloaded resources (refused offline, tested there)"
NOT_RUN = {
    "deepwordbug": TEXTATTACK,
    "pruthi": TEXTATTACK,
    "textbugger": TEXTATTACK_DOWNLOADS,
    "textfooler": TEXTATTACK_DOWNLOADS,
    "pwws": TEXTATTACK_DOWNLOADS,
    "bae": TEXTATTACK_DOWNLOADS,
    "bert_attack": TEXTATTACK_DOWNLOADS,
}

# User plug-in files (`--include`) run through the same checks: file -> the kind it registers.
INCLUDED = {ROOT / "examples" / "gaussian_noise.py": "method", ROOT / "examples" / "mifgsm.py": "attack"}

METHOD_STEPS = 8        # train_step calls per method contract case
LOSS_FACTOR = 0.9       # the loss after them must be below this times the loss before


# --- one tiny problem per modality ---------------------------------------------------------------------
@dataclass
class Problem:
    adapter: Adapter
    model: Callable[[], nn.Module]   # a fresh model, seeded: what the method contract trains
    batch: Any                       # the fixed training batch of the method contract
    lr: float                        # SGD (momentum 0.9) learning rate of the method contract
    trained: nn.Module               # a model trained on this problem: what attacks attack
    attacked: Any                    # the batch attacks run on (the clean-correct part, for classifiers)
    budgets: dict                    # norm -> a large budget on this surface


def _clean_part(adapter: Adapter, model: nn.Module, batch):
    """What evaluation hands an attack: the examples the model gets right (classification), or all."""
    if not adapter.attack_only_correct:
        return batch
    with torch.no_grad():
        keep = adapter.correct(adapter.forward(model, batch), batch)
    return adapter.subset(batch, torch.nonzero(keep).flatten())


def _image(digits) -> Problem:
    model, test = digits  # conftest's MLP trained on the digits task's training split
    x, y = test.tensors
    adapter = MODALITIES.get("image")()

    def cnn():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                             nn.Linear(8 * 64, 10))

    return Problem(adapter, cnn, (x[:64], y[:64]), 0.05, model, _clean_part(adapter, model, (x[:128], y[:128])),
                   {"linf": 0.3, "l2": 3.0})


def _features(digits) -> Problem:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(10, 3, generator=g)
    x = torch.randn(192, 10, generator=g)
    y = (x @ w).argmax(1)
    # a task that lets attacks change features 2..9 only (as toy_features restricts them): every
    # attack and method on this modality must leave features 0 and 1 alone
    adapter = MODALITIES.get("features")(SimpleNamespace(perturbable=[False] * 2 + [True] * 8, num_classes=3))

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))

    trained = fit(mlp(), lambda m: adapter.loss(m(x[:128]), (x[:128], y[:128])), steps=200, lr=1e-2)
    test = (x[128:], y[128:])
    return Problem(adapter, mlp, (x[:64], y[:64]), 0.2, trained, _clean_part(adapter, trained, test),
                   {"linf": 1.0, "l2": 3.0})


def _segmentation(digits) -> Problem:
    adapter = MODALITIES.get("segmentation")()

    def seg():
        torch.manual_seed(0)
        return TinySeg()

    x, y = colour_data(32, 0)
    trained = fit(seg(), lambda m: adapter.loss(m(x), (x, y)), steps=100, lr=0.02)
    return Problem(adapter, seg, colour_data(16, 2), 0.05, trained, colour_data(16, 1), {"linf": 0.3, "l2": 3.0})


def _text(digits) -> Problem:
    adapter = MODALITIES.get("text")()

    def tiny():
        torch.manual_seed(0)
        return TinyText()

    train = text_batch(128, 0)
    trained = fit(tiny(), lambda m: adapter.loss(adapter.forward(m, train), train), steps=150, lr=1e-2)
    return Problem(adapter, tiny, text_batch(32, 2), 0.1, trained, _clean_part(adapter, trained, text_batch(64, 1)),
                   {"linf": 1.0, "l2": 4.0})


PROBLEMS: dict[str, Callable[[Any], Problem]] = {
    "image": _image, "features": _features, "segmentation": _segmentation, "text": _text,
}
_built: dict[str, Problem] = {}


@pytest.fixture
def problem(modality, digits) -> Problem:
    if modality not in PROBLEMS:
        pytest.fail(f"no tiny problem for modality {modality!r}: add one to PROBLEMS in tests/test_contracts.py")
    if modality not in _built:
        _built[modality] = PROBLEMS[modality](digits)
    return _built[modality]


def _train_loss(problem: Problem, model: nn.Module) -> float:
    a = problem.adapter
    model.train()
    with torch.no_grad():
        return a.loss(a.forward(model, problem.batch), problem.batch).item()


def _scores(adapter: Adapter, model: nn.Module, batch, x=None) -> torch.Tensor:
    """Per-example scores (classification: correct; segmentation: pixel accuracy), as evaluation has them."""
    with torch.no_grad():
        out = adapter.forward(model, batch) if x is None else adapter.forward_surface(model, batch, x)
        return adapter.example_score(adapter.example_stats(out, batch))


# --- the checks --------------------------------------------------------------------------------------
def check_method(name: str, problem: Problem) -> None:
    method = METHODS.get(name)()  # every method trains at its defaults
    assert method.name == name
    assert method.cost() > 0 and isinstance(method.label(), str) and method.label()
    method.check_settings(TrainConfig().validate())
    a, batch = problem.adapter, problem.batch
    model = problem.model()
    opt = torch.optim.SGD(model.parameters(), lr=problem.lr, momentum=0.9)
    steps, inner = [], opt.step
    opt.step = lambda *args, **kw: (steps.append(1), inner(*args, **kw))[1]
    before = _train_loss(problem, model)
    for i in range(METHOD_STEPS):
        torch.manual_seed(i)
        model.train()
        # the first call as a caller outside the trainer makes it (ctx=None), the others as the trainer does
        stats = method.train_step(model, batch, opt, a) if i == 0 else \
            method.train_step(model, batch, opt, a, StepContext(epoch=0))
        assert "loss" in stats and math.isfinite(float(stats["loss"])), stats
        assert len(steps) == i + 1, "train_step must call optimizer.step() exactly once"
    after = _train_loss(problem, model)
    assert after < LOSS_FACTOR * before, f"{name} on {a.name}: training loss {before:.4f} -> {after:.4f}"


def attack_cases(names) -> list:
    """(attack, modality, norm) for every modality an attack declares (none declared: all) and every
    norm it offers (None: it has no `norm` parameter)."""
    cases = []
    for name in names:
        cls = ATTACKS.get(name)
        norms = cls.params["norm"].choices if "norm" in cls.params else (None,)
        for modality in cls.modalities or MODALITIES.names():
            cases += [pytest.param(name, modality, norm, id=f"{name}-{modality}-{norm or 'any'}") for norm in norms]
    return cases


def check_attack(name: str, norm: str | None, problem: Problem) -> None:
    cls = ATTACKS.get(name)
    a, model, batch = problem.adapter, problem.trained, problem.attacked
    params = {}
    if "norm" in cls.params:
        params["norm"] = norm
    bounded = cls.threat == "norm-bounded" and "eps" in cls.params
    if "eps" in cls.params:  # a norm-bounded attack without a `norm` parameter is taken to be linf
        params["eps"] = problem.budgets[norm or "linf"]
    attack = AttackSpec.of(name, **params).build(a)  # evaluation's path: refuses an undeclared modality
    assert isinstance(attack.label(), str) and attack.label()
    assert isinstance(cls.threat, str) and cls.threat
    n = a.batch_size(batch)
    assert n >= 8, "the tiny model should get most of the attacked batch right"
    model.eval()
    weights = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(0)
    res = attack.run(model, batch)
    assert isinstance(res, AttackResult)
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights)), "an attack must not change the weights"
    clean = _scores(a, model, batch)
    if res.adversarial is not None:
        x0, adv = a.surface(model, batch), res.adversarial
        assert adv.shape == x0.shape and torch.isfinite(adv).all()
        if a.bounds is not None:
            assert adv.min() >= a.bounds[0] and adv.max() <= a.bounds[1], "outside the input box"
        mask = a.surface_mask(batch)
        if mask is not None:
            assert ((adv - x0) * (1 - mask)).abs().max() == 0, "a masked coordinate (e.g. padding) moved"
        if bounded:
            d = (adv - x0).flatten(1)
            size = d.abs().amax(1) if params.get("norm", "linf") == "linf" else d.norm(dim=1)
            assert size.max().item() <= params["eps"] + 1e-6, f"outside the {params.get('norm', 'linf')} budget"
        attacked = _scores(a, model, batch, adv)
        if res.success is not None and a.attack_only_correct:
            assert torch.equal(res.success.cpu().bool(), attacked < 1), "success flags disagree with the inputs"
    else:
        assert a.attack_only_correct, f"attacks on modality {a.name!r} must return adversarial inputs"
        assert res.success is not None and res.success.shape == (n,)
        attacked = clean * (~res.success.cpu().bool()).float()
    assert attacked.mean() < clean.mean(), f"{attack.label()} on {a.name}: {clean.mean():.3f} -> {attacked.mean():.3f}"


# --- methods -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", MODALITIES.names())
@pytest.mark.parametrize("name", METHODS.names())
def test_method_lowers_the_training_loss(name, modality, problem):
    check_method(name, problem)


# --- attacks -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, modality, norm", attack_cases(n for n in ATTACKS.names() if n not in NOT_RUN))
def test_attack_lowers_accuracy_within_its_budget(name, modality, norm, problem):
    check_attack(name, norm, problem)


@pytest.mark.parametrize("name", sorted(NOT_RUN))
def test_attacks_left_out_are_still_registered(name):
    assert name in ATTACKS, f"{name!r} is no longer registered: remove it from NOT_RUN in tests/test_contracts.py"


# --- tasks -------------------------------------------------------------------------------------------
def _plan(task: str, method: str, **kw):
    """plan_run without data; a machine without TextAttack's NLTK data skips (the plan asks for it)."""
    try:
        return plan_run(task, method, **kw)
    except UserError as e:
        from suite.attacks.textattack_recipes import check_textattack

        problem = check_textattack()
        if problem and problem in str(e):
            pytest.skip(problem)
        raise


@pytest.mark.parametrize("name", TASKS.names())
def test_task_plans_its_defaults_and_sweeps(name):
    task = TASKS.get(name)
    assert task.name == name and task.version and task.description and task.num_classes >= 2
    assert task.modality in MODALITIES and callable(task.build_data) and callable(task.build_model)
    task.recipe.validate()
    adapter = MODALITIES.get(task.modality)(task)
    for spec in task.analyses:
        assert ANALYSES.get(spec.partition(":")[0])
    # the default method and every method the task gives defaults to (their evaluation and analyses built)
    for method in ["st", *task.method_defaults]:
        plan = _plan(name, method)
        assert plan.method.name == method and plan.run_id and plan.cfg == task.recipe.validate()
    for spec in task.evaluation:
        attack = (spec if isinstance(spec, AttackSpec) else AttackSpec.parse(spec)).build(adapter)
        assert attack.label()
    for h in task.headline:  # what the board ranks by is one of the attacks evaluated
        assert h == HEADLINE_WORST or any(_spec_matches(h, e) for e in plan.identity["evaluation"]), \
            f"headline {h!r} is none of the task's evaluation"
    for preset, runs in task.sweeps.items():  # through the CLI's lookup: the preset is this task's
        owner, grid, _, _, _ = load_grid(preset)
        assert owner == name and len(grid) == len(runs) > 0
        ids = [_plan(name, method, method_params=params).run_id for method, params, _ in grid]
        assert len(set(ids)) == len(ids), f"sweep {preset} plans the same run twice"


# --- modality adapters --------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", MODALITIES.names())
def test_adapter_contract(modality, problem):
    cls = MODALITIES.get(modality)
    assert cls().name == modality  # built without a task, too
    a = problem.adapter
    assert type(a) is cls and isinstance(a, Adapter)
    model, batch = problem.trained.eval(), problem.batch
    n = a.batch_size(batch)
    assert n == a.batch_size(a.to_device(batch, "cpu")) > 2
    with torch.no_grad():
        out = a.forward(model, batch)
        assert out.shape[0] == n
        loss = a.loss(out, batch)
        assert loss.dim() == 0 and torch.isfinite(loss)
        per = a.loss(out, batch, reduction="none")
        assert per.shape == (n,) and torch.allclose(a.loss(out, batch, reduction="sum"), per.sum())
        correct = a.correct(out, batch)
        assert correct.shape == (n,)
        if a.attack_only_correct:  # classification: a verdict per example
            assert correct.dtype == torch.bool
        else:  # segmentation: a score per image in [0, 1] (methods average it as a training accuracy)
            assert correct.is_floating_point() and 0 <= correct.min() and correct.max() <= 1
        stats = a.example_stats(out, batch)
        score = a.example_score(stats)
        assert stats.shape[0] == n and score.shape == (n,) and 0 <= score.min() and score.max() <= 1
        assert a.metric in a.summarize(stats) and a.outcome_array(stats).shape[0] == n
        pred = a.predictions(out)
        assert pred is None or pred.shape[0] == n
    # the attack surface: detached, in its box, and the model reads exactly it
    x = a.surface(model, batch)
    assert not x.requires_grad and x.shape[0] == n
    if a.bounds is not None:
        assert a.bounds[0] < a.bounds[1] and a.bounds[0] <= x.min() and x.max() <= a.bounds[1]
    with torch.no_grad():
        torch.testing.assert_close(a.forward_surface(model, batch, x), out, rtol=0, atol=1e-5)
    mask = a.surface_mask(batch)
    if mask is not None:
        assert torch.broadcast_shapes(mask.shape, x.shape) == x.shape and set(mask.unique().tolist()) <= {0.0, 1.0}
    x = x.clone().requires_grad_(True)
    a.loss(a.forward_surface(model, batch, x), batch).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0, "no gradient reaches the attack surface"
    model.zero_grad(set_to_none=True)
    # subset: the examples at the index, in its order
    idx = torch.tensor([2, 0])
    sub = a.subset(batch, idx)
    assert a.batch_size(sub) == 2
    with torch.no_grad():
        torch.testing.assert_close(a.forward(model, sub), out[idx], rtol=0, atol=1e-5)


# --- user plug-in files (--include): the README's examples -------------------------------------------
@pytest.fixture(scope="module")
def included():
    """Each INCLUDED file loaded as `--include` loads it; what it registered (kind -> names). Unloaded
    afterwards, so the rest of the session sees the built-in registries only."""
    registries = {"method": METHODS, "attack": ATTACKS, "task": TASKS, "modality": MODALITIES, "analysis": ANALYSES}
    added = {}
    try:
        for path in INCLUDED:
            before = {kind: set(r.names()) for kind, r in registries.items()}
            include(path)
            added[path] = {kind: sorted(set(r.names()) - before[kind]) for kind, r in registries.items()}
        yield added
    finally:
        for path, kinds in added.items():
            for kind, names in kinds.items():
                for n in names:
                    registries[kind].unregister(n)
            plugins._included.pop(path.resolve(), None)  # so that a later include loads the file again


def _registered(included, kind: str) -> list[str]:
    names = [n for path, k in INCLUDED.items() if k == kind for n in included[path][kind]]
    assert names, f"no INCLUDED file registered a {kind}"
    return names


def test_included_files_register_what_they_say_and_ls_lists_it(included):
    for path, kind in INCLUDED.items():
        assert included[path][kind], f"{path} registered no {kind}"
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["ls", *[arg for p in INCLUDED for arg in ("--include", str(p))]]) == 0
    for kinds in included.values():
        for name in [n for names in kinds.values() for n in names]:
            assert f"  {name} " in out.getvalue()


@pytest.mark.parametrize("modality", MODALITIES.names())
def test_included_method_lowers_the_training_loss(included, modality, problem):
    for name in _registered(included, "method"):
        check_method(name, problem)


@pytest.mark.parametrize("modality", MODALITIES.names())
def test_included_attack_lowers_accuracy_within_its_budget(included, modality, problem):
    ran = 0
    for name in _registered(included, "attack"):
        for case in attack_cases([name]):
            if case.values[1] == modality:
                check_attack(name, case.values[2], problem)
                ran += 1
    if not ran:
        pytest.skip(f"no included attack declares {modality}")


def test_included_method_and_attack_plan_a_run_from_the_command_line(included, tmp_path, capsys):
    """The README's commands: a method parameter through --set, the attack in --attacks."""
    files = [arg for p in INCLUDED for arg in ("--include", str(p))]
    (method,), (attack,) = _registered(included, "method"), _registered(included, "attack")
    common = ["--task", "digits", "--out", str(tmp_path / "lb"), "--work-dir", str(tmp_path / "runs"), "--dry-run"]
    rc = main(["run", *files, *common, "--method", method, "--set", "sigma=0.2",
               "--attacks", f"{attack}:norm=l2,eps=0.5", "pgd:norm=l2,eps=0.5"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "sigma" in out and "MI-FGSM-10 l2 0.5" in out
    # A parameter that no built-in method declares has no flag: the flags are made before --include
    # loads anything (in a fresh process; here the fixture has loaded the files already).
    proc = subprocess.run([sys.executable, "-m", "suite", "run", *files, *common, "--method", method, "--sigma", "0.2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "unrecognized arguments: --sigma" in proc.stderr, proc.stderr


@pytest.mark.parametrize("path", sorted(INCLUDED), ids=lambda p: p.name)
def test_readme_shows_the_example_files_verbatim(path):
    """README's "Adding a method" / "Adding an attack" blocks are the example files minus their docstring."""
    rel = path.relative_to(ROOT).as_posix()
    block = re.search(rf"```python\n(# {re.escape(rel)}\n.*?)```", README.read_text(), re.DOTALL)
    assert block, f"README.md has no python block starting with '# {rel}'"
    code = path.read_text().split('"""', 2)[2].lstrip("\n")
    assert block.group(1) == code, f"README.md's block for {rel} differs from the file"
