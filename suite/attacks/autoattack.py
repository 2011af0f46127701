"""AutoAttack (Croce & Hein, ICML 2020) through its authors' package `pyautoattack`.

`autoattack` is the standard version (APGD-CE, APGD-T, FAB-T, Square, each run only on the points
the previous ones left robust); `apgd` is the package's custom version with APGD-CE then APGD-T
(APGD-CE with the package's 5 restarts, then APGD-T on the points it left robust: the usual "is PGD
enough?" check); `apgd_ce`, `apgd_t`, `fab_t` and `square` run one component alone
with the settings the standard version gives it (what the package's own
`run_standard_evaluation_individual` does). Nothing is re-implemented: every call goes through
`AutoAttack.run_standard_evaluation` of the installed package.

Exactness. For a batch, the suite's result is the package's: the same model (pixels in [0, 1] ->
logits, through the adapter), the same inputs, the package's `batch_size` = the number of examples
in the batch, and a fixed `seed` (the package reseeds torch with it before each component). Only
the package's verdict is returned (`success`, no adversarial inputs): scoring its adversarial
inputs again in a batch of another composition could flip an example that sits on the decision
boundary by float rounding, and then the suite would no longer equal the package. The result
depends only on the batch content and `seed`, never on the global random state, which is saved and
restored around the call; so a resumed evaluation reproduces every batch. Across batches the
grouping differs from one package call on the whole test set (the package regroups the points
still robust after each component into new batches, and random starts depend on the grouping), so
whole-set numbers agree statistically, not bit for bit.

Fewer than 10 classes: the standard version uses 9 target classes for APGD-T and FAB-T, which
needs 10; with C classes both use C - 1 targets (all of them). APGD-T's targeted DLR loss needs
at least 4 classes.
"""
from __future__ import annotations

from typing import Any, ClassVar

from suite.attacks.base import Attack, AttackResult
from suite.errors import UserError
from suite.params import NORMS, Param, fmt_value, nonneg
from suite.registry import ATTACKS

PACKAGE_NORM = {"linf": "Linf", "l2": "L2"}
STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")


def surface_model(model, adapter, batch):
    """The model as the package sees it: an nn.Module from surface tensors (pixels in [0, 1]) to logits."""
    import torch

    class SurfaceModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return adapter.forward_surface(self.model, batch, x)

    return SurfaceModel().eval()


