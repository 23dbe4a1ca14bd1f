"""The optimizer step of SFT and RM: AdamW with warm-up + cosine, gradient accumulation over
micro-batches, DDP-correct loss weighting, and the non-finite guard."""

from __future__ import annotations

import contextlib
import math

import torch

from rlhfkit.errors import ConfigError
from rlhfkit.trainers.checkpoints import restore_training_state
from rlhfkit.trainers.context import StageContext
from rlhfkit.trainers.guard import guarded_step
from rlhfkit.trainers.sharding import use_gradient_checkpointing


def prepare_training(
    ctx: StageContext,
    model,
    n_examples: int,
    head: str | None = None,
    head_lr: float | None = None,
    unit: str = "training examples",
):
    """(model, optimizer, scheduler, start step, global batch): AdamW with warm-up + cosine, wrapped
    by accelerate, restored from the latest checkpoint under --resume. `unit` names what a batch
    counts in the error (SFT with sft.packing batches packed rows)."""
    t = ctx.cfg.train
    global_batch = t.batch_size * t.grad_accum * ctx.accelerator.num_processes
    if n_examples < global_batch:
        raise ConfigError(
            f"{n_examples} {unit} cannot fill one global batch of {global_batch} "
            "(train.batch_size x train.grad_accum x processes)"
        )
    use_gradient_checkpointing(model, t.gradient_checkpointing)
    optimizer = build_optimizer(model, t.lr, t.weight_decay, head, head_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(t.warmup_steps, t.max_steps))
    model, optimizer = ctx.accelerator.prepare(model, optimizer)
    model.train()
    start_step = restore_training_state(ctx, model, optimizer, scheduler)[0] if ctx.resume else 0
    return model, optimizer, scheduler, start_step, global_batch


def build_optimizer(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    head: str | None = None,
    head_lr: float | None = None,
) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norms (1-D tensors), as in GPT-2 / nanoGPT. Parameters
    whose name contains `head` get `head_lr` (a freshly initialised head learns faster than the trunk)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = []
    for in_head in (False, True):
        part = [p for n, p in named if (head is not None and head_lr is not None and head in n) == in_head]
        group_lr = head_lr if in_head else lr
        groups.append(
            {"params": [p for p in part if p.ndim >= 2], "weight_decay": weight_decay, "lr": group_lr}
        )
        groups.append({"params": [p for p in part if p.ndim < 2], "weight_decay": 0.0, "lr": group_lr})
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.1):
    """lr multiplier: linear warm-up, then cosine decay to `min_ratio` at `total_steps`."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def accumulate_and_step(ctx: StageContext, model, optimizer, scheduler, micro_loss, n_micro: int, step: int):
    """Optimizer step `step` over `n_micro` micro-batches; returns (global mean loss, grad norm).
    A non-finite loss or gradient skips the update (ctx.guard).

    `micro_loss(m)` returns (mean loss of micro-batch m on this process, its share of the global
    batch). Weighting by the share makes N processes x b give the gradient of 1 process x N*b;
    the extra x world undoes DDP's averaging of gradients across processes.
    """
    acc = ctx.accelerator
    world = acc.num_processes
    total = torch.zeros(())
    for m in range(n_micro):
        sync = contextlib.nullcontext() if m == n_micro - 1 else acc.no_sync(model)
        with sync:
            loss, share = micro_loss(m)
            acc.backward(loss * share * world)
        total += loss.detach().float() * share
    grad_norm = acc.clip_grad_norm_(model.parameters(), ctx.cfg.train.max_grad_norm)
    if world > 1:
        total = acc.reduce(total, "sum")  # before the guard, so every process skips the same steps
    guarded_step(ctx.guard, optimizer, scheduler, total.item(), float(grad_norm), step)
    return total.item(), float(grad_norm)
