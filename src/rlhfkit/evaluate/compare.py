"""Policies side by side on held-out prompts: the pipeline's headline table and `rlhfkit eval`.

Every policy is *sampled* at the training temperature (what PPO optimised, and what best-of-n
needs), then scored by the gold judge (built-in tasks), the reward model (when given), BLEU,
length and EOS rate. KL to the reference (the SFT policy) is the k1 estimate on the policy's own
samples, sum_t log pi(y_t) - log pi_ref(y_t), an unbiased estimate of KL(pi || pi_ref).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rlhfkit.evaluate.text import bleu
from rlhfkit.ops import masked_sum
from rlhfkit.rollout.ppo import decode_responses, row_noise, sample_prompts, score
from rlhfkit.tasks import gold_score


@dataclass
class PolicySamples:
    """One sampled response per (prompt, draw), row-major: prompt i's draws are rows i*n .. i*n+n-1."""

    prompts: list[str]
    responses: list[str]
    finished: list[bool]
    lengths: list[int]
    gold: list[float] | None = None
    reward: list[float] | None = None
    kl: list[float] | None = None
    """Per-sample sum of log-ratios to the reference policy (None when no reference was given)."""


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """policy name -> {gold, reward, kl, bleu, eos_rate, response_len}."""
    samples: dict[str, PolicySamples] = field(default_factory=dict)
    win_rates: dict[str, dict[str, float]] = field(default_factory=dict)
    """"A vs B" -> {"gold": .., "reward": ..}: P(A's sample beats B's on the same prompt), ties 1/2."""
    best_of_n: list[dict[str, float]] = field(default_factory=list)
    """One row per n: n, gold, reward, kl (= log n - (n-1)/n, the analytic KL of best-of-n)."""
    samples_per_prompt: int = 1
    """Draws per prompt in `samples` (row-major: prompt i's are rows i*k .. i*k+k-1)."""
    gold_gains: dict[str, tuple[float, float]] = field(default_factory=dict)
    """"A vs B" -> (mean gold of A minus B, its standard error over prompts), from paired samples."""

    @property
    def n_prompts(self) -> int:
        """Distinct prompts every policy was sampled on."""
        return len(next(iter(self.samples.values())).prompts) // self.samples_per_prompt if self.samples else 0


@torch.no_grad()
def sample_policy(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float, n: int = 1,
                  batch_size: int = 64, reference=None, progress=None, noise_seed: int | None = None) -> PolicySamples:
    """n samples per prompt; with `reference`, the per-sample k1 KL to it. With `noise_seed`, row g's
    sampling noise is row_noise(noise_seed, g): the same draws on every call, whatever the batching."""
    rows = [p for p in prompts for _ in range(n)]
    out = PolicySamples(rows, [], [], [], kl=[] if reference is not None else None)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        noise = None if noise_seed is None else row_noise(noise_seed, range(start, start + len(chunk)), max_new_tokens)
        rollout = sample_prompts(model, tokenizer, chunk, max_new_tokens, temperature, noise=noise)
        out.responses += decode_responses(tokenizer, rollout)
        out.finished += rollout.finished.tolist()
        out.lengths += rollout.response_lengths.tolist()
        if reference is not None:
            logprobs = score(model, rollout, temperature)["logprobs"]
            ref_logprobs = score(reference, rollout, temperature)["logprobs"]
            out.kl += masked_sum(logprobs - ref_logprobs, rollout.response_mask, dim=-1).tolist()
        if progress is not None:
            progress.update(len(chunk))
    return out


def add_scores(samples: PolicySamples, gold: bool, reward_fn: Callable | None, batch_size: int = 64) -> None:
    if gold:

        samples.gold = [gold_score(p, r, finished=f) for p, r, f in zip(samples.prompts, samples.responses, samples.finished)]
    if reward_fn is not None:
        samples.reward = []
        for start in range(0, len(samples.prompts), batch_size):
            end = start + batch_size
            samples.reward += reward_fn(samples.prompts[start:end], samples.responses[start:end]).tolist()


def summarise(samples: PolicySamples, references: list[list[str]] | None) -> dict[str, float]:
    """Means over every sample; BLEU against each sample's prompt's references (one list per sample)."""
    metrics = {"eos_rate": _mean(samples.finished), "response_len": _mean(samples.lengths)}
    for key in ("gold", "reward", "kl"):
        values = getattr(samples, key)
        if values is not None:
            metrics[key] = _mean(values)
    if references is not None:
        metrics["bleu"] = bleu(samples.responses, references)
    return metrics


def win_rate(a: list[float], b: list[float]) -> float:
    """P(a_i > b_i) + P(a_i == b_i) / 2 over paired samples (same prompt, same position)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"win rate needs two equally long, non-empty score lists, got {len(a)} and {len(b)}")
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a)


def paired_gain(a: list[float], b: list[float], k: int) -> tuple[float, float]:
    """(mean of a - b, its standard error) where rows i*k .. i*k+k-1 belong to prompt i: the prompt is
    the unit of the error (its k draws are averaged first), since a prompt's draws are not independent."""
    if len(a) != len(b) or not a or len(a) % k:
        raise ValueError(f"paired gain needs two equally long lists of k={k} draws per prompt, got {len(a)} and {len(b)}")
    per_prompt = [sum(x - y for x, y in zip(a[i : i + k], b[i : i + k])) / k for i in range(0, len(a), k)]
    mean = sum(per_prompt) / len(per_prompt)
    if len(per_prompt) < 2:
        return mean, float("nan")
    variance = sum((d - mean) ** 2 for d in per_prompt) / (len(per_prompt) - 1)
    return mean, math.sqrt(variance / len(per_prompt))


