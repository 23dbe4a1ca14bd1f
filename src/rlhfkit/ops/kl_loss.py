"""KL to the reference as a term of the policy loss (GRPO-style), instead of a penalty in the reward.

A loss term is judged by its gradient, not its value. For tokens x sampled from pi_old (the
rollout policy; pi_old = pi_theta on the first minibatch), q = pi_ref, and

    ratio = pi_theta(x) / pi_old(x) = exp(logprobs - old_logprobs)      (old detached)
    k1 = logprobs - ref_logprobs = log(pi_theta / q)

the gradient of the exact reverse KL is a score-function expectation, importance-weighted to
pi_old:

    grad KL(pi_theta || q) = E_{pi_theta}[k1 * grad log pi_theta]      (E[grad log pi] = 0)
                           = E_{pi_old}[ratio * k1 * grad log pi_theta]

Every form in `KL_LOSS_FORMS` has exactly this per-sample gradient, ratio * k1 * grad log pi_theta,
so the three give the same parameter update and differ only in the value they log:

    "k1": ratio * stop_grad(k1)          value: unbiased for the KL, can be < 0 per token
    "k2": stop_grad(ratio) * k1^2 / 2    value: biased, >= 0
    "k3": ratio * k3                     value: unbiased for the KL, >= 0 (DeepSeek-V3.2, eq. 7)

with k3 = q/pi_theta - 1 - log(q/pi_theta). For "k3", grad k3 = (1 - q/pi_theta) grad log pi_theta,
and the ratio's own gradient adds ratio * k3 * grad log pi_theta; the two sum to ratio * k1 * grad
log pi_theta. GRPO's original term, k3 alone (`kl_loss_k3_uncorrected`), keeps only the first part:
its expected gradient on-policy is -E_q[grad log pi_theta] = grad KL(q || pi_theta), the *forward*
KL, which pulls pi_theta towards covering q rather than towards the reverse-KL solution. It is kept
out of the registry and exists so a test can show the bias.

Shapes: logprobs, old_logprobs, ref_logprobs (B, T) -> (B, T) per-token term, to be reduced with
`aggregate_loss` and added to the policy loss times a coefficient (beta).
"""

import math

import torch

from .kl import kl_k3
from .logprobs import _check_mask

__all__ = ["kl_loss_k1", "kl_loss_k2", "kl_loss_k3", "kl_loss_term", "KL_LOSS_FORMS"]


def _check(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> None:
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs)):
        if t.shape != logprobs.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != logprobs shape {tuple(logprobs.shape)}")


def _ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    return torch.exp(logprobs - old_logprobs.detach())


def kl_loss_k1(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor
) -> torch.Tensor:
    """term = ratio * stop_grad(logprobs - ref_logprobs), ratio = exp(logprobs - old_logprobs).

    Shapes: (B, T) x 3 -> (B, T). Gradient: ratio * k1 * grad logprobs (the module docstring).
    """
    _check(logprobs, old_logprobs, ref_logprobs)
    return _ratio(logprobs, old_logprobs) * (logprobs - ref_logprobs).detach()


def kl_loss_k2(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor
) -> torch.Tensor:
    """term = stop_grad(ratio) * (logprobs - ref_logprobs)^2 / 2, ratio = exp(logprobs - old_logprobs).

    Shapes: (B, T) x 3 -> (B, T). Gradient: ratio * k1 * grad logprobs; the ratio is a constant
    weight here because d(k1^2 / 2) already gives k1 * grad logprobs.
    """
    _check(logprobs, old_logprobs, ref_logprobs)
    return _ratio(logprobs, old_logprobs).detach() * 0.5 * (logprobs - ref_logprobs.detach()) ** 2


def kl_loss_k3(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor
) -> torch.Tensor:
    """term = ratio * k3, k3 = exp(ref_logprobs - logprobs) - 1 - (ref_logprobs - logprobs), both with
    their gradients (DeepSeek-V3.2, eq. 7: the importance-weighted k3).

    Shapes: (B, T) x 3 -> (B, T). Gradient: ratio * k1 * grad logprobs (the module docstring shows
    how the ratio's gradient turns k3's forward-KL gradient into the reverse-KL one). Not clamped:
    overflows to inf where the reference is e^88 times likelier than the policy in float32.
    """
    _check(logprobs, old_logprobs, ref_logprobs)
    return _ratio(logprobs, old_logprobs) * kl_k3(logprobs, ref_logprobs.detach())


def kl_loss_k3_uncorrected(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor
) -> torch.Tensor:
    """BIASED, not offered: term = k3 alone, as in GRPO (Shao et al. 2024, eq. 4) and TRL's default
    before its `use_bias_correction_kl`. `old_logprobs` is ignored.

    Shapes: (B, T) x 3 -> (B, T). Gradient: (1 - exp(ref_logprobs - logprobs)) * grad logprobs,
    whose expectation under pi_theta is the gradient of the forward KL(pi_ref || pi_theta).
    """
    _check(logprobs, old_logprobs, ref_logprobs)
    return kl_k3(logprobs, ref_logprobs.detach())


