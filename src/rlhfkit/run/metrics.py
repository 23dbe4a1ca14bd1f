"""Metric names, defined once: tests, the health check and the report read these keys."""

LOSS = "loss"
LR = "lr"
GRAD_NORM = "grad_norm"
TOKENS_PER_S = "tokens_per_s"
EPOCH = "epoch"
SKIPPED_STEPS = "train/skipped_steps"
"""Optimizer steps skipped because the loss or gradient norm was NaN/inf (trainers/guard.py
NonFiniteGuard)."""

EVAL_LOSS = "eval/loss"
EVAL_PERPLEXITY = "eval/perplexity"
EVAL_BLEU = "eval/bleu"
EVAL_EOS_RATE = "eval/eos_rate"
EVAL_RESPONSE_LEN = "eval/response_len"
GOLD_SCORE = "gold/score"
"""Held-out gold score of responses SAMPLED at the rollout temperature with fixed noise (what RL
optimises); in PPO the first one, at step 0, is the starting policy's."""
GOLD_SCORE_GREEDY = "gold/score_greedy"
"""Held-out gold score of GREEDY completions (SFT's evals, `rlhfkit eval`): a different number from
gold/score, so never under its name."""
GOLD_GAIN_STDERR = "gold/gain_stderr"
"""PPO: standard error of gold/score minus the run's first gold/score, paired by prompt (same prompts,
same sampling noise at every eval); the health check's reward-hacking rule allows for it."""
GOLD_DROP_STDERR = "gold/drop_stderr"
"""PPO, at each held-out eval: standard error of (best eval's gold/score - this eval's), paired by prompt,
where the best eval is the one with the highest gold/score so far (this one included: then 0)."""
HELDOUT_REWARD_RM = "heldout/reward_rm"
"""PPO, at each held-out eval: mean reward (as in ppo/reward_rm) of the very samples gold/score judges."""
HELDOUT_REWARD_GAIN_STDERR = "heldout/reward_gain_stderr"
"""PPO: standard error of heldout/reward_rm minus the run's first, paired by prompt like gold/gain_stderr."""

RM_ACCURACY = "rm/accuracy"
RM_MARGIN = "rm/margin"
RM_LOSS = "rm/loss"
RM_ECE = "rm/ece"
"""Expected calibration error on held-out pairs: pairs binned by confidence max(p, 1 - p), p = P(chosen >
rejected); per bin |mean confidence - fraction whose predicted side is the chosen one|, weighted by pairs."""
RM_GOLD_AGREEMENT = "rm/gold_agreement"
RM_GOLD_CORRELATION = "rm/gold_correlation"
"""Pearson correlation of RM and gold scores over every held-out response, pooled across prompts."""
RM_REWARD_MEAN = "rm/reward_mean"
RM_REWARD_STD = "rm/reward_std"
"""Mean and s.d. of the trained RM's scores on SFT samples: the normalisation PPO applies."""
RM_PAIRS_PER_S = "pairs_per_s"
RM_GOLD_PAIR_CORRELATION = "rm/gold_pair_correlation"
"""Correlation of RM and gold score *differences* within each held-out pair. A Bradley-Terry RM is
only defined up to a constant per prompt, which the pooled number counts against it; PPO's
advantages only use differences between responses to one prompt, which this one measures."""

PPO_KL_K1 = "ppo/kl_k1"
PPO_KL_K3 = "ppo/kl_k3"
PPO_KL_EXACT = "ppo/kl_exact"
PPO_KL_K1_STDERR = "ppo/kl_k1_stderr"
"""Standard error of ppo/kl_k1: sample s.d. (n - 1) of the batch's sequence k1 over sqrt(rows)."""
PPO_KL_K1_Z = "ppo/kl_k1_z"
"""(k1 - exact KL) in standard errors, on the rows whose exact KL is computed (ops.k1_exact_z): a
t statistic with rows - 1 degrees of freedom (skewed, heavy-tailed at 4 rows), mean 0 on honest samples.
The health check pools the next three over iterations instead."""
PPO_KL_K1_EXACT_DIFF = "ppo/kl_k1_exact_diff"
"""Mean over the exact-KL rows of d = sequence k1 - sequence exact KL (0 in expectation on honest samples)."""
PPO_KL_K1_EXACT_DIFF_VAR = "ppo/kl_k1_exact_diff_var"
"""Sample variance (n - 1) of d over the exact-KL rows (logged when there are at least 2)."""
PPO_KL_EXACT_ROWS = "ppo/kl_exact_rows"
"""Number of rows (all processes) with an exact KL: the n behind the two metrics above."""
PPO_ENTROPY = "ppo/entropy"
PPO_CLIPFRAC = "ppo/clipfrac"
PPO_APPROX_KL = "ppo/approx_kl"
PPO_RATIO_FIRST = "ppo/ratio_first"
"""Mean probability ratio on the first minibatch. Its expectation is 1 for any update pass (tokens are
sampled from the old policy), so it cannot see a mismatched forward; ppo/logratio_first can."""
PPO_LOGRATIO_FIRST = "ppo/logratio_first"
"""Mean |log pi_new - log pi_old| over the first minibatch's valid tokens (all processes): 0 when the
update's forward equals the rollout's (float noise ~1e-7), ~0.05 with dropout on."""
PPO_VF_LOSS = "ppo/vf_loss"
PPO_VALUE_EXPLAINED_VAR = "ppo/value_explained_var"
PPO_REWARD_RM = "ppo/reward_rm"
PPO_REWARD_TOTAL = "ppo/reward_total"
PPO_KL_COEF = "ppo/kl_coef"
PPO_RESPONSE_LEN = "ppo/response_len"
PPO_EOS_RATE = "ppo/eos_rate"
PPO_SECONDS = "ppo/seconds"
HEALTH_WARNING = "health/warning"
PPO_PTX_LOSS = "ppo/ptx_loss"
PPO_PG_LOSS = "ppo/pg_loss"
PPO_RATIO_MAX = "ppo/ratio_max"
"""Largest probability ratio new/old over the iteration's minibatch updates."""
PPO_MINIBATCH_UPDATES = "ppo/minibatch_updates"
"""Minibatch updates run this iteration (fewer than epochs x minibatches after an approx-KL stop)."""

