"""Per-token PPO rewards and the adaptive KL coefficient (Ziegler et al. 2019, eq. 2 and §2.2).

Rules used here (design §6.4): every response token is charged `-kl_coef * (logp - ref_logp)`
(the k1 estimate, whose expectation is the sequence KL); the scalar score of the whole response
is added on its last valid token.
"""

from __future__ import annotations

import torch


def kl_shaped_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """rewards[b, t] = -kl_coef * (logprobs - ref_logprobs)[b, t] * mask[b, t]
                      + scores[b] * [t == last valid position of row b].

    Shapes: scores (B,); logprobs, ref_logprobs, mask (B, T) -> rewards (B, T). A row with no valid
    token gets no score (there is no token to carry it).
    """
    m = mask.bool()
    rewards = torch.where(m, -kl_coef * (logprobs - ref_logprobs), torch.zeros_like(logprobs))
    lengths = m.long().sum(-1)  # (B,)
    last = (lengths - 1).clamp(min=0)  # (B,)
    has_token = (lengths > 0).to(rewards.dtype)
    rewards = rewards.clone()
    rewards[torch.arange(rewards.shape[0]), last] += scores.to(rewards.dtype) * has_token
    return rewards


def kl_shaped_rewards_reference(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    rewards = torch.zeros_like(logprobs)
    for b in range(logprobs.shape[0]):
        last = None
        for t in range(logprobs.shape[1]):
            if mask[b, t]:
                rewards[b, t] = -kl_coef * (logprobs[b, t] - ref_logprobs[b, t])
                last = t
        if last is not None:
            rewards[b, last] += scores[b]
    return rewards


def adaptive_kl_coef(kl_coef: float, kl: float, target: float, horizon: int, n_steps: int) -> float:
    """Ziegler et al.'s proportional controller: e = clip(kl / target - 1, -0.2, 0.2),
    kl_coef <- kl_coef * (1 + e * n_steps / horizon). KL above target raises the coefficient.

    Shapes: all scalars (Python floats); `n_steps` is the number of samples in the batch.
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)


def adaptive_kl_coef_reference(kl_coef: float, kl: float, target: float, horizon: int, n_steps: int) -> float:
    proportional_error = kl / target - 1.0
    if proportional_error > 0.2:
        proportional_error = 0.2
    if proportional_error < -0.2:
        proportional_error = -0.2
    return kl_coef * (1.0 + proportional_error * n_steps / horizon)