# Config string -> KL loss form; each has the unbiased reverse-KL gradient (see the module docstring).
KL_LOSS_FORMS = {
    "k1": kl_loss_k1,
    "k2": kl_loss_k2,
    "k3": kl_loss_k3,
}


def kl_loss_term(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    estimator: str,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token KL loss term by name ("k1", "k2" or "k3", see `KL_LOSS_FORMS`).

        term[b, t] = KL_LOSS_FORMS[estimator](logprobs, old_logprobs, ref_logprobs)[b, t]

    Shapes: logprobs, old_logprobs, ref_logprobs (B, T), mask (B, T) or None -> (B, T). With a
    mask, masked entries of every input are replaced by 0 before any exp, so garbage there (e.g. a
    padding log-prob of -1e4 whose exp overflows) cannot reach the result or the gradient, and
    the output is 0 there. An unknown name raises ValueError listing the valid ones.
    """
    try:
        form = KL_LOSS_FORMS[estimator]
    except KeyError:
        raise ValueError(
            f"unknown KL loss form {estimator!r}; expected one of {sorted(KL_LOSS_FORMS)}"
        ) from None
    if mask is None:
        return form(logprobs, old_logprobs, ref_logprobs)
    _check(logprobs, old_logprobs, ref_logprobs)
    m = _check_mask(logprobs, mask)
    inputs = [torch.where(m, t, 0.0) for t in (logprobs, old_logprobs, ref_logprobs)]
    return torch.where(m, form(*inputs), 0.0)


# ---------------------------------------------------------------- naive references
# Each returns float64 (term, d term / d logprobs), element by element, with the derivative written
# out by hand from the definition (not simplified to ratio * k1), so a test checks the identity.


def _elementwise(logprobs, old_logprobs, ref_logprobs, fn) -> tuple[torch.Tensor, torch.Tensor]:
    values, grads = [], []
    flat = [t.detach().double().flatten().tolist() for t in (logprobs, old_logprobs, ref_logprobs)]
    for lp, old_lp, ref_lp in zip(*flat):
        value, grad = fn(lp, old_lp, ref_lp)
        values.append(value)
        grads.append(grad)
    shape = logprobs.shape
    return (
        torch.tensor(values, dtype=torch.float64).reshape(shape),
        torch.tensor(grads, dtype=torch.float64).reshape(shape),
    )


def kl_loss_k1_reference(logprobs, old_logprobs, ref_logprobs) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive reference: value rho * k1; derivative d(rho)/d(lp) * k1 = rho * k1."""

    def one(lp, old_lp, ref_lp):
        rho, k1 = math.exp(lp - old_lp), lp - ref_lp
        return rho * k1, rho * k1

    return _elementwise(logprobs, old_logprobs, ref_logprobs, one)


def kl_loss_k2_reference(logprobs, old_logprobs, ref_logprobs) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive reference: value rho * k1^2 / 2 (rho constant); derivative rho * k1."""

    def one(lp, old_lp, ref_lp):
        rho, k1 = math.exp(lp - old_lp), lp - ref_lp
        return rho * k1 * k1 / 2, rho * k1

    return _elementwise(logprobs, old_logprobs, ref_logprobs, one)


def kl_loss_k3_reference(logprobs, old_logprobs, ref_logprobs) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive reference: value rho * k3 with r = q / p; derivative by the product rule,
    d(rho)/d(lp) * k3 + rho * d(k3)/d(lp) = rho * k3 + rho * (1 - r)."""

    def one(lp, old_lp, ref_lp):
        rho, r = math.exp(lp - old_lp), math.exp(ref_lp - lp)
        k3 = r - 1 - math.log(r)
        return rho * k3, rho * k3 + rho * (1 - r)

    return _elementwise(logprobs, old_logprobs, ref_logprobs, one)


def kl_loss_k3_uncorrected_reference(
    logprobs, old_logprobs, ref_logprobs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive reference: value k3 with r = q / p; derivative 1 - r."""

    def one(lp, old_lp, ref_lp):
        r = math.exp(ref_lp - lp)
        return r - 1 - math.log(r), 1 - r

    return _elementwise(logprobs, old_logprobs, ref_logprobs, one)


def kl_loss_term_reference(
    logprobs, old_logprobs, ref_logprobs, estimator: str, mask=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive reference: the named form's reference, then 0 (value and derivative) where masked."""
    references = {"k1": kl_loss_k1_reference, "k2": kl_loss_k2_reference, "k3": kl_loss_k3_reference}
    value, grad = references[estimator](logprobs, old_logprobs, ref_logprobs)
    if mask is not None:
        keep = mask.bool()
        value, grad = torch.where(keep, value, 0.0), torch.where(keep, grad, 0.0)
    return value, grad
