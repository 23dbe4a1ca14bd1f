import math

import pytest
import torch

from rlhfkit.ops import PREFERENCE_LOSSES, dpo_loss, sequence_logps, simpo_loss
from rlhfkit.ops.preference import dpo_loss_reference, sequence_logps_reference, simpo_loss_reference

from .helpers import DTYPE_IDS, DTYPES, DTYPES_BF16, SHAPES_2D, close, random_mask

STAT_KEYS = {
    "loss",
    "accuracy",
    "margin",
    "chosen_reward",
    "rejected_reward",
    "chosen_logp",
    "rejected_logp",
}


def _dtype_id(p):
    return DTYPE_IDS[p[0]]


def _is_detached_scalar(stats):
    return all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def _f64(*values):
    return torch.tensor(values, dtype=torch.float64)


# ---------------------------------------------------------------- sequence log-probs


@pytest.mark.parametrize("shape", SHAPES_2D)
@pytest.mark.parametrize("dt", DTYPES_BF16, ids=_dtype_id)
@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_matches_reference(shape, dt, average):
    dtype, atol, rtol = dt
    g = torch.Generator().manual_seed(70)
    logprobs = (-3 * torch.rand(shape, generator=g)).to(dtype)
    mask = random_mask(shape, g)  # holes and (for small T) empty rows
    out = sequence_logps(logprobs, mask.float(), average=average)
    assert out.shape == shape[:1]
    # Half precision comes back as float32: a bf16 sum would lose the differences DPO needs.
    assert out.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)
    atol = 1e-5 if dtype == torch.bfloat16 else atol  # bf16 inputs, summed and returned in float32
    close(out, sequence_logps_reference(logprobs, mask, average), atol, rtol)


def test_sequence_logps_known_values_garbage_and_gradient():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, float("nan"), float("-inf")], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    lp = logprobs.clone().requires_grad_(True)
    summed = sequence_logps(lp, mask)
    close(summed, [-6.0, -0.5, 0.0], 0, 0)  # an empty row gives 0
    close(sequence_logps(logprobs, mask, average=True), [-2.0, -0.5, 0.0], 0, 0)
    summed.sum().backward()
    close(lp.grad, mask, 0, 0)  # d sum / d logprob = 1 on valid tokens, exactly 0 under the mask
    with pytest.raises(ValueError, match="mask shape"):
        sequence_logps(logprobs, mask[:, :2])


# ---------------------------------------------------------------- DPO / cDPO / IPO: hand examples


def _hand_pairs():
    """Two pairs, sequence log-probs chosen so that the arithmetic is easy:
    pair 0: policy_chosen -10, ref_chosen -12 (log ratio +2); policy_rejected -15, ref -15 (0)
            -> h = 2 - 0 = 2
    pair 1: policy_chosen -5, ref -4 (-1); policy_rejected -6, ref -5 (-1) -> h = 0, a tie, in
            which both responses fell below the reference ("both fall").
    """
    return _f64(-10.0, -5.0), _f64(-15.0, -6.0), _f64(-12.0, -4.0), _f64(-15.0, -5.0)


def _check_hand_stats(stats):
    # beta = 0.1. chosen rewards 0.1 * (2, -1) = (0.2, -0.1), rejected 0.1 * (0, -1) = (0, -0.1).
    assert _is_detached_scalar(stats) and set(stats) == STAT_KEYS
    close(stats["accuracy"], 0.75, 0, 0)  # pair 0 right (1), pair 1 a tie (0.5)
    close(stats["margin"], 0.1, 1e-15, 0)  # mean beta * h = (0.2 + 0) / 2
    close(stats["chosen_reward"], 0.05, 1e-15, 0)  # (0.2 - 0.1) / 2
    close(stats["rejected_reward"], -0.05, 1e-15, 0)  # (0 - 0.1) / 2
    close(stats["chosen_logp"], -7.5, 0, 0)  # (-10 - 5) / 2
    close(stats["rejected_logp"], -10.5, 0, 0)  # (-15 - 6) / 2


