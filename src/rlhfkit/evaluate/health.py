"""PPO health check: turn symptoms in the logged metrics into warnings that name a cause and a knob.

Each rule reads only metrics.jsonl-style records, so it can be run on any finished run too. Each
statistical rule compares an effect with the standard error the trainer logs beside it, at a level
that keeps a run that learns nothing quiet in > 99% of runs (tests/evaluate/test_health_false_alarms.py).
docs/ppo-health.md explains each rule with an example.
"""

from __future__ import annotations

import math

import torch

from rlhfkit.evaluate.compare import paired_gain
from rlhfkit.run import metrics as M

NEGATIVE_KL_Z = 4.0
"""Standard errors below 0 for the window's mean k1: honest k1 averages to the KL >= 0."""
NEGATIVE_KL_FLOOR = 1e-3
"""Nats: a smaller negative mean is float noise (a KL of exactly 0 has a standard error of 0)."""
LEGACY_NEGATIVE_KL = -0.01
"""The fixed threshold, for logs without ppo/kl_k1_stderr only."""
BIAS_Z = 4.5
"""Pooled t statistic of k1 - exact KL beyond which the k1 estimator is called biased."""
BIAS_MIN_ROWS = 64
"""Exact-KL rows pooled before the bias test: at 4 rows an iteration's t is a skewed t(3)."""
LOGRATIO_FIRST_MAX = 1e-3
"""Mean |log ratio| on the first minibatch: ~1e-7 when the update's forward equals the rollout's."""
RATIO_FIRST_MAX = 1e-3
"""|ppo/ratio_first - 1| that also fires (exactly 1 on a healthy run, but blind to dropout)."""
HACKING_REWARD_Z = 4.0
"""Standard errors of the held-out RM reward's rise since the first eval that make it a real rise."""
HACKING_DROP_Z = 2.5
"""Standard errors of gold's fall from its best eval (the best of ~10 picked after the fact). 3 missed
the real tiny over-optimisation run (kl_coef=0): gold fell 0.080 from its peak, 2.7 s.e., while the
held-out RM reward rose by 10 s.e. (tests/evaluate/test_health.py, its recorded evals)."""


def health_warnings(history: list[dict], window: int = 5) -> list[str]:
    """Warnings for the latest iteration, given every iteration's record so far (oldest first).
    Each is one line "<kind>: <what was seen, the likely cause and the config key to change>"."""
    if not history:
        return []
    rules = (
        negative_kl,
        kl_estimator_bias,
        ratio_first,
        value_loss,
        eos_collapse,
        entropy_collapse,
        reward_hacking,
    )
    return [warning for rule in rules if (warning := rule(history, window))]


def kl_check_stats(
    k1: torch.Tensor, k1_exact_rows: torch.Tensor, exact_rows: torch.Tensor
) -> dict[str, float]:
    """The per-iteration metrics the KL rules read, from the whole batch's (all processes') sequence k1
    (B,) and, on the n rows whose exact KL is computed, their k1 and exact KL (n,) (n may be 0).

        ppo/kl_k1_stderr = sd(k1) / sqrt(B)    (sample s.d. with B - 1; B >= 2)
        ppo/kl_exact_rows = n,  ppo/kl_k1_exact_diff = mean(d)    (n >= 1)
        ppo/kl_k1_exact_diff_var = var(d)      (sample variance with n - 1; n >= 2)
        where d = k1_exact_rows - exact_rows
    """
    out = {}
    if k1.shape[0] >= 2:
        out[M.PPO_KL_K1_STDERR] = (k1.double().std() / math.sqrt(k1.shape[0])).item()
    d = k1_exact_rows.double() - exact_rows.double()
    if d.shape[0] >= 1:
        out[M.PPO_KL_EXACT_ROWS] = d.shape[0]
        out[M.PPO_KL_K1_EXACT_DIFF] = d.mean().item()
    if d.shape[0] >= 2:
        out[M.PPO_KL_K1_EXACT_DIFF_VAR] = d.var().item()
    return out


class HeldOutEvals:
    """The metrics of each held-out eval that the reward-hacking rule reads. Every eval scores the same
    held-out samples in the same order (k draws per prompt, the same sampling noise) with the gold judge
    and the RM, so each change is paired by prompt with the run's first eval and with its best so far."""

    def __init__(self, k: int = 1):
        self.k = k
        self.first: tuple[list[float], list[float]] | None = None
        self.best: list[float] | None = None

    def stats(self, gold: list[float], reward: list[float]) -> dict[str, float]:
        """gold/score, heldout/reward_rm and, after the first eval, the paired standard errors
        gold/gain_stderr, heldout/reward_gain_stderr and gold/drop_stderr (0 at a new best)."""
        out = {M.GOLD_SCORE: sum(gold) / len(gold), M.HELDOUT_REWARD_RM: sum(reward) / len(reward)}
        if self.first is None:
            self.first, self.best = (list(gold), list(reward)), list(gold)
            return out
        out[M.GOLD_GAIN_STDERR] = paired_gain(gold, self.first[0], self.k)[1]
        out[M.HELDOUT_REWARD_GAIN_STDERR] = paired_gain(reward, self.first[1], self.k)[1]
        if sum(gold) > sum(self.best):
            self.best = list(gold)
            out[M.GOLD_DROP_STDERR] = 0.0
        else:
            out[M.GOLD_DROP_STDERR] = paired_gain(self.best, gold, self.k)[1]
        return out


