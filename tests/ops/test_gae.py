import pytest
import torch

from rlhfkit.ops import gae
from rlhfkit.ops.gae import gae_reference

from .helpers import DTYPE_IDS, DTYPES_BF16, close, random_mask, right_padded_mask


def _dtype_id(p):
    return DTYPE_IDS[p[0]]


def test_hand_computed_three_steps():
    # gamma = 0.9, lam = 0.8, so gamma * lam = 0.72; the value after the last token is 0.
    #   delta_2 = 2 + 0.9 * 0   - 1.5 = 0.5
    #   delta_1 = 0 + 0.9 * 1.5 - 1.0 = 0.35
    #   delta_0 = 1 + 0.9 * 1.0 - 0.5 = 1.4
    #   A_2 = 0.5
    #   A_1 = 0.35 + 0.72 * 0.5  = 0.71
    #   A_0 = 1.4  + 0.72 * 0.71 = 1.9112
    #   returns = A + V = [2.4112, 1.71, 2.0]
    rewards = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 1.0, 1.5]], dtype=torch.float64)
    mask = torch.ones(1, 3)
    expected_adv = [[1.9112, 0.71, 0.5]]
    expected_ret = [[2.4112, 1.71, 2.0]]
    for fn in (gae, gae_reference):
        adv, ret = fn(rewards, values, mask, gamma=0.9, lam=0.8)
        close(adv, expected_adv, 1e-12, 1e-12)
        close(ret, expected_ret, 1e-12, 1e-12)

    # The same episode right-padded with garbage after it: identical numbers, 0 on the padding.
    rewards_p = torch.tensor([[1.0, 0.0, 2.0, 99.0, float("nan")]], dtype=torch.float64)
    values_p = torch.tensor([[0.5, 1.0, 1.5, 99.0, float("inf")]], dtype=torch.float64)
    mask_p = torch.tensor([[1, 1, 1, 0, 0]])
    adv, ret = gae(rewards_p, values_p, mask_p, gamma=0.9, lam=0.8)
    close(adv, [expected_adv[0] + [0.0, 0.0]], 1e-12, 1e-12)
    close(ret, [expected_ret[0] + [0.0, 0.0]], 1e-12, 1e-12)


def test_gamma_lam_one_gives_reward_to_go_and_lam_zero_gives_td():
    rewards = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 1.0, 1.5]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    close(ret, [[3.0, 2.0, 2.0]], 1e-12, 0)  # Monte-Carlo reward-to-go
    close(adv, [[2.5, 1.0, 0.5]], 1e-12, 0)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.0)
    close(adv, [[1.0 + 1.0 - 0.5, 0.0 + 1.5 - 1.0, 2.0 - 1.5]], 1e-12, 0)  # one-step TD errors
    close(ret, [[2.0, 1.5, 2.0]], 1e-12, 0)  # r_t + V_{t+1}


def test_only_the_last_reward_propagates_with_gamma_one():
    # RLHF shape: the RM score on the last token, zero values -> every advantage equals the score.
    rewards = torch.tensor([[0.0, 0.0, 0.0, 3.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    adv, ret = gae(rewards, torch.zeros(1, 5), mask, gamma=1.0, lam=1.0)
    close(adv, [[3.0, 3.0, 3.0, 3.0, 0.0]], 0, 0)
    close(ret, [[3.0, 3.0, 3.0, 3.0, 0.0]], 0, 0)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (5, 8), (3, 17)])
@pytest.mark.parametrize("dt", DTYPES_BF16, ids=_dtype_id)
@pytest.mark.parametrize("mask_kind", ["padded", "random", "full", "empty"])
@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.99, 0.9), (0.5, 1.0), (1.0, 0.0)])
def test_gae_matches_reference(shape, dt, mask_kind, gamma, lam):
    dtype, atol, rtol = dt
    g = torch.Generator().manual_seed(20)
    rewards = torch.randn(shape, generator=g).to(dtype)
    values = torch.randn(shape, generator=g).to(dtype)
    mask = {
        "padded": right_padded_mask(shape, g),
        "random": random_mask(shape, g),  # holes inside rows and arbitrary trailing zeros
        "full": torch.ones(shape, dtype=torch.bool),
        "empty": torch.zeros(shape, dtype=torch.bool),
    }[mask_kind]
    adv, ret = gae(rewards, values, mask.float(), gamma=gamma, lam=lam)
    assert adv.shape == ret.shape == shape and adv.dtype == ret.dtype == dtype
    ref_adv, ref_ret = gae_reference(rewards, values, mask, gamma=gamma, lam=lam)
    # bf16: a sum of up to 17 O(1) terms, rounded once to bf16 at the end.
    scale = 4 if dtype == torch.bfloat16 else 1
    close(adv, ref_adv, atol * scale, rtol)
    close(ret, ref_ret, atol * scale, rtol)
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()


def test_gae_ignores_garbage_under_mask():
    g = torch.Generator().manual_seed(21)
    rewards, values = torch.randn(4, 9, generator=g), torch.randn(4, 9, generator=g)
    mask = random_mask((4, 9), g)
    junk_r = torch.where(mask, rewards, float("nan"))
    junk_v = torch.where(mask, values, float("inf"))
    for a, b in zip(gae(junk_r, junk_v, mask), gae(rewards, values, mask)):
        torch.testing.assert_close(a, b)


def test_gae_rejects_bad_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="gamma"):
        gae(x, x, x, gamma=1.5)
    with pytest.raises(ValueError, match="lam"):
        gae(x, x, x, lam=-0.1)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        gae(x, x, torch.zeros(2, 4))
