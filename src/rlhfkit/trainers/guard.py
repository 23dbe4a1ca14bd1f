"""Non-finite steps and weights: a NaN/inf loss or gradient skips the optimizer step, and
`train.max_nonfinite_steps` of them in a row stop the run; non-finite weights are never saved."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhfkit.errors import RlhfkitError


@dataclass
class NonFiniteGuard:
    """Skips an optimizer step whose loss or gradient norm is NaN/inf and stops the run after
    `limit` such steps in a row. A skipped step leaves weights and optimizer moments as they were,
    so nothing downstream (checkpoints, final/) ever sees a poisoned state."""

    limit: int
    label: str = "step"
    """How messages name a step: "sft step", "ppo iteration"."""
    skipped: int = 0
    """Skipped steps over the whole run (logged as train/skipped_steps, kept across --resume)."""
    in_a_row: int = 0
    first_bad: int | None = None
    """Step of the first skip in the current streak."""
    on_stop: Callable[[int], str] | None = None
    """Called with `first_bad` before stopping; returns text for the message (what was set aside)."""

    def allows(self, loss: float, grad_norm: float, step: int) -> bool:
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.in_a_row, self.first_bad = 0, None
            return True
        self.skipped += 1
        self.in_a_row += 1
        self.first_bad = self.first_bad or step
        values = f"loss {loss:g}, gradient norm {grad_norm:g}"
        if self.in_a_row >= self.limit:
            aside = self.on_stop(self.first_bad) if self.on_stop else ""
            raise RlhfkitError(
                f"{self.label} {step}: non-finite loss or gradient in {self.in_a_row} steps in a row, the "
                f"first at "
                f"{self.label} {self.first_bad} ({values}); stopped{aside}. Likely cause: train.lr too "
                f"high, a bad data row or reward, or float16 overflow "
                "(try model.dtype=bfloat16/float32); train.max_nonfinite_steps sets how many are tolerated"
            )
        print(
            f"rlhfkit: warning: {self.label} {step}: non-finite {values}; optimizer step skipped "
            f"({self.in_a_row} in a row, stop at {self.limit})",
            flush=True,
        )
        return False


def guarded_step(
    guard: NonFiniteGuard, optimizer, scheduler, loss: float, grad_norm: float, step: int
) -> None:
    """optimizer.step() unless the loss or the gradient norm is non-finite; the lr schedule
    advances either way (it is a function of the step number)."""
    if guard.allows(loss, grad_norm, step):
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def check_finite_weights(named, where: str, lr: float) -> None:
    """Raise before saving (name, tensor) pairs that hold a NaN/inf: a finite but huge update (lr
    far too high) can overflow the weights without any NaN gradient for the guard to see."""
    bad = next((name for name, value in named if not torch.isfinite(value).all()), None)
    if bad is not None:
        raise RlhfkitError(
            f"{where}: weight {bad} is not finite; not saved. Likely cause: train.lr="
            f"{lr:g} too high or float16 overflow"
        )
