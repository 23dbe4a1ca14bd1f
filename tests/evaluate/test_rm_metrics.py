import math

import torch

from rlhfkit.evaluate.rm import pair_correlation, pearson


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
    rm_differences, gold_differences = torch.randn(50, generator=generator), torch.randn(50, generator=generator)
    flip = torch.where(torch.rand(50, generator=generator) < 0.5, -1.0, 1.0)
    assert math.isclose(pair_correlation(rm_differences, gold_differences),
                        pair_correlation(flip * rm_differences, flip * gold_differences), rel_tol=1e-9)
    # An RM that ranks every pair backwards scores -1.
    assert math.isclose(pair_correlation(-gold_differences, gold_differences), -1.0, rel_tol=1e-9)
