"""Gao et al.'s forms fitted to the frontier (evaluate/frontier.py): known α, β come back from
synthetic curves, a hand-computed case matches, and the budget table picks within the budget."""

import math
import random

import pytest

from rlhfkit.evaluate.frontier import (
    FrontierPoint,
    best_within,
    feature,
    fit_gao,
    fit_gao_reference,
    gao_curve,
)


@pytest.mark.parametrize(
    "form, alpha, beta", [("best_of_n", 0.4, 0.15), ("rl", 0.3, 0.12), ("rl", 0.5, -0.05)]
)
def test_known_alpha_and_beta_are_recovered_from_their_curve(form, alpha, beta):
    ds = [0.0, 0.3, 0.7, 1.0, 1.6, 2.4]
    gains = [gao_curve(d, alpha, beta, form) for d in ds]
    assert gains[0] == 0.0  # R(0) = 0 by form
    fitted = fit_gao(ds, gains, form)
    assert fitted == pytest.approx((alpha, beta), abs=1e-9)
    # With noise, the estimate stays near the truth and agrees with the eliminate-α oracle.
    noise = random.Random(0)
    noisy = [g + noise.gauss(0, 0.002) for g in gains]
    assert fit_gao(ds, noisy, form) == pytest.approx(fit_gao_reference(ds, noisy, form), abs=1e-9)
    assert fit_gao(ds, noisy, form) == pytest.approx((alpha, beta), abs=0.02)


def test_a_hand_computed_best_of_n_fit():
    # Three points on R = d(1 - d): d = 1 -> 0, d = 2 -> -2, d = 0.5 -> 0.25; α = β = 1 exactly.
    assert fit_gao([1.0, 2.0, 0.5], [0.0, -2.0, 0.25], "best_of_n") == pytest.approx((1.0, 1.0))
    # RL form at d = e: feature = e; R = α e − β e.
    assert feature(math.e, "rl") == pytest.approx(math.e) and feature(0.0, "rl") == 0.0


def test_fewer_than_three_points_away_from_zero_are_not_enough():
    assert fit_gao([0.0, 0.5, 1.0], [0.0, 0.1, 0.2], "rl") is None  # d = 0 carries no information
    assert fit_gao([0.5, 0.5, 0.5], [0.1, 0.2, 0.3], "best_of_n") is None  # one d: α and β not separable
    with pytest.raises(ValueError, match="form"):
        feature(1.0, "ppo")


def test_best_within_a_budget_takes_the_highest_gold_at_or_below_it():
    points = [
        FrontierPoint("step 10", kl=0.5, gold=0.30, gain=0.05, stderr=0.01, step=10),
        FrontierPoint("step 20", kl=1.8, gold=0.40, gain=0.15, stderr=0.01, step=20),
        FrontierPoint("final", kl=3.9, gold=0.35, gain=0.10, stderr=0.01, step=30, final=True),
    ]
    assert best_within(points, 1.0).label == "step 10"
    assert best_within(points, 2.0).label == "step 20"
    assert best_within(points, 4.0).label == "step 20"  # past the peak the final is worse
    assert best_within(points, 0.1) is None
    assert points[0].d == pytest.approx(math.sqrt(0.5))
    assert FrontierPoint("x", kl=-0.01, gold=0, gain=0, stderr=0).d == 0.0


def test_the_training_plots_gold_panel_falls_back_to_the_pipelines_checkpoint_evaluation(tmp_path):
    # The demo's methods run no held-out evals while training (ppo.eval_prompts=0): the gold panel then
    # draws each method's checkpoints from the pipeline's one evaluation, by step from SFT at step 0;
    # best-of-n (no step) is not a training curve. With training-time evals it keeps those.
    from rlhfkit.evaluate.frontier import FrontierPoint, MethodCurve
    from rlhfkit.evaluate.plots import checkpoint_gold_lines, panel_lines, plot_training
    from rlhfkit.run import metrics as M

    ppo = MethodCurve(
        "ppo",
        "PPO",
        "rl",
        [
            FrontierPoint("step 2", 0.4, -0.5, 0.1, 0.07, step=2),
            FrontierPoint("final", 0.8, -0.4, 0.2, 0.1, 6, True),
        ],
    )
    bon = MethodCurve("best_of_n", "best-of-n", "best_of_n", [FrontierPoint("n = 2", 0.2, -0.5, 0.1, 0.08)])
    assert checkpoint_gold_lines([bon, ppo], -0.6) == [("PPO", [(0, -0.6), (2, -0.5), (6, -0.4)])]
    metrics = {"ppo": [{"step": 1, M.PPO_REWARD_RM: 0.3, M.PPO_KL_K1: 0.1}]}
    assert panel_lines(metrics, M.GOLD_SCORE) == []
    png = plot_training(tmp_path / "t.png", metrics, [bon, ppo], -0.6)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics["ppo"].append({"step": 2, M.GOLD_SCORE: 0.1})
    assert panel_lines(metrics, M.GOLD_SCORE) == [("ppo", [(2, 0.1)])]
