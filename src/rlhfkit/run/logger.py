"""Metrics to metrics.jsonl (always), TensorBoard (default) and W&B (only when asked)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rlhfkit.errors import RlhfkitError


class MetricsLogger:
    def __init__(self, out_dir: Path, report_to: list[str], config: dict | None = None, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.start = time.time()
        self._tb = None
        self._wandb = None
        unknown = set(report_to) - {"tensorboard", "wandb"}
        if unknown:
            raise RlhfkitError(
                f"run.report_to: unknown backend {sorted(unknown)[0]!r}; use tensorboard and/or wandb"
            )
        if not enabled:
            return
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))
        if "wandb" in report_to:
            try:
                import wandb
            except ImportError:
                raise RlhfkitError(
                    "run.report_to includes wandb but it is not installed: pip install wandb"
                ) from None
            self._wandb = wandb.init(project="rlhfkit", name=Path(out_dir).parent.name, config=config or {})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in metrics.items()}
        record = {"step": step, "time": round(time.time() - self.start, 3), **clean}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(clean, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN; keep it visible rather than dropping the key
    return value


def read_metrics(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
