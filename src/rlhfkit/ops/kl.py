"""KL divergence between the policy and the reference: per-token estimators and the exact value.

The estimators follow J. Schulman, "Approximating KL Divergence" (2020). For a token x sampled
from the policy p, with q the reference and r = q(x) / p(x) = exp(ref_logprobs - logprobs):

    k1 = -log r        = logprobs - ref_logprobs      unbiased for KL(p || q), can be < 0 per token
    k2 = (log r)^2 / 2                                 biased, low variance, >= 0
    k3 = (r - 1) - log r                               unbiased for KL(p || q), >= 0 per token

Unbiasedness needs x ~ p *exactly*: the same model, temperature and (absent) warping that
produced the tokens (design §6.1). `kl_exact` is the oracle from two full next-token
distributions; tests check that sample means of k1 and k3 agree with it.
"""

import math

import torch

from .logprobs import _scale, masked_sum

__all__ = [
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_exact",
    "kl_estimate",
    "sequence_kl",
    "k1_exact_z",
    "KL_ESTIMATORS",
]


def _check_same_shape(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> None:
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs shape {tuple(logprobs.shape)} != ref_logprobs shape {tuple(ref_logprobs.shape)}"
        )


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = logprobs - ref_logprobs, per token. Shapes: (B, T), (B, T) -> (B, T).

    Unbiased for KL(p || q) when tokens come from p; negative on single tokens where the
    reference likes the token more than the policy. A negative *mean* over many tokens means
    the tokens were not sampled from p (see design §6.7).
    """
    _check_same_shape(logprobs, ref_logprobs)
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (logprobs - ref_logprobs)^2, per token. Shapes: (B, T), (B, T) -> (B, T).

    Biased (exact to second order when p and q are close), never negative.
    """
    _check_same_shape(logprobs, ref_logprobs)
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with log r = ref_logprobs - logprobs, per token.

    Shapes: (B, T), (B, T) -> (B, T). Unbiased for KL(p || q) when tokens come from p (because
    E_p[r] = 1) and >= 0 on every token (since e^y >= 1 + y). Computed as expm1(log r) - log r,
    which keeps precision when p and q are close. Overflows to +inf (it is not clamped) when the
    reference is e^88 times likelier than the policy in float32.
    """
    _check_same_shape(logprobs, ref_logprobs)
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r


# Name -> per-token estimator, for configs that pick one (e.g. the KL term of the reward).
KL_ESTIMATORS = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate by name: "k1", "k2" or "k3" (see the module docstring).

    Shapes: (B, T), (B, T) -> (B, T). An unknown name raises ValueError listing the valid ones.
    """
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(
            f"unknown KL estimator {estimator!r}; expected one of {sorted(KL_ESTIMATORS)}"
        ) from None
    return fn(logprobs, ref_logprobs)


def sequence_kl(per_token_kl: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence KL: the sum of a per-token estimate over the valid (response) tokens.

        kl_seq[b] = sum_t mask[b, t] * per_token_kl[b, t]

    Shapes: (B, T), mask (B, T) -> (B,). A sequence with no valid token has KL 0; garbage under
    the mask is ignored. The KL of a whole response is a *sum* over its tokens (chain rule), so
    report this, averaged over sequences, as `ppo/kl_k1`, `ppo/kl_k3` (design §6.4).
    """
    return masked_sum(per_token_kl, mask, dim=-1)


def kl_exact(logits: torch.Tensor, ref_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Exact KL(p || q) between two next-token distributions at every position.

        p = softmax(logits / temperature),  q = softmax(ref_logits / temperature)
        kl[b, t] = sum_v p_v (log p_v - log q_v)

    Shapes: logits (B, T, V), ref_logits (B, T, V) -> (B, T) in logits' dtype. Vocab entries with
    p_v == 0 contribute 0 (with 0 gradient); p_v > 0 with q_v == 0 gives +inf, which is the
    true value. Materialises (B, T, V) temporaries: the oracle for tests and an occasional
    diagnostic (`ppo/kl_exact`), not a per-step reward.
    """
    if logits.shape != ref_logits.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} != ref_logits shape {tuple(ref_logits.shape)}")
    logp = torch.log_softmax(_scale(logits, temperature), dim=-1)  # (B, T, V)
    logq = torch.log_softmax(_scale(ref_logits, temperature), dim=-1)  # (B, T, V)
    p = logp.exp()
    return (p * (logp - logq).masked_fill(p == 0, 0.0)).sum(dim=-1)


