"""Preference pairs for a built-in task: two samples per prompt from a policy, labelled by the
gold judge through a noisy Bradley-Terry draw (the stand-in for human raters)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from rlhfkit.atomic import atomic_write_text
from rlhfkit.config import ModelConfig, PrefsConfig
from rlhfkit.data.templates import render_text, user_turn
from rlhfkit.models import load_causal_lm
from rlhfkit.rollout import Completions, generate
from rlhfkit.tasks import expected_agreement, gold_score, noisy_label, task_rows


def make_preferences(cfg: PrefsConfig) -> dict:
    """Write cfg.out (jsonl) and return a summary: pairs, ties, label agreement with the judge."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model, tokenizer = load_causal_lm(ModelConfig(name=cfg.model, lora=False), trainable=False)
    rows = task_rows(cfg.task, cfg.split, n=cfg.n_prompts, seed=cfg.seed)
    turns = [user_turn(r["instruction"], r["input"]) for r in rows]
    # Sampled in the SFT model's own format (cfg.template), the one its rm and ppo stages render.
    prompts = [render_text(tokenizer, cfg.template, turn)[0] for turn in turns]
    # Both samples of a prompt in one batch: half the generate calls, and one padding layout.
    both = generate(
        model,
        tokenizer,
        [p for p in prompts for _ in range(2)],
        cfg.max_new_tokens,
        greedy=False,
        temperature=cfg.temperature,
        batch_size=cfg.batch_size,
        progress="sampling pairs",
    )
    first = Completions(both.texts[0::2], both.token_ids[0::2], both.finished[0::2])
    second = Completions(both.texts[1::2], both.token_ids[1::2], both.finished[1::2])
    lines, score_pairs, identical, empty, ties_dropped, agree = [], [], 0, 0, 0, 0
    samples = zip(turns, rows, first.texts, first.finished, second.texts, second.finished)
    for turn, row, a, fa, b, fb in samples:
        if a == b:
            identical += 1  # a pair with nothing to prefer teaches the RM nothing
            continue
        if not a or not b:
            empty += 1  # an immediate EOS: no response for the RM to read a score from
            continue
        # The judge reads the bare instruction, whatever the template.
        instruction = turn[0]["content"]
        score_a, score_b = gold_score(instruction, a, finished=fa), gold_score(instruction, b, finished=fb)
        if cfg.drop_gold_ties and score_a == score_b:
            ties_dropped += 1
            continue
        a_wins = noisy_label(score_a, score_b, cfg.noise_temperature, rng)
        chosen, rejected = (a, b) if a_wins else (b, a)
        chosen_score, rejected_score = (score_a, score_b) if a_wins else (score_b, score_a)
        agree += chosen_score > rejected_score
        score_pairs.append((score_a, score_b))
        pair = {
            **pair_columns(cfg.template, turn, chosen, rejected),
            "family": row["family"],
            "chosen_score": chosen_score,
            "rejected_score": rejected_score,
            "noise_temperature": cfg.noise_temperature,
        }
        lines.append(json.dumps(pair))
    atomic_write_text(Path(cfg.out), "".join(line + "\n" for line in lines))
    untied = sum(1 for a, b in score_pairs if a != b)
    summary = {
        "pairs": len(lines),
        "identical_dropped": identical,
        "empty_dropped": empty,
        "gold_ties_dropped": ties_dropped,
        "gold_ties": len(lines) - untied,
        "label_agreement": agree / untied if untied else float("nan"),
        "noise_ceiling": expected_agreement(score_pairs, cfg.noise_temperature) if untied else float("nan"),
    }
    return summary


def pair_columns(template: str, turn: list[dict], chosen: str, rejected: str) -> dict:
    """prompt/chosen/rejected as the rm stage reads them back: the Human/Assistant text format, or for a chat
    template TRL's conversational rows (the prompt's turns, then each reply as an assistant turn)."""
    if template == "chat":
        return {
            "prompt": turn,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
    return {"prompt": render_text(None, template, turn)[0], "chosen": chosen, "rejected": rejected}


def format_summary(summary: dict) -> str:
    """`pairs=1617, ..., label_agreement=0.758`: the one line `data prefs` and the pipeline print."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())
