"""Where an online run's scalar reward comes from: a trained reward model or a Python function.

A reward is called as `reward(prompts, responses, token_ids=None, finished=None, metadata=None)
-> (B,) tensor`. `token_ids` (one list per row: the prompt's ids, then the response's ids without
EOS, in the policy's tokenizer) lets a reward model that shares the policy's tokenizer score exactly
the sampled tokens (rewards/model.py); a function reward (rewards/function.py) sees the text, and
in its `f(samples)` form also the ids, the finished flags and the prompts' dataset rows
(`metadata`). `rewards/verifiable.py` has checkable rewards for the built-in task. Several rewards
add up with weights (`combined_reward`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from rlhfkit.errors import ConfigError
from rlhfkit.models.shared import AdapterHead
from rlhfkit.rewards.function import RewardSample, python_reward
from rlhfkit.rewards.model import (
    REWARD_STATS,
    model_reward,
    reward_normalisation,
    same_tokenizer,
    shareable_adapter,
)

__all__ = [
    "REWARD_STATS",
    "RewardSample",
    "combined_reward",
    "is_function_reward",
    "load_reward",
    "reward_normalisation",
    "same_tokenizer",
    "shareable_adapter",
]


def load_reward(
    spec: str,
    normalize: bool,
    policy_tokenizer=None,
    template: str = "human_assistant",
    extra: list[str] | tuple = (),
    scorer: AdapterHead | None = None,
) -> Callable[..., torch.Tensor]:
    """`module:function` (rewards/function.py's two forms) or a reward-model folder (an rm stage's, or
    any local AutoModelForSequenceClassification folder), plus the `extra` rewards, each `spec` or
    `spec@weight`, added with their weights. `template` is the data.template the prompts are
    rendered with; an rm stage's model must have been trained on it. `scorer`: `spec`'s RM as an
    adapter on the policy's base (rewards.model.shareable_adapter); the extra rewards load their own."""
    if is_function_reward(spec):
        main = python_reward(spec)
    else:
        main = model_reward(spec, normalize, policy_tokenizer, template, scorer)
    if not extra:
        return main
    terms = [(main, 1.0)]
    for item in extra:
        other, _, weight = item.rpartition("@") if "@" in item else (item, "", "1")
        try:
            weight = float(weight)
        except ValueError:
            raise ConfigError(f"ppo.extra_rewards: {item!r}: the weight after @ must be a number") from None
        terms.append((load_reward(other, normalize, policy_tokenizer, template), weight))
    return combined_reward(terms)


def combined_reward(terms: list[tuple[Callable[..., torch.Tensor], float]]) -> Callable[..., torch.Tensor]:
    """sum_i weight_i x reward_i, each reward called with the same rows (e.g. an RM + a format check)."""

    def reward(prompts, responses, token_ids=None, finished=None, metadata=None) -> torch.Tensor:
        return sum(
            weight * term(prompts, responses, token_ids, finished=finished, metadata=metadata)
            for term, weight in terms
        )

    # A reward model among the terms reads the sampled ids when it shares the policy's tokenizer.
    reward.scores_token_ids = any(getattr(term, "scores_token_ids", False) for term, _ in terms)
    return reward


def is_function_reward(spec: str) -> bool:
    return ":" in spec and not Path(spec).exists()