def k1_exact_z(k1_rows: torch.Tensor, exact_rows: torch.Tensor) -> torch.Tensor:
    """How many standard errors the sampled k1 sits from the exact KL on the same responses.

        d[b] = k1_rows[b] - exact_rows[b];   z = mean(d) / (std(d) / sqrt(B))

    Shapes: (B,), (B,) -> () scalar, B >= 2. Given the states a response visited, the sampled
    token's k1 averages to that state's exact KL when the token came from the policy, so d has
    mean 0 and z is about N(0, 1) however large the KL is. A warp at sampling (top-k, repetition
    penalty, another temperature) biases k1 away from the exact value even while k1 stays
    positive, and z grows with the batch. Identical rows (d all equal, e.g. at KL 0) give z = 0.
    """
    if k1_rows.shape != exact_rows.shape or k1_rows.dim() != 1 or k1_rows.shape[0] < 2:
        raise ValueError(
            f"k1_exact_z needs two (B,) tensors with B >= 2, got {tuple(k1_rows.shape)} "
            f"and {tuple(exact_rows.shape)}"
        )
    d = k1_rows.double() - exact_rows.double()
    stderr = d.std() / math.sqrt(d.shape[0])
    return torch.where(stderr > 0, d.mean() / stderr.clamp(min=1e-300), torch.zeros((), dtype=d.dtype))


# ---------------------------------------------------------------- naive references


def kl_k1_reference(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Naive reference: -log r with r = p(x) / q(x) recomputed from probabilities, float64."""
    out = []
    for lp, ref_lp in zip(logprobs.double().flatten().tolist(), ref_logprobs.double().flatten().tolist()):
        out.append(-math.log(math.exp(ref_lp) / math.exp(lp)))
    return torch.tensor(out, dtype=torch.float64).reshape(logprobs.shape)


def kl_k2_reference(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Naive reference: (log r)^2 / 2 element by element, float64."""
    out = []
    for lp, ref_lp in zip(logprobs.double().flatten().tolist(), ref_logprobs.double().flatten().tolist()):
        log_r = ref_lp - lp
        out.append(log_r * log_r / 2)
    return torch.tensor(out, dtype=torch.float64).reshape(logprobs.shape)


def kl_k3_reference(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Naive reference: r = exp(ref - logp); (r - 1) - log r, element by element in float64."""
    out = []
    for lp, ref_lp in zip(logprobs.double().flatten().tolist(), ref_logprobs.double().flatten().tolist()):
        r = math.exp(ref_lp - lp)
        out.append((r - 1.0) - math.log(r))
    return torch.tensor(out, dtype=torch.float64).reshape(logprobs.shape)


def kl_exact_reference(
    logits: torch.Tensor, ref_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Naive reference: softmax both, then sum p * log(p / q) over the vocab in a Python loop."""
    p_all = torch.softmax(logits.double() / temperature, dim=-1)
    q_all = torch.softmax(ref_logits.double() / temperature, dim=-1)
    V = logits.shape[-1]
    out = []
    for p_row, q_row in zip(p_all.reshape(-1, V).tolist(), q_all.reshape(-1, V).tolist()):
        total = 0.0
        for p, q in zip(p_row, q_row):
            if p > 0:
                total += p * math.log(p / q)
        out.append(total)
    return torch.tensor(out, dtype=torch.float64).reshape(logits.shape[:-1])


def k1_exact_z_reference(k1_rows: torch.Tensor, exact_rows: torch.Tensor) -> float:
    """Naive reference: a one-sample t statistic of the differences, with Python floats."""
    d = [a - b for a, b in zip(k1_rows.double().tolist(), exact_rows.double().tolist())]
    n = len(d)
    mean = sum(d) / n
    variance = sum((x - mean) ** 2 for x in d) / (n - 1)
    return 0.0 if variance == 0 else mean / math.sqrt(variance / n)
