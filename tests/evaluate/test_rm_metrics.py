import math
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.data.preferences import TokenizedPairs
from rlhfkit.evaluate.rm import pair_correlation, pearson, rm_metrics
from rlhfkit.run import metrics as M


def test_pair_correlation_ignores_per_prompt_offsets_that_sink_the_pooled_one():
    gold_chosen = torch.tensor([0.9, 0.2, -0.1, 0.6])
    gold_rejected = torch.tensor([0.1, -0.6, -0.8, 0.5])
    # A perfect within-prompt ranker (reward = 2 * gold) with a large arbitrary offset per prompt.
    offsets = torch.tensor([5.0, -7.0, 3.0, -9.0])
    chosen, rejected = 2 * gold_chosen + offsets, 2 * gold_rejected + offsets
    pooled = pearson(torch.cat([chosen, rejected]), torch.cat([gold_chosen, gold_rejected]))
    assert pooled < 0.3
    assert math.isclose(pair_correlation(chosen - rejected, gold_chosen - gold_rejected), 1.0, rel_tol=1e-9)


def test_pair_correlation_does_not_depend_on_which_response_is_called_chosen():
    generator = torch.Generator().manual_seed(0)
    rm_differences, gold_differences = (
        torch.randn(50, generator=generator),
        torch.randn(50, generator=generator),
    )
    flip = torch.where(torch.rand(50, generator=generator) < 0.5, -1.0, 1.0)
    assert math.isclose(
        pair_correlation(rm_differences, gold_differences),
        pair_correlation(flip * rm_differences, flip * gold_differences),
        rel_tol=1e-9,
    )
    # An RM that ranks every pair backwards scores -1.
    assert math.isclose(pair_correlation(-gold_differences, gold_differences), -1.0, rel_tol=1e-9)


class LookupRM(torch.nn.Module):
    """A stand-in reward model: each one-token input's reward is looked up by its token id."""

    def __init__(self, rewards: torch.Tensor):
        super().__init__()
        self.rewards = rewards

    def forward(self, input_ids, attention_mask=None, **unused):
        return SimpleNamespace(logits=self.rewards[input_ids[:, 0]][:, None])


def ece_of(p_chosen: torch.Tensor) -> tuple[float, list[dict]]:
    """rm/ece and the calibration table of an RM whose P(chosen > rejected) on pair i is p_chosen[i]."""
    n = p_chosen.shape[0]
    rewards = torch.zeros(2 * n)
    # Pair i: chosen is token 2i with reward logit(p), rejected is token 2i + 1 with reward 0.
    rewards[0::2] = torch.logit(p_chosen.double()).float()
    pairs = TokenizedPairs(
        chosen_ids=[[2 * i] for i in range(n)],
        rejected_ids=[[2 * i + 1] for i in range(n)],
        prompt_lengths=[0] * n,  # LookupRM has no score head: it reads the whole rows
    )
    rows = [{} for _ in range(n)]
    metrics, table = rm_metrics(LookupRM(rewards), pairs, rows, pad_token_id=0, batch_size=4096)
    return metrics[M.RM_ECE], table


def test_ece_sees_a_model_that_ranks_every_pair_backwards_with_confidence():
    # p = 0.05 on every pair: 95% sure of the wrong side each time. Reading "accuracy" off p alone
    # (p > 0.5) called this calibrated (ECE 0.05), as good as a perfect model.
    ece, table = ece_of(torch.full((200,), 0.05))
    assert ece == pytest.approx(0.95, abs=1e-4)
    assert [(b["n"], b["accuracy"]) for b in table] == [(200, 0.0)]


def test_ece_of_a_coin_flip_model_is_zero():
    # p = 0.5 on every pair is honest about knowing nothing: half right at confidence 0.5.
    ece, table = ece_of(torch.full((200,), 0.5))
    assert ece == pytest.approx(0.0, abs=1e-6)
    assert table[0]["accuracy"] == 0.5 and table[0]["confidence"] == pytest.approx(0.5)


def test_ece_of_a_calibrated_model_is_near_zero():
    # The model favours one response of each pair with probability q; that response is the chosen
    # one with probability exactly q, so P(chosen > rejected) is q or 1 - q as the label falls.
    generator = torch.Generator().manual_seed(0)
    n = 20_000
    q = 0.02 + 0.96 * torch.rand(n, generator=generator, dtype=torch.float64)
    favoured_is_chosen = torch.rand(n, generator=generator, dtype=torch.float64) < q
    ece, table = ece_of(torch.where(favoured_is_chosen, q, 1 - q))
    assert ece < 0.015  # sampling noise alone: ~0.005 with 20,000 pairs in 5 bins
    assert len(table) == 5 and all(abs(b["accuracy"] - b["confidence"]) < 0.03 for b in table)
