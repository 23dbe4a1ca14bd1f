"""Advantage estimators for one online RL loop: PPO's GAE and the critic-free GRPO, Dr. GRPO,
RLOO and REINFORCE++, picked by name from `ADVANTAGE_ESTIMATORS`.

Every estimator has the same signature, so the loop calls whichever the config names:

    advantages, returns = ADVANTAGE_ESTIMATORS[name](
        rewards, values, mask, group_size=G, gamma=gamma, lam=lam, eps=eps)

Shapes: rewards, mask (B, T) and values (B, T) or None -> advantages (B, T), returns (B, T), in the
dtype of `rewards` (the arithmetic runs in at least float32). Masked positions of both outputs are
0 and garbage there (NaN, inf) is ignored. Each estimator reads only the arguments it needs and
says which it ignores. `NEEDS_VALUES` names the estimators that read `values` (a critic); the
loop builds no value head for the others, whose `returns` are a copy of the advantages (returns
are only a critic's regression target).

Conventions:
- `rewards[b, t]` is the reward received after token t (as for `gae`): usually the scalar score on
  the row's last valid token, plus per-token KL penalties when the KL is in the reward.
- Group estimators (grpo, dr_grpo, rloo): rows are prompt-major, so row i answers prompt
  i // group_size, and B must be a multiple of group_size. A row's score is the sum of its token
  rewards under the mask (a row with no valid token scores 0 and still counts in its group); the
  row's advantage is one number, broadcast over its valid tokens ("outcome supervision").
- No estimator whitens across the batch: with several processes the loop whitens with statistics
  of the gathered global batch, `masked_whiten(adv, mask, stats_from=(all_adv, all_mask))`.
"""

import torch

from .gae import gae

__all__ = [
    "gae_advantages",
    "grpo_advantages",
    "dr_grpo_advantages",
    "rloo_advantages",
    "reinforce_pp_advantages",
    "ADVANTAGE_ESTIMATORS",
    "NEEDS_VALUES",
]

Advantages = tuple[torch.Tensor, torch.Tensor]


def _check(rewards: torch.Tensor, values: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Validate shapes; return the mask as bool."""
    if rewards.dim() != 2 or mask.shape != rewards.shape:
        raise ValueError(
            f"rewards and mask must both be (B, T); got {tuple(rewards.shape)} and {tuple(mask.shape)}"
        )
    if values is not None and values.shape != rewards.shape:
        raise ValueError(f"values shape {tuple(values.shape)} != rewards shape {tuple(rewards.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def _check_groups(batch: int, group_size: int, min_size: int = 1) -> None:
    if not isinstance(group_size, int) or group_size < min_size:
        raise ValueError(f"group_size must be an int >= {min_size}, got {group_size!r}")
    if batch % group_size:
        raise ValueError(
            f"batch of {batch} rows is not a multiple of group_size {group_size} "
            "(rows must be prompt-major: group_size samples per prompt)"
        )


def _group_scores(rewards: torch.Tensor, m: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per-row score = masked sum of token rewards, in at least float32, as (B // G, G)."""
    acc = torch.promote_types(rewards.dtype, torch.float32)
    scores = torch.where(m, rewards.to(acc), 0.0).sum(dim=-1)  # (B,)
    return scores.view(-1, group_size)  # (B // G, G): row i is group i // G, slot i % G


def _broadcast(row_adv: torch.Tensor, m: torch.Tensor, dtype: torch.dtype) -> Advantages:
    """(B // G, G) row advantages -> (B, T) on valid tokens, and a copy as the returns."""
    advantages = torch.where(m, row_adv.reshape(-1, 1), 0.0).to(dtype)  # (B, T)
    return advantages, advantages.clone()


# ---------------------------------------------------------------- estimators


@torch.no_grad()
def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor | None,
    mask: torch.Tensor,
    *,
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
) -> Advantages:
    """PPO's GAE(gamma, lam) with a critic: `rlhfkit.ops.gae.gae` behind the shared signature.

        delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},   returns = A + V

    Shapes: rewards, values, mask (B, T) -> (advantages (B, T), returns (B, T)). `values` is
    required (ValueError if None); `group_size` and `eps` are ignored.
    """
    if values is None:
        raise ValueError("the 'gae' advantage estimator needs values (a critic); got values=None")
    _check(rewards, values, mask)
    return gae(rewards, values, mask, gamma=gamma, lam=lam)