def test_dpo_sigmoid_hand_example():
    # beta = 0.1: pair 0 has beta * h = 0.2, -log sigmoid(0.2) = log(1 + e^-0.2) = 0.5981388693815918;
    # pair 1 has h = 0, -log sigmoid(0) = log 2 = 0.6931471805599453. Mean = 0.6456430249707685.
    loss, stats = dpo_loss(*_hand_pairs(), beta=0.1)
    close(loss, 0.6456430249707685, 1e-15, 0)
    close(stats["loss"], 0.6456430249707685, 1e-15, 0)
    _check_hand_stats(stats)


def test_cdpo_hand_example():
    # eps = 0.1, beta * h = 0.2: 0.9 * log(1 + e^-0.2) + 0.1 * log(1 + e^0.2)
    #   = 0.9 * 0.5981388693815918 + 0.1 * 0.7981388693815918 = 0.6181388693815918
    # (= DPO's 0.598139 + eps * beta * h, since log(1 + e^x) - log(1 + e^-x) = x);
    # the tie still costs log 2. Mean = (0.6181388693815918 + 0.6931471805599453) / 2.
    loss, stats = dpo_loss(*_hand_pairs(), beta=0.1, label_smoothing=0.1)
    close(loss, 0.6556430249707685, 1e-15, 0)
    _check_hand_stats(stats)


def test_ipo_hand_example():
    # beta = 0.1: target h = 1 / (2 * 0.1) = 5. Pair 0: (2 - 5)^2 = 9; pair 1: (0 - 5)^2 = 25. Mean 17.
    loss, stats = dpo_loss(*_hand_pairs(), beta=0.1, loss_type="ipo")
    close(loss, 17.0, 1e-13, 0)
    _check_hand_stats(stats)
    # beta = 0.25 puts the target at h = 2: pair 0 alone costs 0.
    one = [t[:1] for t in _hand_pairs()]
    close(dpo_loss(*one, beta=0.25, loss_type="ipo")[0], 0.0, 1e-15, 0)


def test_simpo_hand_example():
    # beta = 2, gamma = 0.5, averaged log-probs c = -1.0, r = -1.5: z = 2 * 0.5 - 0.5 = 0.5,
    # -log sigmoid(0.5) = log(1 + e^-0.5) = 0.4740769841801067. Second pair c = r = -2: z = -0.5,
    # log(1 + e^0.5) = 0.4740769841801067 + 0.5. Mean = 0.7240769841801067.
    loss, stats = simpo_loss(_f64(-1.0, -2.0), _f64(-1.5, -2.0), beta=2.0, gamma=0.5)
    close(loss, 0.7240769841801067, 1e-15, 0)
    assert _is_detached_scalar(stats) and set(stats) == STAT_KEYS
    close(stats["accuracy"], 0.75, 0, 0)  # right, tie
    close(stats["margin"], 0.5, 1e-15, 0)  # mean 2 * (0.5, 0); gamma is not part of the reward
    close(stats["chosen_reward"], -3.0, 0, 0)  # 2 * (-1 - 2) / 2
    close(stats["rejected_reward"], -3.5, 0, 0)  # 2 * (-1.5 - 2) / 2
    close(stats["chosen_logp"], -1.5, 0, 0)
    close(stats["rejected_logp"], -1.75, 0, 0)


def test_first_step_policy_equals_reference():
    # Policy == reference gives h = 0 exactly: DPO and cDPO cost log 2, IPO (1 / (2 beta))^2,
    # and every pair is a tie (accuracy 0.5, margin 0).
    g = torch.Generator().manual_seed(71)
    chosen, rejected = -20 * torch.rand(6, generator=g), -20 * torch.rand(6, generator=g)
    for loss_type, eps, expected in [
        ("sigmoid", 0.0, math.log(2)),
        ("sigmoid", 0.2, math.log(2)),
        ("ipo", 0.0, 25.0),
    ]:
        loss, stats = dpo_loss(chosen, rejected, chosen.clone(), rejected.clone(), 0.1, loss_type, eps)
        close(loss, expected, 1e-6, 1e-6)
        assert stats["accuracy"].item() == 0.5 and stats["margin"].item() == 0.0


# ---------------------------------------------------------------- against the naive references

DPO_VARIANTS = [("sigmoid", 0.0), ("sigmoid", 0.1), ("sigmoid", 0.3), ("ipo", 0.0)]


