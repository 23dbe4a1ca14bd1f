"""rlhfkit's side of one measurement: the real `train_sft` / `train_rm` / `train_ppo` / `train_dpo` with a
config (GRPO and RLOO are `train_ppo` with `rlhfkit grpo|rloo`'s presets).

    python benchmarks/side_rlhfkit.py --assets DIR --shape gpt2-tiny --stage sft --steps 12

A step ends when the trainer logs its training record (train.log_every=1): the metrics logger is
observed (wall and CPU clock at each such call), the training loops are untouched. Evaluation,
checkpoints and the final save happen outside the timed window (eval only at step 0 and after
the last logged step; no checkpoints).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workload as W  # noqa: E402


def configs(stage: str, assets: Path, shape: str, steps: int, threads: int, run_dir: str):
    from rlhfkit.config import (
        DataConfig,
        ModelConfig,
        RMConfig,
        RMSection,
        RunConfig,
        SFTConfig,
        SFTSection,
        TrainConfig,
    )

    lora = dict(lora_r=W.LORA["r"], lora_alpha=W.LORA["alpha"], lora_target_modules=W.LORA["target_modules"])
    run = RunConfig(name=f"{shape}-{stage}", dir=run_dir, report_to=[], progress=False)
    train = dict(
        lr=W.LR,
        warmup_steps=0,
        max_steps=steps,
        log_every=1,
        eval_every=10**6,
        save_every=10**6,
        threads=threads,
    )
    model = ModelConfig(name=str(assets / shape), lora=True, **lora)
    if stage in ("ppo", "grpo", "rloo"):
        return online_config(stage, assets, shape, steps, model, run, train)
    if stage == "dpo":
        return dpo_config(assets, model, run, train)
    if stage == "sft":
        return SFTConfig(
            model=model,
            data=DataConfig(
                source=str(assets / "sft.jsonl"),
                eval_source=str(assets / "sft_eval.jsonl"),
                eval_size=8,
                max_length=W.MAX_LENGTH,
            ),
            train=TrainConfig(batch_size=W.SFT_BATCH, **train),
            run=run,
            sft=SFTSection(eval_generate=0),
        )
    # RM: LoRA like the other stages (rlhfkit's default); TRL gets the same peft config.
    return RMConfig(
        model=model,
        data=DataConfig(
            source=str(assets / "pairs.jsonl"),
            eval_source=str(assets / "pairs_eval.jsonl"),
            eval_size=8,
            max_length=W.MAX_LENGTH,
        ),
        train=TrainConfig(batch_size=W.RM_BATCH, **train),
        run=run,
        rm=RMSection(norm_samples=4, max_new_tokens=4),
    )


def online_config(stage: str, assets: Path, shape: str, steps: int, model, run, train: dict):
    """PPO, or GRPO / RLOO as `rlhfkit grpo|rloo` configure the loop (config.METHOD_PRESETS), with the
    benchmark's batch: the same reward model as PPO, its raw score (no normalisation stats)."""
    from rlhfkit.config import METHOD_PRESETS, DataConfig, PPOConfig, PPOSection, RolloutSection, TrainConfig

    cfg = PPOConfig(
        model=model,
        data=DataConfig(source=str(assets / "prompts.jsonl")),
        train=TrainConfig(**{**train, "max_steps": 0}),
        run=run,
        rollout=RolloutSection(batch_size=W.PPO_PROMPTS, max_new_tokens=W.PPO_NEW_TOKENS),
        ppo=PPOSection(
            reward=str(assets / f"{shape}-rm"),
            normalize_reward=False,
            iterations=steps,
            epochs=W.PPO_EPOCHS,
            minibatches=1,
            eval_every=10**6,
        ),
    )
    for key, value in METHOD_PRESETS[stage].items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    if stage != "ppo":  # one update of one minibatch per rollout, TRL's num_iterations=1
        cfg.rollout.batch_size, cfg.rollout.group_size = W.GROUP_PROMPTS, W.GROUP_SIZE
        cfg.ppo.epochs, cfg.ppo.kl_coef = 1, W.GRPO_BETA if stage == "grpo" else W.RLOO_BETA
    return cfg


def dpo_config(assets: Path, model, run, train: dict):
    """Sigmoid DPO on the RM's pairs; the reference is the LoRA policy with its adapter off (no copy).
    No sampled evals (dpo.eval_prompts=0); the held-out pair metrics run at step 0 and after the last
    step, outside the timed window."""
    from rlhfkit.config import DataConfig, DPOConfig, DPOSection, TrainConfig

    return DPOConfig(
        model=model,
        data=DataConfig(
            source=str(assets / "pairs.jsonl"),
            eval_source=str(assets / "pairs_eval.jsonl"),
            eval_size=8,
            max_length=W.MAX_LENGTH,
        ),
        train=TrainConfig(batch_size=W.DPO_BATCH, **train),
        run=run,
        dpo=DPOSection(
            loss="sigmoid",
            beta=W.DPO_BETA,
            reference="adapter_off",
            eval_source=None,
            eval_prompts=0,
            eval_every=10**6,
        ),
    )


