import math

import pytest
import torch

from rlhfkit.ops import (
    KL_ESTIMATORS,
    kl_estimate,
    kl_exact,
    kl_k1,
    kl_k2,
    kl_k3,
    logprobs_from_logits,
    masked_sum,
    sequence_kl,
)
from rlhfkit.ops.kl import kl_exact_reference, kl_k1_reference, kl_k2_reference, kl_k3_reference

from .helpers import DTYPE_IDS, DTYPES_BF16, close, random_mask


def _dtype_id(p):
    return DTYPE_IDS[p[0]]


# ---------------------------------------------------------------- fast vs reference


@pytest.mark.parametrize("shape", [(1, 1), (2, 5), (4, 9)])
@pytest.mark.parametrize("dt", DTYPES_BF16, ids=_dtype_id)
@pytest.mark.parametrize(
    "fn, ref",
    [(kl_k1, kl_k1_reference), (kl_k2, kl_k2_reference), (kl_k3, kl_k3_reference)],
    ids=["k1", "k2", "k3"],
)
def test_estimators_match_reference(shape, dt, fn, ref):
    dtype, atol, rtol = dt
    g = torch.Generator().manual_seed(10)
    logprobs = (-3 * torch.rand(shape, generator=g)).to(dtype)
    ref_logprobs = (-3 * torch.rand(shape, generator=g)).to(dtype)
    out = fn(logprobs, ref_logprobs)
    assert out.shape == shape and out.dtype == dtype
    # bf16: the estimate is formed from a bf16 difference; allow a few bf16 ulps of the inputs.
    close(out, ref(logprobs, ref_logprobs), atol * (2 if dtype == torch.bfloat16 else 1), rtol)


@pytest.mark.parametrize("shape", [(1, 1, 2), (2, 3, 7), (3, 2, 20)])
@pytest.mark.parametrize("dt", DTYPES_BF16, ids=_dtype_id)
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_kl_exact_matches_reference(shape, dt, temperature):
    dtype, atol, rtol = dt
    g = torch.Generator().manual_seed(11)
    logits = (2 * torch.randn(shape, generator=g)).to(dtype)
    ref_logits = (2 * torch.randn(shape, generator=g)).to(dtype)
    out = kl_exact(logits, ref_logits, temperature=temperature)
    assert out.shape == shape[:-1] and out.dtype == dtype
    close(out, kl_exact_reference(logits, ref_logits, temperature), atol, rtol)


