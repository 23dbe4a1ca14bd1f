from rlhfkit.run.folder import prepare_stage_dir, stage_dir
from rlhfkit.run.logger import MetricsLogger, read_metrics

__all__ = ["MetricsLogger", "prepare_stage_dir", "read_metrics", "stage_dir"]