def _random_logps(batch, dtype, g, scale=30.0):
    """(B,) sequence log-probs of a plausible size; the references' inputs differ by ~1 nat."""
    policy_chosen = -scale * torch.rand(batch, generator=g, dtype=torch.float64)
    policy_rejected = -scale * torch.rand(batch, generator=g, dtype=torch.float64)
    ref_chosen = policy_chosen + torch.randn(batch, generator=g, dtype=torch.float64)
    ref_rejected = policy_rejected + torch.randn(batch, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)]


@pytest.mark.parametrize("batch", [1, 4, 33])
@pytest.mark.parametrize("dt", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("variant", DPO_VARIANTS, ids=lambda v: f"{v[0]}-eps{v[1]}")
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_matches_reference(batch, dt, variant, beta):
    dtype, atol, rtol = dt
    loss_type, eps = variant
    g = torch.Generator().manual_seed(72)
    inputs = _random_logps(batch, dtype, g)
    loss, stats = dpo_loss(*inputs, beta=beta, loss_type=loss_type, label_smoothing=eps)
    assert loss.dtype == dtype and loss.dim() == 0 and _is_detached_scalar(stats)
    ref = dpo_loss_reference(*inputs, beta=beta, loss_type=loss_type, label_smoothing=eps)
    close(loss, ref["loss"], atol, rtol)
    close(stats["loss"], ref["loss"], atol, rtol)
    close(stats["accuracy"], ref["accuracy"], 1e-6, 0)  # one pair would be >= 1/33
    close(stats["margin"], ref["margin"], atol, rtol)
    pc, pr, rc, rr = (t.double() for t in inputs)
    close(stats["chosen_reward"], (beta * (pc - rc)).mean(), atol, rtol)
    close(stats["rejected_reward"], (beta * (pr - rr)).mean(), atol, rtol)
    close(stats["chosen_logp"], pc.mean(), atol, rtol)
    close(stats["rejected_logp"], pr.mean(), atol, rtol)


@pytest.mark.parametrize("batch", [1, 4, 33])
@pytest.mark.parametrize("dt", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("gamma", [0.0, 0.8])
def test_simpo_loss_matches_reference(batch, dt, gamma):
    dtype, atol, rtol = dt
    g = torch.Generator().manual_seed(73)
    chosen = (-3 * torch.rand(batch, generator=g)).to(dtype)
    rejected = (-3 * torch.rand(batch, generator=g)).to(dtype)
    loss, stats = simpo_loss(chosen, rejected, beta=2.5, gamma=gamma)
    assert loss.dtype == dtype and _is_detached_scalar(stats)
    ref = simpo_loss_reference(chosen, rejected, beta=2.5, gamma=gamma)
    for key in ("loss", "accuracy", "margin"):
        close(stats[key], ref[key], atol, rtol)
    close(loss, ref["loss"], atol, rtol)


# ---------------------------------------------------------------- gradients


def _leaves(*values):
    return [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]


@pytest.mark.parametrize("loss_type, eps", [("sigmoid", 0.0), ("sigmoid", 0.25)])
def test_dpo_gradient_raises_chosen_and_lowers_rejected(loss_type, eps):
    # h = (2 - 0, 1 - 0, -1 - 2) = (2, 1, -3); beta = 0.5 keeps beta * h <= 1 below the optimum of
    # cDPO with eps = 0.25, log(0.75 / 0.25) = 1.10, where its gradient would change sign.
    pc, pr, rc, rr = _leaves([-10.0, -4.0, -7.0], [-9.0, -8.0, -7.0], [-12.0, -5.0, -6.0], [-9.0, -8.0, -9.0])
    loss, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type=loss_type, label_smoothing=eps)
    loss.backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # descent: chosen up, rejected down
    close(pc.grad, -pr.grad, 0, 0)  # the loss sees only h
    assert rc.grad is None and rr.grad is None  # the reference is a constant


def test_simpo_gradient_raises_chosen_and_lowers_rejected():
    c, r = _leaves([-1.0, -2.0, -0.5], [-1.5, -1.0, -0.5])  # right, wrong and tied pairs
    simpo_loss(c, r, beta=2.0, gamma=1.0)[0].backward()
    assert (c.grad < 0).all() and (r.grad > 0).all()
    close(c.grad, -r.grad, 0, 0)


@pytest.mark.parametrize("h, sign", [(0.0, -1), (4.9, -1), (5.1, 1), (30.0, 1)])
def test_ipo_gradient_points_to_its_target(h, sign):
    # beta = 0.1: target h* = 5; dloss/dh = 2 (h - 5). Below the target descent raises chosen
    # (negative gradient), above it lowers chosen: IPO does not push the margin without bound.
    pc, pr = _leaves([-10.0 + h], [-12.0])
    loss, _ = dpo_loss(pc, pr, _f64(-10.0), _f64(-12.0), beta=0.1, loss_type="ipo")
    loss.backward()
    close(pc.grad, [2 * (h - 5.0)], 1e-12, 1e-12)
    assert torch.sign(pc.grad).item() == sign and torch.sign(pr.grad).item() == -sign


def test_cdpo_with_zero_smoothing_is_sigmoid_exactly():
    g = torch.Generator().manual_seed(74)
    inputs = _random_logps(16, torch.float32, g)
    grads = []
    for kwargs in ({}, {"loss_type": "sigmoid", "label_smoothing": 0.0}):
        pc, pr = (t.clone().requires_grad_(True) for t in inputs[:2])
        loss, stats = dpo_loss(pc, pr, *inputs[2:], beta=0.3, **kwargs)
        loss.backward()
        grads.append((loss, stats, pc.grad, pr.grad))
    (l0, s0, *g0), (l1, s1, *g1) = grads
    assert torch.equal(l0, l1) and all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert all(torch.equal(s0[k], s1[k]) for k in s0)


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.3])
def test_cdpo_gradient_vanishes_at_its_optimum(eps):
    # dloss/d(beta h) = -(1 - eps) sigmoid(-x) + eps sigmoid(x) = 0 at x* = log((1 - eps) / eps):
    # with labels flipped at rate eps, the best the policy can do is P(chosen wins) = 1 - eps.
    beta = 0.1
    h_star = math.log((1 - eps) / eps) / beta
    for offset, sign in [(0.0, 0), (-1.0, -1), (1.0, 1)]:
        pc, pr = _leaves([-20.0 + h_star + offset], [-30.0])
        dpo_loss(pc, pr, _f64(-20.0), _f64(-30.0), beta=beta, label_smoothing=eps)[0].backward()
        if sign == 0:
            close(pc.grad, [0.0], 1e-12, 0)
        else:  # below the optimum chosen is pushed up, above it down
            assert torch.sign(pc.grad).item() == sign and torch.sign(pr.grad).item() == -sign


