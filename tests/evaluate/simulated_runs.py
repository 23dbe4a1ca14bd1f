"""Metrics of simulated PPO runs, each drawn from its definition rather than from an assumed
distribution: sequence k1 and exact KL of sampled responses, paired held-out evals scored by a gold
judge and an RM. The health tests feed these to `health_warnings` as the trainer would."""

from __future__ import annotations

import torch

from rlhfkit.evaluate.health import HeldOutEvals, kl_check_stats
from rlhfkit.ops import k1_exact_z, kl_exact, kl_k1, logprobs_from_logits, masked_sum
from rlhfkit.run import metrics as M

VOCAB, MAX_TOKENS = 16, 24


def sampled_responses(
    n: int, generator: torch.Generator, scale: float = 0.0, sharpen: float = 1.0, top_k: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence k1 (n,), sequence exact KL (n,)) of n sampled responses of 4-24 tokens.

    Each token comes from its own state: reference logits ~ N(0, 2^2) over 16 tokens, policy logits =
    sharpen x reference + N(0, scale^2). The token is drawn from the policy, or from its top_k tokens
    only (a sampling warp), and scored with the unwarped policy and the reference, as PPO scores it."""
    ref = 2 * torch.randn(n, MAX_TOKENS, VOCAB, generator=generator, dtype=torch.float64)
    noise = torch.randn(n, MAX_TOKENS, VOCAB, generator=generator, dtype=torch.float64)
    policy = sharpen * ref + scale * noise
    sampling = policy
    if top_k:
        kth = policy.topk(top_k, dim=-1).values[..., -1:]  # (n, T, 1)
        sampling = policy.masked_fill(policy < kth, -torch.inf)
    # Inverse-CDF sampling: the token is the first whose cumulative probability exceeds a uniform.
    cumulative = torch.softmax(sampling, dim=-1).cumsum(-1)  # (n, T, V)
    uniform = torch.rand(n, MAX_TOKENS, 1, generator=generator, dtype=torch.float64)
    tokens = (cumulative < uniform).sum(-1).clamp(max=VOCAB - 1)  # (n, T)
    lengths = torch.randint(4, MAX_TOKENS + 1, (n, 1), generator=generator)
    mask = (torch.arange(MAX_TOKENS) < lengths).double()  # (n, T)
    logprobs, ref_logprobs = logprobs_from_logits(policy, tokens), logprobs_from_logits(ref, tokens)
    k1 = masked_sum(kl_k1(logprobs, ref_logprobs), mask, dim=-1)
    return k1, masked_sum(kl_exact(policy, ref), mask, dim=-1)


def kl_records(
    k1: torch.Tensor,
    exact: torch.Tensor,
    iterations: int,
    batch: int,
    exact_rows: int,
    generator: torch.Generator,
    with_z: bool = False,
) -> list[dict]:
    """Per-iteration KL metrics of batches of `batch` responses drawn from a pool of (k1, exact KL), the
    first `exact_rows` of each with an exact KL, computed as the trainer computes them."""
    index = torch.randint(k1.shape[0], (iterations, batch), generator=generator)
    records = []
    for rows in index:
        record = {
            M.PPO_KL_K1: k1[rows].mean().item(),
            M.PPO_KL_EXACT: exact[rows[:exact_rows]].mean().item(),
            **kl_check_stats(k1[rows], k1[rows[:exact_rows]], exact[rows[:exact_rows]]),
        }
        if with_z and exact_rows >= 2:  # the per-iteration t statistic the rules no longer read
            record[M.PPO_KL_K1_Z] = k1_exact_z(k1[rows[:exact_rows]], exact[rows[:exact_rows]]).item()
        records.append(record)
    return records


def learning_nothing(
    generator: torch.Generator, pools: list[tuple[torch.Tensor, torch.Tensor]], eval_every: int = 10
) -> list[dict]:
    """One run whose policy drifts without learning: every metric keeps its starting distribution.

    KL: batches of 16-64 responses from one of `pools` (kl_pools), 4, 8 or all rows
    with an exact KL. Held-out evals (32 or 64 prompts, one sample each, the same sampling noise every
    eval): a prompt keeps its previous sample with probability `keep` (the policy barely moved), else
    draws a new one; gold and RM scores share a prompt effect and correlated sample noise (the RM
    partly tracks gold). EOS rate, entropy and value loss: batch means of steady per-row values."""

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    def pick(options):
        return options[torch.randint(len(options), (1,), generator=generator).item()]

    iterations = int(torch.randint(40, 101, (1,), generator=generator))
    batch = pick([16, 32, 64])
    k1, exact = pick(pools)
    records = kl_records(k1, exact, iterations, batch, pick([4, 8, batch]), generator)
    value_loss = 0.05 + 0.95 * torch.rand(1, generator=generator).item()
    eos = 0.6 + 0.38 * torch.rand(1, generator=generator).item()
    entropy = 0.5 + 2.5 * torch.rand(1, generator=generator).item()
    prompts, keep = pick([32, 64]), 0.5 + 0.45 * torch.rand(1, generator=generator).item()
    prompt_effect = draw(prompts)

    def sample(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        gold_noise, other = draw(rows), draw(rows)
        return 0.25 * gold_noise, 0.8 * (0.5 * gold_noise + 0.866 * other)

    gold_noise, rm_noise = sample(prompts)
    evals = HeldOutEvals()
    steady = {  # (iterations,) each: float noise, and batch means of steady per-row values
        M.PPO_RATIO_FIRST: 1.0 + 1e-7 * draw(iterations),
        M.PPO_LOGRATIO_FIRST: 1e-7 * draw(iterations).abs(),
        M.PPO_VF_LOSS: value_loss * (draw(iterations, batch) ** 2).mean(-1),
        M.PPO_EOS_RATE: (torch.rand(iterations, batch, generator=generator) < eos).double().mean(-1),
        M.PPO_ENTROPY: (entropy * torch.exp(0.3 * draw(iterations, batch) - 0.045)).mean(-1),
        M.PPO_REWARD_RM: draw(iterations, batch).mean(-1),
    }
    for i, record in enumerate(records):
        record.update({key: values[i].item() for key, values in steady.items()})
        done = i + 1
        if i == 0 or done % eval_every == 0 or done == iterations:
            if i > 0:
                redraw = torch.rand(prompts, generator=generator) > keep
                new_gold, new_rm = sample(prompts)
                gold_noise = torch.where(redraw, new_gold, gold_noise)
                rm_noise = torch.where(redraw, new_rm, rm_noise)
            gold, rm = 0.3 + 0.15 * prompt_effect + gold_noise, 0.6 * prompt_effect + rm_noise
            record.update(evals.stats(gold.tolist(), rm.tolist()))
    return records


def kl_pools(generator: torch.Generator, rows: int = 8000) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Honest (k1, exact KL) pools that runs resample batches from: sequence KL ~0.005 and ~0.05 (small
    random drift) and ~0.5 from a policy sharper than its reference (there d = k1 - exact is skewed,
    -0.5). Each pool's k1 is shifted by its mean d (the null-imposed bootstrap): a finite pool's mean d
    is off by ~1/sqrt(rows) standard deviations, which a window of hundreds of rows would read as bias."""
    pools = []
    for scale, sharpen in ((0.03, 1.0), (0.1, 1.0), (0.0, 1.3)):
        k1, exact = sampled_responses(rows, generator, scale=scale, sharpen=sharpen)
        pools.append((k1 - (k1 - exact).mean(), exact))
    return pools
