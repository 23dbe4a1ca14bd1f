"""Where a PPO run's scalar reward comes from: a trained reward model or a Python function."""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from rlhfkit.errors import RlhfkitError

REWARD_STATS = "reward_stats.json"


def load_reward(spec: str, normalize: bool) -> Callable[[list[str], list[str]], torch.Tensor]:
    """`module:function` (called as f(prompts, responses) -> list[float]) or an rm stage folder."""
    if ":" in spec and not Path(spec).exists():
        return _python_reward(spec)
    return _model_reward(spec, normalize)


def _python_reward(spec: str):
    module_name, _, name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise RlhfkitError(f"ppo.reward={spec}: cannot import ({e})") from None

    def reward(prompts: list[str], responses: list[str]) -> torch.Tensor:
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


def _model_reward(folder: str, normalize: bool):
    from rlhfkit.data.collate import right_pad
    from rlhfkit.models.reward import load_reward_model, rewards_at_last_token

    model, tokenizer = load_reward_model(folder)
    final = Path(folder) / "final" if (Path(folder) / "final").is_dir() else Path(folder)
    mean, std = 0.0, 1.0
    if normalize:
        stats_file = final / REWARD_STATS
        if not stats_file.is_file():
            raise RlhfkitError(f"{stats_file}: missing; train the RM with `rlhfkit rm` or set ppo.normalize_reward=false")
        stats = json.loads(stats_file.read_text())
        mean, std = stats["mean"], max(stats["std"], 1e-6)

    @torch.no_grad()
    def reward(prompts: list[str], responses: list[str]) -> torch.Tensor:
        # Re-tokenised exactly as the RM was trained: prompt ids + " " + response, no EOS.
        ids = [tokenizer(p)["input_ids"] + tokenizer(" " + r, add_special_tokens=False)["input_ids"]
               for p, r in zip(prompts, responses)]
        input_ids, attention_mask = right_pad(ids, tokenizer.pad_token_id)
        scores = rewards_at_last_token(model, input_ids, attention_mask)
        return (scores - mean) / std

    return reward
