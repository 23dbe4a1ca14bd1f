"""The benchmark workload, shared by the runner and both measuring sides (rlhfkit and TRL).

Standard library only: the TRL side runs in its own venv, where rlhfkit is not installed.
Method as in the TRL baseline (baselines/trl in the team's shared folder, so numbers compare with it): one
stage per fresh process,
fp32, no gradient checkpointing, steady-state time from the end of warm-up step 2 to the end of
the last step, peak RSS = ru_maxrss of the whole process (model load and data prep included).
"""

from __future__ import annotations

import json
import random
import resource
import time

WARMUP = 2
"""Steps (or PPO iterations) excluded from timing."""

# The two model shapes: GPT-2 architecture with the real GPT-2 BPE (50257 tokens), random init.
SHAPES = {
    "gpt2-tiny": dict(n_layer=4, n_embd=256, n_head=4),
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12),
}
VOCAB = 50257
MAX_LENGTH = 128
SFT_BATCH = 8
RM_BATCH = 4  # pairs
PPO_PROMPTS = 8
PPO_NEW_TOKENS = 32
PPO_EPOCHS = 4  # TRL's default num_ppo_epochs; one minibatch per epoch
# GRPO and RLOO (the TRL baseline's settings): GROUP_PROMPTS prompts x GROUP_SIZE samples = 32 rows per
# iteration, PPO_NEW_TOKENS new tokens, one update of one minibatch per rollout (TRL's num_iterations=1,
# steps_per_generation=1), the same reward model as PPO, the KL to the reference (the LoRA policy with its
# adapter off) at TRL's weights: GRPO in the loss (corrected k3), RLOO in the reward (k1).
GROUP_PROMPTS = 8
GROUP_SIZE = 4
GRPO_BETA = 0.04  # TRL's default beta is 0 (no reference pass); rlhfkit always scores the reference
RLOO_BETA = 0.05  # TRL's default
DPO_BATCH = 4  # pairs, as RM_BATCH
DPO_BETA = 0.1  # both sides' default
LORA = dict(r=8, alpha=16, target_modules=["c_attn"])
LR = 1e-5
# Steps per stage (2 of them warm-up): enough to average over while a full run stays within
# ~30 minutes on a 2-core machine.
STEPS = {
    "gpt2-tiny": {"sft": 10, "rm": 16, "ppo": 5, "grpo": 6, "rloo": 6, "dpo": 16},
    "gpt2-small": {"sft": 6, "rm": 8, "ppo": 4, "grpo": 4, "rloo": 4, "dpo": 8},
}
STAGES = tuple(STEPS["gpt2-tiny"])
# What each stage's value counts: throughput (higher is better) or seconds per iteration (lower is).
METRICS = {
    "sft": "tokens/s",
    "rm": "pairs/s",
    "ppo": "s/iter",
    "grpo": "s/iter",
    "rloo": "s/iter",
    "dpo": "pairs/s",
}

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up "
    "other "
    "about out many then them these so some her would make like him into time has look two more write go see "
    "number no way could people my than first water been call who oil its now find long down day did get "
    "come "
    "made may part model train reward policy value token gradient learning rate batch memory python library "
    "question answer explain why please help small large fast slow good bad simple complex data set test run"
).split()


def words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def prompt(rng: random.Random, lo: int = 4, hi: int = 30) -> str:
    return f"Human: {words(rng, lo, hi)}?\n\nAssistant:"


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    """The baseline's SFT rows: prompt of 4-40 words, completion of 5-80 words."""
    rng = random.Random(seed)
    return [{"prompt": prompt(rng, 4, 40), "completion": " " + words(rng, 5, 80) + "."} for _ in range(n)]


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        p = prompt(rng, 4, 30)
        rows.append(
            {"prompt": p, "chosen": " " + words(rng, 5, 60) + ".", "rejected": " " + words(rng, 5, 60) + "."}
        )
    return rows


def prompt_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": prompt(rng, 4, 30)} for _ in range(n)]


# ----------------------------------------------------------------------------- measuring


def steady(times: list[float], warmup: int = WARMUP) -> tuple[int, float]:
    """(timed steps, seconds) from the end of step `warmup` to the end of the last step.

    `times` are end-of-step timestamps, one per step in order."""
    if len(times) <= warmup:
        raise ValueError(f"need more than {warmup} steps to time, got {len(times)}")
    return len(times) - warmup, times[-1] - times[warmup - 1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def run_fields(side: str, args, started: float, threads: int) -> dict:
    """The fields every measuring process reports beside its numbers (both sides, the same names)."""
    return {
        "side": side,
        "stage": args.stage,
        "shape": args.shape,
        "steps": args.steps,
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "threads": threads,
    }


def emit(result: dict) -> None:
    """The one line the runner reads back from a measuring process."""
    print("RESULT " + json.dumps(result), flush=True)


def parse_result(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return None


def write_jsonl(path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- model FLOPs


def matmul_params(shape: str) -> tuple[int, int]:
    """(trunk, LM head) weights that take part in matmuls: 12 d^2 per layer (qkv 3d^2, proj d^2,
    MLP 8d^2) and d x V for the head. Embedding lookups are not matmuls."""
    s = SHAPES[shape]
    return 12 * s["n_layer"] * s["n_embd"] ** 2, s["n_embd"] * VOCAB


def model_flops(stage: str, shape: str, tokens: float) -> float:
    """Nominal model FLOPs of `tokens` real (non-pad) tokens of a stage; attention scores ignored.

    sft (LoRA): forward 2N + backward to the inputs 2N (frozen weights get no weight gradient).
    rm (LoRA, no LM head): 4 N_trunk.
    ppo (per token of prompt + response; the same nominal count for both sides): sampling 2N,
    old log-probs 2N, reference 2N, reward 2 N_trunk, then PPO_EPOCHS x (4N) for the LoRA update.
    grpo, rloo (per token of prompt + response, one update per rollout): sampling 2N, reference 2N,
    reward 2 N_trunk, the update 4N; rloo also 2N for the old log-probs its KL-in-the-reward needs.
    GRPO needs none with one update per rollout (the ratio is 1; TRL skips that pass, rlhfkit does not).
    dpo (per real token of a pair, the prompt counted on both sides): policy 4N + reference 2N.
    """
    trunk, head = matmul_params(shape)
    n = trunk + head
    per_token = {
        "sft": 4 * n,
        "rm": 4 * trunk,
        "ppo": 2 * n + 2 * n + 2 * n + 2 * trunk + PPO_EPOCHS * 4 * n,
        "grpo": 2 * n + 2 * n + 2 * trunk + 4 * n,
        "rloo": 2 * n + 2 * n + 2 * n + 2 * trunk + 4 * n,
        "dpo": 4 * n + 2 * n,
    }[stage]
    return per_token * tokens


def side_arguments():
    """The command line both sides of a measurement take (side_rlhfkit.py and side_trl.py)."""
    import argparse
    from pathlib import Path

    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", required=True, type=Path)
    ap.add_argument("--shape", required=True, choices=list(SHAPES))
    ap.add_argument("--stage", required=True, choices=list(STAGES))
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args()
