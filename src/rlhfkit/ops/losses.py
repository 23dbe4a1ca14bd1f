"""Losses for the three stages. Each returns `(loss, stats)`: `loss` is a scalar tensor to call
`.backward()` on, `stats` a dict of detached scalar tensors for logging (trainers aggregate them
under the metric names defined in `rlhfkit.run`).

Token-level losses average over valid tokens of the whole minibatch (one token, one vote), with
the masked-mean conventions of `rlhfkit.ops.logprobs` (empty mask -> 0; garbage under the mask
ignored, with a zero gradient there).
"""

import math

import torch
import torch.nn.functional as F

from .kl import kl_k3
from .logprobs import _check_mask, logprobs_from_logits, masked_mean, masked_var

__all__ = [
    "aggregate_loss",
    "aggregation_count",
    "AGGREGATIONS",
    "masked_nll",
    "bradley_terry_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "explained_variance",
]

Stats = dict[str, torch.Tensor]


def _masked_max(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Max over valid entries; 0 for an empty mask."""
    biggest = torch.where(m, x, float("-inf")).amax()
    return torch.where(m.any(), biggest, torch.zeros_like(biggest))


# ---------------------------------------------------------------- loss aggregation

# How a per-token loss becomes a scalar, by config string. GRPO (Shao et al. 2024, eq. 3) averages
# tokens within a row, then rows; DAPO (Yu et al. 2025, §3.3) averages all tokens of the batch, so a
# long answer is not down-weighted per token; Dr. GRPO (Liu et al. 2025) sums a row's tokens,
# then averages rows (up to its constant 1 / max-length, a learning-rate scale).
AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


def _check_aggregation(mode: str, total: float | None) -> None:
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {list(AGGREGATIONS)}")
    if isinstance(total, (int, float)) and not total > 0:
        raise ValueError(f"total must be > 0 (a global token or row count), got {total}")


def aggregation_count(mask: torch.Tensor, mode: str) -> torch.Tensor:
    """The denominator `aggregate_loss` divides by when `total` is None: the number of valid tokens
    ("token-mean") or of rows with at least one valid token (the "seq-" modes).

    Shapes: mask (B, T) -> scalar float32 tensor. With several processes, sum this over processes
    (all-reduce) and pass the result as `total` to each process's `aggregate_loss`.
    """
    _check_aggregation(mode, None)
    m = mask if mask.dtype == torch.bool else mask != 0
    valid = m if mode == "token-mean" else m.any(dim=-1)
    return valid.sum().to(torch.float32)


def aggregate_loss(
    per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", total: float | None = None
) -> torch.Tensor:
    """Reduce a per-token loss to the scalar to call `.backward()` on.

        "token-mean":          sum_{b,t} m[b,t] x[b,t] / N_tokens
        "seq-mean-token-sum":  sum_b ( sum_t m[b,t] x[b,t] ) / N_rows
        "seq-mean-token-mean": sum_b ( sum_t m[b,t] x[b,t] / sum_t m[b,t] ) / N_rows

    N_tokens = number of valid tokens, N_rows = number of rows with at least one valid token
    (`aggregation_count`; an all-padding row, e.g. a filler row of a process with no data, changes
    nothing). `total` replaces that denominator: pass the count of the *global* batch (summed over
    processes) and each process's result is its share, so the sum over processes equals the loss
    of the whole batch, and so does the DDP gradient sum. Shapes: per_token, mask (B, T) -> scalar
    in per_token's dtype (the sums run in at least float32). An empty mask gives 0; garbage under
    the mask is ignored, with a zero gradient there. With mode "token-mean" and no `total` this
    is exactly `masked_mean(per_token, mask)`.
    """
    _check_aggregation(mode, total)
    m = _check_mask(per_token, mask)
    if mode == "token-mean" and total is None:
        return masked_mean(per_token, m)
    acc = torch.promote_types(per_token.dtype, torch.float32)
    xs = torch.where(m, per_token.to(acc), 0.0)  # garbage out before any sum
    if mode == "token-mean":
        numerator = xs.sum()
    else:
        row_sums = xs.sum(dim=-1)  # (B,)
        if mode == "seq-mean-token-mean":
            row_sums = row_sums / m.sum(dim=-1).clamp(min=1).to(acc)  # an empty row stays 0
        numerator = row_sums.sum()
    denominator = aggregation_count(m, mode).clamp(min=1) if total is None else total
    return (numerator / denominator).to(per_token.dtype)


def aggregate_loss_reference(
    per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", total: float | None = None
) -> torch.Tensor:
    """Naive reference: Python loops over rows and tokens in float64; empty -> 0."""
    rows, masks = per_token.double().tolist(), mask.tolist()
    tokens, row_terms = [], []
    for row, row_mask in zip(rows, masks):
        vals = [x for x, valid in zip(row, row_mask) if valid]
        tokens += vals
        if vals:
            row_terms.append(sum(vals) if mode == "seq-mean-token-sum" else sum(vals) / len(vals))
    items = tokens if mode == "token-mean" else row_terms
    count = total if total is not None else len(items)
    return torch.tensor(sum(items) / count if count else 0.0, dtype=torch.float64)


def aggregation_count_reference(mask: torch.Tensor, mode: str) -> float:
    """Naive reference: count valid tokens, or rows with any valid token, by loops."""
    if mode == "token-mean":
        return float(sum(1 for row in mask.tolist() for v in row if v))
    return float(sum(1 for row in mask.tolist() if any(row)))


# ---------------------------------------------------------------- SFT


def masked_nll(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> tuple[torch.Tensor, Stats]:
    """Mean next-token negative log-likelihood, in the Hugging Face causal-LM convention.

    `labels` are aligned with `input_ids` (usually a copy of them with prompt/padding positions
    set to `ignore_index`), NOT pre-shifted: the function shifts, so position t's logits are
    scored against the token at t + 1:

        nll = -(1 / N) * sum_{b, t : labels[b, t+1] != ignore} log softmax(logits[b, t])[labels[b, t+1]]

    N = number of non-ignored targets, i.e. labels[:, 1:] != ignore_index (labels[:, 0] is
    never a target). Shapes: logits (B, T, V), labels (B, T) -> scalar loss. Matches
    `model(input_ids, labels=labels).loss` of a transformers causal LM.
    With no target token at all the loss is 0 (with zero gradient), not NaN.

    stats: "loss" (detached loss), "tokens" (N, as a float scalar).
    """
    if labels.shape != logits.shape[:-1] or labels.dim() != 2:
        raise ValueError(
            f"expected logits (B, T, V) and labels (B, T); got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    shift_logits = logits[:, :-1]  # (B, T-1, V): position t predicts token t+1
    targets = labels[:, 1:]  # (B, T-1)
    valid = targets != ignore_index
    logprobs = logprobs_from_logits(shift_logits, torch.where(valid, targets, 0))  # (B, T-1)
    loss = masked_mean(-logprobs, valid)
    stats = {"loss": loss.detach(), "tokens": valid.sum().to(torch.float32)}
    return loss, stats


def masked_nll_reference(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Naive reference: loop over (b, t), -log softmax(logits[b, t])[labels[b, t+1]], float64."""
    total, n = 0.0, 0
    B, T = labels.shape
    for b in range(B):
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y == ignore_index:
                continue
            row = logits[b, t].double()
            total -= float(row[y] - torch.logsumexp(row, dim=0))
            n += 1
    return torch.tensor(total / n if n else 0.0, dtype=torch.float64)


# ---------------------------------------------------------------- reward model


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: float | torch.Tensor = 0.0,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, Stats]:
    """Bradley-Terry pairwise loss for reward models (Ouyang et al. 2022, eq. 1), with an
    optional required margin (Touvron et al. 2023, Llama 2) and reward centering (Eisenstein et
    al. 2023, "Helping or Herding?"):

        loss = -mean_b log sigmoid(r_c[b] - r_r[b] - margin[b]) + center_coef * mean_b (r_c[b] + r_r[b])^2

    Shapes: chosen_rewards (B,), rejected_rewards (B,) (any equal shapes work), margin a float or
    a tensor broadcastable to (B,) -> scalar loss. The centering term pulls each pair's reward
    sum towards 0, fixing the RM's free offset.

    stats: "loss"; "accuracy" = mean(1[r_c > r_r] + 0.5 * 1[r_c == r_r]) (a tie counts half, so
    an untrained RM that outputs constants scores 0.5); "margin" = mean(r_c - r_r), the
    *observed* reward gap (not the `margin` argument); "chosen", "rejected" = mean rewards.
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards "
            f"{tuple(rejected_rewards.shape)} must have the same shape"
        )
    if chosen_rewards.numel() == 0:
        raise ValueError("bradley_terry_loss needs at least one pair")
    diff = chosen_rewards - rejected_rewards  # (B,)
    loss = -F.logsigmoid(diff - margin).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen_rewards + rejected_rewards) ** 2).mean()
    with torch.no_grad():
        accuracy = ((diff > 0).to(diff.dtype) + 0.5 * (diff == 0).to(diff.dtype)).mean()
        stats = {
            "loss": loss.detach(),
            "accuracy": accuracy,
            "margin": diff.mean(),
            "chosen": chosen_rewards.mean(),
            "rejected": rejected_rewards.mean(),
        }
    return loss, stats


def bradley_terry_loss_reference(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: float | torch.Tensor = 0.0,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Naive reference: a loop over pairs with log(1 + exp(-z)) in Python floats (float64)."""
    rc, rr = chosen_rewards.double().flatten().tolist(), rejected_rewards.double().flatten().tolist()
    ms = torch.as_tensor(margin, dtype=torch.float64).expand(len(rc)).tolist()
    n = len(rc)
    bt = sum(math.log1p(math.exp(-(c - r - m))) for c, r, m in zip(rc, rr, ms)) / n
    center = sum((c + r) ** 2 for c, r in zip(rc, rr)) / n
    return torch.tensor(bt + center_coef * center, dtype=torch.float64)


