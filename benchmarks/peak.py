"""This machine's fp32 matmul throughput at the benchmark's shapes, in a fresh process.

    python benchmarks/peak.py --threads 2

For each model shape: (B*T, d) @ (d, n) with B*T = SFT_BATCH x MAX_LENGTH rows and n in
{3d (qkv), 4d (MLP), V (LM head)}, the matmuls that dominate training. Best of several timed
repeats after a warm-up; the shape's peak is its fastest matmul. Timed in process CPU seconds,
like the stages' CPU-time throughput it is compared with: other load on the machine then does
not lower the peak (wall-clock timing under load did, giving fractions above 100%).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workload as W  # noqa: E402


def gflops(m: int, k: int, n: int, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b  # warm-up: allocation and kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        a @ b
        best = min(best, time.process_time() - start)
    return 2 * m * k * n / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", nargs="+", default=list(W.SHAPES))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = W.SFT_BATCH * W.MAX_LENGTH
    result = {}
    for shape in args.shapes:
        d = W.SHAPES[shape]["n_embd"]
        per = {f"{rows}x{d}x{n}": gflops(rows, d, n) for n in (3 * d, 4 * d, W.VOCAB)}
        result[shape] = {"gflops": max(per.values()), "by_matmul": per}
    W.emit({"peak": result, "threads": torch.get_num_threads(), "torch": torch.__version__})


if __name__ == "__main__":
    main()
