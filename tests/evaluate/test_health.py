"""Each health rule fires on its symptom and stays quiet on a healthy run (false-alarm rates over many
simulated runs: test_health_false_alarms.py)."""

import math

import pytest
import torch

from rlhfkit.evaluate.compare import paired_gain
from rlhfkit.evaluate.health import HeldOutEvals, health_warnings, kl_check_stats
from rlhfkit.run import metrics as M
from tests.evaluate.simulated_runs import kl_records, sampled_responses

HEALTHY = {
    M.PPO_KL_K1: 0.5,
    M.PPO_KL_K1_STDERR: 0.05,
    M.PPO_KL_EXACT_ROWS: 8,
    M.PPO_KL_K1_EXACT_DIFF: 0.01,
    M.PPO_KL_K1_EXACT_DIFF_VAR: 0.5,
    M.PPO_RATIO_FIRST: 1.0,
    M.PPO_LOGRATIO_FIRST: 0.0,
    M.PPO_VF_LOSS: 0.1,
    M.PPO_EOS_RATE: 0.95,
    M.PPO_ENTROPY: 1.0,
}


def kinds(history, window=3):
    return {w.split(":")[0] for w in health_warnings(history, window)}


def first_warnings(history: list[dict], window: int) -> dict[str, int]:
    """{kind: the first iteration (1-based) whose check names it}, checking after every iteration."""
    first = {}
    for i in range(len(history)):
        for kind in kinds(history[: i + 1], window):
            first.setdefault(kind, i + 1)
    return first


def test_healthy_run_is_quiet():
    assert kinds([HEALTHY] * 20) == set()


def test_each_symptom_names_its_rule_and_knob():
    assert kinds([HEALTHY] * 3 + [{**HEALTHY, M.PPO_KL_K1: -0.2}] * 3) == {"negative-kl"}
    assert kinds([HEALTHY, {**HEALTHY, M.PPO_LOGRATIO_FIRST: 0.05}]) == {"ratio-first"}
    assert kinds([HEALTHY] * 3 + [{**HEALTHY, M.PPO_VF_LOSS: 5.0}]) == {"value-loss"}
    assert kinds([HEALTHY] * 3 + [{**HEALTHY, M.PPO_EOS_RATE: 0.2}] * 3) == {"eos-collapse"}
    assert kinds([HEALTHY] * 3 + [{**HEALTHY, M.PPO_ENTROPY: 0.1}] * 3) == {"entropy-collapse"}
    warning = health_warnings([HEALTHY] * 3 + [{**HEALTHY, M.PPO_EOS_RATE: 0.2}] * 3, window=3)[0]
    assert "ppo.no_eos_penalty" in warning and "\n" not in warning
    # One low batch is not a collapse: the rule compares means over a window.
    assert kinds([HEALTHY] * 3 + [{**HEALTHY, M.PPO_EOS_RATE: 0.2}] + [HEALTHY]) == set()


def test_negative_kl_threshold_scales_with_the_standard_error():
    # KL ~0.005 with 16 rows a batch: the window mean's standard error (~0.01) is larger than the old
    # fixed -0.01 threshold, which 8-9% of honest windows crossed. Scaled by the logged standard
    # error, no window of 200 trips the rule.
    generator = torch.Generator().manual_seed(0)
    k1, exact = sampled_responses(8000, generator, scale=0.03)
    assert 0.003 < exact.mean() < 0.006
    history = kl_records(k1 - (k1 - exact).mean(), exact, 1000, batch=16, exact_rows=4, generator=generator)
    means = [sum(r[M.PPO_KL_K1] for r in history[i : i + 5]) / 5 for i in range(0, 1000, 5)]
    assert 0.04 < sum(m < -0.01 for m in means) / len(means) < 0.15
    assert not any("negative-kl" in kinds(history[: i + 5], window=5) for i in range(0, 1000, 5))


