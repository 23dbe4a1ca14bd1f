"""`rlhfkit generate`, `rlhfkit eval` (load models by any name, compare them on held-out prompts), `rlhfkit bench`."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import torch

from rlhfkit.config import ModelConfig
from rlhfkit.data import load_rows, render_prompt, tokenize_sft
from rlhfkit.evaluate.completions import completion_metrics, prompts_and_references
from rlhfkit.evaluate.loss import held_out_loss
from rlhfkit.evaluate.text import is_builtin
from rlhfkit.models import load_causal_lm
from rlhfkit.rollout import generate
from rlhfkit.run import metrics as M


def _load(name: str):
    return load_causal_lm(ModelConfig(name=name, lora=False), trainable=False)


def generate_command(args) -> int:
    torch.manual_seed(args.seed)
    model, tokenizer = _load(args.model)
    prompts = args.prompt if args.raw else [render_prompt(p) for p in args.prompt]
    greedy = args.temperature <= 0
    out = generate(model, tokenizer, prompts, args.max_new_tokens, greedy=greedy, temperature=args.temperature or 1.0)
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
        metrics, samples = completion_metrics(model, tokenizer, prompts, references, args.max_new_tokens, gold=gold)
        data = tokenize_sft(rows, tokenizer, args.data, "human_assistant", 512, "drop")
        metrics[M.EVAL_LOSS] = held_out_loss(model, data, tokenizer.pad_token_id)
        metrics[M.EVAL_PERPLEXITY] = math.exp(min(metrics[M.EVAL_LOSS], 50.0))
        table.append((name, metrics))
        completions[name] = [s["response"] for s in samples]
    keys = [M.EVAL_LOSS, M.EVAL_PERPLEXITY, M.EVAL_BLEU] + ([M.GOLD_SCORE] if gold else []) + [M.EVAL_EOS_RATE, M.EVAL_RESPONSE_LEN]
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += ["| " + name + " | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |" for name, m in table]
    lines += ["", f"Side by side ({args.data}, greedy, first {min(args.show, len(prompts))} prompts):", ""]
    lines += ["| prompt | " + " | ".join(args.model) + " |", "|---" * (len(args.model) + 1) + "|"]
    for i in range(min(args.show, len(prompts))):
        cells = [_cell(prompts[i])] + [_cell(completions[name][i]) for name in args.model]
        lines.append("| " + " | ".join(cells) + " |")
    if args.reward or args.reference:
        lines += ["", *sampled_comparison(args, rows, prompts, references, gold)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        from rlhfkit.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    return 0


def sampled_comparison(args, rows, prompts, references, gold: bool) -> list[str]:
    """The pipeline's evaluation for any models: --samples-per-prompt samples per prompt at --temperature, RM score,
    KL to --reference, win rates against it, best-of-n from it reranked by --reward."""
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.evaluate.compare import EvalSettings, compare_policies
    from rlhfkit.evaluate.report import best_of_n_table, fmt, gain_line, headline_table
    from rlhfkit.rewards import load_reward

    if args.reference is not None and args.reference not in args.model:
        raise RlhfkitError(f"--reference {args.reference} must be one of the --model values ({', '.join(args.model)})")
    try:
        ns = [int(n) for n in args.best_of_n.split(",") if n.strip()]
    except ValueError:
        raise RlhfkitError(f"--best-of-n {args.best_of_n!r}: expected comma-separated integers, e.g. 1,2,4,8") from None
    if args.samples_per_prompt < 1:
        raise RlhfkitError(f"--samples-per-prompt must be >= 1, got {args.samples_per_prompt}")
    reward_fn = load_reward(args.reward, normalize=True) if args.reward else None
    settings = EvalSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, best_of_n=ns, seed=args.seed,
                            samples_per_prompt=args.samples_per_prompt)
    policies = {name: _load(name) for name in args.model}
    result = compare_policies(policies, args.reference, prompts, references, settings, gold, reward_fn)
    lines = [f"Sampled at T = {args.temperature}, {args.samples_per_prompt} sample(s) per prompt:", "",
             *headline_table(result, {}, first_column="model")]
    for pair, rates in result.win_rates.items():
        lines.append(f"- win rate {pair}: " + ", ".join(f"{k} {fmt(v)}" for k, v in rates.items()))
    lines += [gain_line(pair, gain, result.n_prompts) for pair, gain in result.gold_gains.items()]
    if result.best_of_n:
        lines += ["", f"Best-of-n from {args.reference}, reranked by {args.reward}:", "", *best_of_n_table(result.best_of_n)]
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:120]


def bench_command(rest: list[str]) -> int:
    """Run the repository's benchmarks/run.py. The benchmarks stay out of the package: TRL, what
    they compare against, must never become a dependency of rlhfkit."""
    runner = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
    if not runner.is_file():
        print("rlhfkit bench: the benchmark runner is part of the source repository, not the package: "
              "in a checkout, run `python benchmarks/run.py` (see docs/benchmarks.md)", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(runner), *rest])
