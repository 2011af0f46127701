"""What the adversarial methods share: the threat model of their inner PGD attack, declared once.

`at`, `sam_at` and `awp` declare `PGD_PARAMS` (`at`'s defaults: linf 8/255, 10 steps of
2.5 * eps / steps, random start); `trades` declares the same threat model without a random start
(`pgd_params(random_start=False, ...)`: its start is the authors' small Gaussian one). Methods that
declare them mix in `PGDThreatModel` for the step size, the attack and the label that follow.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from suite.params import NORMS, Param, at_least_one, fmt_value, nonneg

# The threat model of the inner attack, with `at`'s defaults (in this order: it is the order of the
# methods' parameters, so of their run identities and labels).
PGD_PARAMS: dict[str, Param] = {
    "norm": Param(str, "linf", "threat model", choices=NORMS),
    "eps": Param(float, 8 / 255, "perturbation budget (e.g. 8/255)", check=nonneg),
    "step_size": Param(float, None, "PGD step; default 2.5 * eps / steps", check=nonneg, optional=True),
    "steps": Param(int, 10, "PGD steps", check=at_least_one),
    "random_start": Param(bool, True, "start from a uniform point in the ball"),
}


def pgd_params(*, random_start: bool = True, **help: str) -> dict[str, Param]:
    """`PGD_PARAMS` in its order, without `random_start` when False, and with the help text of the
    parameters named in `help` replaced (a method saying what the defaults come to for it)."""
    unknown = set(help) - set(PGD_PARAMS)
    if unknown:
        raise ValueError(f"not PGD parameters: {', '.join(sorted(unknown))}")
    return {k: replace(v, help=help[k]) if k in help else v for k, v in PGD_PARAMS.items()
            if random_start or k != "random_start"}


class PGDThreatModel:
    """For methods that declare the PGD parameters above: the step size, the inner attack, the label."""

    p: dict[str, Any]

    def pgd_step_size(self) -> float:
        """The PGD step: `step_size`, or 2.5 * eps / steps when it is not set."""
        s = self.p["step_size"]
        return 2.5 * self.p["eps"] / self.p["steps"] if s is None else s

    def pgd_attack(self, model, batch, adapter, **kwargs):
        """`suite.attacks.engine.pgd` in this threat model (`kwargs`: its start and loss)."""
        from suite.attacks.engine import pgd

        return pgd(model, adapter, batch, norm=self.p["norm"], eps=self.p["eps"], step_size=self.pgd_step_size(),
                   steps=self.p["steps"], **kwargs)

    def threat_label(self) -> str:
        """e.g. 'linf 8/255 (PGD-10)'."""
        return f"{self.p['norm']} {fmt_value(self.p['eps'])} (PGD-{self.p['steps']})"