def test_negative_kl_fires_on_a_sampling_warp_that_drives_k1_below_zero():
    # A policy flatter than its reference, sampled from its top 4 tokens and scored without the warp
    # (design §6.7): k1 < 0 although the exact KL is > 1. Sampled honestly it is quiet.
    generator = torch.Generator().manual_seed(1)
    warped = kl_records(*sampled_responses(4000, generator, sharpen=0.7, top_k=4), 10, 16, 4, generator)
    assert first_warnings(warped, window=5) == {"negative-kl": 5}
    assert "rollout.top_k" in health_warnings(warped, window=5)[0]
    honest = kl_records(*sampled_responses(4000, generator, sharpen=0.7), 40, 16, 4, generator)
    assert first_warnings(honest, window=5) == {}


def test_kl_estimator_bias_fires_on_a_warp_that_keeps_k1_positive():
    # A policy sharper than its reference, sampled from its top 5 tokens: k1 is biased upward, stays
    # positive (negative-kl is blind), and 4 exact-KL rows an iteration (the SmolLM2 recipe) are pooled
    # until 64 rows show the bias.
    generator = torch.Generator().manual_seed(2)
    warped = kl_records(*sampled_responses(4000, generator, sharpen=1.5, top_k=5), 40, 16, 4, generator)
    assert all(r[M.PPO_KL_K1] > 0 for r in warped)
    fired = first_warnings(warped, window=5)
    assert set(fired) == {"kl-estimator-bias"} and 16 <= fired["kl-estimator-bias"] <= 30
    assert "rollout.top_k" in health_warnings(warped, window=5)[0]
    honest = kl_records(*sampled_responses(4000, generator, sharpen=1.5), 100, 16, 4, generator)
    assert first_warnings(honest, window=5) == {}


def test_ratio_first_reads_the_mean_absolute_log_ratio_that_dropout_moves():
    # Dropout 0.1 in the update pass of the tiny model, measured: mean |log ratio| 0.081 on the first
    # minibatch while the mean ratio is 1.0006 (E_old[pi_new / pi_old] = 1 for any new policy).
    dropout = {**HEALTHY, M.PPO_LOGRATIO_FIRST: 0.081, M.PPO_RATIO_FIRST: 1.0006}
    assert kinds([HEALTHY, dropout]) == {"ratio-first"}
    assert "model.disable_dropout=true" in health_warnings([dropout])[0]
    assert kinds([{**HEALTHY, M.PPO_LOGRATIO_FIRST: 1e-7, M.PPO_RATIO_FIRST: 1 + 1e-7}]) == set()
    # Logs from before ppo/logratio_first: the ratio itself, as before.
    assert kinds([{M.PPO_RATIO_FIRST: 1.02}]) == {"ratio-first"}


def over_optimisation_history() -> list[dict]:
    """The tiny recipe with ppo.kl_coef=0, recorded style: held-out gold peaks at 0.337 (iteration 50,
    KL 3.6) and falls to 0.228 (iteration 90, KL 11.4) while the RM's reward keeps climbing (1.155 ->
    1.263). Evals every 10 iterations on 64 prompts, paired standard errors 0.02-0.04 for gold."""
    kl_points = [
        (1, 0.0),
        (10, 0.3),
        (20, 0.9),
        (30, 1.7),
        (40, 2.6),
        (50, 3.6),
        (60, 5.0),
        (70, 6.9),
        (80, 9.0),
        (90, 11.4),
    ]
    # iteration: (gold, RM reward, gold gain s.e., RM gain s.e., gold drop-from-best s.e.)
    evals = {
        1: (0.205, 0.020, None, None, None),
        10: (0.248, 0.380, 0.030, 0.110, 0.0),
        20: (0.281, 0.660, 0.033, 0.125, 0.0),
        30: (0.312, 0.880, 0.035, 0.135, 0.0),
        40: (0.329, 1.040, 0.036, 0.140, 0.0),
        50: (0.337, 1.155, 0.037, 0.142, 0.0),
        60: (0.318, 1.192, 0.037, 0.144, 0.021),
        70: (0.291, 1.221, 0.038, 0.146, 0.027),
        80: (0.259, 1.244, 0.038, 0.148, 0.031),
        90: (0.228, 1.263, 0.039, 0.150, 0.034),
    }
    history = []
    for done in range(1, 91):
        (a, kl_a), (b, kl_b) = next((p, q) for p, q in zip(kl_points, kl_points[1:]) if p[0] <= done <= q[0])
        kl = kl_a + (kl_b - kl_a) * (done - a) / (b - a)
        variance = 2 * kl + 0.01  # of a response's k1 (and of d = k1 - exact), 64 rows, all with an exact KL
        record = {
            M.PPO_KL_K1: kl,
            M.PPO_KL_K1_STDERR: math.sqrt(variance / 64),
            M.PPO_KL_EXACT_ROWS: 64,
            M.PPO_KL_K1_EXACT_DIFF: (-1) ** done * 0.5 * math.sqrt(variance / 64),
            M.PPO_KL_K1_EXACT_DIFF_VAR: variance,
            M.PPO_RATIO_FIRST: 1.0,
            M.PPO_LOGRATIO_FIRST: 0.0,
            M.PPO_VF_LOSS: 0.2 + 0.003 * done,
            M.PPO_EOS_RATE: 0.93,
            M.PPO_ENTROPY: 2.0 - 0.008 * done,
            M.PPO_REWARD_RM: 0.02 + 1.25 * min(done, 50) / 50 + 0.11 * max(done - 50, 0) / 40,
        }
        if done in evals:
            gold, reward, gold_se, reward_se, drop_se = evals[done]
            record.update({M.GOLD_SCORE: gold, M.HELDOUT_REWARD_RM: reward})
            if gold_se is not None:
                record.update(
                    {
                        M.GOLD_GAIN_STDERR: gold_se,
                        M.HELDOUT_REWARD_GAIN_STDERR: reward_se,
                        M.GOLD_DROP_STDERR: drop_se,
                    }
                )
        history.append(record)
    return history