def test_kl_exact_properties():
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(3, 4, 9, generator=g, dtype=torch.float64)
    ref_logits = torch.randn(3, 4, 9, generator=g, dtype=torch.float64)
    close(kl_exact(logits, logits), torch.zeros(3, 4), 1e-12, 0)
    assert (kl_exact(logits, ref_logits) > 0).all()
    close(kl_exact(logits + 5.0, ref_logits - 2.0), kl_exact(logits, ref_logits), 1e-12, 1e-12)
    # Banned under p: contributes 0 (no NaN). Banned under q only: KL is +inf (the true value).
    inf = float("-inf")
    p = torch.tensor([[[0.0, 0.0, inf]]], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([[[0.0, 1.0, 0.0]]], dtype=torch.float64)
    expected = 0.5 * math.log(0.5 / (1 / (2 + math.e))) + 0.5 * math.log(0.5 / (math.e / (2 + math.e)))
    kl = kl_exact(p, q)
    close(kl, [[expected]], 1e-12, 1e-12)
    kl.sum().backward()
    assert torch.isfinite(p.grad).all()
    assert kl_exact(q, p).item() == math.inf
    with pytest.raises(ValueError):
        kl_exact(logits, ref_logits[..., :-1])


def test_k3_is_nonnegative_per_token_over_a_wide_range():
    diffs = torch.cat(
        [
            torch.linspace(-30, 30, 20001, dtype=torch.float64),
            torch.logspace(-12, 0, 2001, dtype=torch.float64),
            -torch.logspace(-12, 0, 2001, dtype=torch.float64),
            torch.zeros(1, dtype=torch.float64),
        ]
    )
    g = torch.Generator().manual_seed(13)
    base = -5 * torch.rand(diffs.shape, generator=g, dtype=torch.float64)
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        logprobs = base.to(dtype)
        ref_logprobs = (base + diffs).to(dtype)
        k3 = kl_k3(logprobs, ref_logprobs)
        assert (k3 >= 0).all(), dtype
        assert (kl_k2(logprobs, ref_logprobs) >= 0).all(), dtype


def test_k3_keeps_precision_for_close_distributions():
    logprobs = torch.tensor([-1.0], dtype=torch.float32)
    ref_logprobs = logprobs + 1e-4  # k3 ~ (1e-4)^2 / 2 = 5e-9, lost by a naive (r - 1) - log r in float32
    close(kl_k3(logprobs, ref_logprobs), [0.5e-8], 1e-10, 1e-2)


def test_kl_estimate_and_sequence_kl():
    g = torch.Generator().manual_seed(14)
    lp, ref = -torch.rand(2, 6, generator=g), -torch.rand(2, 6, generator=g)
    for name, fn in KL_ESTIMATORS.items():
        torch.testing.assert_close(kl_estimate(lp, ref, name), fn(lp, ref))
    with pytest.raises(ValueError, match="k1"):
        kl_estimate(lp, ref, "k4")
    mask = random_mask((2, 6), g)
    per_token = kl_k1(lp, ref)
    per_token_garbage = torch.where(mask, per_token, float("nan"))
    seq = sequence_kl(per_token_garbage, mask)
    assert seq.shape == (2,)
    torch.testing.assert_close(seq, torch.stack([per_token[b][mask[b]].sum() for b in range(2)]))
    torch.testing.assert_close(seq.sum(), masked_sum(per_token, mask))
    with pytest.raises(ValueError, match="shape"):
        kl_k1(lp, ref[:, :-1])


# ---------------------------------------------------------------- Monte-Carlo agreement with the oracle

N_SAMPLES = 40_000


def _sample_logprobs(logits, ref_logits, n, temperature, g, sample_from="policy"):
    """Sample n tokens per position from softmax(logits / T) (or from the reference), score both."""
    P, V = logits.shape
    source = logits if sample_from == "policy" else ref_logits
    probs = torch.softmax(source / temperature, dim=-1)  # (P, V)
    tokens = torch.multinomial(probs, n, replacement=True, generator=g).T  # (n, P)
    lp = logprobs_from_logits(logits.expand(n, P, V), tokens, temperature)  # (n, P)
    ref_lp = logprobs_from_logits(ref_logits.expand(n, P, V), tokens, temperature)
    return lp, ref_lp


@pytest.mark.parametrize(
    "vocab, scale, temperature, seed", [(5, 1.0, 1.0, 0), (12, 1.5, 1.0, 1), (20, 1.0, 0.7, 2)]
)
def test_k1_and_k3_sample_means_match_exact_kl(vocab, scale, temperature, seed):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(1, vocab, generator=g, dtype=torch.float64)
    ref_logits = scale * torch.randn(1, vocab, generator=g, dtype=torch.float64)
    exact = kl_exact(logits[None], ref_logits[None], temperature).item()
    lp, ref_lp = _sample_logprobs(logits, ref_logits, N_SAMPLES, temperature, g)
    for estimator in (kl_k1, kl_k3):
        est = estimator(lp, ref_lp).flatten()
        mean, se = est.mean().item(), est.std().item() / math.sqrt(est.numel())
        assert se < 0.03 * exact, "test too weak: the standard error must be a few percent of the KL"
        assert abs(mean - exact) < 4 * se, (estimator.__name__, mean, exact, se)
        assert mean >= 0
    assert (kl_k3(lp, ref_lp) >= 0).all()


def test_k1_and_k3_per_position_means_match_exact_kl():
    g = torch.Generator().manual_seed(3)
    P, V, n = 6, 8, 8_000
    logits = torch.randn(P, V, generator=g, dtype=torch.float64)
    ref_logits = logits + 0.8 * torch.randn(P, V, generator=g, dtype=torch.float64)
    exact = kl_exact(logits[None], ref_logits[None])[0]  # (P,)
    lp, ref_lp = _sample_logprobs(logits, ref_logits, n, 1.0, g)
    for estimator in (kl_k1, kl_k3):
        est = estimator(lp, ref_lp)  # (n, P)
        mean, se = est.mean(0), est.std(0) / math.sqrt(n)
        assert ((mean - exact).abs() < 5 * se).all(), (estimator.__name__, mean, exact, se)


def test_sampling_from_the_wrong_distribution_gives_negative_mean_k1():
    # Design §6.7: tokens not drawn from the policy break k1. Drawing them from the reference
    # makes E[k1] = -KL(q || p) < 0, while k3 stays >= 0 per token (and is then biased).
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 10, generator=g, dtype=torch.float64)
    ref_logits = torch.randn(1, 10, generator=g, dtype=torch.float64)
    lp, ref_lp = _sample_logprobs(logits, ref_logits, 20_000, 1.0, g, sample_from="reference")
    reverse = kl_exact(ref_logits[None], logits[None]).item()
    k1 = kl_k1(lp, ref_lp)
    assert k1.mean().item() < 0
    assert abs(k1.mean().item() + reverse) < 4 * k1.std().item() / math.sqrt(k1.numel())
    assert (kl_k3(lp, ref_lp) >= 0).all()


