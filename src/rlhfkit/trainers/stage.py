"""A stage's life: start (seed, threads, accelerator; the run folder checked, not yet made), open
the run folder once inputs have loaded, finish with a RunResult. Every train_<stage> begins and
ends here."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit.run.folder import check_stage_dir
from rlhfkit.run.logger import read_metrics
from rlhfkit.trainers.checkpoints import set_aside_checkpoints
from rlhfkit.trainers.context import StageContext
from rlhfkit.trainers.guard import NonFiniteGuard
from rlhfkit.trainers.sharding import make_accelerator


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


def start_stage(cfg, stage: str, resume: bool, overwrite: bool) -> StageContext:
    """Seed, threads and accelerator; checks the run folder but creates nothing yet, so a bad
    model path or data file fails without leaving a half-made run behind."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    accelerator = make_accelerator(cfg)
    out = check_stage_dir(cfg, stage, resume=resume, overwrite=overwrite)
    guard = NonFiniteGuard(
        cfg.train.max_nonfinite_steps, "ppo iteration" if stage == "ppo" else f"{stage} step"
    )
    ctx = StageContext(cfg, stage, out, accelerator, resume, overwrite, guard)
    guard.on_stop = lambda first_bad: set_aside_checkpoints(ctx, first_bad)
    return ctx


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def finish(ctx: StageContext, final: Path) -> RunResult:
    ctx.logger.close()
    metrics = read_metrics(ctx.out / "metrics.jsonl") if (ctx.out / "metrics.jsonl").is_file() else []
    return RunResult(ctx.out, final, metrics)
