"""Where a PPO run's scalar reward comes from: a trained reward model or a Python function.

A reward is called as `reward(prompts, responses, token_ids=None) -> (B,) tensor`. `token_ids`
(one list per row: the prompt's ids, then the response's ids without EOS, in the policy's
tokenizer) lets a reward model that shares the policy's tokenizer score exactly the sampled
tokens (design §6.10); any other RM re-tokenises the decoded text with its own tokenizer.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from rlhfkit.errors import RlhfkitError

REWARD_STATS = "reward_stats.json"


def load_reward(spec: str, normalize: bool, policy_tokenizer=None) -> Callable[..., torch.Tensor]:
    """`module:function` (called as f(prompts, responses) -> list[float]) or a reward-model folder
    (an rm stage's, or any local AutoModelForSequenceClassification folder)."""
    if is_function_reward(spec):
        return _python_reward(spec)
    return _model_reward(spec, normalize, policy_tokenizer)


def same_tokenizer(a, b) -> bool:
    """Same vocabulary (ids) and the same pad id: ids from one mean the same tokens in the other."""
    return a is not None and b is not None and a.get_vocab() == b.get_vocab() and a.pad_token_id == b.pad_token_id


def _python_reward(spec: str):
    module_name, _, name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise RlhfkitError(f"ppo.reward={spec}: cannot import ({e})") from None

    def reward(prompts: list[str], responses: list[str], token_ids=None) -> torch.Tensor:
        try:
            scores = [float(s) for s in function(prompts, responses)]
        except Exception as e:  # noqa: BLE001 - a user's plugin may raise anything; name it and stop
            raise RlhfkitError(f"ppo.reward={spec} raised {type(e).__name__}: {str(e)[:160]}") from None
        if len(scores) != len(prompts):
            raise RlhfkitError(f"ppo.reward={spec} returned {len(scores)} scores for {len(prompts)} responses")
        bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
        if bad:
            raise RlhfkitError(f"ppo.reward={spec} returned a non-finite score ({scores[bad[0]]}) for response {bad[0]}")
        return torch.tensor(scores)

    return reward


def reward_normalisation(folder: str, normalize: bool) -> tuple[float, float]:
    """(mean, std) the RM's scores are normalised with: stats measured on SFT samples by the rm stage."""
    if not normalize:
        return 0.0, 1.0
    final = Path(folder) / "final" if (Path(folder) / "final").is_dir() else Path(folder)
    stats_file = final / REWARD_STATS
    if not stats_file.is_file():
        raise RlhfkitError(f"{stats_file}: missing; train the RM with `rlhfkit rm` or set ppo.normalize_reward=false")
    stats = json.loads(stats_file.read_text())
    return stats["mean"], max(stats["std"], 1e-6)


def is_function_reward(spec: str) -> bool:
    return ":" in spec and not Path(spec).exists()


def _model_reward(folder: str, normalize: bool, policy_tokenizer):
    from rlhfkit.data.collate import right_pad
    from rlhfkit.models.reward import load_reward_model, rewards_at_last_token

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
            # Our rm stage's format: prompt ids + " " + response, no EOS (data/preferences.tokenize_pairs).
            ids = [tokenizer(p)["input_ids"] + tokenizer(" " + r, add_special_tokens=False)["input_ids"]
                   for p, r in zip(prompts, responses)]
        input_ids, attention_mask = right_pad(ids, tokenizer.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    @torch.no_grad()
    def reward(prompts: list[str], responses: list[str], token_ids: list[list[int]] | None = None) -> torch.Tensor:
        scores = rewards_at_last_token(model, **inputs(prompts, responses, token_ids))
        return (scores - mean) / std

    reward.scores_token_ids = shares_ids
    return reward
