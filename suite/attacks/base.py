"""The attack contract and the attack spec syntax.

An attack is built from (modality adapter, parameters: threat model and budget) and run on a batch
of examples the model classifies correctly; it returns per-example success flags and, where they
exist, the adversarial surface tensors. Evaluation (suite.evaluate) combines attacks per example,
worst case, the way AutoAttack does.

Spec syntax on the command line and in task files: `name` or `name:key=value,key=value`, e.g.
`pgd:norm=linf,eps=2/255,steps=10`. The key `n` is not a parameter of the attack but of the
evaluation: `deepwordbug:n=300` runs that attack on a class-stratified 300 of the evaluated
examples (nested in them, the same for every method), so expensive attacks can see fewer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from suite.errors import UserError
from suite.modalities.base import Adapter
from suite.params import Param, parse_spec, resolve_params
from suite.registry import ATTACKS

if TYPE_CHECKING:
    import torch


@dataclass
class AttackResult:
    """What an attack returns for a batch. Evaluation computes each example's statistics from
    `adversarial` (the perturbed surface) when it is given, which is how every metric (accuracy,
    mIoU) is scored the same way for every attack; attacks that perturb something else (TextAttack
    edits words) give only `success`, a bool per example: the example is no longer classified right."""
    success: torch.Tensor | None = None
    adversarial: torch.Tensor | None = None
    extra: dict | None = None  # per-attack statistics (queries, perturbed words, ...), summed over batches


class Attack:
    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    modalities: ClassVar[tuple[str, ...]] = ()
    params: ClassVar[Mapping[str, Param]] = {}
    # The threat family: the worst case over an evaluation suite is taken within one family (the
    # norm-bounded attacks together; a spatial, pixel or text-edit attack is its own column, never
    # folded into the norm-bounded worst case).
    threat: ClassVar[str] = "norm-bounded"

    def __init__(self, adapter: Adapter, **params: Any):
        self.adapter = adapter
        self.p = resolve_params(f"attack {self.name}", self.params, params)

    def label(self) -> str:
        raise NotImplementedError

    def run(self, model: torch.nn.Module, batch: Any) -> AttackResult:
        raise NotImplementedError


@dataclass(frozen=True)
class AttackSpec:
    name: str
    params: tuple[tuple[str, Any], ...] = ()
    n: int = 0  # evaluate this attack on a stratified n of the evaluated examples (0 = all of them)

    @staticmethod
    def parse(text: str) -> "AttackSpec":
        name, items = parse_spec(text, kind="attack", example="pgd:norm=linf,eps=2/255,steps=10")
        params, n = [], 0
        for key, value in items:
            if key == "n":
                try:
                    n = int(value)
                except ValueError:
                    n = -1
                if n < 1:
                    raise UserError(f"attack spec {text!r}: n must be a positive number of examples, got {value!r}")
            else:
                params.append((key, value))
        return AttackSpec(name, tuple(params), n)

    @staticmethod
    def of(name: str, n: int = 0, **params: Any) -> "AttackSpec":
        return AttackSpec(name, tuple(params.items()), n)

    def build(self, adapter: Adapter) -> Attack:
        cls = ATTACKS.get(self.name)
        if cls.modalities and adapter.name not in cls.modalities:
            raise UserError(f"attack {self.name!r} does not support modality {adapter.name!r} "
                            f"(it supports: {', '.join(cls.modalities)})")
        return cls(adapter, **dict(self.params))

    def resolved(self, adapter: Adapter) -> dict[str, Any]:
        """The attack's full parameters (defaults filled in), for records and run ids."""
        return self.resolved_params(self.build(adapter))

    def resolved_params(self, attack: Attack) -> dict[str, Any]:
        """`resolved` of an attack already built from this spec."""
        out = {"name": self.name, **attack.p}
        if self.n:
            out["n"] = self.n
        return out