# ---------------------------------------------------------------- PPO


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    *,
    clip_low: float | None = None,
    clip_high: float | None = None,
    aggregation: str = "token-mean",
    total: float | None = None,
) -> tuple[torch.Tensor, Stats]:
    """PPO clipped surrogate policy loss (Schulman et al. 2017, eq. 7), negated for descent, with
    DAPO's asymmetric clip range (Yu et al. 2025, §3.1 "clip-higher") as an option.

        ratio   = exp(logprobs - old_logprobs)
        pg_loss = aggregate( max(-A * ratio, -A * clip(ratio, 1 - eps_low, 1 + eps_high)) )

    Shapes: logprobs, old_logprobs, advantages, mask (B, T) -> scalar loss. `old_logprobs` and
    `advantages` are treated as constants (detached here). eps_low = `clip_low`, eps_high =
    `clip_high`, each defaulting to `clip_range`; all > 0. A larger eps_high lets unlikely tokens
    with A > 0 grow further per update, which DAPO uses against entropy collapse. `aggregation`
    and `total` are those of `aggregate_loss`; the defaults ("token-mean", None) give
    masked_mean, and `ppo_policy_loss(new, old, adv, mask, clip_range)` computes exactly what it
    did before these options existed.

    stats (token means over the valid tokens, whatever the aggregation):
      "pg_loss"    detached loss.
      "clipfrac"   fraction of valid tokens where the clipped branch is strictly larger, i.e. the
                   token gets no gradient: -A*clip(ratio) > -A*ratio. Counts both sides.
      "clipfrac_low", "clipfrac_high"  only when `clip_low` or `clip_high` is given: the part of
                   clipfrac with ratio < 1 - eps_low (A < 0) and with ratio > 1 + eps_high (A > 0);
                   they sum to clipfrac.
      "approx_kl"  masked_mean of k3 = (ratio - 1) - log(ratio): an unbiased, per-token
                   non-negative estimate of KL(pi_old || pi) on tokens sampled from pi_old (as in
                   CleanRL; TRL logs k2 = 0.5 * (log ratio)^2 instead). Used for early stopping.
      "ratio_mean", "ratio_max"  masked mean and max of the ratio (1 on the first minibatch of
                   the first epoch, design §6.2).
    """
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    for name, value in (("clip_low", clip_low), ("clip_high", clip_high)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    _check_aggregation(aggregation, total)
    low = clip_range if clip_low is None else clip_low
    high = clip_range if clip_high is None else clip_high
    m = _check_mask(logprobs, mask)
    for name, t in (("old_logprobs", old_logprobs), ("advantages", advantages)):
        if t.shape != logprobs.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != logprobs shape {tuple(logprobs.shape)}")
    # Zero the masked entries first so garbage there cannot turn into NaN gradients.
    logprobs = torch.where(m, logprobs, 0.0)
    old_logprobs = torch.where(m, old_logprobs.detach(), 0.0)
    advantages = torch.where(m, advantages.detach(), 0.0)

    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - low, 1.0 + high)
    loss = aggregate_loss(torch.maximum(pg_losses, pg_losses_clipped), m, aggregation, total)

    with torch.no_grad():
        clipped = pg_losses_clipped > pg_losses
        stats = {
            "pg_loss": loss.detach(),
            "clipfrac": masked_mean(clipped.to(ratio.dtype), m),
            "approx_kl": masked_mean(kl_k3(old_logprobs, logprobs.detach()), m),
            "ratio_mean": masked_mean(ratio.detach(), m),
            "ratio_max": _masked_max(ratio.detach(), m),
        }
        if clip_low is not None or clip_high is not None:
            # The clipped branch wins only outside the range: below it for A < 0, above for A > 0.
            stats["clipfrac_low"] = masked_mean((clipped & (ratio < 1.0)).to(ratio.dtype), m)
            stats["clipfrac_high"] = masked_mean((clipped & (ratio > 1.0)).to(ratio.dtype), m)
    return loss, stats


