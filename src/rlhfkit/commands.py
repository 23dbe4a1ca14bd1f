"""What each `rlhfkit` command does once its arguments are parsed (cli.py parses and dispatches):
train a stage, run the pipeline, make preference pairs, generate, evaluate, build the tiny model."""

from __future__ import annotations

import math
import os

import torch
from transformers.utils import logging as hf_logging

from rlhfkit.atomic import atomic_write_text
from rlhfkit.config import (
    METHOD_OF_ADVANTAGE,
    METHOD_PRESETS,
    DPOConfig,
    PipelineConfig,
    PPOConfig,
    PrefsConfig,
    RMConfig,
    SFTConfig,
    load_config,
)
from rlhfkit.data import load_rows, render_prompt, tokenize_sft
from rlhfkit.data.labelling import format_summary, make_preferences
from rlhfkit.data.sources import is_builtin
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.evaluate.compare import EvalSettings
from rlhfkit.evaluate.completions import completion_metrics, prompts_and_references
from rlhfkit.evaluate.loss import held_out_loss
from rlhfkit.evaluate.policies import evaluate_policies, load_policy
from rlhfkit.evaluate.report import best_of_n_table, fmt, gain_line, headline_table
from rlhfkit.models.tiny import build_tiny_model
from rlhfkit.rollout import generate
from rlhfkit.run import metrics as M
from rlhfkit.trainers.dpo import train_dpo
from rlhfkit.trainers.pipeline import run_pipeline, split_overrides
from rlhfkit.trainers.ppo import train_ppo
from rlhfkit.trainers.rm import train_rm
from rlhfkit.trainers.sft import train_sft


def _load(name: str):
    return load_policy(name)


def generate_command(args) -> int:
    torch.manual_seed(args.seed)
    model, tokenizer = _load(args.model)
    prompts = args.prompt if args.raw else [render_prompt(p) for p in args.prompt]
    greedy = args.temperature <= 0
    out = generate(
        model, tokenizer, prompts, args.max_new_tokens, greedy=greedy, temperature=args.temperature or 1.0
    )
    for prompt, text, finished in zip(prompts, out.texts, out.finished):
        print(f"{prompt} {text}" + ("" if finished else "  [no EOS within --max-new-tokens]"))
        print("-" * 40)
    return 0


def eval_command(args) -> int:
    rows = load_rows(args.data, "test")[: args.n]
    prompts, references = prompts_and_references(rows, args.data, "human_assistant", None)
    gold = is_builtin(args.data)
    table, completions = [], {}
    for name in args.model:
        model, tokenizer = _load(name)
        metrics, samples = completion_metrics(
            model, tokenizer, prompts, references, args.max_new_tokens, gold=gold
        )
        data = tokenize_sft(rows, tokenizer, args.data, "human_assistant", 512, "drop")
        metrics[M.EVAL_LOSS] = held_out_loss(model, data, tokenizer.pad_token_id)
        metrics[M.EVAL_PERPLEXITY] = math.exp(min(metrics[M.EVAL_LOSS], 50.0))
        table.append((name, metrics))
        completions[name] = [s["response"] for s in samples]
    keys = (
        [M.EVAL_LOSS, M.EVAL_PERPLEXITY, M.EVAL_BLEU]
        + ([M.GOLD_SCORE_GREEDY] if gold else [])
        + [M.EVAL_EOS_RATE, M.EVAL_RESPONSE_LEN]
    )
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += ["| " + name + " | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |" for name, m in table]
    lines += ["", f"Side by side ({args.data}, greedy, first {min(args.show, len(prompts))} prompts):", ""]
    lines += ["| prompt | " + " | ".join(args.model) + " |", "|---" * (len(args.model) + 1) + "|"]
    for i in range(min(args.show, len(prompts))):
        cells = [_cell(prompts[i])] + [_cell(completions[name][i]) for name in args.model]
        lines.append("| " + " | ".join(cells) + " |")
    if args.reward or args.reference:
        lines += ["", *sampled_comparison(args)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return 0


def sampled_comparison(args) -> list[str]:
    """The pipeline's evaluation for any models: --samples-per-prompt samples per prompt at --temperature,
    RM score,
    KL to --reference, win rates against it, best-of-n from it reranked by --reward."""

    if args.reference is not None and args.reference not in args.model:
        raise RlhfkitError(
            f"--reference {args.reference} must be one of the --model values ({', '.join(args.model)})"
        )
    try:
        ns = [int(n) for n in args.best_of_n.split(",") if n.strip()]
    except ValueError:
        raise RlhfkitError(
            f"--best-of-n {args.best_of_n!r}: expected comma-separated integers, e.g. 1,2,4,8"
        ) from None
    if args.samples_per_prompt < 1:
        raise RlhfkitError(f"--samples-per-prompt must be >= 1, got {args.samples_per_prompt}")
    settings = EvalSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        best_of_n=ns,
        seed=args.seed,
        samples_per_prompt=args.samples_per_prompt,
    )
    models = {name: name for name in args.model}
    result = evaluate_policies(
        models,
        args.reference,
        args.data,
        args.n,
        "human_assistant",
        settings,
        reward=args.reward,
        normalize_reward=True,
    )
    lines = [
        f"Sampled at T = {args.temperature}, {args.samples_per_prompt} sample(s) per prompt:",
        "",
        *headline_table(result, {}, first_column="model"),
    ]
    for pair, rates in result.win_rates.items():
        lines.append(f"- win rate {pair}: " + ", ".join(f"{k} {fmt(v)}" for k, v in rates.items()))
    lines += [gain_line(pair, gain, result.n_prompts) for pair, gain in result.gold_gains.items()]
    if result.best_of_n:
        lines += [
            "",
            f"Best-of-n from {args.reference}, reranked by {args.reward}:",
            "",
            *best_of_n_table(result.best_of_n),
        ]
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:120]


