"""Policies side by side on held-out prompts: the pipeline's headline table and `rlhfkit eval`.

Every policy is *sampled* at the training temperature (what PPO optimised, and what best-of-n
needs), then scored by the gold judge (built-in tasks), the reward model (when given), BLEU,
length and EOS rate. KL to the reference (the SFT policy) is the k1 estimate on the policy's own
samples, sum_t log pi(y_t) - log pi_ref(y_t), an unbiased estimate of KL(pi || pi_ref).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from rlhfkit.data.templates import encode_prompt
from rlhfkit.evaluate.rm import gold_order_agreement
from rlhfkit.evaluate.text import bleu
from rlhfkit.models.prefix import PromptCache
from rlhfkit.ops import logprobs_from_logits, masked_sum
from rlhfkit.rewards import same_tokenizer
from rlhfkit.rollout.ppo import Rollout, decode_responses, row_noise, sample_prompts, score
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
    token_ids: list[list[int]] | None = None
    """Per sample: the prompt's ids, then the response's up to (not including) its EOS, in the policy's
    tokenizer: what a reward model on that tokenizer scored during training (Rollout.token_rows)."""


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """policy name -> {gold, reward, kl, bleu, eos_rate, response_len}."""
    samples: dict[str, PolicySamples] = field(default_factory=dict)
    win_rates: dict[str, dict[str, float]] = field(default_factory=dict)
    """"A vs B" -> {"gold": .., "reward": ..}: P(A's sample beats B's on the same prompt), ties 1/2."""
    best_of_n: list[dict[str, float]] = field(default_factory=list)
    """One row per n: n, gold, reward, kl (estimated from the draws: best_of_n_kl), kl_bound (log n -
    (n-1)/n)."""
    samples_per_prompt: int = 1
    """Draws per prompt in `samples` (row-major: prompt i's are rows i*k .. i*k+k-1)."""
    gold_gains: dict[str, tuple[float, float]] = field(default_factory=dict)
    """"A vs B" -> (mean gold of A minus B, its standard error over prompts), from paired samples."""
    draws: dict[str, int] = field(default_factory=dict)
    """Draws per prompt of each policy's `samples` (samples_per_prompt unless the policy was given fewer:
    a checkpoint's curve point); comparisons pair the first min(k_A, k_B) draws of each prompt."""
    rm_agreement: dict[str, float] | None = None
    """On best-of-n's pool: how often the RM orders two draws of a prompt as the gold judge does
    (`rm_gold_agreement`), the reward model's accuracy where best-of-n and RL read it."""

    @property
    def n_prompts(self) -> int:
        """Distinct prompts every policy was sampled on."""
        if not self.samples:
            return 0
        name, samples = next(iter(self.samples.items()))
        return len(samples.prompts) // self.draws.get(name, self.samples_per_prompt)


@torch.no_grad()
def sample_policy(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    n: int = 1,
    batch_size: int = 64,
    reference=None,
    progress=None,
    noise_seed: int | None = None,
    on_rollout: Callable[[Rollout, int], None] | None = None,
    noise_stride: int | None = None,
) -> PolicySamples:
    """n samples per prompt; with `reference`, the per-sample k1 KL to it. With `noise_seed`, row g's
    sampling noise is row_noise(noise_seed, g): the same draws on every call, whatever the batching.
    With `noise_stride` too, draw j of prompt i gets row_noise(noise_seed, i * noise_stride + j): the
    same random numbers for draw j of prompt i whatever n is, so a policy drawn fewer times per prompt
    shares its first draws' noise with every other policy's. `on_rollout(rollout, first_row)` sees
    each batch as sampled, for measurements that need more than the texts (DPO's KL evals score the
    same draws instead of sampling them again)."""
    rows = [p for p in prompts for _ in range(n)]
    out = PolicySamples(rows, [], [], [], kl=[] if reference is not None else None, token_ids=[])
    stride = noise_stride or n
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        noise = (
            None
            if noise_seed is None
            else row_noise(
                noise_seed,
                [(g // n) * stride + g % n for g in range(start, start + len(chunk))],
                max_new_tokens,
            )
        )
        rollout = sample_prompts(model, tokenizer, chunk, max_new_tokens, temperature, noise=noise)
        out.responses += decode_responses(tokenizer, rollout)
        out.finished += rollout.finished.tolist()
        out.lengths += rollout.response_lengths.tolist()
        out.token_ids += rollout.token_rows()
        if on_rollout is not None:
            on_rollout(rollout, start)
        if reference is not None:
            # The policy's log-probs from its sampling forward: one forward fewer per sample (design §6.1).
            logprobs = rollout.sampled_logprobs
            ref_logprobs = reference_logprobs(reference, rollout, temperature)
            out.kl += masked_sum(logprobs - ref_logprobs, rollout.response_mask, dim=-1).tolist()
        if progress is not None:
            progress.update(len(chunk))
    return out


def reference_logprobs(reference, rollout: Rollout, temperature: float) -> torch.Tensor:
    """(B, R) log-probs of the sampled responses under the reference: a model, or a PromptCache of it
    over the held-out prompts (their prompt pass run once for every policy, design §3.5)."""
    if isinstance(reference, PromptCache):
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(rollout.query_ids, rollout.query_mask)]
        logits = reference.logits(prompts, rollout.response_ids, rollout.response_mask)
        if logits is not None:
            return logprobs_from_logits(logits, rollout.response_ids, temperature=temperature)
        reference = reference.model  # a prompt it does not hold (another tokenizer): the plain pass
    return score(reference, rollout, temperature)["logprobs"]


def add_scores(
    samples: PolicySamples,
    gold: bool,
    reward_fn: Callable | None,
    batch_size: int = 64,
    rows: list[dict] | None = None,
) -> None:
    """Gold and reward scores of every sample. The reward sees what it sees in training: the sampled
    ids (a reward model on the policy's tokenizer scores them, not a decoded and re-encoded text),
    whether each response finished, and `rows` (one per sample: its prompt's dataset row, which a
    verifiable `f(samples)` reward checks the answer against; None: {})."""
    if gold:
        samples.gold = [
            gold_score(p, r, finished=f)
            for p, r, f in zip(samples.prompts, samples.responses, samples.finished)
        ]
    if reward_fn is not None:
        samples.reward = []
        for start in range(0, len(samples.prompts), batch_size):
            end = start + batch_size
            ids = samples.token_ids[start:end] if samples.token_ids is not None else None
            samples.reward += reward_fn(
                samples.prompts[start:end],
                samples.responses[start:end],
                ids,
                finished=samples.finished[start:end],
                metadata=None if rows is None else rows[start:end],
            ).tolist()


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
        raise ValueError(
            f"paired gain needs two equally long lists of k={k} draws per prompt, got {len(a)} and {len(b)}"
        )
    per_prompt = [sum(x - y for x, y in zip(a[i : i + k], b[i : i + k])) / k for i in range(0, len(a), k)]
    mean = sum(per_prompt) / len(per_prompt)
    if len(per_prompt) < 2:
        return mean, float("nan")
    variance = sum((d - mean) ** 2 for d in per_prompt) / (len(per_prompt) - 1)
    return mean, math.sqrt(variance / len(per_prompt))


def best_of_n(
    gold: torch.Tensor, reward: torch.Tensor, ns: list[int], baseline: torch.Tensor | None = None
) -> list[dict[str, float]]:
    """Best-of-n from (P, N) scores: per prompt keep the highest-reward sample among the first n draws.
    With `baseline` (P,), each prompt's mean gold under the reference, also the paired gold gain over it
    (`gain`, `gain_stderr`: the prompt is the unit, as paired_gain).

    Two KLs per n: `kl_bound` = log n - (n - 1) / n, which Stiennon et al. 2020 and Gao et al. 2022
    use as the KL of best-of-n but is an upper bound (Beirami et al. 2024), far off when draws repeat
    (a policy that often gives the same answer); `kl` = `best_of_n_kl`, its estimate from the N draws.
    """
    prompts, draws = reward.shape
    rows = []
    for n in ns:
        if not 1 <= n <= draws:
            raise ValueError(f"best-of-n: n={n} needs 1 <= n <= {draws} samples per prompt")
        pick = reward[:, :n].argmax(dim=1, keepdim=True)  # (P, 1)
        picked = gold.gather(1, pick).squeeze(1)  # (P,)
        row = {
            "n": n,
            "gold": picked.mean().item(),
            "reward": reward.gather(1, pick).mean().item(),
            "kl": best_of_n_kl(reward, n),
            "kl_bound": math.log(n) - (n - 1) / n,
        }
        if baseline is not None:
            row["gain"], row["gain_stderr"] = paired_gain(picked.tolist(), baseline.tolist(), k=1)
        rows.append(row)
    return rows


def rm_gold_agreement(gold: torch.Tensor, reward: torch.Tensor) -> dict[str, float]:
    """Over every pair of draws of the same prompt that the gold judge does not tie ((P, N) scores):
    the fraction the reward orders as gold does (a reward tie counts half), its standard error with the
    prompt as the unit (a ratio estimator: a prompt's pairs share its draws), and the pair count. The
    held-out pairs of the rm stage are a few dozen; N draws of P prompts give P * N(N-1)/2."""
    i, j = torch.triu_indices(gold.shape[1], gold.shape[1], offset=1)
    agree, counted = gold_order_agreement(reward[:, i] - reward[:, j], gold[:, i] - gold[:, j])  # (P, pairs)
    agree = agree.double() * counted  # the rm stage's rule (evaluate/rm.py) on every pair of draws
    per_prompt, pairs = agree.sum(1), counted.sum(1).double()  # (P,) each
    total = pairs.sum()
    if total == 0:
        return {"agreement": float("nan"), "stderr": float("nan"), "pairs": 0, "prompts": 0}
    rate = per_prompt.sum() / total
    used = pairs > 0
    n = int(used.sum())
    residual = per_prompt[used] - rate * pairs[used]
    stderr = (residual.pow(2).sum() / (n * (n - 1))).sqrt() / pairs[used].mean() if n > 1 else float("nan")
    return {"agreement": float(rate), "stderr": float(stderr), "pairs": int(total), "prompts": n}


def rm_gold_agreement_reference(gold: list[list[float]], reward: list[list[float]]) -> tuple[float, int]:
    """Plain loops for `rm_gold_agreement` (the test oracle): (agreement, untied pairs)."""
    agree, pairs = 0.0, 0
    for g, r in zip(gold, reward):
        for a in range(len(g)):
            for b in range(a + 1, len(g)):
                if g[a] == g[b]:
                    continue
                pairs += 1
                agree += 0.5 if r[a] == r[b] else float((r[a] > r[b]) == (g[a] > g[b]))
    return agree / pairs, pairs


def best_of_n_reference(gold: list[list[float]], reward: list[list[float]], n: int) -> tuple[float, float]:
    """Plain-loop version of `best_of_n` for one n (the test oracle): (mean gold, mean reward)."""
    picked_gold, picked_reward = [], []
    for g, r in zip(gold, reward):
        best = max(range(n), key=lambda j: (r[j], -j))  # first maximum, as argmax
        picked_gold.append(g[best])
        picked_reward.append(r[best])
    return sum(picked_gold) / len(gold), sum(picked_reward) / len(gold)


def best_of_n_kl(reward: torch.Tensor, n: int) -> float:
    """KL(best-of-n || pi) with pi the empirical distribution of each prompt's N draws (P, N), averaged
    over prompts. Best-of-n picks a response at reward level L with probability F(L)^n - F(L-)^n
    (F: the CDF of the reward under pi; draws with equal reward share a level in proportion to
    their probability), so KL = sum_L q_L log(q_L / p_L). Identical responses score the same, so a
    policy that repeats itself has few levels and a KL far below the bound log n - (n - 1) / n; with
    N distinct draws the estimate approaches the bound as N grows."""
    total = 0.0
    for row in reward.double():
        levels, counts = torch.unique(row, return_counts=True)  # sorted ascending
        p = counts.double() / row.numel()
        cdf = p.cumsum(0)
        q = cdf**n - torch.cat([cdf.new_zeros(1), cdf[:-1]]) ** n
        kept = q > 0
        total += float((q[kept] * (q[kept] / p[kept]).log()).sum())
    return total / reward.shape[0]


def best_of_n_kl_reference(reward: list[list[float]], responses: list[list[str]], n: int) -> float:
    """Brute force for `best_of_n_kl` (the test oracle): enumerate every n-tuple of draws (with
    replacement) of each prompt, pick the first maximum as best-of-n does, and compare the picked
    responses' distribution with the draws' own, identical responses being one outcome."""
    total = 0.0
    for scores, texts in zip(reward, responses):
        size = len(scores)
        picked: dict[str, float] = {}
        for tuple_ in itertools.product(range(size), repeat=n):
            best = max(range(n), key=lambda j: (scores[tuple_[j]], -j))
            picked[texts[tuple_[best]]] = picked.get(texts[tuple_[best]], 0.0) + size**-n
        p = {t: texts.count(t) / size for t in set(texts)}
        total += sum(q * math.log(q / p[t]) for t, q in picked.items() if q > 0)
    return total / len(reward)


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
    """Draws per prompt and policy: the means' standard error shrinks with it (a held-out split has few
    prompts)."""


# Draw j of held-out prompt i gets the random numbers row_noise(seed, i * NOISE_STRIDE + j), for every
# policy and whatever its number of draws: policies are compared on the same numbers, a checkpoint drawn
# fewer times shares its draws' numbers with the finals', and best-of-n's pool extends the reference's
# own draws (its first k are the reference's samples).
NOISE_STRIDE = 1 << 16


def compare_policies(
    policies: Mapping[str, tuple | Callable[[], tuple]],
    reference: str | None,
    prompts: list[str],
    references: list[list[str]] | None,
    settings: EvalSettings,
    gold: bool,
    reward_fn: Callable | None,
    progress=None,
    draws_of: dict[str, int] | None = None,
    rows: list[dict] | None = None,
) -> EvalResult:
    """Sample every policy with the same random numbers (NOISE_STRIDE; so their differences are
    paired), `settings.samples_per_prompt` times per prompt or `draws_of[name]`; KL, win rates and paired
    gold gains against `reference` (the SFT policy); best-of-n from the reference reranked by `reward_fn`.
    `policies` maps name -> (model, tokenizer), or a function returning them: loaded when its turn comes
    and dropped after, so a curve of checkpoints never holds more than two models. `progress` (a tqdm
    bar or None) advances by one per sample drawn, `eval_sample_count` in all. `rows` (one per prompt,
    its dataset row) is what a `f(samples)` reward reads as metadata."""
    draws = policy_draws(list(policies), settings, reference, reward_fn, draws_of)
    pool_draws = best_of_n_draws(settings, reference, reward_fn)
    result = EvalResult(samples_per_prompt=settings.samples_per_prompt)
    ref = _loaded(policies[reference]) if reference is not None else None
    # The reference's prompt pass over the held-out prompts, once for every policy compared with it.
    ref_prompts = None
    if ref is not None:
        ids = [encode_prompt(ref[1], p) for p in prompts]
        ref_prompts = PromptCache(ref[0], ids, ref[1].pad_token_id)
        if hasattr(reward_fn, "keep_prompts"):
            reward_fn.keep_prompts(ids)  # the RM's prompt pass, likewise once
    pool = None
    for name, entry in policies.items():
        model, tokenizer = ref if name == reference else _loaded(entry)
        compare_to = (
            ref_prompts if ref is not None and name != reference and _same_vocab(model, ref[0]) else None
        )
        samples = sample_policy(
            model,
            tokenizer,
            prompts,
            settings.max_new_tokens,
            settings.temperature,
            n=draws[name],
            batch_size=settings.batch_size,
            reference=compare_to,
            progress=progress,
            noise_seed=settings.seed,
            noise_stride=NOISE_STRIDE,
        )
        if name == reference:
            samples.kl = [0.0] * len(samples.prompts)  # a policy's KL to itself
        if ref is not None and not same_tokenizer(tokenizer, ref[1]):
            samples.token_ids = None  # ids of another vocabulary: the reward reads the text instead
        add_scores(samples, gold, reward_fn, settings.batch_size, per_sample(rows, draws[name]))
        k = draws[name] if name != reference else settings.samples_per_prompt
        if name == reference and pool_draws:
            pool, samples = samples, take_draws(samples, draws[name], k)
        result.samples[name], result.draws[name] = samples, k
        result.metrics[name] = summarise(samples, per_sample(references, k))
    if reference is not None:
        add_comparisons(result, reference)
    if pool is not None and pool.gold is not None:
        shape = (len(prompts), draws[reference])
        k = settings.samples_per_prompt
        baseline = torch.tensor(pool.gold).view(shape)[:, :k].mean(dim=1)  # the reference's own draws
        result.best_of_n = best_of_n(
            torch.tensor(pool.gold).view(shape),
            torch.tensor(pool.reward).view(shape),
            settings.best_of_n,
            baseline=baseline,
        )
        result.rm_agreement = rm_gold_agreement(
            torch.tensor(pool.gold).view(shape), torch.tensor(pool.reward).view(shape)
        )
    return result


def per_sample(items: list | None, n: int) -> list | None:
    """Each prompt's item (its dataset row, its references) once per draw (samples are row-major:
    prompt i's draws are rows i*n .. i*n+n-1)."""
    return None if items is None else [item for item in items for _ in range(n)]


def add_comparisons(result: EvalResult, reference: str) -> None:
    """Win rates and paired gold gains of every policy against `reference`, on the first min(k_A, k_ref)
    draws of each prompt (the draws that share their random numbers)."""
    ref = result.samples[reference]
    for name, samples in result.samples.items():
        if name == reference:
            continue
        k = min(result.draws[name], result.draws[reference])
        mine, theirs = take_draws(samples, result.draws[name], k), take_draws(ref, result.draws[reference], k)
        result.win_rates[f"{name} vs {reference}"] = {
            key: win_rate(getattr(mine, key), getattr(theirs, key))
            for key in ("gold", "reward")
            if getattr(mine, key) is not None
        }
        if mine.gold is not None:
            result.gold_gains[f"{name} vs {reference}"] = paired_gain(mine.gold, theirs.gold, k)


def take_draws(samples: PolicySamples, n: int, k: int) -> PolicySamples:
    """The first k of each prompt's n draws (rows i*n .. i*n+k-1), every per-sample field cut alike."""
    if k == n:
        return samples
    keep = [row for row in range(len(samples.prompts)) if row % n < k]
    cut = {}
    for key in ("prompts", "responses", "finished", "lengths", "gold", "reward", "kl", "token_ids"):
        values = getattr(samples, key)
        cut[key] = None if values is None else [values[row] for row in keep]
    return PolicySamples(**cut)


def policy_draws(
    names: list[str], settings: EvalSettings, reference: str | None, reward_fn, draws_of: dict | None = None
) -> dict[str, int]:
    """Draws per prompt each policy is sampled: `draws_of[name]` or samples_per_prompt; the reference
    max(samples_per_prompt, best-of-n's pool), its first draws being its own samples."""
    draws = {name: (draws_of or {}).get(name, settings.samples_per_prompt) for name in names}
    if reference is not None:
        draws[reference] = max(settings.samples_per_prompt, best_of_n_draws(settings, reference, reward_fn))
    return draws


def best_of_n_draws(settings: EvalSettings, reference: str | None, reward_fn) -> int:
    return (
        max(settings.best_of_n)
        if reward_fn is not None and reference is not None and settings.best_of_n
        else 0
    )


def eval_sample_count(
    n_prompts: int, names: list[str], settings: EvalSettings, reference, reward_fn, draws_of=None
) -> int:
    return n_prompts * sum(policy_draws(names, settings, reference, reward_fn, draws_of).values())


def _loaded(entry) -> tuple:
    return entry() if callable(entry) else entry


def _same_vocab(model, other) -> bool:
    return model.get_output_embeddings().weight.shape[0] == other.get_output_embeddings().weight.shape[0]