def ppo_policy_loss_reference(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    clip_low: float | None = None,
    clip_high: float | None = None,
    aggregation: str = "token-mean",
    total: float | None = None,
    per_side: bool = False,
) -> tuple[float, ...]:
    """Naive reference: a loop over valid tokens in Python floats -> (pg_loss, clipfrac), or
    (pg_loss, clipfrac, clipfrac_low, clipfrac_high) with `per_side`."""
    low = clip_range if clip_low is None else clip_low
    high = clip_range if clip_high is None else clip_high
    B, T = logprobs.shape
    per_token = [[0.0] * T for _ in range(B)]
    sides = []  # one of "none", "low", "high" per valid token
    rows = [t.double().tolist() for t in (logprobs, old_logprobs, advantages)]
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            lp, old_lp, a = rows[0][b][t], rows[1][b][t], rows[2][b][t]
            ratio = math.exp(lp - old_lp)
            unclipped = -a * ratio
            clipped_branch = -a * min(max(ratio, 1.0 - low), 1.0 + high)
            per_token[b][t] = max(unclipped, clipped_branch)
            if clipped_branch > unclipped:
                sides.append("low" if ratio < 1.0 else "high")
            else:
                sides.append("none")
    per_token_t = torch.tensor(per_token, dtype=torch.float64).reshape(logprobs.shape)
    loss = aggregate_loss_reference(per_token_t, mask, aggregation, total).item()
    n = len(sides)
    fractions = [
        sum(s in kinds for s in sides) / n if n else 0.0 for kinds in (("low", "high"), ("low",), ("high",))
    ]
    return (loss, *fractions) if per_side else (loss, fractions[0])


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None = 0.2,
) -> tuple[torch.Tensor, Stats]:
    """Clipped value loss (as in the OpenAI baselines / lm-human-preferences PPO).

        v_clipped = old_values + clip(values - old_values, -eps, eps)
        vf_loss   = 0.5 * masked_mean( max((values - returns)^2, (v_clipped - returns)^2) )

    Shapes: values, old_values, returns, mask (B, T) -> scalar loss. eps = `clip_range` (> 0);
    `clip_range=None` turns clipping off (plain 0.5 * masked MSE). `old_values` and `returns` are
    treated as constants.

    stats: "vf_loss" (detached loss), "vf_clipfrac" (fraction of valid tokens where the clipped
    term is strictly larger, i.e. the value gets no gradient; 0 without clipping).
    """
    if clip_range is not None and not clip_range > 0:
        raise ValueError(f"clip_range must be > 0 or None, got {clip_range}")
    m = _check_mask(values, mask)
    for name, t in (("old_values", old_values), ("returns", returns)):
        if t.shape != values.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != values shape {tuple(values.shape)}")
    values = torch.where(m, values, 0.0)
    old_values = torch.where(m, old_values.detach(), 0.0)
    returns = torch.where(m, returns.detach(), 0.0)

    vf_losses = (values - returns) ** 2  # (B, T)
    if clip_range is None:
        vf_losses_clipped = vf_losses
    else:
        v_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
        vf_losses_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(vf_losses, vf_losses_clipped), m)
    with torch.no_grad():
        stats = {
            "vf_loss": loss.detach(),
            "vf_clipfrac": masked_mean((vf_losses_clipped > vf_losses).to(vf_losses.dtype), m),
        }
    return loss, stats


