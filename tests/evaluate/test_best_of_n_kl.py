"""Best-of-n's KL (issue #15 item 10): log n - (n - 1)/n is an upper bound (Beirami et al. 2024); the
report also gives an estimate from the drawn samples, which sees repeated responses."""

import math
import random

import pytest
import torch

from rlhfkit.evaluate.compare import best_of_n, best_of_n_kl, best_of_n_kl_reference


def _draws(prompts: int, size: int, vocabulary: int, seed: int) -> tuple[list[list[float]], list[list[str]]]:
    """Responses drawn from a small vocabulary (so some repeat), each scored by a fixed reward; two
    different responses may tie."""
    rng = random.Random(seed)
    value = {f"r{i}": float(rng.randint(0, vocabulary // 2)) for i in range(vocabulary)}
    texts = [[f"r{rng.randrange(vocabulary)}" for _ in range(size)] for _ in range(prompts)]
    return [[value[t] for t in row] for row in texts], texts


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [1, 2, 3])
def test_estimate_equals_the_brute_force_over_every_n_tuple(seed, n):
    rewards, texts = _draws(prompts=3, size=5, vocabulary=4 + seed, seed=seed)
    assert best_of_n_kl(torch.tensor(rewards), n) == pytest.approx(
        best_of_n_kl_reference(rewards, texts, n), abs=1e-12
    )


def test_estimate_is_zero_for_n_1_and_near_the_bound_for_distinct_draws():
    rewards = torch.randn(50, 4000, generator=torch.Generator().manual_seed(0))
    assert best_of_n_kl(rewards, 1) == pytest.approx(0.0, abs=1e-12)
    for n in (2, 4, 16):
        bound = math.log(n) - (n - 1) / n
        assert best_of_n_kl(rewards, n) == pytest.approx(bound, rel=0.02)
        assert best_of_n_kl(rewards, n) <= bound


def test_repeated_responses_give_a_kl_far_below_the_bound():
    """A policy that gives one of two answers: best-of-16 can at most move all mass to the better
    one, KL <= log 2 = 0.69, while the bound says log 16 - 15/16 = 1.84."""
    rewards = torch.tensor([[1.0, 0.0] * 8] * 10)  # every prompt: two answers, half the draws each
    rows = best_of_n(torch.zeros_like(rewards), rewards, [16])
    assert rows[0]["kl_bound"] == pytest.approx(math.log(16) - 15 / 16)
    expected = (1 - 0.5**16) * math.log((1 - 0.5**16) / 0.5) + 0.5**16 * math.log(0.5**16 / 0.5)
    assert rows[0]["kl"] == pytest.approx(expected) and rows[0]["kl"] < math.log(2)
