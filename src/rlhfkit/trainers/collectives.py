"""Collectives over the processes of a run (DDP through accelerate); the identity with one process.

An online stage's global batch is `per_process` rows on each process, in rank order; `Shard` is
that view: which global rows are this process's, and every process's rows gathered back."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate.utils import DistributedType


def reduce_sum(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (the tensor itself with one process)."""
    return accelerator.reduce(tensor, "sum") if accelerator.num_processes > 1 else tensor


def gather_rows(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """Every process's rows, in rank order; dim 1 (e.g. response length) is padded with zeros to the
    longest, so a gathered mask marks the padding invalid."""
    if accelerator.num_processes == 1:
        return tensor
    if tensor.dim() > 1:
        tensor = accelerator.pad_across_processes(tensor, dim=1, pad_index=0)
    return accelerator.gather(tensor.contiguous())


@dataclass
class Shard:
    """This process's part of a global batch of `per_process` rows per process, in rank order."""

    accelerator: object
    per_process: int

    @property
    def global_size(self) -> int:
        return self.per_process * self.accelerator.num_processes

    def rows(self) -> range:
        """The global row indices this process holds."""
        rank = self.accelerator.process_index
        return range(rank * self.per_process, (rank + 1) * self.per_process)

    def mine(self, global_rows: torch.Tensor) -> torch.Tensor:
        """Local indices of those of `global_rows` that this process holds, in their order."""
        start, stop = self.rows().start, self.rows().stop
        return global_rows[(global_rows >= start) & (global_rows < stop)] - start

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """(global rows, ...): every process's rows of `tensor`, in global row order."""
        return gather_rows(self.accelerator, tensor)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return reduce_sum(self.accelerator, tensor)


def check_replicas_agree(accelerator, net: torch.nn.Module, stage: str) -> None:
    """Every process must end with the same weights (DDP keeps them equal); fail loudly if not. Under
    FSDP each process holds its own shard: there are no replicas to compare."""
    if accelerator.num_processes == 1 or accelerator.distributed_type == DistributedType.FSDP:
        return
    total = sum(p.detach().double().abs().sum() for p in net.parameters() if p.requires_grad)
    totals = gather_rows(accelerator, total.view(1))
    if (totals - totals[0]).abs().max() > 1e-9 * totals[0].abs():
        raise RuntimeError(f"{stage}: processes ended with different weights (|w| sums {totals.tolist()})")
    if accelerator.is_main_process:
        print(
            f"rlhfkit: {stage}: {len(totals)} processes agree on the trained weights (|w| sum "
            f"{totals[0].item():.6f})",
            flush=True,
        )
