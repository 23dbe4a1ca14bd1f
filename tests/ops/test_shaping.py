import pytest
import torch

from rlhfkit.ops import adaptive_kl_coef, kl_shaped_rewards
from rlhfkit.ops.shaping import adaptive_kl_coef_reference, kl_shaped_rewards_reference


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (4, 9)])
def test_shaped_rewards_match_reference(shape):
    torch.manual_seed(0)
    logprobs, ref = torch.randn(shape), torch.randn(shape)
    mask = torch.ones(shape)
    for b in range(shape[0]):
        mask[b, torch.randint(0, shape[1] + 1, ()).item():] = 0  # right-padded, possibly empty
    scores = torch.randn(shape[0])
    fast = kl_shaped_rewards(scores, logprobs, ref, mask, 0.1)
    assert torch.allclose(fast, kl_shaped_rewards_reference(scores, logprobs, ref, mask, 0.1))


def test_hand_computed_rewards():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -9.0]])
    mask = torch.tensor([[1, 1, 0]])
    rewards = kl_shaped_rewards(torch.tensor([2.0]), logprobs, ref, mask, kl_coef=0.1)
    # token 0: -0.1 * 0.5; token 1: 0 KL + score 2 (its last valid token); token 2 masked.
    assert torch.allclose(rewards, torch.tensor([[-0.05, 2.0, 0.0]]))


@pytest.mark.parametrize("kl, expected", [(12.0, "up"), (3.0, "down"), (6.0, "same")])
def test_adaptive_controller_moves_the_right_way(kl, expected):
    new = adaptive_kl_coef(0.1, kl, target=6.0, horizon=1000, n_steps=100)
    assert new == pytest.approx(adaptive_kl_coef_reference(0.1, kl, 6.0, 1000, 100))
    assert {"up": new > 0.1, "down": new < 0.1, "same": new == pytest.approx(0.1)}[expected]
    # The error is clipped at +-20%, so one batch moves the coefficient at most 0.2 * n/horizon.
    assert abs(new / 0.1 - 1) <= 0.2 * 100 / 1000 + 1e-12
