"""`aggregate_loss` and the options of `ppo_policy_loss` added for critic-free RL (clip-higher,
aggregation). The PPO loss's original behaviour is covered, unchanged, by test_losses.py."""

import math

import pytest
import torch

from rlhfkit.ops import AGGREGATIONS, aggregate_loss, aggregation_count, masked_mean, ppo_policy_loss
from rlhfkit.ops.losses import (
    aggregate_loss_reference,
    aggregation_count_reference,
    ppo_policy_loss_reference,
)

from .helpers import DTYPE_IDS, DTYPES_BF16, close, random_mask, right_padded_mask


def _dtype_id(p):
    return DTYPE_IDS[p[0]]


# ---------------------------------------------------------------- aggregate_loss


def test_hand_computed_modes():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, float("nan")], [7.0, 7.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])  # the last row is all padding: no vote
    expected = {
        "token-mean": (1 + 2 + 3 + 4) / 4,
        "seq-mean-token-sum": (6 + 4) / 2,
        "seq-mean-token-mean": (2 + 4) / 2,
    }
    assert set(expected) == set(AGGREGATIONS)
    for mode, value in expected.items():
        close(aggregate_loss(x, mask, mode), value, 1e-12, 0)
        share = value * aggregation_count(mask, mode).item() / 5  # the same sum over a larger count
        close(aggregate_loss(x, mask, mode, total=5.0), share, 1e-12, 0)
    assert aggregation_count(mask, "token-mean").item() == 4
    assert aggregation_count(mask, "seq-mean-token-sum").item() == 2


@pytest.mark.parametrize("shape", [(1, 1), (2, 6), (5, 11)])
@pytest.mark.parametrize("dt", DTYPES_BF16, ids=_dtype_id)
@pytest.mark.parametrize("mode", AGGREGATIONS)
@pytest.mark.parametrize("mask_kind", ["random", "padded", "empty"])
@pytest.mark.parametrize("total", [None, 7.0])
def test_aggregate_loss_matches_reference(shape, dt, mode, mask_kind, total):
    dtype, atol, rtol = dt
    g = torch.Generator().manual_seed(90)
    x = torch.randn(shape, generator=g).to(dtype)
    mask = {
        "random": random_mask(shape, g),
        "padded": right_padded_mask(shape, g),
        "empty": torch.zeros(shape, dtype=torch.bool),
    }[mask_kind]
    out = aggregate_loss(x, mask.float(), mode, total)
    assert out.dim() == 0 and out.dtype == dtype
    close(out, aggregate_loss_reference(x, mask, mode, total), atol, rtol)
    assert aggregation_count(mask, mode).item() == aggregation_count_reference(mask, mode)


def test_token_mean_without_total_is_masked_mean():
    g = torch.Generator().manual_seed(91)
    for dtype in (torch.float32, torch.bfloat16):
        x, mask = torch.randn(4, 9, generator=g).to(dtype), random_mask((4, 9), g)
        assert torch.equal(aggregate_loss(x, mask), masked_mean(x, mask))


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_shares_with_the_global_total_sum_to_the_whole_batch(mode):
    # Two "processes" with unequal shares (one with an all-padding row) give, summed, the loss and
    # the gradient of the whole batch, when each divides by the global count.
    g = torch.Generator().manual_seed(92)
    x = torch.randn(7, 6, generator=g, dtype=torch.float64, requires_grad=True)
    mask = right_padded_mask((7, 6), g)
    mask[:, 0] = True
    mask[6] = False
    whole = aggregate_loss(x, mask, mode)
    (whole_grad,) = torch.autograd.grad(whole, x)
    parts = [slice(0, 2), slice(2, 7)]
    total = sum(aggregation_count(mask[p], mode) for p in parts)  # what an all-reduce gives
    shares = [aggregate_loss(x[p], mask[p], mode, total=total.item()) for p in parts]
    close(sum(shares), whole, 1e-12, 1e-12)
    (parts_grad,) = torch.autograd.grad(sum(shares), x)
    close(parts_grad, whole_grad, 1e-12, 1e-12)


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_aggregate_loss_gradient_ignores_garbage_under_mask(mode):
    g = torch.Generator().manual_seed(93)
    x = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = right_padded_mask((3, 5), g)
    mask[0, 0] = True
    junk = torch.where(mask, x, float("nan")).requires_grad_(True)
    loss = aggregate_loss(junk, mask, mode)
    close(loss, aggregate_loss(x, mask, mode), 1e-12, 1e-12)
    loss.backward()
    assert torch.isfinite(junk.grad).all() and (junk.grad[~mask] == 0).all()


def test_aggregate_loss_bad_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="token-mean"):
        aggregate_loss(x, x, "sum")
    with pytest.raises(ValueError, match="total"):
        aggregate_loss(x, x, "token-mean", total=0)
    with pytest.raises(ValueError, match="mask shape"):
        aggregate_loss(x, torch.zeros(2, 4))


# ---------------------------------------------------------------- PPO: clip-higher and aggregation