DPO_LOSS = "dpo/loss"
"""Preference loss of the step's global batch (DPO, cDPO, IPO or SimPO, as dpo.loss); log 2 at step 1 for
sigmoid DPO, where the policy is the reference."""
DPO_ACCURACY = "dpo/accuracy"
"""Training pairs whose implicit reward ranks chosen above rejected (a tie counts half)."""
DPO_MARGIN = "dpo/margin"
"""Mean implicit-reward margin beta * h (SimPO: beta * (mean logp chosen - rejected))."""
DPO_CHOSEN_LOGP = "dpo/chosen_logp"
DPO_REJECTED_LOGP = "dpo/rejected_logp"
"""Mean policy log-probs of the chosen and rejected responses: both falling while the margin grows is
DPO's known failure (the chosen answer gets less likely too)."""
DPO_CHOSEN_REWARD = "dpo/chosen_reward"
DPO_REJECTED_REWARD = "dpo/rejected_reward"
"""Mean implicit reward beta * log(pi / pi_ref) of each side (SimPO: beta * mean token log-prob)."""
DPO_EVAL_ACCURACY = "dpo/eval_accuracy"
DPO_EVAL_MARGIN = "dpo/eval_margin"
"""dpo/accuracy and dpo/margin on the held-out pairs, at each train.eval_every."""
DPO_GOLD_AGREEMENT = "dpo/gold_agreement"
"""Held-out built-in pairs (with chosen_score/rejected_score): how often the implicit reward orders a pair
as the noiseless judge does, gold ties left out, an implicit-reward tie counting half (as
rm/gold_agreement)."""
DPO_KL_K1 = "dpo/kl_k1"
"""KL(pi || pi_SFT) per sequence on the policy's own samples of the held-out prompts (fixed noise, as
gold/score's), the k1 estimate; dpo/kl_k1_stderr is its standard error (sample s.d. / sqrt(samples))."""
DPO_KL_K1_STDERR = "dpo/kl_k1_stderr"
DPO_KL_EXACT = "dpo/kl_exact"
"""The exact sequence KL (full next-token distributions) on the first dpo.kl_exact_rows of those samples."""
DPO_KL_K1_Z = "dpo/kl_k1_z"
"""(k1 - exact KL) in standard errors on those rows (ops.k1_exact_z), as ppo/kl_k1_z."""
PPO_KL_LOSS = "ppo/kl_loss"
"""With ppo.kl_in=loss: the KL term of the policy loss (before kl_coef), mean over the minibatch updates."""
PPO_CLIPFRAC_LOW = "ppo/clipfrac_low"
PPO_CLIPFRAC_HIGH = "ppo/clipfrac_high"
"""With ppo.clip_low or ppo.clip_high: the part of ppo/clipfrac clipped below (A < 0) and above (A > 0)."""

# Every online-loop metric, under PPO's prefix; other methods of the loop log the same suffixes.
ONLINE_METRICS = tuple(value for key, value in list(globals().items()) if key.startswith("PPO_"))


def online(method: str) -> dict[str, str]:
    """PPO's metric names -> the same suffixes under an online method's prefix (`grpo/kl_k1` for
    ppo/kl_k1); `online("ppo")` maps every name to itself. The loop computes and health-checks under
    the ppo/ names and logs through this map, so the rules read one set of names for every method."""
    return {name: f"{method}/{name.split('/', 1)[1]}" for name in ONLINE_METRICS}
