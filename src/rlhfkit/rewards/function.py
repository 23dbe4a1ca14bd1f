"""Rewards computed by a Python function named `module:function`."""

from __future__ import annotations

import importlib
import math

import torch

from rlhfkit.errors import RlhfkitError


def python_reward(spec: str):
    """f(prompts, responses) -> list[float] from `module:function`, checked on every call: a wrong
    length, a NaN or an exception becomes one line naming the function."""
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
            raise RlhfkitError(
                f"ppo.reward={spec} returned {len(scores)} scores for {len(prompts)} responses"
            )
        bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
        if bad:
            raise RlhfkitError(
                f"ppo.reward={spec} returned a non-finite score ({scores[bad[0]]}) for response {bad[0]}"
            )
        return torch.tensor(scores)

    return reward