def observe_step_ends() -> tuple[list[float], list[float]]:
    """(wall, CPU) clocks at every training record the trainers log: one per optimizer step
    (records with `lr`) or online iteration (`ppo/seconds`, `grpo/seconds`, ...); eval records are not
    step ends."""
    from rlhfkit.run.logger import MetricsLogger

    wall, cpu = [], []
    log = MetricsLogger.log

    def observed(self, step, metrics):
        if "lr" in metrics or any(key.endswith("/seconds") for key in metrics):
            wall.append(time.perf_counter())
            cpu.append(time.process_time())
        return log(self, step, metrics)

    MetricsLogger.log = observed
    return wall, cpu


def sft_tokens(cfg, steps: range) -> list[int]:
    """Non-pad tokens of each step's batch, from the same batching function the trainer uses."""
    from rlhfkit.data.batching import global_batch_at
    from rlhfkit.models.load import load_tokenizer
    from rlhfkit.trainers.sft import load_sft_data

    train, _, _ = load_sft_data(cfg, load_tokenizer(cfg.model.name))
    lengths = tuple(len(ids) for ids in train.input_ids)
    batches = [
        global_batch_at(s, lengths, cfg.train.batch_size, cfg.train.seed, cfg.sft.group_by_length)
        for s in steps
    ]
    return [sum(lengths[i] for i in b) for b in batches], [
        len(b) * max(lengths[i] for i in b) for b in batches
    ]


TRAINERS = {
    "sft": "rlhfkit.trainers.sft:train_sft",
    "rm": "rlhfkit.trainers.rm:train_rm",
    "ppo": "rlhfkit.trainers.ppo:train_ppo",
    "grpo": "rlhfkit.trainers.ppo:train_ppo",  # the one online loop, ppo.advantage=grpo
    "rloo": "rlhfkit.trainers.ppo:train_ppo",
    "dpo": "rlhfkit.trainers.dpo:train_dpo",
}
IMPLEMENTATION = {
    "ppo": "rlhfkit.trainers.ppo.train_ppo (LoRA policy + value head, reference = adapter off)",
    "grpo": "rlhfkit.trainers.ppo.train_ppo, ppo.advantage=grpo (LoRA policy, no critic, reference = "
    "adapter off, KL in the loss)",
    "rloo": "rlhfkit.trainers.ppo.train_ppo, ppo.advantage=rloo (LoRA policy, no critic, reference = "
    "adapter off, KL in the reward)",
    "dpo": "rlhfkit.trainers.dpo.train_dpo (LoRA policy, reference = adapter off)",
}


def measured(stage: str, cfg, result, times: list[float], cpu: list[float]) -> dict:
    """The stage's value (W.METRICS[stage]) per wall and per CPU second over the timed steps."""
    steps, seconds = W.steady(times)
    cpu_seconds = W.steady(cpu)[1]
    res = {"metric": W.METRICS[stage], "s_per_step": seconds / steps, "timed_steps": steps}
    if stage == "sft":
        tokens, padded = sft_tokens(cfg, range(W.WARMUP, len(times)))
        res.update(
            value=sum(tokens) / seconds,
            cpu_value=sum(tokens) / cpu_seconds,
            tokens=sum(tokens),
            padded_tokens=sum(padded),
        )
    elif stage in ("rm", "dpo"):
        pairs = steps * (W.RM_BATCH if stage == "rm" else W.DPO_BATCH)
        res.update(value=pairs / seconds, cpu_value=pairs / cpu_seconds)
    else:
        # The online loop logs under its method's name, which is the stage's here (grpo/response_len).
        timed = [r[f"{stage}/response_len"] for r in result.metrics if f"{stage}/seconds" in r][W.WARMUP :]
        res.update(
            value=seconds / steps,
            cpu_value=cpu_seconds / steps,
            rows_per_iteration=cfg.rollout.batch_size * cfg.rollout.group_size,
            response_len=sum(timed) / len(timed),
        )
    if stage in IMPLEMENTATION:
        res["implementation"] = IMPLEMENTATION[stage]
    return res


def main() -> None:
    args = W.side_arguments()

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import importlib

    import torch
    from transformers.utils import logging as hf_logging

    import rlhfkit

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rlhfkit-bench-") as run_dir:
        cfg = configs(args.stage, args.assets, args.shape, args.steps, args.threads, run_dir)
        module, name = TRAINERS[args.stage].split(":")
        times, cpu = observe_step_ends()
        result = getattr(importlib.import_module(module), name)(cfg, overwrite=True)
        res = measured(args.stage, cfg, result, times, cpu)
    res.update(
        **W.run_fields("rlhfkit", args, t0, torch.get_num_threads()),
        rlhfkit=rlhfkit.__version__,
        torch=torch.__version__,
    )
    W.emit(res)


if __name__ == "__main__":
    main()
