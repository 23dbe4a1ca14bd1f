import math

import pytest
import torch

from rlhfkit.ops import (
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from rlhfkit.ops.logprobs import (
    entropy_from_logits_reference,
    logprobs_from_logits_reference,
    masked_mean_reference,
    masked_sum_reference,
    masked_var_reference,
    masked_whiten_reference,
)

from .helpers import DTYPE_IDS, DTYPES_BF16, SHAPES_2D, close, random_mask, right_padded_mask

LOGIT_SHAPES = [(1, 1, 2), (2, 3, 5), (3, 4, 17), (1, 9, 11)]


def _dtype_id(p):
    return DTYPE_IDS[p[0]]


# ---------------------------------------------------------------- log-probs / entropy


@pytest.mark.parametrize("shape", LOGIT_SHAPES)
@pytest.mark.parametrize("dt", DTYPES_BF16, ids=_dtype_id)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_from_logits_matches_reference(shape, dt, temperature):
    dtype, atol, rtol = dt
    torch.manual_seed(0)
    logits = (3 * torch.randn(shape)).to(dtype)
    tokens = torch.randint(0, shape[-1], shape[:-1])
    out = logprobs_from_logits(logits, tokens, temperature=temperature)
    assert out.shape == shape[:-1] and out.dtype == dtype
    close(out, logprobs_from_logits_reference(logits, tokens, temperature), atol, rtol)


def test_logprobs_from_logits_sum_to_one_and_gradient():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    all_lp = torch.stack([logprobs_from_logits(logits, torch.full((2, 3), v)) for v in range(6)], dim=-1)
    close(all_lp.exp().sum(-1), torch.ones(2, 3), 1e-12, 1e-12)
    tokens = torch.randint(0, 6, (2, 3))
    logprobs_from_logits(logits, tokens).sum().backward()
    expected = torch.nn.functional.one_hot(tokens, 6) - torch.softmax(logits.detach(), -1)
    close(logits.grad, expected, 1e-12, 1e-12)


def test_logprobs_from_logits_rejects_bad_input():
    with pytest.raises(ValueError, match="tokens shape"):
        logprobs_from_logits(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), temperature=0.0)


@pytest.mark.parametrize("shape", LOGIT_SHAPES)
@pytest.mark.parametrize("dt", DTYPES_BF16, ids=_dtype_id)
def test_entropy_matches_reference(shape, dt):
    dtype, atol, rtol = dt
    torch.manual_seed(2)
    logits = (2 * torch.randn(shape)).to(dtype)
    out = entropy_from_logits(logits)
    assert out.shape == shape[:-1] and out.dtype == dtype
    close(out, entropy_from_logits_reference(logits), atol, rtol)


def test_entropy_known_values_and_banned_tokens():
    uniform = torch.zeros(1, 1, 8, dtype=torch.float64)
    close(entropy_from_logits(uniform), [[math.log(8)]], 1e-12, 0)
    # -inf logits (banned tokens) contribute 0, with finite gradients everywhere.
    logits = torch.tensor(
        [[[0.0, 0.0, float("-inf"), float("-inf")]]], dtype=torch.float64, requires_grad=True
    )
    h = entropy_from_logits(logits)
    close(h, [[math.log(2)]], 1e-12, 0)
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()
    one_hot = torch.tensor([[[50.0, -50.0, -50.0]]], dtype=torch.float64)
    assert entropy_from_logits(one_hot).item() < 1e-20


# ---------------------------------------------------------------- masked statistics


@pytest.mark.parametrize("shape", SHAPES_2D)
@pytest.mark.parametrize("dt", DTYPES_BF16, ids=_dtype_id)
@pytest.mark.parametrize("mask_kind", ["random", "padded", "full", "empty"])
@pytest.mark.parametrize("float_mask", [False, True])
def test_masked_stats_match_reference(shape, dt, mask_kind, float_mask):
    dtype, atol, rtol = dt
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=g) * 2 + 1).to(dtype)
    mask = {
        "random": random_mask(shape, g),
        "padded": right_padded_mask(shape, g),
        "full": torch.ones(shape, dtype=torch.bool),
        "empty": torch.zeros(shape, dtype=torch.bool),
    }[mask_kind]
    m = mask.float() if float_mask else mask
    for dim in (None, -1):
        close(masked_sum(x, m, dim=dim), masked_sum_reference(x, mask, dim=dim), atol, rtol)
        close(masked_mean(x, m, dim=dim), masked_mean_reference(x, mask, dim=dim), atol, rtol)
        for unbiased in (True, False):
            close(
                masked_var(x, m, unbiased=unbiased, dim=dim),
                masked_var_reference(x, mask, unbiased=unbiased, dim=dim),
                atol,
                rtol,
            )
    for shift_mean in (True, False):
        out = masked_whiten(x, m, shift_mean=shift_mean)
        assert out.dtype == dtype and out.shape == shape
        # whitened values are O(1): compare with an absolute tolerance scaled for bf16
        close(out, masked_whiten_reference(x, mask, shift_mean=shift_mean), max(atol, 4 * rtol), rtol)


