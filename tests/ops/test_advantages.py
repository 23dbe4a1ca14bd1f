import inspect

import pytest
import torch

from rlhfkit.ops import (
    ADVANTAGE_ESTIMATORS,
    NEEDS_VALUES,
    dr_grpo_advantages,
    gae,
    gae_advantages,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from rlhfkit.ops.advantages import (
    dr_grpo_advantages_reference,
    gae_advantages_reference,
    grpo_advantages_reference,
    reinforce_pp_advantages_reference,
    rloo_advantages_reference,
)

from .helpers import DTYPE_IDS, DTYPES_BF16, close, random_mask, right_padded_mask

REFERENCES = {
    "gae": gae_advantages_reference,
    "grpo": grpo_advantages_reference,
    "dr_grpo": dr_grpo_advantages_reference,
    "rloo": rloo_advantages_reference,
    "reinforce_pp": reinforce_pp_advantages_reference,
}
GROUP_ESTIMATORS = ["grpo", "dr_grpo", "rloo"]


def _dtype_id(p):
    return DTYPE_IDS[p[0]]


def _mask(kind, shape, g):
    mask = {
        "padded": right_padded_mask(shape, g),  # includes empty rows
        "random": random_mask(shape, g),  # holes inside rows
        "full": torch.ones(shape, dtype=torch.bool),
        "short": torch.arange(shape[1])[None, :] < torch.randint(1, 3, (shape[0], 1), generator=g),
    }[kind]
    return mask


def _first_valid(x, mask):
    """(B,) value at each row's first valid token: a group estimator's per-row advantage."""
    return x.gather(1, mask.long().argmax(dim=1, keepdim=True)).squeeze(1)


# ---------------------------------------------------------------- fast vs reference


SIZES = [(1, 1, 1), (2, 5, 2), (4, 3, 4), (6, 7, 3), (8, 13, 2), (12, 9, 4)]  # (B, T, G)
CASES = [
    (name, *size)
    for name in sorted(ADVANTAGE_ESTIMATORS)
    for size in SIZES
    if not (name == "rloo" and size[2] < 2)
]  # rloo needs G >= 2 (test_bad_arguments)


@pytest.mark.parametrize("name, B, T, G", CASES)
@pytest.mark.parametrize("mask_kind", ["padded", "random", "full", "short"])
@pytest.mark.parametrize("dt", DTYPES_BF16, ids=_dtype_id)
def test_estimators_match_reference(name, B, T, G, mask_kind, dt):
    dtype, atol, rtol = dt
    g = torch.Generator().manual_seed(80 + B * T)
    rewards = torch.randn(B, T, generator=g).to(dtype)
    values = torch.randn(B, T, generator=g).to(dtype)
    mask = _mask(mask_kind, (B, T), g)
    kwargs = dict(group_size=G, gamma=0.9, lam=0.95, eps=1e-6)
    adv, ret = ADVANTAGE_ESTIMATORS[name](rewards, values, mask.float(), **kwargs)
    assert adv.shape == ret.shape == (B, T) and adv.dtype == ret.dtype == dtype
    ref_adv, ref_ret = REFERENCES[name](rewards, values, mask, **kwargs)
    # bf16: inputs are the same rounded values; the sums run in float32 and are rounded once at the end.
    close(adv, ref_adv, atol, rtol)
    close(ret, ref_ret, atol, rtol)
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()
    if name not in NEEDS_VALUES:
        assert torch.equal(adv, ret) and adv.data_ptr() != ret.data_ptr()


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
def test_estimators_ignore_garbage_under_mask(name):
    g = torch.Generator().manual_seed(81)
    rewards, values = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    mask = random_mask((6, 8), g)
    junk_r, junk_v = torch.where(mask, rewards, float("nan")), torch.where(mask, values, float("inf"))
    fn = ADVANTAGE_ESTIMATORS[name]
    for a, b in zip(fn(junk_r, junk_v, mask, group_size=3), fn(rewards, values, mask, group_size=3)):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- hand-computed values


def test_hand_computed_group_advantages():
    # One group of G = 3: scores 1, 0, 2 (spread over tokens any way: only the row sum counts).
    #   mean = 1, unbiased std = sqrt((0 + 1 + 1) / 2) = 1
    #   grpo    = (s - 1) / (1 + eps)      = [0, -1, 1]
    #   dr_grpo = s - 1                    = [0, -1, 1]
    #   rloo    = s - mean(others)         = [1 - 1, 0 - 1.5, 2 - 0.5] = [0, -1.5, 1.5]
    rewards = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1]])
    expected = {"grpo": [0.0, -1.0, 1.0], "dr_grpo": [0.0, -1.0, 1.0], "rloo": [0.0, -1.5, 1.5]}
    for name, row_adv in expected.items():
        adv, ret = ADVANTAGE_ESTIMATORS[name](rewards, None, mask, group_size=3, eps=1e-12)
        close(adv, torch.tensor(row_adv, dtype=torch.float64)[:, None] * mask, 1e-10, 0)
        close(ret, adv, 0, 0)


