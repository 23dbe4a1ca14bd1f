"""Saving and resuming a stage's training state: checkpoints/step-N/ (trainable weights, optimizer,
schedule, rng, stage extras), restoring the latest one under --resume, and cutting the logs back to
its step. The on-disk format (safetensors + JSON, hash manifest) is run/checkpoint.py's."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhfkit.atomic import atomic_write_text
from rlhfkit.errors import RlhfkitError
from rlhfkit.run.checkpoint import (
    list_checkpoints,
    load_latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rlhfkit.trainers.context import StageContext
from rlhfkit.trainers.guard import check_finite_weights
from rlhfkit.trainers.sharding import full_optimizer_state, full_tensor, like, load_optimizer_state


def save_training_state(
    ctx: StageContext, step: int, model, optimizer, scheduler, extra: dict | None = None
) -> None:
    """checkpoints/step-<step>/, unless the last optimizer step was skipped as non-finite."""
    if ctx.guard.in_a_row:
        if ctx.is_main:
            print(
                f"rlhfkit: warning: {ctx.guard.label} {step}: not checkpointed, its last update was "
                f"non-finite",
                flush=True,
            )
        return
    state = trainable_state(ctx.accelerator.unwrap_model(model))
    check_finite_weights(state.items(), f"{ctx.guard.label} {step}", ctx.cfg.train.lr)
    optimizer_state = full_optimizer_state(optimizer)  # whole tensors under FSDP: every process gathers
    if ctx.is_main:
        checkpoints = ctx.out / "checkpoints"
        trainer = {
            "step": step,
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "skipped_steps": ctx.guard.skipped,
            **(extra or {}),
        }
        try:
            save_checkpoint(
                checkpoints,
                step,
                {"model": state, "optimizer": optimizer_state, "trainer": trainer},
                keep_last=ctx.cfg.train.keep_last,
            )
        except OSError as e:
            raise RlhfkitError(
                f"{checkpoints}: cannot write checkpoint step-{step} ({e.strerror or e}); earlier "
                "checkpoints are intact: free space, then continue with --resume"
            ) from None
        ctx.saved_steps.append(step)
    ctx.accelerator.wait_for_everyone()


def restore_training_state(ctx: StageContext, model, optimizer, scheduler) -> tuple[int, dict]:
    """(step to continue from, trainer extras); (0, {}) when there is no checkpoint yet."""
    found = load_latest_checkpoint(ctx.out / "checkpoints")
    if found is None:
        if ctx.is_main:
            truncate_logs(ctx.out, -1)  # killed before the first checkpoint: step 0 is logged again
            print(f"rlhfkit: no checkpoint in {ctx.out}/checkpoints; starting from step 0", flush=True)
        return 0, {}
    step, parts = found
    try:
        load_trainable_state(ctx.accelerator.unwrap_model(model), parts["model"])
        load_optimizer_state(optimizer, parts["optimizer"])
    except (ValueError, RuntimeError, KeyError) as e:
        raise RlhfkitError(
            f"{ctx.out}/checkpoints: checkpoint step-{step} does not fit this model "
            f"({str(e).splitlines()[0][:160]}); resume with the run's own config.yaml settings "
            "or start over with --overwrite"
        ) from None
    trainer = parts["trainer"]
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(trainer["rng"])
    ctx.guard.skipped = trainer.get("skipped_steps", 0)
    if ctx.is_main:
        truncate_logs(ctx.out, step)
        print(f"rlhfkit: resumed {ctx.out} from step {step}", flush=True)
    return step, trainer


def truncate_logs(out: Path, step: int) -> None:
    """Drop records after `step` from every step-keyed .jsonl log (metrics, samples, calibration):
    the resumed run logs those steps again. A line cut off by a kill mid-write is dropped too."""
    for path in sorted(Path(out).glob("*.jsonl")):
        kept = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line + "\n")
        atomic_write_text(path, "".join(kept))


def set_aside_checkpoints(ctx: StageContext, first_bad: int) -> str:
    """Rename this run's checkpoints from step first_bad - 1 on to nonfinite-step-N: the weights they
    hold went on to give non-finite values, so --resume must fall back to the one before."""
    moved = []
    if ctx.is_main:
        for path in list_checkpoints(ctx.out / "checkpoints"):
            step = int(path.name.split("-")[1])
            if step >= first_bad - 1 and step in ctx.saved_steps:
                path.rename(path.with_name(f"nonfinite-{path.name}"))
                moved.append(path.name)
    return (
        f"; checkpoints {', '.join(moved)} renamed nonfinite-*, so --resume starts before the trouble"
        if moved
        else ""
    )


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Whole tensors, also of a sharded model (every process calls it then): a checkpoint does not
    depend on how the run was sharded."""
    return {name: full_tensor(p.detach()).clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing:
        raise ValueError(f"checkpoint has parameters this model lacks, e.g. {missing[0]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(like(params[name], value))
