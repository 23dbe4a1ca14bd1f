import pytest
import torch

from rlhfkit.ops import KL_LOSS_FORMS, kl_exact, kl_loss_k1, kl_loss_k2, kl_loss_k3, kl_loss_term
from rlhfkit.ops.kl_loss import (
    kl_loss_k1_reference,
    kl_loss_k2_reference,
    kl_loss_k3_reference,
    kl_loss_k3_uncorrected,
    kl_loss_k3_uncorrected_reference,
    kl_loss_term_reference,
)

from .helpers import DTYPE_IDS, DTYPES, close, right_padded_mask

FORMS = [
    (kl_loss_k1, kl_loss_k1_reference),
    (kl_loss_k2, kl_loss_k2_reference),
    (kl_loss_k3, kl_loss_k3_reference),
    (kl_loss_k3_uncorrected, kl_loss_k3_uncorrected_reference),
]
FORM_IDS = ["k1", "k2", "k3", "k3_uncorrected"]


def _dtype_id(p):
    return DTYPE_IDS[p[0]]


def _inputs(shape, dtype, g):
    logprobs = (-3 * torch.rand(shape, generator=g)).to(dtype)
    old_logprobs = (logprobs.double() + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    ref_logprobs = (-3 * torch.rand(shape, generator=g)).to(dtype)
    return logprobs, old_logprobs, ref_logprobs


# ---------------------------------------------------------------- fast vs reference (value and gradient)


@pytest.mark.parametrize("shape", [(1, 1), (2, 5), (4, 9)])
@pytest.mark.parametrize("dt", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("fn, ref", FORMS, ids=FORM_IDS)
def test_forms_match_reference_value_and_gradient(shape, dt, fn, ref):
    dtype, atol, rtol = dt
    g = torch.Generator().manual_seed(70)
    logprobs, old_logprobs, ref_logprobs = _inputs(shape, dtype, g)
    lp = logprobs.clone().requires_grad_(True)
    term = fn(lp, old_logprobs, ref_logprobs)
    assert term.shape == shape and term.dtype == dtype
    term.sum().backward()
    ref_value, ref_grad = ref(logprobs, old_logprobs, ref_logprobs)
    close(term.detach(), ref_value, atol, rtol)
    close(lp.grad, ref_grad, atol * 10, rtol * 10)  # the reference's derivative is hand-written


def test_offered_forms_share_the_per_token_gradient_ratio_times_k1():
    # The three forms differ in value only: each token's gradient is ratio * k1 (module docstring).
    g = torch.Generator().manual_seed(71)
    logprobs, old_logprobs, ref_logprobs = _inputs((3, 8), torch.float64, g)
    expected = (logprobs - old_logprobs).exp() * (logprobs - ref_logprobs)
    assert set(KL_LOSS_FORMS) == {"k1", "k2", "k3"}
    for form in KL_LOSS_FORMS.values():
        lp = logprobs.clone().requires_grad_(True)
        form(lp, old_logprobs, ref_logprobs).sum().backward()
        close(lp.grad, expected, 1e-12, 1e-12)
    # On-policy (ratio 1) the k1 and k3 values are the familiar estimators, k2 is (k1)^2 / 2.
    k1 = logprobs - ref_logprobs
    close(kl_loss_k1(logprobs, logprobs, ref_logprobs), k1, 1e-12, 1e-12)
    close(kl_loss_k2(logprobs, logprobs, ref_logprobs), 0.5 * k1**2, 1e-12, 1e-12)
    close(kl_loss_k3(logprobs, logprobs, ref_logprobs), (-k1).expm1() + k1, 1e-12, 1e-12)


def test_kl_loss_term_dispatches_masks_and_rejects_bad_input():
    g = torch.Generator().manual_seed(72)
    logprobs, old_logprobs, ref_logprobs = _inputs((3, 7), torch.float64, g)
    mask = right_padded_mask((3, 7), g)
    mask[:, 0] = True
    for name, form in KL_LOSS_FORMS.items():
        torch.testing.assert_close(
            kl_loss_term(logprobs, old_logprobs, ref_logprobs, name),
            form(logprobs, old_logprobs, ref_logprobs),
        )
        # Garbage under the mask (an exp that would overflow, NaN) never reaches value or gradient.
        junk_lp = torch.where(mask, logprobs, -1e4).requires_grad_(True)
        junk_old = torch.where(mask, old_logprobs, float("nan"))
        junk_ref = torch.where(mask, ref_logprobs, 0.0)
        term = kl_loss_term(junk_lp, junk_old, junk_ref, name, mask=mask.float())
        term.sum().backward()
        ref_value, ref_grad = kl_loss_term_reference(logprobs, old_logprobs, ref_logprobs, name, mask)
        close(term.detach(), ref_value, 1e-12, 1e-12)
        close(junk_lp.grad, ref_grad, 1e-12, 1e-12)
        assert (term[~mask] == 0).all() and (junk_lp.grad[~mask] == 0).all()
    with pytest.raises(ValueError, match="k1"):
        kl_loss_term(logprobs, old_logprobs, ref_logprobs, "k3_uncorrected")
    with pytest.raises(ValueError, match="ref_logprobs"):
        kl_loss_term(logprobs, old_logprobs, ref_logprobs[:, :-1], "k3")


# ---------------------------------------------------------------- Monte-Carlo gradient vs the exact gradient

N_SAMPLES = 200_000
# A 6-token categorical policy pi_theta = softmax(theta) and a reference that disagrees with it
# (exact KL(pi_theta || pi_ref) = 1.49 nats), so forward and reverse KL gradients differ clearly.
THETA = [2.0, 1.0, 0.0, -1.0, 0.5, -0.5]
REF_LOGITS = [-1.0, 0.0, 1.5, 1.0, -0.5, 0.5]
OLD_SHIFT = [-0.4, 0.3, 0.2, 0.0, -0.3, 0.4]  # pi_old = softmax(theta + shift) for the off-policy case


def _relative_gradient_errors(sample_from: str, seed: int = 0):
    """Mean term over N tokens drawn from pi_old; its autograd gradient in theta against the
    exact gradient of KL(pi_theta || pi_ref), as |g_mc - g_exact| / |g_exact| per form."""
    theta = torch.tensor(THETA, dtype=torch.float64, requires_grad=True)
    ref_logits = torch.tensor(REF_LOGITS, dtype=torch.float64)
    exact = kl_exact(theta[None], ref_logits[None])
    (exact_grad,) = torch.autograd.grad(exact.sum(), theta)
    shift = torch.tensor(OLD_SHIFT, dtype=torch.float64) if sample_from == "old" else 0.0
    old_logits = theta.detach() + shift
    g = torch.Generator().manual_seed(seed)
    tokens = torch.multinomial(torch.softmax(old_logits, -1), N_SAMPLES, replacement=True, generator=g)
    old_logprobs = torch.log_softmax(old_logits, -1)[tokens]  # (N,)
    ref_logprobs = torch.log_softmax(ref_logits, -1)[tokens]
    errors = {}
    for name, form in [*KL_LOSS_FORMS.items(), ("k3_uncorrected", kl_loss_k3_uncorrected)]:
        logprobs = torch.log_softmax(theta, -1)[tokens]  # (N,), differentiable in theta
        term = form(logprobs[None], old_logprobs[None], ref_logprobs[None])  # (1, N)
        (grad,) = torch.autograd.grad(term.mean(), theta)
        errors[name] = ((grad - exact_grad).norm() / exact_grad.norm()).item()
        print(
            f"  {sample_from:>6} {name:>15}: mean term {term.mean().item():.4f} "
            f"(exact KL {exact.item():.4f}), grad {[round(v, 4) for v in grad.tolist()]}, "
            f"relative error {errors[name]:.4f}"
        )
    print(f"  {sample_from:>6} {'exact':>15}: grad {[round(v, 4) for v in exact_grad.tolist()]}")
    return errors


@pytest.mark.parametrize("sample_from", ["policy", "old"])
def test_offered_forms_have_the_reverse_kl_gradient_and_uncorrected_k3_does_not(sample_from):
    # "policy": on-policy (pi_old = pi_theta, ratio 1 with gradient); "old": the ratio corrects.
    errors = _relative_gradient_errors(sample_from)
    for name in KL_LOSS_FORMS:
        assert errors[name] < 0.03, (name, errors)
    assert errors["k3_uncorrected"] > 0.2, errors


def test_uncorrected_k3_follows_the_forward_kl_gradient_on_policy():
    # What uncorrected k3 estimates instead: grad KL(pi_ref || pi_theta) = softmax(theta) - pi_ref.
    theta = torch.tensor(THETA, dtype=torch.float64, requires_grad=True)
    ref_logits = torch.tensor(REF_LOGITS, dtype=torch.float64)
    forward_grad = torch.softmax(theta.detach(), -1) - torch.softmax(ref_logits, -1)
    g = torch.Generator().manual_seed(1)
    tokens = torch.multinomial(torch.softmax(theta.detach(), -1), N_SAMPLES, replacement=True, generator=g)
    logprobs = torch.log_softmax(theta, -1)[tokens][None]
    ref_logprobs = torch.log_softmax(ref_logits, -1)[tokens][None]
    term = kl_loss_k3_uncorrected(logprobs, logprobs.detach(), ref_logprobs)
    (grad,) = torch.autograd.grad(term.mean(), theta)
    error = ((grad - forward_grad).norm() / forward_grad.norm()).item()
    print(f"  uncorrected k3 vs forward-KL gradient: relative error {error:.4f}")
    assert error < 0.03