@torch.no_grad()
def grpo_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor | None,
    mask: torch.Tensor,
    *,
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
) -> Advantages:
    """GRPO outcome advantages (Shao et al. 2024, DeepSeekMath, §4.1.2): the row's score
    normalised within its group of G samples of the same prompt.

        s_i = sum_t mask[i, t] * rewards[i, t]
        A_i = (s_i - mean_g(s)) / (std_g(s) + eps),   std_g unbiased: sqrt(sum_j (s_j - mean)^2 / (G - 1))
        advantages[i, t] = A_i on valid tokens, returns = advantages

    Shapes: rewards, mask (B, T) -> (advantages (B, T), returns (B, T)); B a multiple of G.
    The std is the unbiased (Bessel-corrected) one because the paper leaves it unspecified and the
    public implementations (TRL, OpenRLHF, verl) use `torch.std`'s default, so the same `eps`
    reproduces their numbers; with G = 1 it is taken as 0 and every advantage is 0. A group whose
    scores are all equal has advantage 0 (the numerator vanishes), hence eps > 0 is required.
    `values`, `gamma` and `lam` are ignored.
    """
    m = _check(rewards, values, mask)
    _check_groups(rewards.shape[0], group_size)
    if not eps > 0:
        raise ValueError(f"eps must be > 0 for grpo (a group with equal scores has std 0), got {eps}")
    scores = _group_scores(rewards, m, group_size)  # (B // G, G)
    centred = scores - scores.mean(dim=-1, keepdim=True)
    # Bessel-corrected variance, 0 for G = 1 (no spread to measure) instead of 0 / 0.
    var = (centred**2).sum(dim=-1, keepdim=True) / max(group_size - 1, 1)
    return _broadcast(centred / (var.sqrt() + eps), m, rewards.dtype)


@torch.no_grad()
def dr_grpo_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor | None,
    mask: torch.Tensor,
    *,
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
) -> Advantages:
    """Dr. GRPO outcome advantages (Liu et al. 2025, "Understanding R1-Zero-Like Training"):
    GRPO without the division by the group std, which up-weights prompts that are too easy or
    too hard (a "question-level difficulty bias").

        A_i = s_i - mean_g(s),   s_i = sum_t mask[i, t] * rewards[i, t]
        advantages[i, t] = A_i on valid tokens, returns = advantages

    Shapes: rewards, mask (B, T) -> (advantages (B, T), returns (B, T)); B a multiple of G.
    The paper's other fix, removing GRPO's 1 / |o_i| length normalisation, is a choice of loss
    aggregation: `aggregate_loss(..., "seq-mean-token-sum")` (the paper divides by a constant
    generation budget instead of |o_i|, which only rescales the learning rate).
    `values`, `gamma`, `lam` and `eps` are ignored.
    """
    m = _check(rewards, values, mask)
    _check_groups(rewards.shape[0], group_size)
    scores = _group_scores(rewards, m, group_size)  # (B // G, G)
    return _broadcast(scores - scores.mean(dim=-1, keepdim=True), m, rewards.dtype)