def negative_kl(history: list[dict], window: int) -> str | None:
    recent = history[-window:]
    k1 = [r[M.PPO_KL_K1] for r in recent if M.PPO_KL_K1 in r]
    if len(k1) < window:
        return None
    mean = sum(k1) / window
    stderrs = [r.get(M.PPO_KL_K1_STDERR) for r in recent]
    if all(s is not None for s in stderrs):
        # The window's iterations are independent batches: the mean's variance is sum(se^2) / window^2.
        # k1 averages to the KL >= 0, so falling 4 s.e. below 0 has probability < 1e-4 on honest samples.
        stderr = math.sqrt(sum(s * s for s in stderrs)) / window
        if mean >= -max(NEGATIVE_KL_Z * stderr, NEGATIVE_KL_FLOOR):
            return None
        seen = f"{mean:.3f} ({-mean / stderr if stderr else math.inf:.1f} standard errors below 0)"
    elif mean < LEGACY_NEGATIVE_KL:
        seen = f"{mean:.3f} < 0"
    else:
        return None
    return (
        f"negative-kl: mean kl_k1 over the last {window} iterations is {seen}. The KL to the reference "
        "cannot be negative: samples were not drawn from the distribution the log-probs describe (a "
        "sampling warp such as rollout.top_k, a repetition penalty or min length), or the scoring pass "
        "uses other masks/position ids than sampling, or the reference is not the SFT model."
    )


def kl_estimator_bias(history: list[dict], window: int) -> str | None:
    # Pool d = k1 - exact KL over the latest iterations, at least `window` of them and BIAS_MIN_ROWS
    # rows: one iteration's t statistic on ppo.kl_exact_rows = 4 is a skewed t(3), which a fixed
    # threshold on its window mean trips by chance. From each iteration's (n, mean, variance) of d:
    # sum d = n * mean and sum d^2 = (n - 1) * variance + n * mean^2.
    rows, iterations, total, squares = 0, 0, 0.0, 0.0
    for record in reversed(history):
        if M.PPO_KL_EXACT_ROWS not in record or M.PPO_KL_K1_EXACT_DIFF not in record:
            continue
        n, mean = record[M.PPO_KL_EXACT_ROWS], record[M.PPO_KL_K1_EXACT_DIFF]
        rows, iterations = rows + n, iterations + 1
        total += n * mean
        squares += (n - 1) * record.get(M.PPO_KL_K1_EXACT_DIFF_VAR, 0.0) + n * mean * mean
        if iterations >= window and rows >= BIAS_MIN_ROWS:
            break
    if iterations < window or rows < BIAS_MIN_ROWS:
        return None
    mean = total / rows
    variance = (squares - rows * mean * mean) / (rows - 1)
    if variance <= 0:
        return None  # every d equal, e.g. all 0 at KL 0
    z = mean / math.sqrt(variance / rows)
    if abs(z) <= BIAS_Z:
        return None
    return (
        f"kl-estimator-bias: kl_k1 sits {mean:+.3g} nats per response ({z:+.1f} standard errors) "
        f"from kl_exact on the {rows} exact-KL rows of the last {iterations} iterations; on honest "
        "samples it is within ~3. The responses were not sampled from the distribution that was scored "
        "(a sampling warp such as rollout.top_k or a repetition penalty, or another temperature), so "
        "the logged KL and the KL penalty are both wrong, even while kl_k1 stays positive."
    )


def ratio_first(history: list[dict], window: int) -> str | None:
    now = history[-1]
    # E_old[pi_new / pi_old] = 1 for ANY new policy on tokens sampled from the old one, so a noisy update
    # pass (dropout) leaves ratio_first at 1 +- sigma / sqrt(tokens); the mean |log ratio| is 0 only when
    # the two forwards agree, ~1e-7 in float32, and ~0.05 with dropout 0.1.
    logratio, ratio = now.get(M.PPO_LOGRATIO_FIRST), now.get(M.PPO_RATIO_FIRST)
    if logratio is not None and logratio > LOGRATIO_FIRST_MAX:
        seen = f"the mean |log ratio| on the first minibatch is {logratio:.2g}, not 0"
    elif ratio is not None and abs(ratio - 1.0) > RATIO_FIRST_MAX:
        seen = f"the probability ratio on the first minibatch is {ratio:.5f}, not 1"
    else:
        return None
    return (
        f"ratio-first: {seen}: the update's forward differs from the rollout's (dropout on? set "
        "model.disable_dropout=true; or different padding or position ids)."
    )


