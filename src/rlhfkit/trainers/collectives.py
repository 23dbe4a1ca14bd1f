"""Collectives over the processes of a run (DDP through accelerate); the identity with one process."""

from __future__ import annotations

import torch

from rlhfkit.trainers.context import StageContext


def reduce_sum(ctx: StageContext, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (the tensor itself with one process)."""
    return ctx.accelerator.reduce(tensor, "sum") if ctx.accelerator.num_processes > 1 else tensor


def gather_rows(ctx: StageContext, tensor: torch.Tensor) -> torch.Tensor:
    """Every process's rows, in rank order; dim 1 (e.g. response length) is padded with zeros to the
    longest, so a gathered mask marks the padding invalid."""
    acc = ctx.accelerator
    if acc.num_processes == 1:
        return tensor
    if tensor.dim() > 1:
        tensor = acc.pad_across_processes(tensor, dim=1, pad_index=0)
    return acc.gather(tensor.contiguous())
