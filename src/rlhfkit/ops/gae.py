"""Generalized Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous Control
Using Generalized Advantage Estimation", eq. 16), for token-level PPO on language models.

Conventions (all tensors (B, T), one row per response, time = response token index):
- `values[b, t]` is V(s_t): the critic's value of the state *before* token t is emitted
  (prompt + response[:t]), read at the position that predicts token t.
- `rewards[b, t]` is the reward received *after* token t is emitted: typically the per-token
  KL penalty `-kl_coef * k1` on every token plus the RM score on the last valid token.
- `mask[b, t]` is 1 for response tokens and 0 for padding. Each row's valid tokens form the
  episode in order; the state after the row's last valid token is terminal, so its value is 0
  (no bootstrapping: a response that ran out of `max_new_tokens` is treated as finished, and
  any no-EOS penalty belongs in `rewards`). Right padding, rows of any length (including 0) and
  arbitrary trailing zeros are handled; a 0 *inside* a row is skipped (the next valid token's
  value is used), which matches what compressing the row to its valid tokens would give.

    delta_t = rewards_t + gamma * V(s_{t+1}) - V(s_t)          V(s_{T_valid}) = 0
    A_t     = delta_t + gamma * lam * A_{t+1}                   A_{T_valid} = 0
    returns = A + values

Masked positions of both outputs are 0, and garbage there (NaN, inf) is ignored.
"""

import torch

__all__ = ["gae", "gae_reference"]


def _check(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> None:
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(
            "rewards, values and mask must all be (B, T); got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages and returns (see the module docstring for the conventions).

    Shapes: rewards, values, mask (B, T) -> (advantages (B, T), returns (B, T)), in the dtype of
    `rewards`/`values` (promoted; the scan itself runs in at least float32). A reverse scan over
    T, vectorised over the batch. Runs under no_grad: advantages and returns are targets, never
    differentiated through.
    """
    _check(rewards, values, mask, gamma, lam)
    out_dtype = torch.promote_types(rewards.dtype, values.dtype)
    dtype = torch.promote_types(out_dtype, torch.float32)
    m = mask if mask.dtype == torch.bool else mask != 0
    r = torch.where(m, rewards.to(dtype), 0.0)
    v = torch.where(m, values.to(dtype), 0.0)

    B, T = r.shape
    advantages = torch.zeros((B, T), dtype=dtype, device=r.device)
    next_value = torch.zeros(B, dtype=dtype, device=r.device)  # V(s_{t+1}); 0 = terminal
    next_adv = torch.zeros(B, dtype=dtype, device=r.device)  # A_{t+1}
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * next_value - v[:, t]  # (B,)
        adv_t = delta + gamma * lam * next_adv
        valid = m[:, t]
        # A masked step leaves the carry untouched, so the next valid step sees the right V, A.
        advantages[:, t] = torch.where(valid, adv_t, 0.0)
        next_adv = torch.where(valid, adv_t, next_adv)
        next_value = torch.where(valid, v[:, t], next_value)
    returns = torch.where(m, advantages + v, 0.0)
    return advantages.to(out_dtype), returns.to(out_dtype)


def gae_reference(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive reference: for each row, keep its valid tokens, run the textbook backward loop in
    Python floats (terminal after the last one), scatter back. Returns float64 tensors."""
    _check(rewards, values, mask, gamma, lam)
    B, T = rewards.shape
    advantages = [[0.0] * T for _ in range(B)]
    returns = [[0.0] * T for _ in range(B)]
    r_rows, v_rows, m_rows = rewards.double().tolist(), values.double().tolist(), mask.tolist()
    for b in range(B):
        idx = [t for t in range(T) if m_rows[b][t]]
        rs = [r_rows[b][t] for t in idx]
        vs = [v_rows[b][t] for t in idx] + [0.0]  # V after the last token = 0 (terminal)
        last = 0.0
        adv = [0.0] * len(idx)
        for k in reversed(range(len(idx))):
            delta = rs[k] + gamma * vs[k + 1] - vs[k]
            last = delta + gamma * lam * last
            adv[k] = last
        for k, t in enumerate(idx):
            advantages[b][t] = adv[k]
            returns[b][t] = adv[k] + vs[k]
    return torch.tensor(advantages, dtype=torch.float64), torch.tensor(returns, dtype=torch.float64)