def value_loss(history: list[dict], window: int) -> str | None:
    vf = [r[M.PPO_VF_LOSS] for r in history if M.PPO_VF_LOSS in r]
    if len(vf) > 2 and vf[-1] > 10 * max(vf[0], 1e-3) and vf[-1] > 1.0:
        return (
            f"value-loss: value loss {vf[-1]:.3g} is over 10x its start ({vf[0]:.3g}); lower train.lr or "
            "ppo.vf_coef, or keep ppo.value_clip_range on."
        )
    return None


def eos_collapse(history: list[dict], window: int) -> str | None:
    # Means over the first and the last `window` iterations: one small batch's EOS rate is a noisy
    # binomial share (16 rows at 0.6 fall below half of a lucky first batch in ~1% of iterations).
    first, now = window_mean(history[:window], M.PPO_EOS_RATE), window_mean(history[-window:], M.PPO_EOS_RATE)
    if first is not None and now is not None and first > 0.5 and now < 0.5 * first:
        return (
            f"eos-collapse: EOS rate fell from {first:.2f} to {now:.2f} (means over {window} "
            "iterations); responses run to rollout.max_new_tokens. Make ppo.no_eos_penalty more negative "
            "or raise ppo.kl_coef."
        )
    return None


def entropy_collapse(history: list[dict], window: int) -> str | None:
    first, now = window_mean(history[:window], M.PPO_ENTROPY), window_mean(history[-window:], M.PPO_ENTROPY)
    if first is not None and now is not None and first > 0 and now < 0.2 * first:
        return (
            f"entropy-collapse: entropy fell from {first:.3f} to {now:.3f} (means over {window} "
            "iterations); the policy is becoming deterministic. Raise ppo.kl_coef or lower train.lr."
        )
    return None


def window_mean(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if key in r]
    return sum(values) / len(values) if values else None


def reward_hacking(history: list[dict], window: int) -> str | None:
    # Every eval scores the same held-out samples (same prompts, same sampling noise) with the RM and
    # the gold judge, so each change comes with a standard error paired by prompt (Gao et al. 2022's
    # picture: the RM's reward keeps rising while gold stalls, or peaks and falls).
    evals = [r for r in history if M.GOLD_SCORE in r and M.HELDOUT_REWARD_RM in r]
    if len(evals) < 2:
        return None
    first, now = evals[0], evals[-1]
    best = max(evals, key=lambda r: r[M.GOLD_SCORE])
    drop, drop_stderr = best[M.GOLD_SCORE] - now[M.GOLD_SCORE], now.get(M.GOLD_DROP_STDERR)
    past_peak = (
        rm_rose(now, first)
        and now[M.HELDOUT_REWARD_RM] >= best[M.HELDOUT_REWARD_RM]
        and drop_stderr is not None
        and drop > HACKING_DROP_Z * drop_stderr
        and drop > 0
    )
    # "Gold stayed flat" is the absence of a gain, weaker evidence than a significant fall: it must
    # hold at two evals in a row.
    flat = len(evals) >= 3 and all(rm_rose(e, first) and gold_flat(e, first) for e in evals[-2:])
    if not (past_peak or flat):
        return None
    reward_gain = now[M.HELDOUT_REWARD_RM] - first[M.HELDOUT_REWARD_RM]
    gold_gain = now[M.GOLD_SCORE] - first[M.GOLD_SCORE]
    drop_error = drop_stderr if drop_stderr is not None else math.nan
    return (
        f"reward-hacking: the RM's reward on the held-out samples rose by {reward_gain:.3f} "
        f"(± {now[M.HELDOUT_REWARD_GAIN_STDERR]:.3f}) since the first eval while their gold score moved "
        f"by {gold_gain:+.3f} (± {now.get(M.GOLD_GAIN_STDERR, math.nan):.3f}) and is {drop:.3f} "
        f"(± {drop_error:.3f}) below its best eval; the policy exploits the reward model. Raise "
        "ppo.kl_coef, set ppo.target_kl, or stop at the best checkpoint."
    )


def rm_rose(record: dict, first: dict) -> bool:
    """The held-out RM reward is HACKING_REWARD_Z paired standard errors above the first eval's."""
    stderr = record.get(M.HELDOUT_REWARD_GAIN_STDERR)
    gain = record[M.HELDOUT_REWARD_RM] - first[M.HELDOUT_REWARD_RM]
    return stderr is not None and gain > 0 and gain > HACKING_REWARD_Z * stderr


def gold_flat(record: dict, first: dict) -> bool:
    """Gold's gain since the first eval is under one paired standard error: no sign that it rose."""
    stderr = record.get(M.GOLD_GAIN_STDERR)
    return stderr is not None and record[M.GOLD_SCORE] - first[M.GOLD_SCORE] < stderr
