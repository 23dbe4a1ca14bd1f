"""Per-token PPO rewards and the adaptive KL coefficient (Ziegler et al. 2019, eq. 2 and §2.2).

Rules used here (design §6.4): every response token is charged `-kl_coef * (logp - ref_logp)`
(the k1 estimate, whose expectation is the sequence KL); the scalar score of the whole response
is added on its last valid token.
"""

from __future__ import annotations

import torch


def kl_shaped_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
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
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
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


def response_scores(
    raw: torch.Tensor,
    finished: torch.Tensor,
    lengths: torch.Tensor,
    no_eos_penalty: float,
    empty_score: float | None,
    clip: float,
) -> torch.Tensor:
    """The scalar score of each response before KL shaping:

        score[b] = empty_score                        if finished[b] and lengths[b] == 1 (EOS alone)
                 = raw[b] + no_eos_penalty * (1 - finished[b])   otherwise
        then clipped to [-clip, clip].

    A response that is EOS alone is read by a reward model at the prompt's last token, a state it
    never saw in training (pairs with an empty side are dropped): its score there is arbitrary, and
    a policy could learn to say nothing for it. `empty_score` replaces it (None keeps the reward's).
    Shapes: raw, finished (bool), lengths (B,) -> (B,).
    """
    score = raw + no_eos_penalty * (~finished).to(raw.dtype)
    if empty_score is not None:
        score = torch.where(finished & (lengths == 1), torch.full_like(score, empty_score), score)
    return score.clamp(-clip, clip)


def response_scores_reference(
    raw: torch.Tensor,
    finished: torch.Tensor,
    lengths: torch.Tensor,
    no_eos_penalty: float,
    empty_score: float | None,
    clip: float,
) -> torch.Tensor:
    out = torch.empty_like(raw)
    for b in range(raw.shape[0]):
        if empty_score is not None and bool(finished[b]) and int(lengths[b]) == 1:
            value = empty_score
        else:
            value = float(raw[b]) + (0.0 if bool(finished[b]) else no_eos_penalty)
        out[b] = min(max(value, -clip), clip)
    return out


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
