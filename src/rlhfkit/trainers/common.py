"""Pieces every training loop shares: setup, optimizer and schedule, checkpoints, final save."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit.atomic import atomic_dir
from rlhfkit.config import config_to_dict
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.run import MetricsLogger, prepare_stage_dir
from rlhfkit.run.checkpoint import (
    list_checkpoints,
    load_latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rlhfkit.run.folder import check_stage_dir
from rlhfkit.run.logger import read_metrics


@dataclass
class RunResult:
    dir: Path
    final: Path
    metrics: list[dict] = field(default_factory=list)

    def last(self, key: str):
        """The most recent logged value of `key` (None if never logged)."""
        for record in reversed(self.metrics):
            if key in record:
                return record[key]
        return None

    def first(self, key: str):
        for record in self.metrics:
            if key in record:
                return record[key]
        return None


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
                f"{self.label} {step}: non-finite loss or gradient in {self.in_a_row} steps in a row, the first at "
                f"{self.label} {self.first_bad} ({values}); stopped{aside}. Likely cause: train.lr too high, a bad data row or reward, or float16 overflow "
                "(try model.dtype=bfloat16/float32); train.max_nonfinite_steps sets how many are tolerated")
        print(f"rlhfkit: warning: {self.label} {step}: non-finite {values}; optimizer step skipped "
              f"({self.in_a_row} in a row, stop at {self.limit})", flush=True)
        return False


def guarded_step(guard: NonFiniteGuard, optimizer, scheduler, loss: float, grad_norm: float, step: int) -> None:
    """optimizer.step() unless the loss or the gradient norm is non-finite; the lr schedule
    advances either way (it is a function of the step number)."""
    if guard.allows(loss, grad_norm, step):
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass
class StageContext:
    cfg: object
    stage: str
    out: Path
    accelerator: object
    resume: bool
    overwrite: bool
    guard: NonFiniteGuard
    logger: MetricsLogger | None = None
    saved_steps: list[int] = field(default_factory=list)
    """Checkpoints this process wrote (not those found on --resume)."""

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def open_run(self) -> None:
        """Create the run folder (config.yaml first) and the logger; call once inputs have loaded."""
        if self.is_main:
            prepare_stage_dir(self.cfg, self.stage, resume=self.resume, overwrite=self.overwrite)
        self.accelerator.wait_for_everyone()
        self.logger = MetricsLogger(self.out, self.cfg.run.report_to, config_to_dict(self.cfg), enabled=self.is_main)


def start_stage(cfg, stage: str, resume: bool, overwrite: bool) -> StageContext:
    """Seed, threads and accelerator; checks the run folder but creates nothing yet, so a bad
    model path or data file fails without leaving a half-made run behind."""
    from accelerate import Accelerator

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    out = check_stage_dir(cfg, stage, resume=resume, overwrite=overwrite)
    guard = NonFiniteGuard(cfg.train.max_nonfinite_steps, "ppo iteration" if stage == "ppo" else f"{stage} step")
    ctx = StageContext(cfg, stage, out, accelerator, resume, overwrite, guard)
    guard.on_stop = lambda first_bad: set_aside_checkpoints(ctx, first_bad)
    return ctx


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
    return f"; checkpoints {', '.join(moved)} renamed nonfinite-*, so --resume starts before the trouble" if moved else ""


def prepare_training(ctx: StageContext, model, n_examples: int, head: str | None = None, head_lr: float | None = None):
    """(model, optimizer, scheduler, start step, global batch): AdamW with warm-up + cosine, wrapped
    by accelerate, restored from the latest checkpoint under --resume."""
    t = ctx.cfg.train
    global_batch = t.batch_size * t.grad_accum * ctx.accelerator.num_processes
    if n_examples < global_batch:
        raise ConfigError(f"{n_examples} training examples cannot fill one global batch of {global_batch} "
                         "(train.batch_size x train.grad_accum x processes)")
    optimizer = build_optimizer(model, t.lr, t.weight_decay, head, head_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(t.warmup_steps, t.max_steps))
    model, optimizer = ctx.accelerator.prepare(model, optimizer)
    model.train()
    start_step = restore_training_state(ctx, model, optimizer, scheduler)[0] if ctx.resume else 0
    return model, optimizer, scheduler, start_step, global_batch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, head: str | None = None,
                    head_lr: float | None = None) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norms (1-D tensors), as in GPT-2 / nanoGPT. Parameters
    whose name contains `head` get `head_lr` (a freshly initialised head learns faster than the trunk)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = []
    for in_head in (False, True):
        part = [p for n, p in named if (head is not None and head_lr is not None and head in n) == in_head]
        group_lr = head_lr if in_head else lr
        groups.append({"params": [p for p in part if p.ndim >= 2], "weight_decay": weight_decay, "lr": group_lr})
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
    import contextlib

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


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing:
        raise ValueError(f"checkpoint has parameters this model lacks, e.g. {missing[0]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def save_training_state(ctx: StageContext, step: int, model, optimizer, scheduler, extra: dict | None = None) -> None:
    """checkpoints/step-<step>/, unless the last optimizer step was skipped as non-finite."""
    if ctx.guard.in_a_row:
        if ctx.is_main:
            print(f"rlhfkit: warning: {ctx.guard.label} {step}: not checkpointed, its last update was non-finite",
                  flush=True)
        return
    state = trainable_state(ctx.accelerator.unwrap_model(model))
    check_finite_weights(ctx, state.items(), f"{ctx.guard.label} {step}")
    if ctx.is_main:
        checkpoints = ctx.out / "checkpoints"
        trainer = {"step": step, "scheduler": scheduler.state_dict(), "rng": rng_state(),
                   "skipped_steps": ctx.guard.skipped, **(extra or {})}
        try:
            save_checkpoint(checkpoints, step, {"model": state, "optimizer": optimizer.state_dict(), "trainer": trainer},
                            keep_last=ctx.cfg.train.keep_last)
        except OSError as e:
            raise RlhfkitError(f"{checkpoints}: cannot write checkpoint step-{step} ({e.strerror or e}); earlier "
                               "checkpoints are intact: free space, then continue with --resume") from None
        ctx.saved_steps.append(step)
    ctx.accelerator.wait_for_everyone()


def check_finite_weights(ctx: StageContext, named, where: str) -> None:
    """Raise before saving (name, tensor) pairs that hold a NaN/inf: a finite but huge update (lr
    far too high) can overflow the weights without any NaN gradient for the guard to see."""
    bad = next((name for name, value in named if not torch.isfinite(value).all()), None)
    if bad is not None:
        raise RlhfkitError(f"{where}: weight {bad} is not finite; not saved. Likely cause: train.lr="
                           f"{ctx.cfg.train.lr:g} too high or float16 overflow")


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
        optimizer.load_state_dict(parts["optimizer"])
    except (ValueError, RuntimeError, KeyError) as e:
        raise RlhfkitError(f"{ctx.out}/checkpoints: checkpoint step-{step} does not fit this model "
                           f"({str(e).splitlines()[0][:160]}); resume with the run's own config.yaml settings "
                           "or start over with --overwrite") from None
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
    import json

    from rlhfkit.atomic import atomic_write_text

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


def save_final(ctx: StageContext, model, tokenizer, save_merged: bool = False,
               extra_files: dict[str, str | bytes] | None = None,
               extra_models: dict[str, tuple] | None = None) -> Path:
    """final/: a from_pretrained()-loadable folder (the adapter for LoRA, plus merged/ if asked);
    `extra_models` {name: (model, tokenizer)} become from_pretrained() folders final/<name>/."""
    final = ctx.out / "final"
    unwrapped = ctx.accelerator.unwrap_model(model)
    with torch.no_grad():
        check_finite_weights(ctx, unwrapped.named_parameters(), f"{ctx.stage} final/")
    if ctx.is_main:
        try:
            _write_final(final, unwrapped, tokenizer, save_merged, extra_files, extra_models, _adapter_base(ctx.cfg))
        except OSError as e:
            raise RlhfkitError(f"{final}: cannot write ({e.strerror or e}); checkpoints/ is intact: free space, "
                               "then rerun with --resume") from None
        if ctx.cfg.run.push_to_hub:
            push_to_hub(final, ctx.cfg.run.push_to_hub)
    ctx.accelerator.wait_for_everyone()
    return final


def _adapter_base(cfg) -> str | None:
    """The folder this stage's model was loaded from. A LoRA adapter trained on a merged LoRA SFT
    model must name the SFT run, not the original base peft records: otherwise loading final/
    silently gives base + adapter without the SFT weights (the seed's "reference is the base" trap)."""
    from rlhfkit.models.load import resolve_model_path

    model = getattr(cfg, "model", None)
    return str(Path(resolve_model_path(model.name, model.tiny_seed)).resolve()) if model is not None else None


def _write_final(final: Path, unwrapped, tokenizer, save_merged: bool, extra_files: dict | None,
                 extra_models: dict | None = None, adapter_base: str | None = None) -> None:
    with atomic_dir(final) as tmp:
        unwrapped.save_pretrained(tmp, safe_serialization=True)
        adapter_config = tmp / "adapter_config.json"
        if adapter_base is not None and adapter_config.is_file():
            config = json.loads(adapter_config.read_text())
            config["base_model_name_or_path"] = adapter_base
            adapter_config.write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(tmp)
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        for name, (extra_model, extra_tokenizer) in (extra_models or {}).items():
            extra_model.save_pretrained(tmp / name, safe_serialization=True)
            extra_tokenizer.save_pretrained(tmp / name)
        if save_merged and hasattr(unwrapped, "merge_and_unload"):
            import copy

            merged = copy.deepcopy(unwrapped).merge_and_unload()
            merged.save_pretrained(tmp / "merged", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "merged")


def push_to_hub(folder: Path, repo_id: str) -> None:
    """Upload after everything is saved locally; offline this is one line, not a crash."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
        print(f"rlhfkit: pushed {folder} to the hub as {repo_id}", flush=True)
    except Exception as e:  # noqa: BLE001 - any failure here must not lose the local result
        print(f"rlhfkit: push_to_hub {repo_id} failed ({type(e).__name__}); {folder} is saved locally", flush=True)


def finish(ctx: StageContext, final: Path) -> RunResult:
    ctx.logger.close()
    metrics = read_metrics(ctx.out / "metrics.jsonl") if (ctx.out / "metrics.jsonl").is_file() else []
    return RunResult(ctx.out, final, metrics)


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    """tqdm with loss and throughput in its postfix; redrawn rarely when output is a log file."""
    import sys

    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
                mininterval=0.2 if interactive else 10.0)