def test_reward_hacking_fires_on_recorded_over_optimisation_without_a_kl_penalty():
    history = over_optimisation_history()
    # Gold's fall from its best is 2.5+ paired standard errors at iteration 80 (3.2 at 90).
    assert first_warnings(history, window=5) == {"reward-hacking": 80}
    warning = health_warnings(history, window=5)[0]
    assert "ppo.kl_coef" in warning and "below its best eval" in warning


def test_reward_hacking_flat_gold_needs_two_evals_in_a_row_and_learning_together_is_quiet():
    def evals(golds, rewards, gold_se=0.03, reward_se=0.1):
        return [
            {
                M.GOLD_SCORE: g,
                M.HELDOUT_REWARD_RM: r,
                **(
                    {
                        M.GOLD_GAIN_STDERR: gold_se,
                        M.HELDOUT_REWARD_GAIN_STDERR: reward_se,
                        M.GOLD_DROP_STDERR: 0.02,
                    }
                    if i
                    else {}
                ),
            }
            for i, (g, r) in enumerate(zip(golds, rewards))
        ]

    flat = evals([0.50, 0.51, 0.49, 0.505], [0.0, 0.5, 0.9, 1.2])
    assert first_warnings(flat, window=5) == {"reward-hacking": 3}
    assert kinds(evals([0.50, 0.60, 0.70, 0.80], [0.0, 0.5, 0.9, 1.2])) == set()  # gold rises with the RM
    assert kinds(evals([0.50, 0.51, 0.49], [0.0, 0.2, 0.3])) == set()  # the RM rise is within 4 s.e.
    # A fall from the best within 2.5 standard errors is noise.
    assert kinds(evals([0.50, 0.60, 0.70, 0.66], [0.0, 0.5, 0.9, 1.2])) == set()


def test_held_out_evals_pair_each_eval_with_the_first_and_the_best():
    tracker = HeldOutEvals()
    first_gold, first_reward = [0.1, 0.4, 0.3, 0.2], [0.0, 1.0, 0.5, -0.5]
    assert tracker.stats(first_gold, first_reward) == {
        M.GOLD_SCORE: pytest.approx(0.25),
        M.HELDOUT_REWARD_RM: pytest.approx(0.25),
    }
    best, reward = [0.5, 0.6, 0.3, 0.4], [0.5, 1.5, 0.5, 0.0]
    stats = tracker.stats(best, reward)
    assert stats[M.GOLD_GAIN_STDERR] == pytest.approx(paired_gain(best, first_gold, 1)[1])
    assert stats[M.HELDOUT_REWARD_GAIN_STDERR] == pytest.approx(paired_gain(reward, first_reward, 1)[1])
    assert stats[M.GOLD_DROP_STDERR] == 0.0  # a new best
    worse = [0.2, 0.6, 0.1, 0.4]
    assert tracker.stats(worse, reward)[M.GOLD_DROP_STDERR] == pytest.approx(paired_gain(best, worse, 1)[1])


