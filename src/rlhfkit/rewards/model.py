"""Rewards from a trained reward model: the rm stage's folder, or any local sequence classifier.

A reward model that shares the policy's tokenizer scores the sampled token ids themselves
(design §6.10); any other re-tokenises the decoded text with its own tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhfkit.data.collate import right_pad
from rlhfkit.data.templates import render
from rlhfkit.errors import RlhfkitError
from rlhfkit.models.reward import load_reward_model, rewards_at_last_token

REWARD_STATS = "reward_stats.json"


def same_tokenizer(a, b) -> bool:
    """Same vocabulary (ids) and the same pad id: ids from one mean the same tokens in the other."""
    return (
        a is not None
        and b is not None
        and a.get_vocab() == b.get_vocab()
        and a.pad_token_id == b.pad_token_id
    )


def stats_path(folder: str) -> Path:
    """reward_stats.json of an rm stage folder (in its final/) or of a final/ folder itself."""
    final = Path(folder) / "final" if (Path(folder) / "final").is_dir() else Path(folder)
    return final / REWARD_STATS


def reward_normalisation(folder: str, normalize: bool) -> tuple[float, float]:
    """(mean, std) the RM's scores are normalised with: stats measured on SFT samples by the rm stage."""
    if not normalize:
        return 0.0, 1.0
    stats_file = stats_path(folder)
    if not stats_file.is_file():
        raise RlhfkitError(
            f"{stats_file}: missing; train the RM with `rlhfkit rm` or set ppo.normalize_reward=false"
        )
    stats = json.loads(stats_file.read_text())
    return stats["mean"], max(stats["std"], 1e-6)


def check_template(folder: str, template: str) -> None:
    """An RM trained on one template has never seen prompts in another, so its scores of them mean
    nothing: refuse the mismatch (the rm stage records its data.template beside the stats)."""
    stats_file = stats_path(folder)
    trained = json.loads(stats_file.read_text()).get("template") if stats_file.is_file() else None
    if trained is not None and trained != template:
        raise RlhfkitError(
            f"{folder}: this reward model was trained with data.template={trained} but the "
            f"prompts it would score are rendered with data.template={template}; use the same "
            "template in both"
        )


def model_reward(folder: str, normalize: bool, policy_tokenizer, template: str = "human_assistant"):
    """Scores of a reward-model folder, normalised with the stats the rm stage saved beside it;
    `template` is the one the prompts were rendered with, which the text path joins responses by."""
    check_template(folder, template)
    model, tokenizer = load_reward_model(folder)
    mean, std = reward_normalisation(folder, normalize)
    shares_ids = same_tokenizer(tokenizer, policy_tokenizer)

    def inputs(prompts: list[str], responses: list[str], token_ids) -> dict[str, torch.Tensor]:
        if shares_ids and token_ids is not None:
            # Same tokenizer: score the sampled ids themselves (no decode/re-encode round trip, which
            # can change a non-canonical tokenisation). Format as in training: prompt + response, no EOS.
            ids = token_ids
        elif tokenizer.sep_token is not None:
            # Encoder RMs (BERT, DeBERTa: OpenAssistant's) are trained on (question, answer) text pairs.
            return dict(tokenizer(prompts, responses, truncation=True, padding=True, return_tensors="pt"))
        else:
            # Our rm stage's format: rendered prompt + response ids, no EOS (data/preferences.tokenize_pairs).
            ids = [render(tokenizer, template, p, r).ids for p, r in zip(prompts, responses)]
        input_ids, attention_mask = right_pad(ids, tokenizer.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    @torch.no_grad()
    def reward(
        prompts: list[str],
        responses: list[str],
        token_ids: list[list[int]] | None = None,
        finished=None,
        metadata=None,
    ) -> torch.Tensor:
        # `finished` and `metadata` are for function rewards; the RM reads the text (or ids) alone.
        scores = rewards_at_last_token(model, **inputs(prompts, responses, token_ids))
        return (scores - mean) / std

    reward.scores_token_ids = shares_ids
    return reward
