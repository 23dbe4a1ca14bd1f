"""The progress bar of long work: training loops, sampling pairs, evaluation."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    """tqdm with loss and throughput in its postfix; redrawn rarely when output is a log file."""
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        disable=not enabled,
        dynamic_ncols=True,
        mininterval=0.2 if interactive else 10.0,
    )
