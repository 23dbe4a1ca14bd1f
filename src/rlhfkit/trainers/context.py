"""What a running stage carries through its loop: config, run folder, accelerator, logger, guard."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.config import config_to_dict
from rlhfkit.run import MetricsLogger, prepare_stage_dir
from rlhfkit.trainers.guard import NonFiniteGuard


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
        self.logger = MetricsLogger(
            self.out, self.cfg.run.report_to, config_to_dict(self.cfg), enabled=self.is_main
        )
