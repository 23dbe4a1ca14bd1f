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
        mask[b, torch.randint(0, shape[1] + 1, ()).item() :] = 0  # right-padded, possibly empty
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


def test_response_scores_matches_reference_and_an_empty_response_cannot_buy_reward():
    """Issue #15 item 9: EOS alone is scored where the RM never trained; its score is replaced."""
    from rlhfkit.ops.shaping import response_scores, response_scores_reference

    generator = torch.Generator().manual_seed(0)
    raw = 3 * torch.randn(64, generator=generator)
    finished = torch.rand(64, generator=generator) > 0.3
    lengths = torch.randint(1, 5, (64,), generator=generator)
    for empty in (-1.0, None):
        fast = response_scores(raw, finished, lengths, -1.0, empty, 5.0)
        assert torch.allclose(fast, response_scores_reference(raw, finished, lengths, -1.0, empty, 5.0))
    # A policy that says nothing: whatever the RM reads at the prompt's end (here +5), it gets -1.
    raw_empty, done, one = (
        torch.full((8,), 5.0),
        torch.ones(8, dtype=torch.bool),
        torch.ones(8, dtype=torch.long),
    )
    assert torch.equal(response_scores(raw_empty, done, one, -1.0, -1.0, 5.0), torch.full((8,), -1.0))
    # An unfinished one-token response is not empty: it keeps its score and the no-EOS penalty.
    assert response_scores(raw_empty, ~done, one, -1.0, -1.0, 5.0)[0] == 4.0
