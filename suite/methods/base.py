"""The method contract: a method owns the whole training step.

`train_step(model, batch, optimizer, adapter, ctx=None) -> dict` runs every forward and backward pass
the method needs, calls `optimizer.step()` once, and returns at least {"loss": float}. The optimizer
is the *base* optimizer (SGD or AdamW) that the trainer built and the LR schedule drives; SAM-style
methods perturb the weights around it rather than wrapping it in a second optimizer object.

Each method declares its parameters (validated by `suite.params`) and its cost in forward-backward
passes per step, counting a forward-only pass as 1/3 (a backward costs about two forwards).

`ctx` is the step's `StepContext`: what the trainer hands a step besides its arguments, one object
that it updates as it goes and passes to every step (None, as in a call with four arguments, means
`StepContext()`: epoch 0, no scaler, one process). A method reads it and never keeps it:
- `ctx.epoch` (0-based), so a step may depend on the schedule (AWP's warm-up of plain AT epochs); a
  resumed run sets it from the epoch it resumes at.
- `ctx.scaler`: the loss scaler under amp=fp16 (see "Mixed precision"), None otherwise.
- `ctx.ascent_sync` and `ctx.share`: see "Several processes".

The returned statistics may be floats or 0-dim tensors. Tensors are better on a GPU: `.item()` waits
for the GPU at every step, while the trainer sums tensors on the device and reads them once an epoch.

Mixed precision. The trainer runs each step inside one autocast context (amp=bf16 or fp16). Autocast
keeps its low-precision copies of the weights for as long as the context is open, so a method that
changes weights in place between passes (SAM's w + e) calls `torch.clear_autocast_cache()` after
changing them. Under amp=fp16 `ctx.scaler` is a `torch.amp.GradScaler` (None otherwise) and the
trainer accepts only methods that declare `supports_fp16 = True`. Such a method backpropagates
`scaler.scale(loss)` instead of `loss`, divides gradients by the scale before it reads their values
(SAM's norm), and steps with `scaler.step(optimizer); scaler.update()`, which skips the step when a
gradient overflowed; a method with several passes makes an overflow in any of them skip the step
(suite.methods.sam shows how).

Several processes (torchrun, suite.distributed). `model` is then a DistributedDataParallel wrapper:
a backward through it averages parameter gradients over the processes, weighted by each one's share
of the global batch (`ctx.share`, which the trainer sets before every step and which a method that
all-reduces gradients by hand passes to `suite.distributed.all_reduce_grads_`). Passes that need no
parameter gradient (attacks, ranking forwards) run on the module itself,
`suite.distributed.unwrap(model)` (the PGD engine does this). `ctx.ascent_sync` is False when
SAM-style methods should take their ascent direction from each process's own gradient
(`sam_ascent=per_replica`, in `model.no_sync()`) instead of the global one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from suite.modalities.base import Adapter

if TYPE_CHECKING:
    import torch
from suite.params import Param, fmt_value, resolve_params


@dataclass
class StepContext:
    """What the trainer hands every training step besides its arguments (see the module docstring)."""
    epoch: int = 0  # the current epoch, 0-based
    scaler: torch.amp.GradScaler | None = None  # the loss scaler under amp=fp16, None otherwise
    ascent_sync: bool = True  # SAM-style ascent from the global gradient (False: each process's own)
    share: float = 1.0  # this process's share of the global batch (1 with one process)


class Method:
    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    params: ClassVar[Mapping[str, Param]] = {}
    # Parameters added after runs of the method were recorded: they enter a run's identity only when
    # set away from their defaults, so the earlier run ids stay valid (as suite.runner does for
    # training settings).
    later_params: ClassVar[frozenset[str]] = frozenset()
    # Methods that scale their losses for amp=fp16 (see the module docstring) declare True.
    supports_fp16: ClassVar[bool] = False

    def __init__(self, **params: Any):
        self.p = resolve_params(f"method {self.name}", self.params, params)

    def check_settings(self, cfg) -> None:
        """Refuse (UserError) training settings this method cannot work with, when the run is planned,
        before anything is created. Subclasses extend it (calling this one)."""
        if cfg.amp == "fp16" and not self.supports_fp16:
            from suite.errors import UserError
            raise UserError(f"method {self.name} does not support amp=fp16 (it has no gradient scaling); "
                            "use --set amp=bf16 or --set amp=off")

    def cost(self) -> float:
        """Forward-backward passes per training step."""
        raise NotImplementedError

    def train_step(self, model: torch.nn.Module, batch: Any, optimizer: torch.optim.Optimizer,
                   adapter: Adapter, ctx: StepContext | None = None) -> dict[str, float]:
        """One training step (see the module docstring); `ctx` None means `StepContext()`."""
        raise NotImplementedError

    def identity_params(self) -> dict[str, Any]:
        """The parameters that name a run (see `later_params`)."""
        return {k: v for k, v in self.p.items()
                if not (k in self.later_params and v == self.params[k].default)}

    def label(self) -> str:
        """Short human label for leaderboards, e.g. 'SAM rho=0.1'."""
        args = " ".join(f"{k}={fmt_value(v)}" for k, v in self.p.items())
        return f"{self.name.upper()} {args}".strip()
