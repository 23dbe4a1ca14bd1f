"""RM-vs-gold pairwise agreement on best-of-n's pool (evaluate.compare.rm_gold_agreement)."""

import math

import pytest
import torch

from rlhfkit.evaluate.compare import rm_gold_agreement, rm_gold_agreement_reference


def test_agreement_matches_the_plain_loops_with_ties_on_both_sides():
    torch.manual_seed(0)
    gold = torch.randint(0, 4, (7, 6)).double() / 4  # few levels: many gold ties, which are skipped
    reward = torch.randint(0, 5, (7, 6)).double()  # RM ties count half
    out = rm_gold_agreement(gold, reward)
    rate, pairs = rm_gold_agreement_reference(gold.tolist(), reward.tolist())
    assert out["agreement"] == pytest.approx(rate, abs=1e-12) and out["pairs"] == pairs
    # The prompt is the unit: the standard error of the ratio of per-prompt sums, by plain loops.
    sums = []
    for g, r in zip(gold.tolist(), reward.tolist()):
        a, n = 0.0, 0
        for i in range(6):
            for j in range(i + 1, 6):
                if g[i] != g[j]:
                    n += 1
                    a += 0.5 if r[i] == r[j] else float((r[i] > r[j]) == (g[i] > g[j]))
        if n:
            sums.append((a, n))
    mean_n = sum(n for _, n in sums) / len(sums)
    var = sum((a - rate * n) ** 2 for a, n in sums) / (len(sums) * (len(sums) - 1))
    assert out["stderr"] == pytest.approx(math.sqrt(var) / mean_n, rel=1e-9)
    assert out["prompts"] == len(sums)


def test_a_perfect_rm_agrees_everywhere_and_a_reversed_one_nowhere():
    gold = torch.tensor([[0.0, 0.5, 1.0, 1.0], [0.2, -0.1, 0.3, 0.0]])
    assert rm_gold_agreement(gold, 3 * gold + 1)["agreement"] == 1.0
    assert rm_gold_agreement(gold, -gold)["agreement"] == 0.0
    assert rm_gold_agreement(gold, torch.zeros_like(gold))["agreement"] == 0.5
    assert rm_gold_agreement(gold, gold)["pairs"] == 5 + 6  # prompt 0's gold tie (1.0, 1.0) is skipped


def test_every_pair_tied_by_gold_gives_no_number():
    out = rm_gold_agreement(torch.ones(3, 4), torch.randn(3, 4))
    assert out["pairs"] == 0 and math.isnan(out["agreement"])