def test_hand_computed_reinforce_pp_return_to_go():
    # gamma = 0.5, rewards 1, 0, 2 with a hole before the last token (skipped, not discounted):
    #   A_2 = 2,  A_1 = 0 + 0.5 * 2 = 1,  A_0 = 1 + 0.5 * 1 = 1.5
    rewards = torch.tensor([[1.0, 0.0, 7.0, 2.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1, 0]])
    adv, ret = reinforce_pp_advantages(rewards, None, mask, gamma=0.5)
    close(adv, [[1.5, 1.0, 0.0, 2.0, 0.0]], 1e-12, 0)
    close(ret, adv, 0, 0)
    # The RLHF shape with gamma = 1: the score on the last token reaches every token undiscounted.
    adv, _ = reinforce_pp_advantages(torch.tensor([[0.0, 0.0, 3.0, 0.0]]), None, torch.tensor([[1, 1, 1, 0]]))
    close(adv, [[3.0, 3.0, 3.0, 0.0]], 0, 0)


def test_gae_advantages_is_gae():
    g = torch.Generator().manual_seed(82)
    rewards, values = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    mask = right_padded_mask((4, 6), g)
    for a, b in zip(
        gae_advantages(rewards, values, mask, group_size=2, gamma=0.99, lam=0.9),
        gae(rewards, values, mask, gamma=0.99, lam=0.9),
    ):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- properties


def _group_inputs(seed, B=12, T=7):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = right_padded_mask((B, T), g)
    mask[:, 0] = True  # every row visible, so each row's advantage can be read off its first token
    return rewards, mask


