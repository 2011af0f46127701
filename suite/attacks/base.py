"""The attack contract and the attack spec syntax.

An attack is built from (modality adapter, parameters: threat model and budget) and run on a batch
of examples the model classifies correctly; it returns per-example success flags and, where they
exist, the adversarial surface tensors. Evaluation (suite.evaluate) combines attacks per example,
worst case, the way AutoAttack does.

Spec syntax on the command line and in task files: `name` or `name:key=value,key=value`, e.g.
`pgd:norm=linf,eps=2/255,steps=10`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

from suite.errors import UserError
from suite.modalities.base import Adapter
from suite.params import Param, resolve_params
from suite.registry import ATTACKS


@dataclass
class AttackResult:
    success: torch.Tensor  # bool, per example
    adversarial: torch.Tensor | None = None  # perturbed surface, where the attack makes one
    extra: dict | None = None  # per-attack statistics (queries, perturbed words, ...)


class Attack:
    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    modalities: ClassVar[tuple[str, ...]] = ()
    params: ClassVar[Mapping[str, Param]] = {}

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

    @staticmethod
    def parse(text: str) -> "AttackSpec":
        text = text.strip()
        name, _, rest = text.partition(":")
        params = []
        if rest:
            for item in rest.split(","):
                key, eq, value = item.partition("=")
                if not eq or not key.strip():
                    raise UserError(f"attack spec {text!r}: expected key=value after ':', got {item!r} "
                                    "(example: pgd:norm=linf,eps=2/255,steps=10)")
                params.append((key.strip(), value.strip()))
        return AttackSpec(name.strip(), tuple(params))

    @staticmethod
    def of(name: str, **params: Any) -> "AttackSpec":
        return AttackSpec(name, tuple(params.items()))

    def build(self, adapter: Adapter) -> Attack:
        cls = ATTACKS.get(self.name)
        if cls.modalities and adapter.name not in cls.modalities:
            raise UserError(f"attack {self.name!r} does not support modality {adapter.name!r} "
                            f"(it supports: {', '.join(cls.modalities)})")
        return cls(adapter, **dict(self.params))

    def resolved(self, adapter: Adapter) -> dict[str, Any]:
        """The attack's full parameters (defaults filled in), for records and run ids."""
        return {"name": self.name, **self.build(adapter).p}