# ---------------------------------------------------------------- k1 against the exact KL, per batch


def test_k1_exact_z_matches_its_reference_and_handles_equal_rows():
    generator = torch.Generator().manual_seed(3)
    k1_rows, exact_rows = torch.randn(40, generator=generator) + 1.0, torch.rand(40, generator=generator)
    from rlhfkit.ops import k1_exact_z
    from rlhfkit.ops.kl import k1_exact_z_reference

    assert k1_exact_z(k1_rows, exact_rows).item() == pytest.approx(
        k1_exact_z_reference(k1_rows, exact_rows), rel=1e-9
    )
    assert (
        k1_exact_z(torch.zeros(8), torch.zeros(8)).item() == 0.0
    )  # policy == reference: no evidence either way
    with pytest.raises(ValueError, match="B >= 2"):
        k1_exact_z(torch.zeros(1), torch.zeros(1))


def _sequence_k1_and_exact(policy_logits, reference_logits, rows, steps, generator, top_k=0):
    """Sample `rows` sequences of `steps` tokens from a context-free policy (top_k > 0 warps the
    sampling only), then score them without the warp, as a PPO scoring pass would."""
    sampling_logits = policy_logits.clone()
    if top_k:
        sampling_logits[sampling_logits < sampling_logits.topk(top_k).values[-1]] = -float("inf")
    tokens = torch.multinomial(
        torch.softmax(sampling_logits, -1), rows * steps, replacement=True, generator=generator
    ).view(rows, steps)
    logprobs, ref_logprobs = torch.log_softmax(policy_logits, -1), torch.log_softmax(reference_logits, -1)
    k1_rows = (logprobs[tokens] - ref_logprobs[tokens]).sum(-1)
    exact_rows = kl_exact(policy_logits[None], reference_logits[None])[0].expand(rows) * steps
    return k1_rows, exact_rows


def test_k1_exact_z_is_standard_normal_for_honest_sampling_and_catches_a_warp_that_keeps_k1_positive():
    from rlhfkit.ops import k1_exact_z

    generator = torch.Generator().manual_seed(0)
    reference_logits = torch.linspace(3.0, -3.0, 30)
    policy_logits = reference_logits * 1.5  # sharper than the reference
    honest = [
        k1_exact_z(*_sequence_k1_and_exact(policy_logits, reference_logits, 64, 8, generator)).item()
        for _ in range(200)
    ]
    mean = sum(honest) / len(honest)
    spread = math.sqrt(sum((z - mean) ** 2 for z in honest) / (len(honest) - 1))
    assert abs(mean) < 0.3 and 0.7 < spread < 1.3
    # Top-k on a sharper policy: the warp removes tokens the policy dislikes even more than the
    # reference does, so k1 stays positive (the negative-KL check is blind) but is biased upward.
    k1_rows, exact_rows = _sequence_k1_and_exact(policy_logits, reference_logits, 64, 8, generator, top_k=5)
    assert k1_rows.mean() > 0
    assert k1_exact_z(k1_rows, exact_rows).item() > 5