@pytest.mark.parametrize("G", [2, 3, 4, 6])
def test_group_advantages_sum_to_zero_and_rloo_is_rescaled_dr_grpo(G):
    rewards, mask = _group_inputs(83 + G)
    rows = {
        name: _first_valid(ADVANTAGE_ESTIMATORS[name](rewards, None, mask, group_size=G)[0], mask)
        for name in GROUP_ESTIMATORS
    }
    for name in GROUP_ESTIMATORS:
        close(rows[name].view(-1, G).sum(dim=1), torch.zeros(12 // G), 1e-12, 0)
    close(rows["rloo"], G / (G - 1) * rows["dr_grpo"], 1e-12, 1e-12)
    # grpo = dr_grpo / (std + eps); with a tiny eps each group's advantages have unbiased std 1.
    eps = 1e-12
    grpo = _first_valid(grpo_advantages(rewards, None, mask, group_size=G, eps=eps)[0], mask).view(-1, G)
    std = rows["dr_grpo"].view(-1, G).std(dim=1, keepdim=True)
    close(grpo, rows["dr_grpo"].view(-1, G) / (std + eps), 1e-12, 1e-12)
    close(grpo.std(dim=1), torch.ones(12 // G), 1e-9, 0)


def test_group_advantages_ignore_a_per_group_offset_and_grpo_a_scale():
    rewards, mask = _group_inputs(84)
    last = mask.long().cumsum(1).argmax(1)  # (B,) each row's last valid token
    offset = torch.zeros_like(rewards)
    per_group = torch.tensor([5.0, -2.0, 0.5], dtype=torch.float64)
    offset[torch.arange(12), last] = per_group.repeat_interleave(4)  # the same offset for a group's 4 rows
    for name in GROUP_ESTIMATORS:
        fn = ADVANTAGE_ESTIMATORS[name]
        close(
            fn(rewards + offset, None, mask, group_size=4)[0],
            fn(rewards, None, mask, group_size=4)[0],
            1e-12,
            1e-12,
        )
    close(
        grpo_advantages(7.0 * rewards, None, mask, group_size=4, eps=1e-12)[0],
        grpo_advantages(rewards, None, mask, group_size=4, eps=1e-12)[0],
        1e-9,
        1e-9,
    )


def test_groups_are_prompt_major_and_independent():
    # Changing a row of group 1 leaves group 0's advantages alone.
    rewards, mask = _group_inputs(85)
    changed = rewards.clone()
    changed[5, 0] += 10.0
    for name in GROUP_ESTIMATORS:
        fn = ADVANTAGE_ESTIMATORS[name]
        before, after = fn(rewards, None, mask, group_size=4)[0], fn(changed, None, mask, group_size=4)[0]
        assert torch.equal(before[:4], after[:4]) and torch.equal(before[8:], after[8:])
        assert not torch.equal(before[4:8], after[4:8])


def test_single_sample_groups_and_equal_scores_give_zero_advantages():
    rewards, mask = _group_inputs(86)
    for name in ("grpo", "dr_grpo"):
        adv, _ = ADVANTAGE_ESTIMATORS[name](rewards, None, mask, group_size=1)
        assert (adv == 0).all(), name
    same = torch.zeros(4, 5, dtype=torch.float64)
    same[:, -1] = 0.3
    for name in GROUP_ESTIMATORS:
        adv, _ = ADVANTAGE_ESTIMATORS[name](same, None, torch.ones(4, 5), group_size=4)
        close(adv, torch.zeros(4, 5), 1e-12, 0)


def test_reinforce_pp_is_gae_with_a_zero_critic_and_lam_one():
    rewards, mask = _group_inputs(87)
    for gamma in (1.0, 0.9):
        adv, _ = reinforce_pp_advantages(rewards, torch.randn(12, 7), mask, gamma=gamma, lam=0.3)
        expected, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=gamma, lam=1.0)
        assert torch.equal(adv, expected)


# ---------------------------------------------------------------- registry and errors


def test_registry_shares_one_signature():
    assert set(ADVANTAGE_ESTIMATORS) == {"gae", "grpo", "dr_grpo", "rloo", "reinforce_pp"}
    assert NEEDS_VALUES == {"gae"}
    signatures = {str(inspect.signature(fn)) for fn in ADVANTAGE_ESTIMATORS.values()}
    assert len(signatures) == 1, signatures  # names, kinds, defaults and annotations alike
    shared = ["rewards", "values", "mask", "group_size", "gamma", "lam", "eps"]
    assert list(inspect.signature(grpo_advantages).parameters) == shared
    rewards, mask = _group_inputs(88, B=4)
    for name, fn in ADVANTAGE_ESTIMATORS.items():
        values = torch.zeros_like(rewards) if name in NEEDS_VALUES else None
        adv, ret = fn(rewards, values, mask, group_size=2, gamma=1.0, lam=0.95, eps=1e-6)
        assert adv.shape == ret.shape == rewards.shape


def test_bad_arguments():
    x, mask = torch.zeros(6, 4), torch.ones(6, 4)
    for name in GROUP_ESTIMATORS:
        with pytest.raises(ValueError, match="multiple of group_size"):
            ADVANTAGE_ESTIMATORS[name](x, None, mask, group_size=4)
        with pytest.raises(ValueError, match="group_size"):
            ADVANTAGE_ESTIMATORS[name](x, None, mask, group_size=0)
    with pytest.raises(ValueError, match=">= 2"):
        rloo_advantages(x, None, mask, group_size=1)
    with pytest.raises(ValueError, match="needs values"):
        gae_advantages(x, None, mask)
    with pytest.raises(ValueError, match="eps"):
        grpo_advantages(x, None, mask, group_size=2, eps=0.0)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        dr_grpo_advantages(x, None, mask[:, :-1], group_size=2)
    with pytest.raises(ValueError, match="values shape"):
        reinforce_pp_advantages(x, torch.zeros(6, 3), mask)
    with pytest.raises(ValueError, match="gamma"):
        reinforce_pp_advantages(x, None, mask, gamma=1.5)