def run_package(logits_model, x, y, *, norm: str, eps: float, seed: int, attacks: tuple[str, ...],
                num_classes: int | None = None, version: str = "standard"):
    """pyautoattack's standard version restricted to `attacks` (or its custom version of `attacks`, with
    the package's own settings for each), on one batch; returns (x_adv, y_adv).

    The global torch random state is restored afterwards (the package reseeds it per component), and
    the weights are left as they were (no gradients accumulated into them).
    """
    import pyautoattack
    import torch

    if version == "custom":
        aa = pyautoattack.AutoAttack(logits_model, norm=PACKAGE_NORM[norm], eps=eps, version="custom",
                                     attacks=list(attacks), device=x.device, seed=seed)
    else:
        aa = pyautoattack.AutoAttack(logits_model, norm=PACKAGE_NORM[norm], eps=eps, version="standard",
                                     device=x.device, seed=seed)
        aa.attacks_to_run = list(attacks)  # as run_standard_evaluation_individual does
    aa.verbose = False  # its progress messages; the package's warnings (checks.py) still show
    if num_classes is not None and num_classes - 1 < aa.apgd_targeted.n_target_classes:
        aa.apgd_targeted.n_target_classes = num_classes - 1
        aa.fab.n_target_classes = num_classes - 1
    if x.is_cuda:
        devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()]
    else:
        devices = []
    # Only input gradients are needed: FAB's backward() would otherwise also fill the weights' .grad
    # (and recording the weights in every graph costs ~6% of the run on the digits MLP)
    params = [p for p in logits_model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.random.fork_rng(devices=devices):
            return aa.run_standard_evaluation(x, y, batch_size=max(1, len(x)))
    finally:
        for p in params:
            p.requires_grad_(True)


class PackageAttack(Attack):
    """One configuration of pyautoattack on the image surface."""

    modalities = ("image",)
    params = {
        "norm": Param(str, "linf", "threat model", choices=NORMS),
        "eps": Param(float, 8 / 255, "budget (e.g. 8/255)", check=nonneg),
        "seed": Param(int, 0, "the package's seed (it reseeds torch with it before each component)", check=nonneg),
    }
    components: ClassVar[tuple[str, ...]] = STANDARD
    version: ClassVar[str] = "standard"  # or "custom": the components with the package's own settings
    title: ClassVar[str] = "AutoAttack"

    def __init__(self, adapter, **params: Any):
        super().__init__(adapter, **params)
        num_classes = getattr(getattr(adapter, "task", None), "num_classes", None)
        if num_classes is not None:
            self._check_classes(num_classes)

    def _check_classes(self, num_classes: int) -> None:
        if "apgd-t" in self.components and num_classes < 4:
            raise UserError(f"attack {self.name}: APGD-T's targeted DLR loss needs at least 4 classes, "
                            f"the model has {num_classes}; use apgd_ce, fab_t or square instead")
        if num_classes < 2:
            raise UserError(f"attack {self.name}: needs at least 2 classes, the model has {num_classes}")

    def label(self) -> str:
        return f"{self.title} {self.p['norm']} {fmt_value(self.p['eps'])}"

    def run(self, model, batch):
        import torch

        x = self.adapter.surface(model, batch)
        y = batch[1]
        if len(y) == 0:
            return AttackResult(success=torch.zeros(0, dtype=torch.bool, device=y.device))
        if self.p["eps"] == 0:  # nothing to search; the package would still spend its full budget
            return AttackResult(success=torch.zeros(len(y), dtype=torch.bool, device=y.device))
        net = surface_model(model, self.adapter, batch)
        with torch.no_grad():
            num_classes = int(net(x[:1]).shape[-1])
        self._check_classes(num_classes)
        _, y_adv = run_package(net, x, y, norm=self.p["norm"], eps=self.p["eps"], seed=self.p["seed"],
                               attacks=self.components, num_classes=num_classes, version=self.version)
        return AttackResult(success=(y_adv != y))


def _package_attack(name: str, class_name: str, title: str, description: str,
                    components: tuple[str, ...] = STANDARD, version: str = "standard") -> type[PackageAttack]:
    """A PackageAttack subclass named `class_name`, registered as attack `name`."""
    cls = type(class_name, (PackageAttack,), {
        "__module__": __name__, "__qualname__": class_name, "__doc__": description,
        "description": description, "components": components, "version": version, "title": title,
    })
    return ATTACKS.register(name)(cls)


AutoAttackStandard = _package_attack(
    "autoattack", "AutoAttackStandard", "AutoAttack",
    "AutoAttack (Croce & Hein 2020), standard version via pyautoattack: APGD-CE, APGD-T, FAB-T, Square-5000, "
    "linf or l2")
APGDCEThenT = _package_attack(
    "apgd", "APGDCEThenT", "APGD-CE+T",
    "AutoAttack's APGD-CE (5 restarts), then APGD-T on the points it left robust: the package's custom version "
    "of these two, via pyautoattack",
    components=("apgd-ce", "apgd-t"), version="custom")
# one standard component alone, with the settings the standard version gives it
APGDCE = _package_attack(
    "apgd_ce", "APGDCE", "APGD-CE",
    "AutoAttack's APGD on the cross-entropy (100 iterations, 1 restart), via pyautoattack", ("apgd-ce",))
APGDT = _package_attack(
    "apgd_t", "APGDT", "APGD-T",
    "AutoAttack's targeted APGD on the DLR loss (9 target classes x 100 iterations), via pyautoattack", ("apgd-t",))
FABT = _package_attack(
    "fab_t", "FABT", "FAB-T",
    "AutoAttack's targeted FAB (9 target classes x 100 iterations, minimum norm <= eps), via pyautoattack",
    ("fab-t",))
Square = _package_attack(
    "square", "Square", "Square-5000",
    "AutoAttack's Square Attack (black box, 5000 queries), via pyautoattack", ("square",))