STAGES = {
    "sft": (train_sft, SFTConfig, "model"),
    "rm": (train_rm, RMConfig, "reward model"),
    "dpo": (train_dpo, DPOConfig, "policy"),
    # One online loop; each method's command is the PPO stage with its presets (config.METHOD_PRESETS).
    **dict.fromkeys(("ppo", "grpo", "rloo", "reinforce-pp"), (train_ppo, PPOConfig, "policy")),
}
# Online command -> the method it runs (the stage folder and metric prefix: no "-" in a metric name).
ONLINE_METHODS = {"ppo": "ppo", "grpo": "grpo", "rloo": "rloo", "reinforce-pp": "reinforce_pp"}


def stage_command(args) -> int:
    train, config_class, what = STAGES[args.command]
    method = ONLINE_METHODS.get(args.command)
    cfg = load_config(config_class, args.config, args.overrides, presets=METHOD_PRESETS.get(method))
    if method is not None and METHOD_OF_ADVANTAGE[cfg.ppo.advantage] != method:
        other = {v: k for k, v in ONLINE_METHODS.items()}[METHOD_OF_ADVANTAGE[cfg.ppo.advantage]]
        raise ConfigError(
            f"ppo.advantage={cfg.ppo.advantage} is a {other} setting, not {args.command}: "
            f"run `rlhfkit {other}` (the method names the run's stage folder)"
        )
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"rlhfkit {args.command}: done; {what} in {result.final}")
    return 0


def pipeline_command(args) -> int:
    cfg = load_config(PipelineConfig, args.config, split_overrides(args.overrides)[0])
    report = run_pipeline(cfg, args.config, args.overrides, overwrite=args.overwrite)
    print(f"rlhfkit pipeline: done; report in {report}")
    return 0


def prefs_command(args) -> int:
    cfg = load_config(PrefsConfig, args.config, args.overrides)
    summary = make_preferences(cfg)
    print(f"rlhfkit data prefs: wrote {cfg.out}: {format_summary(summary)}")
    return 0


def tiny_model_command(args) -> int:
    print(f"rlhfkit tiny-model: wrote {build_tiny_model(args.out, seed=args.seed)}")
    return 0


COMMANDS = {
    **dict.fromkeys(STAGES, stage_command),
    "pipeline": pipeline_command,
    "data": prefs_command,
    "generate": generate_command,
    "eval": eval_command,
    "tiny-model": tiny_model_command,
}


def quiet_libraries() -> None:
    """Our own progress bar and one-line messages are the interface; transformers' per-load bars
    ("Loading weights", "Writing model shards") would bury them."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
