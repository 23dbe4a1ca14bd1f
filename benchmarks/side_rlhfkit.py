"""rlhfkit's side of one measurement: the real `train_sft` / `train_rm` / `train_ppo` with a config.

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
        PPOConfig,
        PPOSection,
        RMConfig,
        RMSection,
        RolloutSection,
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
    model = str(assets / shape)
    if stage == "sft":
        return SFTConfig(
            model=ModelConfig(name=model, lora=True, **lora),
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
    if stage == "rm":
        # LoRA like the other stages (rlhfkit's default); TRL gets the same peft config.
        return RMConfig(
            model=ModelConfig(name=model, lora=True, **lora),
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
    return PPOConfig(
        model=ModelConfig(name=model, lora=True, **lora),
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


def observe_step_ends() -> tuple[list[float], list[float]]:
    """(wall, CPU) clocks at every training record the trainers log: one per optimizer step
    (records with `lr`) or PPO iteration (`ppo/seconds`); eval records are not step ends."""
    from rlhfkit.run.logger import MetricsLogger

    wall, cpu = [], []
    log = MetricsLogger.log

    def observed(self, step, metrics):
        if "lr" in metrics or "ppo/seconds" in metrics:
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


def main() -> None:
    args = W.side_arguments()

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers.utils import logging as hf_logging

    import rlhfkit

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rlhfkit-bench-") as run_dir:
        cfg = configs(args.stage, args.assets, args.shape, args.steps, args.threads, run_dir)
        train = {
            "sft": "rlhfkit.trainers.sft:train_sft",
            "rm": "rlhfkit.trainers.rm:train_rm",
            "ppo": "rlhfkit.trainers.ppo:train_ppo",
        }[args.stage]
        module, name = train.split(":")
        import importlib

        times, cpu = observe_step_ends()
        result = getattr(importlib.import_module(module), name)(cfg, overwrite=True)
        steps, seconds = W.steady(times)
        cpu_seconds = W.steady(cpu)[1]
        res = {"s_per_step": seconds / steps, "timed_steps": steps}
        if args.stage == "sft":
            tokens, padded = sft_tokens(cfg, range(W.WARMUP, len(times)))
            res.update(
                metric="tokens/s",
                value=sum(tokens) / seconds,
                cpu_value=sum(tokens) / cpu_seconds,
                tokens=sum(tokens),
                padded_tokens=sum(padded),
            )
        elif args.stage == "rm":
            res.update(
                metric="pairs/s",
                value=steps * W.RM_BATCH / seconds,
                cpu_value=steps * W.RM_BATCH / cpu_seconds,
            )
        else:
            logged = [r for r in result.metrics if "ppo/seconds" in r][W.WARMUP :]
            res.update(
                metric="s/iter",
                value=seconds / steps,
                cpu_value=cpu_seconds / steps,
                response_len=sum(r["ppo/response_len"] for r in logged) / len(logged),
                implementation="rlhfkit.trainers.ppo.train_ppo (LoRA policy + value head, "
                "reference = adapter off)",
            )
    res.update(
        **W.run_fields("rlhfkit", args, t0, torch.get_num_threads()),
        rlhfkit=rlhfkit.__version__,
        torch=torch.__version__,
    )
    W.emit(res)


if __name__ == "__main__":
    main()
