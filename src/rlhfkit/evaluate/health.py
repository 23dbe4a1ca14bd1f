"""PPO health check: turn symptoms in the logged metrics into warnings that name a cause and a knob.

Each rule reads only metrics.jsonl-style records, so it can be run on any finished run too.
docs/ppo-health.md explains each with an example.
"""

from __future__ import annotations

from rlhfkit.run import metrics as M

BIAS_Z = 3.0


def health_warnings(history: list[dict], window: int = 5) -> list[str]:
    """Warnings for the latest iteration, given every iteration's record so far (oldest first)."""
    if not history:
        return []
    now, first, recent = history[-1], history[0], history[-window:]
    warnings = []

    k1 = [r[M.PPO_KL_K1] for r in recent if M.PPO_KL_K1 in r]
    if len(k1) == window and sum(k1) / window < -0.01:
        warnings.append(
            f"negative-kl: mean kl_k1 over the last {window} iterations is {sum(k1) / window:.3f} < 0. The KL to the "
            "reference cannot be negative: samples were not drawn from the distribution the log-probs describe "
            "(a sampling warp such as rollout.top_k, a repetition penalty or min length), or the scoring pass "
            "uses other masks/position ids than sampling, or the reference is not the SFT model."
        )
    z = [r[M.PPO_KL_K1_Z] for r in recent if M.PPO_KL_K1_Z in r]
    # Each z is ~N(0, 1) on a healthy run, so the window's mean has sd 1/sqrt(window): 3 is far out.
    if len(z) == window and abs(sum(z) / window) > BIAS_Z:
        warnings.append(
            f"kl-estimator-bias: kl_k1 sits {sum(z) / window:+.1f} standard errors from kl_exact on average over "
            f"the last {window} iterations; on honest samples it is within ~1. The responses were not sampled "
            "from the distribution that was scored (a sampling warp such as rollout.top_k or a repetition "
            "penalty, or another temperature), so the logged KL and the KL penalty are both wrong, even while "
            "kl_k1 stays positive."
        )
    ratio = now.get(M.PPO_RATIO_FIRST)
    if ratio is not None and abs(ratio - 1.0) > 1e-3:
        warnings.append(
            f"ratio-first: the probability ratio on the first minibatch is {ratio:.5f}, not 1: the update's forward "
            "differs from the rollout's (dropout on? set model.disable_dropout=true; or different padding)."
        )
    vf = [r[M.PPO_VF_LOSS] for r in history if M.PPO_VF_LOSS in r]
    if len(vf) > 2 and vf[-1] > 10 * max(vf[0], 1e-3) and vf[-1] > 1.0:
        warnings.append(
            f"value-loss: value loss {vf[-1]:.3g} is over 10x its start ({vf[0]:.3g}); lower train.lr or "
            "ppo.vf_coef, or keep ppo.value_clip_range on."
        )
    eos = now.get(M.PPO_EOS_RATE)
    if eos is not None and first.get(M.PPO_EOS_RATE, 0) > 0.5 and eos < 0.5 * first[M.PPO_EOS_RATE]:
        warnings.append(
            f"eos-collapse: EOS rate fell from {first[M.PPO_EOS_RATE]:.2f} to {eos:.2f}; responses run to "
            "rollout.max_new_tokens. Make ppo.no_eos_penalty more negative or raise ppo.kl_coef."
        )
    entropy = now.get(M.PPO_ENTROPY)
    if entropy is not None and first.get(M.PPO_ENTROPY, 0) > 0 and entropy < 0.2 * first[M.PPO_ENTROPY]:
        warnings.append(
            f"entropy-collapse: entropy fell from {first[M.PPO_ENTROPY]:.3f} to {entropy:.3f}; the policy is "
            "becoming deterministic. Raise ppo.kl_coef or lower train.lr."
        )
    gold = [r for r in history if M.GOLD_SCORE in r and M.PPO_REWARD_RM in r]
    if len(gold) >= 3:
        now_gold, first_gold = gold[-1], gold[0]
        best = max(gold, key=lambda r: r[M.GOLD_SCORE])
        # Noise allowance: a small eval (~30 prompts) moves by several hundredths from sampling alone,
        # so each comparison must hold at two standard errors (gold/gain_stderr, paired by prompt).
        noise = 2 * now_gold.get(M.GOLD_GAIN_STDERR, 0.0)
        reward_gain = now_gold[M.PPO_REWARD_RM] - first_gold[M.PPO_REWARD_RM]
        gold_gain = now_gold[M.GOLD_SCORE] - first_gold[M.GOLD_SCORE]
        flat = reward_gain > 0.2 and gold_gain + noise < 0.05
        # Gao et al. 2022's picture: gold peaks, then falls while the reward keeps rising.
        past_peak = (now_gold[M.PPO_REWARD_RM] - best[M.PPO_REWARD_RM] > 0.2
                     and best[M.GOLD_SCORE] - now_gold[M.GOLD_SCORE] > max(noise, 0.05))
        if flat or past_peak:
            warnings.append(
                f"reward-hacking: the reward rose by {reward_gain:.2f} since the first eval while the held-out gold "
                f"score moved by {gold_gain:+.3f} (± {noise / 2:.3f}; {best[M.GOLD_SCORE] - now_gold[M.GOLD_SCORE]:.3f} "
                "below its best eval); the policy exploits the reward model. Raise ppo.kl_coef, set "
                "ppo.target_kl, or stop at the best checkpoint."
            )
    return warnings
