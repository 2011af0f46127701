"""The analysis contract.

An analysis is built from (modality adapter, declared parameters) and run once on the trained model
after evaluation:

    result = analysis.run(model, dataset, collate=..., device=..., seed=...)

`dataset` is the task's *training* split (sharpness and curvature are properties of the training
loss); an analysis chooses its own fixed, seeded subset of it (`suite.subsets.select`). It returns a
dict with at least {"value": float} (the leaderboard cell) and may add more numbers; the runner adds
the time it took. It must be deterministic given `seed` and must leave the model exactly as it found
it (weights, buffers, mode).

Two optional courtesies: `example_passes(n_train)` estimates the analysis's compute in forward-backward
passes over single examples (the runner compares it with the training's at the start of a run and
says what the analyses will cost), and a long analysis calls `self.advance(done, total)` as it goes
(the runner shows it as progress).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

from suite.errors import UserError
from suite.params import Param, parse_spec, resolve_params
from suite.registry import ANALYSES


class Analysis:
    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    modalities: ClassVar[tuple[str, ...]] = ()  # () = every modality
    params: ClassVar[Mapping[str, Param]] = {}

    def __init__(self, adapter: Any, **params: Any):
        self.adapter = adapter
        self.p = resolve_params(f"analysis {self.name}", self.params, params)
        self.on_progress: Callable[[int, int], None] | None = None  # set by the runner

    def advance(self, done: int, total: int) -> None:
        """Report progress (done of total units of work: batches, iterations)."""
        if self.on_progress is not None:
            self.on_progress(done, total)

    def example_passes(self, n_train: int) -> float | None:
        """Estimated compute on a training split of n_train examples, in forward-backward passes of
        one example (a forward alone counts 1/3); None when unknown."""
        return None

    def label(self) -> str:
        """Column header, e.g. 'sharpness rho=0.05'."""
        raise NotImplementedError

    def run(self, model, dataset, *, collate, device, seed: int) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class AnalysisSpec:
    """An analysis as the command line and tasks name it: 'sharpness:rho=0.05,examples=512'."""

    name: str
    params: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def parse(text: str) -> "AnalysisSpec":
        name, items = parse_spec(text, kind="analysis", example="sharpness:rho=0.05")
        return AnalysisSpec(name, tuple(items))

    def build(self, adapter: Any) -> Analysis:
        """The analysis for a modality adapter, its parameters validated (UserError otherwise)."""
        cls = ANALYSES.get(self.name)
        if cls.modalities and adapter.name not in cls.modalities:
            raise UserError(f"analysis {self.name!r} does not support modality {adapter.name!r}")
        return cls(adapter, **dict(self.params))
