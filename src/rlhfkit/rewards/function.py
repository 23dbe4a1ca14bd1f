"""Rewards computed by a Python function named `module:function`.

Two forms, told apart by the function's first parameter:
- `f(prompts, responses) -> list[float]`: the texts only;
- `f(samples) -> list[float]` (first parameter named `samples`): one `RewardSample` per row, with
  the token ids, whether the response finished with EOS and the prompt's row from the dataset
  (e.g. `references`, `family` for the built-in task): the form verifiable rewards need.
"""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass, field

import torch

from rlhfkit.errors import RlhfkitError


@dataclass
class RewardSample:
    """One row for a `f(samples)` reward."""

    prompt: str
    """The rendered prompt the policy saw."""
    response: str
    """The decoded response, without EOS."""
    token_ids: list[int] | None = None
    """The prompt's ids, then the response's without EOS (the policy's tokenizer); None when not known."""
    finished: bool = True
    """False when the response hit max_new_tokens without EOS."""
    metadata: dict = field(default_factory=dict)
    """The prompt's row from the dataset, in training and in the held-out evals ({} when the caller has
    no rows, e.g. a reward called on bare texts)."""


def takes_samples(function) -> bool:
    try:
        parameters = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: the old form
        return False
    return bool(parameters) and parameters[0] == "samples"


def python_reward(spec: str):
    """The reward `module:function`, checked on every call: a wrong length, a NaN or an exception
    becomes one line naming the function."""
    module_name, _, name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise RlhfkitError(f"ppo.reward={spec}: cannot import ({e})") from None
    rows = takes_samples(function)

    def reward(
        prompts: list[str], responses: list[str], token_ids=None, finished=None, metadata=None
    ) -> torch.Tensor:
        try:
            if rows:
                samples = [
                    RewardSample(
                        p,
                        r,
                        None if token_ids is None else token_ids[i],
                        True if finished is None else bool(finished[i]),
                        {} if metadata is None else metadata[i],
                    )
                    for i, (p, r) in enumerate(zip(prompts, responses))
                ]
                scores = [float(s) for s in function(samples)]
            else:
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
