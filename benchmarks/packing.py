#!/usr/bin/env python
"""SFT throughput with and without `sft.packing` on a long-tailed length mix (issue #19).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/packing.py            # tiny model, 1 thread
    python benchmarks/packing.py --repeats 3 --steps 40 --max-length 256 --batch 16 --threads 2

Rows are `prompt`/`completion` text whose lengths in words follow lognormals shaped like Alpaca's
(prompts ~20 words, completions ~45 with a long tail), cut to fit `--max-length` tokens. Each variant is
the real `train_sft` on the tiny model (full weights) in a fresh process:
- `padded`: one example per row, `sft.group_by_length=true` (the default);
- `padded-random`: the same with `sft.group_by_length=false`;
- `packed`: `sft.packing=true`, with `train.batch_size` rows chosen so a step holds about as many tokens
  as a padded step of `--batch` examples (packed rows are longer than examples).
Time runs from the end of step 2 to the end of the last step, wall and CPU clock, read when the trainer
logs each step's record (`train.log_every=1`; the metrics logger is observed, the loop untouched). The
tokens of the timed steps are recounted from the same pure functions the trainer uses (data/batching.py,
data/packing.py): `loss tok/s` counts completion tokens (the ones with a loss), `real tok/s` every
non-pad token, `slots tok/s` every position computed (rows x width). `--repeats N` runs the variants N
times in turn and keeps each one's run with the least CPU time. Not a test: the numbers depend on the
machine and its load.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlhfkit.config import SFTConfig, load_config
from rlhfkit.data.batching import global_batch_at
from rlhfkit.data.packing import pack_sft
from rlhfkit.data.sft import completion_tokens
from rlhfkit.models import load_tokenizer, resolve_model_path
from rlhfkit.run.logger import MetricsLogger
from rlhfkit.tasks.vocab import CATEGORIES, REPEAT_WORDS, TOPICS
from rlhfkit.trainers.sft import load_sft_data, train_sft

WARMUP = 2
VARIANTS = ("padded", "padded-random", "packed")


def write_rows(path: Path, n: int, max_length: int, seed: int = 0) -> None:
    """n rows of lognormal prompt and completion lengths (in words, ~1.2 tokens each with the tiny BPE)."""
    words = sorted({w for w in TOPICS} | set(REPEAT_WORDS) | {w for c in CATEGORIES.values() for w in c})
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            while True:
                p, c = int(rng.lognormvariate(math.log(20), 0.6)), int(rng.lognormvariate(math.log(45), 0.9))
                if 1.3 * (p + c) + 8 <= max_length:
                    break
            prompt = "Human: " + " ".join(rng.choices(words, k=max(p, 1))) + "\n\nAssistant:"
            completion = " " + " ".join(rng.choices(words, k=max(c, 1)))
            f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")


def overrides(args, variant: str, data: Path, run_dir: Path, batch: int) -> list[str]:
    return [
        "model.name=tiny",
        f"data.source={data}",
        f"data.eval_source={data}",
        "data.eval_size=8",
        f"data.max_length={args.max_length}",
        f"train.max_steps={args.steps}",
        f"train.batch_size={batch}",
        "train.warmup_steps=0",
        "train.log_every=1",
        "train.eval_every=1000000",
        "train.save_every=1000000",
        f"train.threads={args.threads}",
        f"sft.packing={variant == 'packed'}",
        f"sft.group_by_length={variant != 'padded-random'}",
        "sft.eval_generate=0",
        f"run.dir={run_dir}",
        f"run.name={variant}",
        "run.report_to=[]",
        "run.progress=false",
    ]


def timed_tokens(cfg: SFTConfig) -> dict:
    """Completion, non-pad and computed (rows x width) tokens of the timed steps, recounted."""
    train = load_sft_data(cfg, load_tokenizer(resolve_model_path("tiny")))[0]
    if cfg.sft.packing:
        train = pack_sft(train, cfg.data.max_length)
    lengths = tuple(len(ids) for ids in train.input_ids)
    t = cfg.train
    counts = {"loss": 0, "real": 0, "slots": 0}
    for step in range(WARMUP, t.max_steps):
        rows = global_batch_at(step, lengths, t.batch_size, t.seed, cfg.sft.group_by_length)
        counts["loss"] += sum(completion_tokens(train.labels[i]) for i in rows)
        counts["real"] += sum(lengths[i] for i in rows)
        counts["slots"] += len(rows) * max(lengths[i] for i in rows)
    return counts


def observe_step_ends() -> tuple[list[float], list[float]]:
    """(wall, CPU) clocks at each training record (`lr` in it): one per optimizer step. The CPU clock
    is the fairer one on a shared machine (the run has one thread; others' load stretches wall time)."""
    wall, cpu = [], []
    log = MetricsLogger.log

    def observed(self, step, metrics):
        if "lr" in metrics:
            wall.append(time.perf_counter())
            cpu.append(time.process_time())
        return log(self, step, metrics)

    MetricsLogger.log = observed
    return wall, cpu


def measure(args) -> None:
    """Child process: one variant's run, its timed window and token counts as JSON on stdout."""
    cfg = load_config(SFTConfig, None, overrides(args, args.variant, args.data, args.run_dir, args.batch))
    torch.set_num_threads(args.threads)
    wall, cpu = observe_step_ends()
    train_sft(cfg)
    assert len(wall) == args.steps, f"{len(wall)} step records for {args.steps} steps"
    seconds = {"wall": wall[-1] - wall[WARMUP - 1], "cpu": cpu[-1] - cpu[WARMUP - 1]}
    counts = timed_tokens(cfg)
    print("RESULT " + json.dumps({"variant": args.variant, "batch": args.batch, **seconds, **counts}))


def packed_batch(args, data: Path) -> tuple[int, str]:
    """(rows per packed step holding about as many real tokens as `--batch` padded examples, a summary
    of the example lengths)."""
    cfg = load_config(SFTConfig, None, overrides(args, "packed", data, Path("unused"), 1))
    train = load_sft_data(cfg, load_tokenizer(resolve_model_path("tiny")))[0]
    packed = pack_sft(train, args.max_length)
    lengths = sorted(map(len, train.input_ids))
    per_example, per_row = sum(lengths) / len(train), sum(lengths) / len(packed)
    summary = (
        f"{len(train)} examples, tokens: mean {per_example:.0f}, median {lengths[len(lengths) // 2]}, "
        f"p95 {lengths[int(0.95 * len(lengths))]}, max {lengths[-1]}; packed: {len(packed)} rows, "
        f"{per_row / args.max_length:.1%} full"
    )
    return max(1, round(args.batch * per_example / per_row)), summary


def run_variant(args, variant: str, data: Path, tmp: Path, batch: int) -> dict:
    """One variant in a fresh process (its own run folder); its RESULT line."""
    cmd = [sys.executable, __file__, "--variant", variant, "--data", str(data), "--run-dir", str(tmp)]
    cmd += [f"--steps={args.steps}", f"--max-length={args.max_length}", f"--threads={args.threads}"]
    shutil.rmtree(tmp / variant, ignore_errors=True)
    out = subprocess.run([*cmd, f"--batch={batch}"], capture_output=True, text=True)
    line = [s for s in out.stdout.splitlines() if s.startswith("RESULT ")]
    if out.returncode or not line:
        sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16, help="examples per padded step")
    parser.add_argument("--rows", type=int, default=2000, help="data rows")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per variant, alternating; the fastest kept"
    )
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return measure(args)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        write_rows(data, args.rows, args.max_length)
        rows, summary = packed_batch(args, data)
        batches = {v: rows if v == "packed" else args.batch for v in VARIANTS}
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for variant in VARIANTS:
                result = run_variant(args, variant, data, Path(tmp), batches[variant])
                if variant not in best or result["cpu"] < best[variant]["cpu"]:
                    best[variant] = result
        results = [best[v] for v in VARIANTS]
    print(summary)
    print(
        f"{'variant':<14} {'batch':>5} {'loss tok/s':>15} {'real tok/s':>15} {'slots tok/s':>15} {'pad %':>6}"
    )
    print(f"{'':<14} {'':>5} {'(wall / CPU)':>15} {'(wall / CPU)':>15} {'(wall / CPU)':>15}")
    for r in results:
        rates = [f"{r[k] / r['wall']:.0f} / {r[k] / r['cpu']:.0f}" for k in ("loss", "real", "slots")]
        pad = 100 * (1 - r["real"] / r["slots"])
        print(f"{r['variant']:<14} {r['batch']:>5} {rates[0]:>15} {rates[1]:>15} {rates[2]:>15} {pad:>6.1f}")


if __name__ == "__main__":
    main()
