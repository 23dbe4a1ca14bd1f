"""Log-probabilities, entropy and masked statistics.

Conventions shared by every function in `rlhfkit.ops`:
- Shapes are written for the usual case, `(B, T)` per-token tensors and `(B, T, V)` logits; any
  leading dimensions work unless a docstring says otherwise.
- A mask is a 0/1 tensor (bool or float) with exactly the shape of the values it masks; any
  nonzero entry counts as valid. Masked entries may hold garbage (NaN, inf): every masked
  function selects with `torch.where` before computing, so garbage never reaches a result or a
  gradient (the gradient at a masked entry is exactly 0).
- Empty masks never raise and never sync the device: a masked sum/mean over no valid entries is
  0, a variance over fewer entries than it needs is 0 (see each docstring).
- Masked statistics accumulate in at least float32 (bfloat16/float16 inputs are upcast for the
  reduction) and return the input's dtype.
"""

import math

import torch

__all__ = [
    "logprobs_from_logits",
    "entropy_from_logits",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
]


# ---------------------------------------------------------------- log-probs and entropy


def _scale(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return logits if temperature == 1.0 else logits / temperature


def logprobs_from_logits(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probability of each token under the softmax of its logits.

        logprobs[b, t] = l[b, t, tokens[b, t]] - logsumexp_v l[b, t, v],   l = logits / temperature

    Shapes: logits (B, T, V), tokens (B, T) integer -> logprobs (B, T) in logits' dtype.
    `logits[b, t]` must already be the distribution that produced `tokens[b, t]` (shift before
    calling if the logits come straight from a causal LM). Pass the sampling temperature so the
    log-probs are those of the distribution actually sampled from (design §6.1).

    Gather minus logsumexp never builds a (B, T, V) log-softmax output: autograd keeps only the
    (scaled) logits and forms the gradient at backward time; temperature != 1 costs one (B, T, V)
    copy for `logits / temperature`. bf16 logits give bf16 log-probs (about 3 significant
    digits); call with `logits.float()` when that is not enough.
    """
    if tokens.shape != logits.shape[:-1]:
        raise ValueError(
            f"tokens shape {tuple(tokens.shape)} must equal logits shape without the vocab dim "
            f"{tuple(logits.shape[:-1])}"
        )
    logits = _scale(logits, temperature)
    picked = logits.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)


def logprobs_from_logits_reference(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Naive reference: full log_softmax in float64, then index. Returns float64 (B, T)."""
    logp = torch.log_softmax(logits.double() / temperature, dim=-1)  # (B, T, V)
    rows = logp.reshape(-1, logits.shape[-1]).tolist()
    out = [row[tok] for row, tok in zip(rows, tokens.flatten().tolist())]
    return torch.tensor(out, dtype=torch.float64).reshape(tokens.shape)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of each next-token distribution.

        H[b, t] = -sum_v p_v log p_v,   p = softmax(logits[b, t] / temperature)

    Shapes: logits (B, T, V) -> (B, T) in logits' dtype. Terms with p_v == 0 (e.g. -inf logits
    from a banned token) contribute 0, with a 0 gradient, as in the limit p log p -> 0.
    """
    logp = torch.log_softmax(_scale(logits, temperature), dim=-1)  # (B, T, V)
    p = logp.exp()
    # masked_fill (not where on the product) so a -inf log-prob never meets a 0 in backward.
    return -(p * logp.masked_fill(p == 0, 0.0)).sum(dim=-1)


def entropy_from_logits_reference(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Naive reference: a loop over positions and vocab entries in float64."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    out = []
    for row in probs.reshape(-1, logits.shape[-1]).tolist():
        h = 0.0
        for p in row:
            if p > 0:
                h -= p * math.log(p)
        out.append(h)
    return torch.tensor(out, dtype=torch.float64).reshape(logits.shape[:-1])


# ---------------------------------------------------------------- masked statistics


def _check_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Validate the mask's shape and return it as bool."""
    if mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal values shape {tuple(x.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def _sum(t: torch.Tensor, dim: int | None, keepdim: bool = False) -> torch.Tensor:
    """Sum over everything (dim=None) or along `dim`."""
    return t.sum() if dim is None else t.sum(dim=dim, keepdim=keepdim)


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float32 for half types, else the input's floating dtype."""
    return torch.promote_types(x.dtype, torch.float32)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of the valid entries.

        masked_sum(x, m) = sum_i m_i x_i      (over all entries, or along `dim`)

    Shapes: x, mask (B, T) -> scalar, or x reduced along `dim` (e.g. dim=-1 gives (B,) per-
    sequence sums). An empty mask gives 0. Garbage under the mask is ignored.
    """
    m = _check_mask(x, mask)
    return _sum(torch.where(m, x.to(_acc_dtype(x)), 0.0), dim).to(x.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of the valid entries.

        masked_mean(x, m) = sum_i m_i x_i / sum_i m_i

    Shapes: x, mask (B, T) -> scalar, or x reduced along `dim`. Where the mask is empty (the
    whole mask, or a row when `dim` is given) the result is 0, not NaN, so an all-padding
    minibatch contributes a zero loss and zero gradient; no device sync is needed to decide.
    """
    m = _check_mask(x, mask)
    acc = _acc_dtype(x)
    total = _sum(torch.where(m, x.to(acc), 0.0), dim)
    count = _sum(m, dim).to(acc)
    # Empty-mask guard (documented): divide by max(count, 1); the numerator is then 0 too.
    return (total / count.clamp(min=1)).to(x.dtype)


def masked_var(
    x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, dim: int | None = None
) -> torch.Tensor:
    """Variance of the valid entries (two-pass: mean first, then squared deviations).

        n = sum_i m_i,  mu = masked_mean(x, m)
        masked_var(x, m) = sum_i m_i (x_i - mu)^2 / (n - 1 if unbiased else n)

    Shapes: x, mask (B, T) -> scalar, or x reduced along `dim`. With fewer valid entries than
    the estimator needs (n < 2 unbiased, n < 1 biased) the result is 0: a single token has no
    spread, and 0 keeps `masked_whiten` finite without a device sync.
    """
    m = _check_mask(x, mask)
    acc = _acc_dtype(x)
    xs = torch.where(m, x.to(acc), 0.0)
    mean = _sum(xs, dim, keepdim=True) / _sum(m, dim, keepdim=True).clamp(min=1).to(acc)
    sq_sum = _sum(torch.where(m, (xs - mean) ** 2, 0.0), dim)
    count = _sum(m, dim).to(acc)
    denom = count - 1 if unbiased else count
    # Too-few-entries guard (documented): 0 instead of 0/0.
    var = torch.where(denom > 0, sq_sum / denom.clamp(min=1), 0.0)
    return var.to(x.dtype)


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    stats_from: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Normalise the valid entries to zero mean and unit variance (over all valid entries).

        mu = masked_mean(x, m),  var = masked_var(x, m, unbiased=True)
        white = (x - mu) / sqrt(var + eps)            if shift_mean
        white = (x - mu) / sqrt(var + eps) + mu       otherwise (scale only, keep the mean)

    Shapes: x, mask (B, T) -> (B, T) in x's dtype; masked entries of the result are 0.
    `shift_mean=False` is the usual choice for rewards, True for advantages (as in TRL and the
    OpenAI lm-human-preferences code). With < 2 valid entries var is 0 and the result is
    (x - mu) / sqrt(eps) = 0 for the one valid entry (plus mu when not shifting).

    `stats_from=(x_all, mask_all)` takes mu and var from a larger set that x is part of (e.g. the
    values of every process, gathered): each part is then whitened exactly as the whole would be.
    """
    m = _check_mask(x, mask)
    acc = _acc_dtype(x)
    xa = torch.where(m, x.to(acc), 0.0)  # garbage out first: 0 * NaN would poison backward
    x_all, m_all = (xa, m) if stats_from is None else stats_from
    m_all = _check_mask(x_all, m_all)
    x_all = torch.where(m_all, x_all.to(acc), 0.0)
    mean = masked_mean(x_all, m_all)
    var = masked_var(x_all, m_all, unbiased=True)
    white = (xa - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        white = white + mean
    return torch.where(m, white, 0.0).to(x.dtype)


# ---------------------------------------------------------------- naive references


def masked_sum_reference(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Naive reference by boolean indexing in float64 (dim: None or -1 on 2-D input)."""
    if dim is None:
        return x.double()[mask.bool()].sum()
    return torch.stack([masked_sum_reference(row, row_m) for row, row_m in zip(x, mask)])


def masked_mean_reference(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Naive reference by boolean indexing in float64; empty -> 0 (dim: None or -1 on 2-D)."""
    if dim is None:
        vals = x.double()[mask.bool()]
        return vals.mean() if vals.numel() else torch.zeros((), dtype=torch.float64)
    return torch.stack([masked_mean_reference(row, row_m) for row, row_m in zip(x, mask)])


def masked_var_reference(
    x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, dim: int | None = None
) -> torch.Tensor:
    """Naive reference: torch.var of the selected entries in float64; too few -> 0."""
    if dim is None:
        vals = x.double()[mask.bool()]
        if vals.numel() < (2 if unbiased else 1):
            return torch.zeros((), dtype=torch.float64)
        return vals.var(unbiased=unbiased)
    return torch.stack([masked_var_reference(row, row_m, unbiased) for row, row_m in zip(x, mask)])


def masked_whiten_reference(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Naive reference: whiten the selected entries in float64, scatter back, 0 elsewhere."""
    m = mask.bool()
    vals = x.double()[m]
    mean = masked_mean_reference(x, mask)
    var = masked_var_reference(x, mask)
    white = (vals - mean) / torch.sqrt(var + eps)
    if not shift_mean:
        white = white + mean
    out = torch.zeros(x.shape, dtype=torch.float64)
    out[m] = white
    return out