def ppo_value_loss_reference(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None = 0.2,
) -> tuple[float, float]:
    """Naive reference: a loop over valid tokens in Python floats -> (vf_loss, vf_clipfrac)."""
    losses, clipped = [], []
    flat = [t.double().flatten().tolist() for t in (values, old_values, returns)]
    for v, old, ret, valid in zip(*flat, mask.flatten().tolist()):
        if not valid:
            continue
        plain = (v - ret) ** 2
        if clip_range is None:
            v_clip = v
        else:
            v_clip = min(max(v, old - clip_range), old + clip_range)
        clip_term = (v_clip - ret) ** 2
        losses.append(max(plain, clip_term))
        clipped.append(1.0 if clip_term > plain else 0.0)
    n = len(losses)
    return (0.5 * sum(losses) / n, sum(clipped) / n) if n else (0.0, 0.0)


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of the returns' variance the critic explains, over valid tokens.

        ev = 1 - Var[returns - values] / Var[returns]      (masked, biased variances)

    Shapes: values, returns, mask (B, T) -> detached scalar. 1 is a perfect critic, 0 no better
    than a constant, < 0 worse than a constant. NaN when Var[returns] is 0 (constant returns or an
    empty mask): the quantity is undefined there, as in CleanRL / Stable-Baselines3.
    """
    m = _check_mask(values, mask)
    if returns.shape != values.shape:
        raise ValueError(f"returns shape {tuple(returns.shape)} != values shape {tuple(values.shape)}")
    var_returns = masked_var(returns, m, unbiased=False)
    var_residual = masked_var(returns - values, m, unbiased=False)
    nan = torch.full_like(var_returns, float("nan"))
    return torch.where(var_returns > 0, 1 - var_residual / var_returns, nan)


def explained_variance_reference(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """Naive reference: select valid entries, population variances in float64."""
    m = mask.bool()
    ret, res = returns.double()[m], (returns.double() - values.double())[m]
    var_ret = ret.var(unbiased=False).item() if ret.numel() else 0.0
    if var_ret == 0:
        return float("nan")
    return 1.0 - res.var(unbiased=False).item() / var_ret