@torch.no_grad()
def rloo_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor | None,
    mask: torch.Tensor,
    *,
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
) -> Advantages:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024, "Back to Basics"; Kool et
    al. 2019): each row's baseline is the mean score of the other G - 1 rows of its group, which
    does not depend on the row's own sample, so the gradient stays unbiased.

        A_i = s_i - (1 / (G - 1)) sum_{j in group, j != i} s_j  =  G / (G - 1) * (s_i - mean_g(s))
        advantages[i, t] = A_i on valid tokens, returns = advantages

    Shapes: rewards, mask (B, T) -> (advantages (B, T), returns (B, T)); B a multiple of G, G >= 2
    (ValueError otherwise: one sample has no "others"). `values`, `gamma`, `lam`, `eps` are ignored.
    """
    m = _check(rewards, values, mask)
    _check_groups(rewards.shape[0], group_size, min_size=2)
    scores = _group_scores(rewards, m, group_size)  # (B // G, G)
    others = (scores.sum(dim=-1, keepdim=True) - scores) / (group_size - 1)
    return _broadcast(scores - others, m, rewards.dtype)


@torch.no_grad()
def reinforce_pp_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor | None,
    mask: torch.Tensor,
    *,
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
) -> Advantages:
    """REINFORCE++ advantages (Hu 2025, "REINFORCE++"), before normalisation: the discounted
    return-to-go of the token rewards, with no critic and no per-prompt baseline.

        A_t = sum_{s >= t, s valid} gamma^(number of valid tokens in [t, s)) * rewards_s
            = rewards_t + gamma * A_{next valid token}                  (0 after the last one)
        returns = advantages

    Shapes: rewards, mask (B, T) -> (advantages (B, T), returns (B, T)). Pass the KL-shaped rewards
    (`kl_shaped_rewards`): REINFORCE++ keeps the per-token KL penalty in the reward, so each token
    is charged the KL of the tokens after it. The method's normalisation, whitening over the
    *global* batch, is NOT done here: the loop applies `masked_whiten(..., stats_from=...)` with
    the advantages gathered across processes, so each process's share is whitened like the
    whole. Equal to `gae` with values = 0 and lam = 1, and computed that way (a zero critic
    leaves only the rewards in GAE's TD errors). `values`, `group_size`, `lam`, `eps` are ignored.
    """
    _check(rewards, values, mask)
    advantages, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=gamma, lam=1.0)
    return advantages, advantages.clone()


# Config string -> estimator; all share the signature above.
ADVANTAGE_ESTIMATORS = {
    "gae": gae_advantages,
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
}

# Estimators that read `values`: only these need a critic (value head) in the loop.
NEEDS_VALUES = frozenset({"gae"})


# ---------------------------------------------------------------- naive references
# Each returns float64 (advantages, returns); signatures mirror the fast versions.


def _rows(rewards: torch.Tensor, mask: torch.Tensor) -> tuple[list[list[float]], list[list[bool]]]:
    return rewards.double().tolist(), [[bool(v) for v in row] for row in mask.tolist()]


def _row_scores(rewards: torch.Tensor, mask: torch.Tensor) -> list[float]:
    r_rows, m_rows = _rows(rewards, mask)
    return [sum(r for r, valid in zip(r_row, m_row) if valid) for r_row, m_row in zip(r_rows, m_rows)]


def _spread(row_adv: list[float], mask: torch.Tensor) -> Advantages:
    """Put row i's advantage on its valid tokens; returns = advantages."""
    out = [[a if valid else 0.0 for valid in m_row] for a, m_row in zip(row_adv, mask.tolist())]
    advantages = torch.tensor(out, dtype=torch.float64).reshape(mask.shape)
    return advantages, advantages.clone()


def gae_advantages_reference(
    rewards, values, mask, *, group_size=1, gamma=1.0, lam=0.95, eps=1e-6
) -> Advantages:
    """Naive reference: the textbook backward loop over each row's valid tokens, terminal after
    the last one (the same as `gae_reference`, written out here so this file stands alone)."""
    B, T = rewards.shape
    r_rows, m_rows = _rows(rewards, mask)
    v_rows = values.double().tolist()
    advantages = [[0.0] * T for _ in range(B)]
    returns = [[0.0] * T for _ in range(B)]
    for b in range(B):
        idx = [t for t in range(T) if m_rows[b][t]]
        last_adv, next_value = 0.0, 0.0
        for t in reversed(idx):
            delta = r_rows[b][t] + gamma * next_value - v_rows[b][t]
            last_adv = delta + gamma * lam * last_adv
            advantages[b][t] = last_adv
            returns[b][t] = last_adv + v_rows[b][t]
            next_value = v_rows[b][t]
    return torch.tensor(advantages, dtype=torch.float64), torch.tensor(returns, dtype=torch.float64)


def grpo_advantages_reference(
    rewards, values, mask, *, group_size=1, gamma=1.0, lam=0.95, eps=1e-6
) -> Advantages:
    """Naive reference: loop over groups; statistics of each group's scores in Python floats."""
    scores = _row_scores(rewards, mask)
    row_adv = []
    for start in range(0, len(scores), group_size):
        group = scores[start : start + group_size]
        mean = sum(group) / len(group)
        var = sum((s - mean) ** 2 for s in group) / (len(group) - 1) if len(group) > 1 else 0.0
        row_adv += [(s - mean) / (var**0.5 + eps) for s in group]
    return _spread(row_adv, mask)


def dr_grpo_advantages_reference(
    rewards, values, mask, *, group_size=1, gamma=1.0, lam=0.95, eps=1e-6
) -> Advantages:
    """Naive reference: loop over groups, subtract each group's mean score."""
    scores = _row_scores(rewards, mask)
    row_adv = []
    for start in range(0, len(scores), group_size):
        group = scores[start : start + group_size]
        row_adv += [s - sum(group) / len(group) for s in group]
    return _spread(row_adv, mask)


def rloo_advantages_reference(
    rewards, values, mask, *, group_size=1, gamma=1.0, lam=0.95, eps=1e-6
) -> Advantages:
    """Naive reference: for each row, average the other rows of its group by an explicit loop."""
    scores = _row_scores(rewards, mask)
    row_adv = []
    for i, s in enumerate(scores):
        start = (i // group_size) * group_size
        others = [scores[j] for j in range(start, start + group_size) if j != i]
        row_adv.append(s - sum(others) / len(others))
    return _spread(row_adv, mask)


def reinforce_pp_advantages_reference(
    rewards, values, mask, *, group_size=1, gamma=1.0, lam=0.95, eps=1e-6
) -> Advantages:
    """Naive reference: for each valid token, sum the discounted rewards of the valid tokens from
    it to the row's end (a double loop, no recursion)."""
    B, T = rewards.shape
    r_rows, m_rows = _rows(rewards, mask)
    out = [[0.0] * T for _ in range(B)]
    for b in range(B):
        idx = [t for t in range(T) if m_rows[b][t]]
        for k, t in enumerate(idx):
            out[b][t] = sum(gamma**j * r_rows[b][s] for j, s in enumerate(idx[k:]))
    advantages = torch.tensor(out, dtype=torch.float64)
    return advantages, advantages.clone()