def test_kl_check_stats_against_plain_python():
    k1 = torch.tensor([0.3, -0.1, 0.8, 0.2, 0.5])
    exact = torch.tensor([0.25, 0.05, 0.6])
    stats = kl_check_stats(k1, k1[:3], exact)
    values = k1.double().tolist()
    mean = sum(values) / 5
    assert stats[M.PPO_KL_K1_STDERR] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / 4 / 5))
    d = [a - b for a, b in zip(values[:3], exact.double().tolist())]
    assert stats[M.PPO_KL_EXACT_ROWS] == 3
    assert stats[M.PPO_KL_K1_EXACT_DIFF] == pytest.approx(sum(d) / 3)
    assert stats[M.PPO_KL_K1_EXACT_DIFF_VAR] == pytest.approx(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
    assert set(kl_check_stats(k1, k1[:0], exact[:0])) == {M.PPO_KL_K1_STDERR}


# The held-out evals of a real run: `rlhfkit ppo --config configs/tiny/ppo.yaml ppo.kl_coef=0
# ppo.iterations=100` on the tiny pipeline's SFT and RM (this machine, 2026-12-01). Gold peaks at
# iteration 20 (0.294 at KL 1.6) and is back at its start by 100 (0.214 at KL 7.6) while the RM's
# reward of the same held-out samples climbs from 0.03 to 0.85. Columns: step, gold/score,
# heldout/reward_rm, gold/gain_stderr, heldout/reward_gain_stderr, gold/drop_stderr.
RECORDED_KL0_EVALS = [
    (0, 0.2124, 0.0285, None, None, None),
    (10, 0.2618, 0.3639, 0.0315, 0.0852, 0.0),
    (20, 0.2944, 0.4748, 0.0382, 0.0818, 0.0),
    (30, 0.2802, 0.5869, 0.0387, 0.0812, 0.0245),
    (40, 0.2526, 0.5749, 0.0338, 0.0791, 0.0244),
    (50, 0.2468, 0.6260, 0.0355, 0.0752, 0.0275),
    (60, 0.2752, 0.7099, 0.0338, 0.0775, 0.0287),
    (70, 0.2827, 0.7063, 0.0367, 0.0765, 0.0305),
    (80, 0.2457, 0.7305, 0.0364, 0.0859, 0.0305),
    (90, 0.2661, 0.8227, 0.0379, 0.0815, 0.0274),
    (100, 0.2139, 0.8496, 0.0392, 0.0769, 0.0300),
]


def recorded_kl0_records() -> list[tuple[int, dict]]:
    """(step, record) of RECORDED_KL0_EVALS as the online loop logs its held-out evals (the standard
    errors from the first paired eval on)."""
    records = []
    for step, gold, reward, gain_se, reward_se, drop_se in RECORDED_KL0_EVALS:
        record = {M.GOLD_SCORE: gold, M.HELDOUT_REWARD_RM: reward}
        if gain_se is not None:
            record |= {
                M.GOLD_GAIN_STDERR: gain_se,
                M.HELDOUT_REWARD_GAIN_STDERR: reward_se,
                M.GOLD_DROP_STDERR: drop_se,
            }
        records.append((step, record))
    return records


def test_reward_hacking_fires_on_the_real_tiny_run_without_a_kl_penalty():
    """Issue #15 item 3: this run printed no warning before; gold's fall at iteration 100 is 2.7 paired
    standard errors below its iteration-20 best while the RM's held-out reward rose by 10."""
    history = []
    for step, record in recorded_kl0_records():
        history.append(record)
        fired = [w for w in health_warnings(history, window=5) if w.startswith("reward-hacking")]
        assert bool(fired) == (step == 100), (step, fired)