def best_of_n(gold: torch.Tensor, reward: torch.Tensor, ns: list[int]) -> list[dict[str, float]]:
    """Best-of-n from (P, N) scores: per prompt keep the highest-reward sample among the first n draws.

    KL(best-of-n || pi) = log n - (n - 1) / n (Stiennon et al. 2020, appendix; Gao et al. 2022).
    """
    prompts, draws = reward.shape
    rows = []
    for n in ns:
        if not 1 <= n <= draws:
            raise ValueError(f"best-of-n: n={n} needs 1 <= n <= {draws} samples per prompt")
        pick = reward[:, :n].argmax(dim=1, keepdim=True)  # (P, 1)
        rows.append({"n": n, "gold": gold.gather(1, pick).mean().item(), "reward": reward.gather(1, pick).mean().item(),
                     "kl": math.log(n) - (n - 1) / n})
    return rows


def best_of_n_reference(gold: list[list[float]], reward: list[list[float]], n: int) -> tuple[float, float]:
    """Plain-loop version of `best_of_n` for one n (the test oracle): (mean gold, mean reward)."""
    picked_gold, picked_reward = [], []
    for g, r in zip(gold, reward):
        best = max(range(n), key=lambda j: (r[j], -j))  # first maximum, as argmax
        picked_gold.append(g[best])
        picked_reward.append(r[best])
    return sum(picked_gold) / len(gold), sum(picked_reward) / len(gold)


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")


@dataclass
class EvalSettings:
    max_new_tokens: int = 32
    temperature: float = 1.0
    best_of_n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    """Draw max(best_of_n) samples per prompt from the reference policy and rerank them by the RM."""
    batch_size: int = 64
    seed: int = 0
    samples_per_prompt: int = 1
    """Draws per prompt and policy: the means' standard error shrinks with it (a held-out split has few prompts)."""


def compare_policies(policies: dict[str, tuple], reference: str | None, prompts: list[str],
                     references: list[list[str]] | None, settings: EvalSettings, gold: bool,
                     reward_fn: Callable | None, progress=None) -> EvalResult:
    """Sample every policy `settings.samples_per_prompt` times per prompt with the same random numbers
    (so their differences are paired); KL and win rates against `reference` (the SFT policy);
    best-of-n from the reference reranked by `reward_fn`. `policies` maps name -> (model, tokenizer);
    `progress` (a tqdm bar or None) advances by one per sample drawn, `eval_sample_count` in all."""
    draws = best_of_n_draws(settings, reference, reward_fn)
    bar = progress
    k = settings.samples_per_prompt
    result = EvalResult(samples_per_prompt=k)
    per_sample_references = None if references is None else [r for r in references for _ in range(k)]
    ref_model = policies[reference][0] if reference is not None else None
    for name, (model, tokenizer) in policies.items():
        torch.manual_seed(settings.seed)
        compare_to = ref_model if ref_model is not None and _same_vocab(model, ref_model) else None
        samples = sample_policy(model, tokenizer, prompts, settings.max_new_tokens, settings.temperature, n=k,
                                batch_size=settings.batch_size, reference=compare_to, progress=bar)
        add_scores(samples, gold, reward_fn, settings.batch_size)
        result.samples[name] = samples
        result.metrics[name] = summarise(samples, per_sample_references)
    if reference is not None:
        ref = result.samples[reference]
        for name, samples in result.samples.items():
            if name == reference:
                continue
            result.win_rates[f"{name} vs {reference}"] = {
                key: win_rate(getattr(samples, key), getattr(ref, key))
                for key in ("gold", "reward") if getattr(samples, key) is not None}
            if samples.gold is not None:
                result.gold_gains[f"{name} vs {reference}"] = paired_gain(samples.gold, ref.gold, k)
    if draws:
        torch.manual_seed(settings.seed + 1)
        model, tokenizer = policies[reference]
        pool = sample_policy(model, tokenizer, prompts, settings.max_new_tokens, settings.temperature, n=draws,
                             batch_size=settings.batch_size, progress=bar)
        add_scores(pool, gold, reward_fn, settings.batch_size)
        if pool.gold is not None:
            shape = (len(prompts), draws)
            result.best_of_n = best_of_n(torch.tensor(pool.gold).view(shape), torch.tensor(pool.reward).view(shape),
                                         settings.best_of_n)
    return result


def best_of_n_draws(settings: EvalSettings, reference: str | None, reward_fn) -> int:
    return max(settings.best_of_n) if reward_fn is not None and reference is not None and settings.best_of_n else 0


def eval_sample_count(n_prompts: int, n_policies: int, settings: EvalSettings, reference, reward_fn) -> int:
    return n_prompts * (n_policies * settings.samples_per_prompt + best_of_n_draws(settings, reference, reward_fn))


def _same_vocab(model, other) -> bool:
    return model.get_output_embeddings().weight.shape[0] == other.get_output_embeddings().weight.shape[0]