def test_masked_ops_ignore_garbage_under_mask():
    torch.manual_seed(4)
    x = torch.randn(3, 6, dtype=torch.float64)
    mask = right_padded_mask((3, 6), torch.Generator().manual_seed(5))
    mask[0] = True  # at least one full row
    mask[1, 0] = True  # and no empty row in row 1
    garbage = x.clone()
    junk = torch.tensor([float("nan"), float("inf"), -1e30], dtype=torch.float64).repeat(20)
    garbage[~mask] = junk[: int((~mask).sum())]
    garbage.requires_grad_(True)
    for fn in (masked_sum, masked_mean, masked_var):
        for dim in (None, -1):
            close(fn(garbage, mask, dim=dim), fn(x, mask, dim=dim), 1e-12, 1e-12)
    clean_white = masked_whiten(x, mask)
    white = masked_whiten(garbage, mask)
    close(white, clean_white, 1e-12, 1e-12)
    assert (white[~mask] == 0).all()
    (masked_mean(garbage, mask) + masked_var(garbage, mask) + white.sum()).backward()
    assert torch.isfinite(garbage.grad).all()
    assert (garbage.grad[~mask] == 0).all()


def test_masked_mean_empty_and_single_conventions():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    empty = torch.zeros(2, 2, dtype=torch.bool)
    assert masked_mean(x, empty).item() == 0.0
    assert masked_sum(x, empty).item() == 0.0
    assert masked_var(x, empty).item() == 0.0
    masked_mean(x, empty).backward()
    assert (x.grad == 0).all()
    one = torch.tensor([[False, True], [False, False]])
    assert masked_var(x, one, unbiased=True).item() == 0.0
    assert masked_var(x, one, unbiased=False).item() == 0.0
    assert masked_whiten(x, one)[0, 1].item() == 0.0
    assert masked_whiten(x, one, shift_mean=False)[0, 1].item() == pytest.approx(2.0)
    torch.testing.assert_close(masked_mean(x, one, dim=-1), torch.tensor([2.0, 0.0]))


def test_masked_whiten_moments():
    torch.manual_seed(6)
    x = torch.randn(4, 50, dtype=torch.float64) * 5 + 3
    mask = random_mask((4, 50), torch.Generator().manual_seed(7))
    white = masked_whiten(x, mask)
    assert abs(masked_mean(white, mask).item()) < 1e-12
    assert masked_var(white, mask).item() == pytest.approx(1.0, rel=1e-6)
    kept = masked_whiten(x, mask, shift_mean=False)
    assert masked_mean(kept, mask).item() == pytest.approx(masked_mean(x, mask).item(), rel=1e-12)


def test_mask_shape_must_match():
    with pytest.raises(ValueError, match="mask shape"):
        masked_mean(torch.zeros(2, 3), torch.ones(2, 1))


def test_bf16_masked_mean_accumulates_in_float32():
    # 3000 ones plus one 2: a bf16 accumulator would stall at 256; float32 gets 3002 / 3001.
    x = torch.ones(1, 3001, dtype=torch.bfloat16)
    x[0, 0] = 2
    mean = masked_mean(x, torch.ones_like(x, dtype=torch.bool))
    assert mean.dtype == torch.bfloat16
    assert mean.float().item() == pytest.approx(3002 / 3001, abs=8e-3)
    assert masked_sum(x, torch.ones_like(x, dtype=torch.bool)).float().item() == pytest.approx(3002, rel=4e-3)


def test_masked_whiten_with_stats_from_the_whole_equals_whitening_the_whole():
    # 2 processes whiten their halves with the gathered statistics: the result is the 1-process one.
    torch.manual_seed(0)
    x, mask = torch.randn(6, 5) * 3 + 1, (torch.rand(6, 5) > 0.3).long()
    whole = masked_whiten(x, mask)
    for part in (slice(0, 3), slice(3, 6)):
        alone = masked_whiten(x[part], mask[part], stats_from=(x, mask))
        assert torch.allclose(alone, whole[part], atol=1e-6)
    assert not torch.allclose(masked_whiten(x[:3], mask[:3]), whole[:3], atol=1e-3)  # local stats differ
