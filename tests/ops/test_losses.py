import math

import pytest
import torch
import torch.nn.functional as F

from rlhfkit.ops import (
    bradley_terry_loss,
    explained_variance,
    masked_mean,
    masked_nll,
    ppo_policy_loss,
    ppo_value_loss,
)
from rlhfkit.ops.losses import (
    bradley_terry_loss_reference,
    explained_variance_reference,
    masked_nll_reference,
    ppo_policy_loss_reference,
    ppo_value_loss_reference,
)

from .helpers import DTYPE_IDS, DTYPES_BF16, close, random_mask, right_padded_mask


def _dtype_id(p):
    return DTYPE_IDS[p[0]]


def _is_detached_scalar(stats):
    return all(v.dim() == 0 and not v.requires_grad for v in stats.values())


# ---------------------------------------------------------------- masked NLL (SFT)


def _labels(shape, vocab, g, ignore_frac=0.4):
    labels = torch.randint(0, vocab, shape, generator=g)
    labels[torch.rand(shape, generator=g) < ignore_frac] = -100
    return labels


@pytest.mark.parametrize("shape", [(1, 2, 3), (2, 5, 7), (3, 8, 16)])
@pytest.mark.parametrize("dt", DTYPES_BF16, ids=_dtype_id)
def test_masked_nll_matches_reference_and_hf_convention(shape, dt):
    dtype, atol, rtol = dt
    g = torch.Generator().manual_seed(30)
    B, T, V = shape
    logits = torch.randn(shape, generator=g).to(dtype)
    labels = _labels((B, T), V, g)
    labels[0, 1] = 3 % V  # at least one target
    loss, stats = masked_nll(logits, labels)
    assert loss.dtype == dtype and _is_detached_scalar(stats) and set(stats) == {"loss", "tokens"}
    close(loss, masked_nll_reference(logits, labels), atol, rtol)
    # What transformers' causal-LM loss does: shift, flatten, cross-entropy with ignore_index.
    hf = F.cross_entropy(logits[:, :-1].double().reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    close(loss, hf, atol, rtol)
    assert stats["tokens"].item() == (labels[:, 1:] != -100).sum().item()


def test_masked_nll_shift_convention():
    # Position 0's logits put all mass on token 2, which is labels[:, 1]: loss ~ 0.
    logits = torch.full((1, 2, 4), -30.0, dtype=torch.float64)
    logits[0, 0, 2] = 30.0
    loss, stats = masked_nll(logits, torch.tensor([[1, 2]]))
    assert loss.item() < 1e-20 and stats["tokens"].item() == 1
    # labels[:, 0] is never a target, so ignoring it changes nothing.
    assert masked_nll(logits, torch.tensor([[-100, 2]]))[0].item() == loss.item()


def test_masked_nll_all_ignored_and_gradients():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    loss, stats = masked_nll(logits, torch.full((2, 4), -100))
    assert loss.item() == 0.0 and stats["tokens"].item() == 0
    loss.backward()
    assert (logits.grad == 0).all()
    logits.grad = None
    labels = torch.tensor([[0, 1, -100, 3], [-100, 4, 2, -100]])
    masked_nll(logits, labels)[0].backward()
    assert (logits.grad[:, -1] == 0).all()  # the last position predicts nothing
    assert (logits.grad[0, 1] == 0).all() and (logits.grad[1, 2] == 0).all()  # ignored targets
    with pytest.raises(ValueError, match="labels"):
        masked_nll(logits, labels[:, :-1])


# ---------------------------------------------------------------- Bradley-Terry (reward model)


def test_bradley_terry_known_values():
    r = torch.tensor([0.3, -1.2, 2.0])
    loss, stats = bradley_terry_loss(r, r.clone())
    close(loss, math.log(2), 1e-6, 0)
    assert stats["accuracy"].item() == 0.5 and stats["margin"].item() == 0.0
    assert _is_detached_scalar(stats) and set(stats) == {"loss", "accuracy", "margin", "chosen", "rejected"}
    # Required margin m on tied rewards: -log sigmoid(-m) = log(1 + e^m).
    close(bradley_terry_loss(r, r.clone(), margin=1.0)[0], math.log1p(math.e), 1e-6, 0)
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    loss, stats = bradley_terry_loss(chosen, rejected, center_coef=0.1)
    bt = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2
    close(loss, bt + 0.1 * (9.0 + 1.0) / 2, 1e-6, 0)
    close(stats["accuracy"], 0.5, 0, 0)
    close(stats["margin"], 0.0, 0, 0)
    close(stats["chosen"], 1.0, 0, 0)
    close(stats["rejected"], 1.0, 0, 0)


def test_bradley_terry_gradient_direction():
    chosen = torch.tensor([0.1, -0.5, 3.0], requires_grad=True)
    rejected = torch.tensor([0.4, -0.5, -2.0], requires_grad=True)
    bradley_terry_loss(chosen, rejected)[0].backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent widens the gap
    close(chosen.grad, -rejected.grad, 1e-7, 0)


@pytest.mark.parametrize("batch", [1, 4, 33])
@pytest.mark.parametrize("dt", DTYPES_BF16, ids=_dtype_id)
@pytest.mark.parametrize("margin_kind", ["zero", "float", "tensor"])
@pytest.mark.parametrize("center_coef", [0.0, 0.01])
def test_bradley_terry_matches_reference(batch, dt, margin_kind, center_coef):
    dtype, atol, rtol = dt
    g = torch.Generator().manual_seed(31)
    chosen = (2 * torch.randn(batch, generator=g)).to(dtype)
    rejected = (2 * torch.randn(batch, generator=g)).to(dtype)
    margin = {"zero": 0.0, "float": 0.5, "tensor": torch.rand(batch, generator=g).to(dtype)}[margin_kind]
    loss, _ = bradley_terry_loss(chosen, rejected, margin=margin, center_coef=center_coef)
    close(loss, bradley_terry_loss_reference(chosen, rejected, margin, center_coef), atol, rtol)


def test_bradley_terry_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="at least one"):
        bradley_terry_loss(torch.zeros(0), torch.zeros(0))


