"""TRL's side of one measurement, run with the TRL venv's python (never imported by rlhfkit).

    .bench/trl-venv/bin/python benchmarks/side_trl.py --assets DIR --shape gpt2-tiny --stage sft --steps 12

Same method as the TRL baseline's trl_bench.py (baselines/trl in the team's shared folder): a
TrainerCallback timestamps every step's
end; fp32 and no gradient checkpointing set explicitly (TRL 1.x defaults to bf16 + checkpointing).
PPO needs trl 1.12.0 (removed in 1.13), side-installed and put first on PYTHONPATH by the runner;
GRPO, RLOO and DPO run trl 1.16.0.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workload as W  # noqa: E402


class StepTimer:
    def __init__(self):
        from transformers import TrainerCallback

        times, cpu = self.times, self.cpu = [], []

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                times.append(time.perf_counter())
                cpu.append(time.process_time())

        self.callback = Callback()


def common(steps: int, out: str) -> dict:
    return dict(
        output_dir=out,
        max_steps=steps,
        learning_rate=W.LR,
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        gradient_accumulation_steps=1,
        bf16=False,
        gradient_checkpointing=False,
        seed=0,
        use_cpu=True,
    )


def lora_config(task_type: str):
    from peft import LoraConfig

    return LoraConfig(
        r=W.LORA["r"],
        lora_alpha=W.LORA["alpha"],
        lora_dropout=0.0,
        target_modules=W.LORA["target_modules"],
        fan_in_fan_out=True,
        task_type=task_type,
    )


def run_sft(assets: Path, model_dir: Path, tok, steps: int, out: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    ds = Dataset.from_list(W.read_jsonl(assets / "sft.jsonl"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = SFTConfig(
        per_device_train_batch_size=W.SFT_BATCH,
        max_length=W.MAX_LENGTH,
        completion_only_loss=True,
        packing=False,
        **common(steps, out),
    )
    timer = StepTimer()
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        peft_config=lora_config("CAUSAL_LM"),
        callbacks=[timer.callback],
    )
    tokens, padded = [], []
    collate = trainer.data_collator

    def counting(examples):
        batch = collate(examples)
        tokens.append(int(batch["attention_mask"].sum()))
        padded.append(int(batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting
    trainer.train()
    n, seconds = W.steady(timer.times)
    cpu_seconds = W.steady(timer.cpu)[1]
    # The Trainer collates one batch ahead: count by step index, not every collator call.
    timed = slice(W.WARMUP, W.WARMUP + n)
    return {
        "metric": "tokens/s",
        "value": sum(tokens[timed]) / seconds,
        "cpu_value": sum(tokens[timed]) / cpu_seconds,
        "tokens": sum(tokens[timed]),
        "padded_tokens": sum(padded[timed]),
        "s_per_step": seconds / n,
        "timed_steps": n,
    }


def run_rm(assets: Path, model_dir: Path, tok, steps: int, out: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    # Stored bare: rlhfkit joins prompt + " " + response; TRL concatenates, so add the space here.
    rows = [
        {"prompt": r["prompt"], "chosen": " " + r["chosen"], "rejected": " " + r["rejected"]}
        for r in W.read_jsonl(assets / "pairs.jsonl")
    ]
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    cfg = RewardConfig(per_device_train_batch_size=W.RM_BATCH, max_length=W.MAX_LENGTH, **common(steps, out))
    timer = StepTimer()
    trainer = RewardTrainer(
        model=model,
        args=cfg,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=lora_config("SEQ_CLS"),
        callbacks=[timer.callback],
    )
    kept = len(trainer.train_dataset)
    trainer.train()
    n, seconds = W.steady(timer.times)
    cpu_seconds = W.steady(timer.cpu)[1]
    return {
        "metric": "pairs/s",
        "value": n * W.RM_BATCH / seconds,
        "cpu_value": n * W.RM_BATCH / cpu_seconds,
        "s_per_step": seconds / n,
        "timed_steps": n,
        "pairs_kept": f"{kept}/{len(rows)}",
    }


def run_ppo(assets: Path, model_dir: Path, tok, steps: int, out: str, shape: str) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError as e:
        return {
            "metric": "s/iter",
            "value": None,
            "error": f"no PPOTrainer in trl {trl.__version__} ({e}); PPO needs trl 1.12.0 (see "
            "benchmarks/setup_trl.sh)",
        }
    tok.padding_side = "left"  # queries are left-padded for generation
    prompts = [r["prompt"] for r in W.read_jsonl(assets / "prompts.jsonl")]
    ids = [tok(p)["input_ids"] for p in prompts]
    train = Dataset.from_dict({"input_ids": ids})
    evalset = Dataset.from_dict(
        {"input_ids": ids[: W.PPO_PROMPTS]}
    )  # the trainer builds an eval loader regardless

    def load(cls, path, **kw):
        m = cls.from_pretrained(path, dtype=torch.float32, **kw)
        m.config.pad_token_id = tok.pad_token_id
        return m

    policy = load(AutoModelForCausalLM, model_dir)
    # Same reward model as rlhfkit's run; the value model is TRL's separate critic (a full model).
    reward = load(AutoModelForSequenceClassification, assets / f"{shape}-rm", num_labels=1)
    value = load(AutoModelForSequenceClassification, model_dir, num_labels=1)
    c = common(steps, out)
    c.pop("max_steps")
    cfg = PPOConfig(
        per_device_train_batch_size=W.PPO_PROMPTS,
        num_mini_batches=1,
        num_ppo_epochs=W.PPO_EPOCHS,
        total_episodes=steps * W.PPO_PROMPTS,
        response_length=W.PPO_NEW_TOKENS,
        num_sample_generations=0,  # the default 10 adds sampling passes inside train()
        stop_token=None,
        **c,
    )
    timer = StepTimer()
    # LoRA policy as on rlhfkit's side: ref_model=None makes TRL use the policy with its adapter off.
    trainer = PPOTrainer(
        args=cfg,
        processing_class=tok,
        model=policy,
        ref_model=None,
        reward_model=reward,
        value_model=value,
        train_dataset=train,
        eval_dataset=evalset,
        peft_config=lora_config("CAUSAL_LM"),
        callbacks=[timer.callback],
    )
    trainer.train()
    n, seconds = W.steady(timer.times)
    cpu_seconds = W.steady(timer.cpu)[1]
    return {
        "metric": "s/iter",
        "value": seconds / n,
        "cpu_value": cpu_seconds / n,
        "timed_steps": n,
        "implementation": f"trl {trl.__version__} trl.experimental.ppo.PPOTrainer (LoRA policy, ref = "
        "adapter off, "
        "separate full value model)",
    }


def run_group(assets: Path, model_dir: Path, tok, steps: int, out: str, shape: str, stage: str) -> dict:
    """TRL 1.16's GRPOTrainer or RLOOTrainer: GROUP_PROMPTS prompts x GROUP_SIZE generations from its
    own generation loop (transformers' generate), the same reward model as PPO, one optimizer step per
    generation (steps_per_generation=1, num_iterations=1), LoRA with the reference = adapter off."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if stage == "grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer

        # loss_type grpo = per-sequence token means (rlhfkit's grpo preset, seq-mean-token-mean);
        # use_bias_correction_kl (the default) = the corrected k3 rlhfkit's preset uses.
        method = dict(beta=W.GRPO_BETA, loss_type="grpo", scale_rewards="group", use_bias_correction_kl=True)
    else:
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer

        method = dict(beta=W.RLOO_BETA, normalize_advantages=False)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    policy.generation_config.pad_token_id = tok.pad_token_id
    reward = AutoModelForSequenceClassification.from_pretrained(
        assets / f"{shape}-rm", num_labels=1, dtype=torch.float32
    )
    reward.config.pad_token_id = tok.pad_token_id
    prompts = Dataset.from_list([{"prompt": r["prompt"]} for r in W.read_jsonl(assets / "prompts.jsonl")])
    cfg = Config(
        per_device_train_batch_size=W.GROUP_PROMPTS * W.GROUP_SIZE,  # counted in completions
        num_generations=W.GROUP_SIZE,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=W.PPO_NEW_TOKENS,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        disable_dropout=True,  # rlhfkit turns dropout off (model.disable_dropout)
        **method,
        **common(steps, out),
    )
    timer = StepTimer()
    trainer = Trainer(
        model=policy,
        reward_funcs=reward,
        args=cfg,
        train_dataset=prompts,
        processing_class=tok,
        reward_processing_classes=tok,
        peft_config=lora_config("CAUSAL_LM"),
        callbacks=[timer.callback],
    )
    trainer.train()
    n, seconds = W.steady(timer.times)
    cpu_seconds = W.steady(timer.cpu)[1]
    # TRL logs once, at the end of training (logging_steps is never reached): the mean over every step.
    key = "completions/mean_length"
    logged = [r[key] for r in trainer.state.log_history if key in r]
    return {
        "metric": W.METRICS[stage],
        "value": seconds / n,
        "cpu_value": cpu_seconds / n,
        "s_per_step": seconds / n,
        "timed_steps": n,
        "rows_per_iteration": cfg.per_device_train_batch_size,
        "response_len_all_steps": float(logged[-1]) if logged else None,
        "reference_pass": getattr(trainer, "beta", cfg.beta) != 0.0,
        "implementation": f"trl {trl.__version__} {Trainer.__name__} (LoRA policy, reference = adapter off, "
        "transformers generate)",
    }


def run_dpo(assets: Path, model_dir: Path, tok, steps: int, out: str) -> dict:
    """TRL 1.16's DPOTrainer, sigmoid loss, LoRA with the reference = adapter off, reference log-probs
    computed at every step (precompute_ref_log_probs=False, as rlhfkit's dpo.reference=adapter_off)."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    # Stored bare: rlhfkit joins prompt + " " + response; TRL concatenates, so add the space here.
    rows = [
        {"prompt": r["prompt"], "chosen": " " + r["chosen"], "rejected": " " + r["rejected"]}
        for r in W.read_jsonl(assets / "pairs.jsonl")
    ]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = DPOConfig(
        per_device_train_batch_size=W.DPO_BATCH,
        max_length=W.MAX_LENGTH,
        beta=W.DPO_BETA,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=False,
        **common(steps, out),
    )
    timer = StepTimer()
    trainer = DPOTrainer(
        model=model,
        args=cfg,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=lora_config("CAUSAL_LM"),
        callbacks=[timer.callback],
    )
    kept = len(trainer.train_dataset)
    trainer.train()
    n, seconds = W.steady(timer.times)
    cpu_seconds = W.steady(timer.cpu)[1]
    return {
        "metric": W.METRICS["dpo"],
        "value": n * W.DPO_BATCH / seconds,
        "cpu_value": n * W.DPO_BATCH / cpu_seconds,
        "s_per_step": seconds / n,
        "timed_steps": n,
        "pairs_kept": f"{kept}/{len(rows)}",
        "implementation": f"trl {trl.__version__} DPOTrainer (LoRA policy, reference = adapter off)",
    }


def main() -> None:
    args = W.side_arguments()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import transformers
    import trl
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    model_dir = args.assets / args.shape
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.eos_token
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trl-bench-") as out:
        if args.stage == "sft":
            res = run_sft(args.assets, model_dir, tok, args.steps, out)
        elif args.stage == "rm":
            res = run_rm(args.assets, model_dir, tok, args.steps, out)
        elif args.stage == "ppo":
            res = run_ppo(args.assets, model_dir, tok, args.steps, out, args.shape)
        elif args.stage == "dpo":
            res = run_dpo(args.assets, model_dir, tok, args.steps, out)
        else:
            res = run_group(args.assets, model_dir, tok, args.steps, out, args.shape, args.stage)
    res.update(
        **W.run_fields("trl", args, t0, torch.get_num_threads()),
        trl=trl.__version__,
        trl_path=os.path.dirname(trl.__file__),
        transformers=transformers.__version__,
        torch=torch.__version__,
    )
    W.emit(res)


if __name__ == "__main__":
    main()
