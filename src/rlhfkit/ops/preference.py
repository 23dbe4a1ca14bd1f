"""Offline preference optimisation: DPO, conservative DPO, IPO and SimPO.

These losses train the policy directly on (chosen, rejected) pairs, the pairs a reward model
would learn from. Each works on one number per response, its sequence log-probability
(`sequence_logps`), and returns `(loss, stats)` like the losses in `rlhfkit.ops.losses`:
`loss` a scalar averaged over pairs, `stats` detached scalars under the same keys for every
method, so one trainer logs DPO and SimPO alike.

Choice by name: `PREFERENCE_LOSSES` maps a config string to the per-pair loss of the
reference-based family that `dpo_loss` runs. Conservative DPO is not a key of its own: it is
"sigmoid" with `label_smoothing` = epsilon > 0, as in TRL's `loss_type="sigmoid"` (one formula,
one name; a separate "cdpo" key would let "cdpo" with epsilon = 0 silently be plain DPO).
SimPO needs no reference model and length-averaged log-probs, so it is its own function,
`simpo_loss`, with the same stats.
"""

import math

import torch
import torch.nn.functional as F

from .logprobs import _acc_dtype, masked_mean, masked_sum

__all__ = [
    "sequence_logps",
    "dpo_loss",
    "simpo_loss",
    "PREFERENCE_LOSSES",
]

Stats = dict[str, torch.Tensor]


# ---------------------------------------------------------------- sequence log-probs


def sequence_logps(logprobs: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Log-probability of each response: the sum (or mean) of its valid tokens' log-probs.

        logp[b]     = sum_t mask[b, t] * logprobs[b, t]                      (average=False: DPO)
        logp_avg[b] = sum_t mask[b, t] * logprobs[b, t] / sum_t mask[b, t]   (average=True: SimPO)

    Shapes: logprobs (B, T), mask (B, T) -> (B,). Masked entries may hold garbage (see
    `rlhfkit.ops.logprobs`); a row with no valid token gives 0 in both modes. Unlike the masked
    statistics, half-precision input returns float32: the preference losses take differences of
    these sums (tens to hundreds of nats), and bfloat16 would round a sum of 100 nats to a
    multiple of 0.5.
    """
    # Upcast before reducing and keep the upcast result (masked_sum returns its input's dtype).
    x = logprobs.to(_acc_dtype(logprobs))
    return masked_mean(x, mask, dim=-1) if average else masked_sum(x, mask, dim=-1)


def sequence_logps_reference(
    logprobs: torch.Tensor, mask: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """Naive reference: a loop over rows and tokens in Python floats -> float64 (B,)."""
    out = []
    for row, row_mask in zip(logprobs.double().tolist(), mask.bool().tolist()):
        valid = [lp for lp, m in zip(row, row_mask) if m]
        total = sum(valid)
        out.append(total / len(valid) if average and valid else total)
    return torch.tensor(out, dtype=torch.float64)


# ---------------------------------------------------------------- reference-based family (DPO)


def _sigmoid_losses(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7) and conservative DPO (Mitchell 2023) per pair.

        losses = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h),  eps = label_smoothing

    Shapes: h (B,) -> (B,). eps is the rate at which the labels are flipped; eps = 0 is DPO.
    """
    logits = beta * h
    losses = -F.logsigmoid(logits)
    if label_smoothing:
        # The label is wrong with probability eps: expected BT loss over the two labels.
        losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-logits)
    return losses