# ---------------------------------------------------------------- PPO policy loss


def _ppo_inputs(shape, dtype, g, spread=0.5):
    logprobs = (-2 * torch.rand(shape, generator=g)).to(dtype)
    old_logprobs = (logprobs.double() + spread * torch.randn(shape, generator=g, dtype=torch.float64)).to(
        dtype
    )
    advantages = torch.randn(shape, generator=g).to(dtype)
    return logprobs, old_logprobs, advantages


def test_ppo_policy_loss_at_ratio_one():
    g = torch.Generator().manual_seed(40)
    logprobs, _, advantages = _ppo_inputs((3, 7), torch.float64, g)
    mask = right_padded_mask((3, 7), g)
    mask[0, 0] = True
    lp = logprobs.clone().requires_grad_(True)
    loss, stats = ppo_policy_loss(lp, logprobs, advantages, mask)
    close(loss, -masked_mean(advantages, mask), 1e-12, 1e-12)
    assert stats["clipfrac"].item() == 0.0 and stats["approx_kl"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0 and stats["ratio_max"].item() == 1.0
    assert _is_detached_scalar(stats)
    assert set(stats) == {"pg_loss", "clipfrac", "approx_kl", "ratio_mean", "ratio_max"}
    loss.backward()  # d/dlogp of -A * exp(logp - old) at ratio 1 is -A / N
    close(lp.grad, torch.where(mask, -advantages / mask.sum(), 0.0), 1e-12, 1e-12)


@pytest.mark.parametrize(
    "advantage, ratio, clipped",
    [
        (1.0, 1.5, True),  # good token pushed up past 1 + eps: clipped, no gradient
        (1.0, 0.5, False),  # good token below 1 - eps: still pulled up
        (-1.0, 0.5, True),  # bad token pushed down past 1 - eps: clipped
        (-1.0, 1.5, False),  # bad token above 1 + eps: still pushed down
        (1.0, 1.1, False),  # inside the trust region
    ],
)
def test_ppo_policy_loss_clipping(advantage, ratio, clipped):
    eps = 0.2
    old = torch.tensor([[-1.0]], dtype=torch.float64)
    lp = (old + math.log(ratio)).requires_grad_(True)
    adv = torch.tensor([[advantage]], dtype=torch.float64)
    loss, stats = ppo_policy_loss(lp, old, adv, torch.ones(1, 1), clip_range=eps)
    effective = min(max(ratio, 1 - eps), 1 + eps) if clipped else ratio
    close(loss, -advantage * effective, 1e-12, 1e-12)
    assert stats["clipfrac"].item() == (1.0 if clipped else 0.0)
    close(stats["approx_kl"], (ratio - 1) - math.log(ratio), 1e-12, 1e-12)
    loss.backward()
    close(lp.grad, [[0.0 if clipped else -advantage * ratio]], 1e-12, 1e-12)


@pytest.mark.parametrize("shape", [(1, 1), (2, 6), (5, 11)])
@pytest.mark.parametrize("dt", DTYPES_BF16, ids=_dtype_id)
@pytest.mark.parametrize("clip_range", [0.1, 0.2])
def test_ppo_policy_loss_matches_reference(shape, dt, clip_range):
    dtype, atol, rtol = dt
    g = torch.Generator().manual_seed(41)
    logprobs, old_logprobs, advantages = _ppo_inputs(shape, dtype, g)
    mask = random_mask(shape, g)
    mask.view(-1)[0] = True
    loss, stats = ppo_policy_loss(logprobs, old_logprobs, advantages, mask.float(), clip_range)
    ref_loss, ref_clipfrac = ppo_policy_loss_reference(logprobs, old_logprobs, advantages, mask, clip_range)
    close(loss, ref_loss, atol, rtol)
    if dtype != torch.bfloat16:  # bf16 rounding can flip a token sitting on the clip boundary
        close(stats["clipfrac"], ref_clipfrac, 1e-6, 0)  # one token would be >= 1/55
    ratio = (logprobs.double() - old_logprobs.double()).exp()[mask]
    close(stats["approx_kl"], ((ratio - 1) - ratio.log()).mean(), atol, rtol)
    close(stats["ratio_mean"], ratio.mean(), atol, rtol)
    close(stats["ratio_max"], ratio.max(), atol, rtol)


def test_ppo_policy_loss_ignores_garbage_under_mask():
    g = torch.Generator().manual_seed(42)
    logprobs, old_logprobs, advantages = _ppo_inputs((3, 8), torch.float64, g, spread=0.3)
    mask = right_padded_mask((3, 8), g)
    mask[:, 0] = True
    clean, clean_stats = ppo_policy_loss(logprobs, old_logprobs, advantages, mask)
    junk_lp = torch.where(mask, logprobs, float("nan")).requires_grad_(True)
    junk_old = torch.where(mask, old_logprobs, -1e30)
    junk_adv = torch.where(mask, advantages, float("inf"))
    loss, stats = ppo_policy_loss(junk_lp, junk_old, junk_adv, mask)
    close(loss, clean, 1e-12, 1e-12)
    for k in clean_stats:
        close(stats[k], clean_stats[k], 1e-12, 1e-12)
    loss.backward()
    assert torch.isfinite(junk_lp.grad).all() and (junk_lp.grad[~mask] == 0).all()


def test_ppo_policy_loss_empty_mask_and_bad_args():
    lp = torch.zeros(2, 3, requires_grad=True)
    loss, stats = ppo_policy_loss(lp, torch.ones(2, 3), torch.ones(2, 3), torch.zeros(2, 3))
    assert loss.item() == 0.0 and all(v.item() == 0.0 for v in stats.values())
    with pytest.raises(ValueError, match="clip_range"):
        ppo_policy_loss(lp, lp, lp, torch.ones(2, 3), clip_range=0.0)
    with pytest.raises(ValueError, match="advantages"):
        ppo_policy_loss(lp, lp, torch.zeros(2, 4), torch.ones(2, 3))


# ---------------------------------------------------------------- PPO value loss


@pytest.mark.parametrize(
    "value, ret, expected_loss, clipped",
    [
        (1.0, 1.0, 0.5 * (0.2 - 1.0) ** 2, True),  # moved too far toward the return: clipped term wins
        (1.0, 0.0, 0.5 * 1.0**2, False),  # moved away from the return: unclipped term is larger
        (0.1, 1.0, 0.5 * 0.9**2, False),  # inside the clip range: both terms equal
        (-1.0, -0.9, 0.5 * (-0.2 + 0.9) ** 2, True),
    ],
)
def test_ppo_value_loss_clipping(value, ret, expected_loss, clipped):
    v = torch.tensor([[value]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=torch.float64)
    loss, stats = ppo_value_loss(v, old, torch.tensor([[ret]], dtype=torch.float64), torch.ones(1, 1), 0.2)
    close(loss, expected_loss, 1e-12, 1e-12)
    assert stats["vf_clipfrac"].item() == (1.0 if clipped else 0.0)
    assert _is_detached_scalar(stats) and set(stats) == {"vf_loss", "vf_clipfrac"}
    loss.backward()
    close(v.grad, [[0.0 if clipped else value - ret]], 1e-12, 1e-12)


def test_ppo_value_loss_without_clipping_is_half_mse():
    g = torch.Generator().manual_seed(50)
    v, old, ret = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    mask = random_mask((3, 5), g)
    loss, stats = ppo_value_loss(v, old, ret, mask, clip_range=None)
    close(loss, 0.5 * ((v - ret) ** 2)[mask].mean(), 1e-12, 1e-12)
    assert stats["vf_clipfrac"].item() == 0.0
    with pytest.raises(ValueError, match="clip_range"):
        ppo_value_loss(v, old, ret, mask, clip_range=-1.0)


@pytest.mark.parametrize("shape", [(1, 1), (2, 6), (5, 11)])
@pytest.mark.parametrize("dt", DTYPES_BF16, ids=_dtype_id)
@pytest.mark.parametrize("clip_range", [0.2, None])
def test_ppo_value_loss_matches_reference(shape, dt, clip_range):
    dtype, atol, rtol = dt
    g = torch.Generator().manual_seed(51)
    old = torch.randn(shape, generator=g).to(dtype)
    values = (old.double() + 0.4 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    returns = torch.randn(shape, generator=g).to(dtype)
    mask = random_mask(shape, g)
    loss, stats = ppo_value_loss(values, old, returns, mask, clip_range)
    ref_loss, ref_clipfrac = ppo_value_loss_reference(values, old, returns, mask, clip_range)
    close(loss, ref_loss, atol, rtol)
    if dtype != torch.bfloat16:
        close(stats["vf_clipfrac"], ref_clipfrac, 1e-6, 0)


def test_ppo_value_loss_ignores_garbage_under_mask():
    g = torch.Generator().manual_seed(52)
    v, old, ret = (torch.randn(3, 6, generator=g, dtype=torch.float64) for _ in range(3))
    mask = right_padded_mask((3, 6), g)
    mask[:, 0] = True
    clean, _ = ppo_value_loss(v, old, ret, mask)
    junk_v = torch.where(mask, v, float("nan")).requires_grad_(True)
    loss, _ = ppo_value_loss(
        junk_v, torch.where(mask, old, float("inf")), torch.where(mask, ret, -1e30), mask
    )
    close(loss, clean, 1e-12, 1e-12)
    loss.backward()
    assert torch.isfinite(junk_v.grad).all() and (junk_v.grad[~mask] == 0).all()


# ---------------------------------------------------------------- explained variance


def test_explained_variance_known_values():
    g = torch.Generator().manual_seed(60)
    returns = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    assert explained_variance(returns, returns, mask).item() == 1.0
    mean_only = torch.full_like(returns, returns.mean().item())
    close(explained_variance(mean_only, returns, mask), 0.0, 1e-12, 0)
    assert explained_variance(returns + 7.0, returns, mask).item() == pytest.approx(1.0)  # offset is free
    assert explained_variance(-returns, returns, mask).item() < 0
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask).item())
    assert math.isnan(explained_variance(returns, returns, torch.zeros_like(mask)).item())


@pytest.mark.parametrize("shape", [(2, 3), (5, 11)])
@pytest.mark.parametrize("dt", DTYPES_BF16, ids=_dtype_id)
def test_explained_variance_matches_reference(shape, dt):
    dtype, atol, rtol = dt
    g = torch.Generator().manual_seed(61)
    returns = torch.randn(shape, generator=g).to(dtype)
    values = (returns.double() + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    mask = random_mask(shape, g)
    mask[0, :2] = True
    out = explained_variance(values, returns, mask)
    assert out.dim() == 0 and not out.requires_grad
    # bf16: a ratio of two bf16-rounded variances
    close(
        out,
        explained_variance_reference(values, returns, mask),
        atol * (3 if dtype == torch.bfloat16 else 1),
        rtol,
    )
    junk = torch.where(mask, values, float("nan"))
    close(explained_variance(junk, returns, mask), out, 0, 0)
