"""Each health rule fires on its symptom and stays quiet on a healthy run."""

from rlhfkit.evaluate.health import health_warnings
from rlhfkit.run import metrics as M

HEALTHY = {M.PPO_KL_K1: 0.5, M.PPO_RATIO_FIRST: 1.0, "ppo/vf_loss": 0.1, M.PPO_EOS_RATE: 0.95, M.PPO_ENTROPY: 1.0}


def kinds(history):
    return {w.split(":")[0] for w in health_warnings(history, window=3)}


def test_healthy_run_is_quiet():
    assert kinds([HEALTHY] * 6) == set()


def test_each_symptom_names_its_rule_and_knob():
    assert kinds([HEALTHY] * 3 + [{**HEALTHY, M.PPO_KL_K1: -0.2}] * 3) == {"negative-kl"}
    assert kinds([HEALTHY, {**HEALTHY, M.PPO_RATIO_FIRST: 1.02}]) == {"ratio-first"}
    assert kinds([HEALTHY] * 3 + [{**HEALTHY, "ppo/vf_loss": 5.0}]) == {"value-loss"}
    assert kinds([HEALTHY, {**HEALTHY, M.PPO_EOS_RATE: 0.2}]) == {"eos-collapse"}
    assert kinds([HEALTHY, {**HEALTHY, M.PPO_ENTROPY: 0.1}]) == {"entropy-collapse"}
    warning = health_warnings([HEALTHY, {**HEALTHY, M.PPO_EOS_RATE: 0.2}])[0]
    assert "ppo.no_eos_penalty" in warning and "\n" not in warning


def test_reward_hacking_needs_reward_up_and_gold_flat_or_down():
    evals = [{**HEALTHY, M.PPO_REWARD_RM: 0.15 * i, M.GOLD_SCORE: 0.5 - 0.05 * i} for i in range(4)]
    assert kinds(evals) == {"reward-hacking"}
    honest = [{**HEALTHY, M.PPO_REWARD_RM: 0.1 * i, M.GOLD_SCORE: 0.5 + 0.05 * i} for i in range(4)]
    assert kinds(honest) == set()
    # A small eval's gain is uncertain: flat within two standard errors of +0.05 is not flagged.
    noisy = [{**HEALTHY, M.PPO_REWARD_RM: 0.3 * i, M.GOLD_SCORE: 0.80 + 0.01 * i, M.GOLD_GAIN_STDERR: 0.04}
             for i in range(3)]
    assert kinds(noisy) == set()
    precise = [{**r, M.GOLD_GAIN_STDERR: 0.005} for r in noisy]
    assert kinds(precise) == {"reward-hacking"}
    # Over-optimisation past a peak: gold rose, then fell back while the reward kept rising.
    peak = [{**HEALTHY, M.PPO_REWARD_RM: r, M.GOLD_SCORE: g, M.GOLD_GAIN_STDERR: 0.037}
            for r, g in ((0.37, 0.21), (0.52, 0.31), (0.73, 0.23))]
    assert kinds(peak) == {"reward-hacking"}
    assert kinds(peak[:2] + [{**peak[2], M.GOLD_SCORE: 0.29}]) == set()  # a dip within the noise


def test_kl_estimator_bias_fires_on_a_lasting_offset_not_on_noise():
    noisy = [{**HEALTHY, M.PPO_KL_K1_Z: z} for z in (1.8, -2.2, 2.5, -0.4, 1.1, -1.9)]
    assert kinds(noisy) == set()
    biased = [{**HEALTHY, M.PPO_KL_K1_Z: z} for z in (4.0, 6.5, 5.2)]  # k1 > 0: the negative-kl rule is blind
    assert kinds(biased) == {"kl-estimator-bias"}
    assert "rollout.top_k" in health_warnings(biased, window=3)[0]