@pytest.mark.parametrize(
    "advantage, ratio, side",
    [
        (1.0, 1.25, None),  # above 1 + 0.2 but inside 1 + 0.28: clip-higher still lets it grow
        (1.0, 1.3, "high"),  # past 1 + eps_high
        (1.0, 0.5, None),  # good token far below: still pulled up
        (-1.0, 0.75, "low"),  # bad token pushed below 1 - eps_low
        (-1.0, 0.85, None),
        (-1.0, 1.5, None),  # bad token far above: still pushed down
    ],
)
def test_asymmetric_clipping(advantage, ratio, side):
    low, high = 0.2, 0.28
    old = torch.tensor([[-1.0]], dtype=torch.float64)
    lp = (old + math.log(ratio)).requires_grad_(True)
    adv = torch.tensor([[advantage]], dtype=torch.float64)
    loss, stats = ppo_policy_loss(lp, old, adv, torch.ones(1, 1), clip_low=low, clip_high=high)
    effective = min(max(ratio, 1 - low), 1 + high) if side else ratio
    close(loss, -advantage * effective, 1e-12, 1e-12)
    assert stats["clipfrac"].item() == (1.0 if side else 0.0)
    assert stats["clipfrac_low"].item() == (1.0 if side == "low" else 0.0)
    assert stats["clipfrac_high"].item() == (1.0 if side == "high" else 0.0)
    loss.backward()
    close(lp.grad, [[0.0 if side else -advantage * ratio]], 1e-12, 1e-12)


@pytest.mark.parametrize("shape", [(1, 1), (2, 6), (5, 11)])
@pytest.mark.parametrize("dt", DTYPES_BF16, ids=_dtype_id)
@pytest.mark.parametrize("clip_low, clip_high", [(0.2, 0.28), (0.1, 0.3), (0.3, 0.1)])
@pytest.mark.parametrize(
    "aggregation, total",
    [("token-mean", None), ("token-mean", 40.0), ("seq-mean-token-sum", None), ("seq-mean-token-mean", 3.0)],
)
def test_ppo_policy_loss_options_match_reference(shape, dt, clip_low, clip_high, aggregation, total):
    dtype, atol, rtol = dt
    g = torch.Generator().manual_seed(94)
    logprobs = (-2 * torch.rand(shape, generator=g)).to(dtype)
    old_logprobs = (logprobs.double() + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    advantages = torch.randn(shape, generator=g).to(dtype)
    mask = random_mask(shape, g)
    mask.view(-1)[0] = True
    loss, stats = ppo_policy_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask.float(),
        clip_low=clip_low,
        clip_high=clip_high,
        aggregation=aggregation,
        total=total,
    )
    ref_loss, clipfrac, clipfrac_low, clipfrac_high = ppo_policy_loss_reference(
        logprobs, old_logprobs, advantages, mask, 0.2, clip_low, clip_high, aggregation, total, per_side=True
    )
    close(loss, ref_loss, atol * (2 if dtype == torch.bfloat16 else 1), rtol)
    close(stats["pg_loss"], ref_loss, atol * (2 if dtype == torch.bfloat16 else 1), rtol)
    if dtype != torch.bfloat16:  # bf16 rounding can flip a token sitting on the clip boundary
        close(stats["clipfrac"], clipfrac, 1e-6, 0)
        close(stats["clipfrac_low"], clipfrac_low, 1e-6, 0)
        close(stats["clipfrac_high"], clipfrac_high, 1e-6, 0)
    close(stats["clipfrac_low"] + stats["clipfrac_high"], stats["clipfrac"], 1e-6, 0)


def test_defaults_are_bit_identical_to_the_symmetric_token_mean_loss():
    g = torch.Generator().manual_seed(95)
    logprobs = -2 * torch.rand(4, 9, generator=g)
    old_logprobs, advantages = logprobs + 0.5 * torch.randn(4, 9, generator=g), torch.randn(4, 9, generator=g)
    mask = random_mask((4, 9), g)
    base, base_stats = ppo_policy_loss(logprobs, old_logprobs, advantages, mask, 0.2)
    assert set(base_stats) == {"pg_loss", "clipfrac", "approx_kl", "ratio_mean", "ratio_max"}
    explicit, stats = ppo_policy_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        0.2,
        clip_low=0.2,
        clip_high=0.2,
        aggregation="token-mean",
        total=None,
    )
    assert torch.equal(base, explicit)
    assert all(torch.equal(base_stats[k], stats[k]) for k in base_stats)
    assert set(stats) - set(base_stats) == {"clipfrac_low", "clipfrac_high"}


def test_ppo_policy_loss_bad_options():
    lp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="clip_low"):
        ppo_policy_loss(lp, lp, lp, torch.ones(2, 3), clip_low=0.0)
    with pytest.raises(ValueError, match="clip_high"):
        ppo_policy_loss(lp, lp, lp, torch.ones(2, 3), clip_high=-0.1)
    with pytest.raises(ValueError, match="aggregation"):
        ppo_policy_loss(lp, lp, lp, torch.ones(2, 3), aggregation="mean")
