"""Where an online run's scalar reward comes from: a trained reward model or a Python function.

A reward is called as `reward(prompts, responses, token_ids=None) -> (B,) tensor`. `token_ids`
(one list per row: the prompt's ids, then the response's ids without EOS, in the policy's
tokenizer) lets a reward model that shares the policy's tokenizer score exactly the sampled
tokens (rewards/model.py); a function reward (rewards/function.py) sees the text.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from rlhfkit.rewards.function import python_reward
from rlhfkit.rewards.model import REWARD_STATS, model_reward, reward_normalisation, same_tokenizer

__all__ = ["REWARD_STATS", "is_function_reward", "load_reward", "reward_normalisation", "same_tokenizer"]


def load_reward(
    spec: str, normalize: bool, policy_tokenizer=None, template: str = "human_assistant"
) -> Callable[..., torch.Tensor]:
    """`module:function` (called as f(prompts, responses) -> list[float]) or a reward-model folder
    (an rm stage's, or any local AutoModelForSequenceClassification folder). `template` is the
    data.template the prompts are rendered with; an rm stage's model must have been trained on it."""
    if is_function_reward(spec):
        return python_reward(spec)
    return model_reward(spec, normalize, policy_tokenizer, template)


def is_function_reward(spec: str) -> bool:
    return ":" in spec and not Path(spec).exists()