def _ipo_losses(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, eq. 17, with tau = beta) per pair.

        losses = (h - 1 / (2 * beta))^2

    Shapes: h (B,) -> (B,). A squared loss regresses h onto a finite target instead of pushing
    it to infinity, so deterministic (or noiseless) preferences do not drive the policy away
    from the reference. `label_smoothing` must be 0 (checked by `dpo_loss`).
    """
    return (h - 1 / (2 * beta)) ** 2


# Config string -> per-pair loss (h, beta, label_smoothing) -> (B,), dispatched by `dpo_loss`.
PREFERENCE_LOSSES = {
    "sigmoid": _sigmoid_losses,
    "ipo": _ipo_losses,
}


def _check_pairs(**tensors: torch.Tensor) -> None:
    """All (B,)-shaped alike and at least one pair."""
    (first_name, first), *rest = tensors.items()
    for name, t in rest:
        if t.shape != first.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != {first_name} shape {tuple(first.shape)}")
    if first.dim() != 1:
        raise ValueError(f"expected (B,) sequence log-probs, got {first_name} shape {tuple(first.shape)}")
    if first.numel() == 0:
        raise ValueError("a preference loss needs at least one pair")


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def _pair_stats(
    loss: torch.Tensor,
    gap: torch.Tensor,
    chosen_reward: torch.Tensor,
    rejected_reward: torch.Tensor,
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
) -> Stats:
    """The stats every preference loss logs; `gap` (B,) decides accuracy (> 0 right, 0 half)."""
    with torch.no_grad():
        accuracy = ((gap > 0).to(gap.dtype) + 0.5 * (gap == 0).to(gap.dtype)).mean()
        return {
            "loss": loss.detach(),
            "accuracy": accuracy,
            "margin": (chosen_reward - rejected_reward).mean(),
            "chosen_reward": chosen_reward.mean(),
            "rejected_reward": rejected_reward.mean(),
            "chosen_logp": chosen_logp.mean(),
            "rejected_logp": rejected_logp.mean(),
        }


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Stats]:
    """Direct preference optimisation and its variants, from sequence log-probs.

        h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
        "sigmoid", eps = 0:  loss = mean_b -log sigmoid(beta * h[b])                 DPO
        "sigmoid", eps > 0:  loss = mean_b -(1 - eps) log sigmoid(beta * h[b])
                                           - eps log sigmoid(-beta * h[b])          conservative DPO
        "ipo":               loss = mean_b (h[b] - 1 / (2 * beta))^2                   IPO

    eps = `label_smoothing` in [0, 0.5): the probability that a label is flipped (the built-in
    labeller's flip rate is known, so a recipe can set it). cDPO's optimum is the finite
    beta * h = log((1 - eps) / eps) instead of +inf. With "ipo" it must be 0.

    Shapes: policy_chosen, policy_rejected, ref_chosen, ref_rejected (B,) -> scalar loss. The
    inputs are whole-response log-probs (`sequence_logps`; summed for DPO as in the paper, TRL
    averages them for IPO, so the caller decides). The reference log-probs are constants
    (detached here). beta > 0 is the KL strength: the implicit reward is beta * log(pi / ref).

    stats: "loss"; "accuracy" = mean(1[h > 0] + 0.5 * 1[h == 0]) (implicit reward of chosen
    above rejected; a tie counts half, as in `bradley_terry_loss`, so the first step, with
    policy == reference, scores 0.5); "margin" = mean(beta * h); "chosen_reward",
    "rejected_reward" = mean beta * (policy - ref) of each side; "chosen_logp",
    "rejected_logp" = mean policy log-probs of each side, which show the known failure where
    both fall while the margin grows.
    """
    _check_pairs(
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        ref_chosen=ref_chosen,
        ref_rejected=ref_rejected,
    )
    _check_beta(beta)
    try:
        per_pair = PREFERENCE_LOSSES[loss_type]
    except KeyError:
        raise ValueError(
            f"unknown preference loss_type {loss_type!r}; expected one of {sorted(PREFERENCE_LOSSES)}"
        ) from None
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if loss_type == "ipo" and label_smoothing:
        raise ValueError("label_smoothing applies to loss_type 'sigmoid' (cDPO), not 'ipo'")

    chosen_logratio = policy_chosen - ref_chosen.detach()  # (B,)
    rejected_logratio = policy_rejected - ref_rejected.detach()  # (B,)
    h = chosen_logratio - rejected_logratio  # (B,)
    loss = per_pair(h, beta, label_smoothing).mean()
    stats = _pair_stats(
        loss, h, beta * chosen_logratio, beta * rejected_logratio, policy_chosen, policy_rejected
    )
    return loss, stats


def dpo_loss_reference(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> dict[str, float]:
    """Naive reference: a loop over pairs in Python floats, sigma(x) = 1 / (1 + e^-x) written
    out (moderate inputs only: |beta * h| < 700) -> {"loss", "accuracy", "margin"}."""

    def sigma(x):
        return 1.0 / (1.0 + math.exp(-x))

    cols = [t.double().tolist() for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)]
    losses, right, margins = [], [], []
    for pc, pr, rc, rr in zip(*cols):
        h = (pc - rc) - (pr - rr)
        if loss_type == "ipo":
            losses.append((h - 1.0 / (2.0 * beta)) ** 2)
        else:
            eps = label_smoothing
            losses.append(-(1 - eps) * math.log(sigma(beta * h)) - eps * math.log(sigma(-beta * h)))
        right.append(1.0 if h > 0 else 0.5 if h == 0 else 0.0)
        margins.append(beta * h)
    n = len(losses)
    return {"loss": sum(losses) / n, "accuracy": sum(right) / n, "margin": sum(margins) / n}


# ---------------------------------------------------------------- reference-free (SimPO)


def simpo_loss(
    chosen_avg_logp: torch.Tensor, rejected_avg_logp: torch.Tensor, beta: float, gamma: float
) -> tuple[torch.Tensor, Stats]:
    """SimPO (Meng et al. 2024, eq. 6): reference-free, on length-averaged log-probs.

        loss = mean_b -log sigmoid(beta * (chosen_avg_logp[b] - rejected_avg_logp[b]) - gamma)

    Shapes: chosen_avg_logp, rejected_avg_logp (B,) -> scalar loss; they are per-token means
    (`sequence_logps(..., average=True)`), which removes the sum's bias towards longer answers.
    beta > 0 scales the implicit reward beta * avg_logp; gamma >= 0 is the target reward margin
    (the paper's gamma itself, not TRL's gamma / beta ratio).

    stats: the keys of `dpo_loss`, with the implicit reward r = beta * avg_logp: "accuracy" =
    mean(1[c > r] + 0.5 * 1[c == r]) of the averaged log-probs (gamma is a target, not part of
    the reward); "margin" = mean beta * (c - r); "chosen_reward", "rejected_reward" = mean
    beta * avg_logp; "chosen_logp", "rejected_logp" = mean averaged log-probs.
    """
    _check_pairs(chosen_avg_logp=chosen_avg_logp, rejected_avg_logp=rejected_avg_logp)
    _check_beta(beta)
    if not gamma >= 0:
        raise ValueError(f"gamma (the target reward margin) must be >= 0, got {gamma}")
    gap = chosen_avg_logp - rejected_avg_logp  # (B,)
    loss = -F.logsigmoid(beta * gap - gamma).mean()
    stats = _pair_stats(
        loss, gap, beta * chosen_avg_logp, beta * rejected_avg_logp, chosen_avg_logp, rejected_avg_logp
    )
    return loss, stats


def simpo_loss_reference(
    chosen_avg_logp: torch.Tensor, rejected_avg_logp: torch.Tensor, beta: float, gamma: float
) -> dict[str, float]:
    """Naive reference: a loop over pairs, log(1 + e^-z) in Python floats -> {"loss", "accuracy",
    "margin"}."""
    losses, right, margins = [], [], []
    for c, r in zip(chosen_avg_logp.double().tolist(), rejected_avg_logp.double().tolist()):
        z = beta * (c - r) - gamma
        losses.append(math.log(1.0 + math.exp(-z)))
        right.append(1.0 if c > r else 0.5 if c == r else 0.0)
        margins.append(beta * (c - r))
    n = len(losses)
    return {"loss": sum(losses) / n, "accuracy": sum(right) / n, "margin": sum(margins) / n}