# ---------------------------------------------------------------- registry and bad input


def test_preference_loss_registry_and_bad_input():
    assert set(PREFERENCE_LOSSES) == {"sigmoid", "ipo"}  # cDPO is "sigmoid" with label_smoothing > 0
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="'ipo', 'sigmoid'"):
        dpo_loss(x, x, x, x, beta=0.1, loss_type="cdpo")
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match="not 'ipo'"):
        dpo_loss(x, x, x, x, beta=0.1, loss_type="ipo", label_smoothing=0.1)
    for eps in (-0.1, 0.5, 0.9):
        with pytest.raises(ValueError, match="label_smoothing"):
            dpo_loss(x, x, x, x, beta=0.1, label_smoothing=eps)
    with pytest.raises(ValueError, match="ref_rejected shape"):
        dpo_loss(x, x, x, torch.zeros(4), beta=0.1)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        dpo_loss(*(torch.zeros(2, 3),) * 4, beta=0.1)
    with pytest.raises(ValueError, match="at least one pair"):
        dpo_loss(*(torch.zeros(0),) * 4, beta=0.1)
    with pytest.raises(ValueError, match="gamma"):
        simpo_loss(x, x, beta=2.0, gamma=-0.5)
    with pytest.raises(ValueError, match="beta"):
        simpo_loss(x, x, beta=-1.0, gamma=0.5)
    with pytest.raises(ValueError, match="rejected_avg_logp shape"):
        simpo_loss(x, torch.zeros(2), beta=2.0, gamma=0.5)
