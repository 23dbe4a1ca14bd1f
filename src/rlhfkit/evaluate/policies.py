"""The one sampled evaluation of trained policies: `rlhfkit eval --reference/--reward` and the
pipeline's report both call `evaluate_policies`.

Each named model is loaded, sampled on the same held-out prompts with the same random numbers
(evaluate/compare.py), scored by the gold judge (built-in tasks) and the reward model, and compared
with the reference policy: KL, paired gold gain, win rates and best-of-n from the reference.
"""

from __future__ import annotations

from rlhfkit.config import ModelConfig
from rlhfkit.data import load_rows
from rlhfkit.data.sources import is_builtin
from rlhfkit.evaluate.compare import EvalResult, EvalSettings, compare_policies, eval_sample_count
from rlhfkit.evaluate.completions import prompts_and_references
from rlhfkit.models import load_causal_lm
from rlhfkit.rewards import load_reward
from rlhfkit.run.progress import progress_bar


def load_policy(name: str):
    """(model, tokenizer) of any model or run folder, frozen, adapters merged."""
    return load_causal_lm(ModelConfig(name=name, lora=False), trainable=False)


def evaluate_policies(
    models: dict[str, str],
    reference: str | None,
    source: str,
    n_prompts: int,
    template: str,
    settings: EvalSettings,
    reward: str | None = None,
    normalize_reward: bool = True,
    progress: bool = True,
) -> EvalResult:
    """`models` maps a display name to a model or run folder; `reference` (one of the names) is the
    policy the others are compared with and best-of-n draws from; `reward` is an RM folder or
    `module:function`. Prompts: the first `n_prompts` rows of `source`'s test split, rendered in
    `template` with the reference's tokenizer."""
    rows = load_rows(source, "test")[:n_prompts]
    policies = {name: load_policy(path) for name, path in models.items()}
    tokenizer = policies[reference if reference is not None else next(iter(policies))][1]
    prompts, references = prompts_and_references(rows, source, template, tokenizer)
    reward_fn = (
        load_reward(reward, normalize=normalize_reward, policy_tokenizer=tokenizer) if reward else None
    )
    total = eval_sample_count(len(prompts), len(policies), settings, reference, reward_fn)
    bar = progress_bar(total, 0, "eval samples", progress)
    result = compare_policies(
        policies,
        reference,
        prompts,
        references,
        settings,
        gold=is_builtin(source),
        reward_fn=reward_fn,
        progress=bar,
        rows=rows,
    )
    bar.close()
    return result
