"""The one sampled evaluation of trained policies: `rlhfkit eval --reference/--reward` and the
pipeline's report both call `evaluate_policies`.

Each named model is loaded, sampled on the same held-out prompts with the same random numbers
(evaluate/compare.py), scored by the gold judge (built-in tasks) and the reward model, and compared
with the reference policy: KL, paired gold gain, win rates and best-of-n from the reference.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from rlhfkit.config import ModelConfig, load_section
from rlhfkit.data import load_rows
from rlhfkit.data.sources import is_builtin
from rlhfkit.errors import ModelError
from rlhfkit.evaluate.compare import EvalResult, EvalSettings, compare_policies, eval_sample_count
from rlhfkit.evaluate.completions import prompts_and_references
from rlhfkit.models import load_causal_lm
from rlhfkit.models.shared import CRITIC_ADAPTER
from rlhfkit.rewards import load_reward
from rlhfkit.run.checkpoint import load_checkpoint
from rlhfkit.run.progress import progress_bar


def load_policy(name: str):
    """(model, tokenizer) of any model or run folder, or of a stage's training checkpoint
    (`runs/x/ppo/checkpoints/step-20`), frozen, adapters merged."""
    path = Path(name)
    if path.parent.name == "checkpoints" and (path / "manifest.json").is_file():
        return load_checkpoint_policy(path)
    return load_causal_lm(ModelConfig(name=name, lora=False), trainable=False)


def load_checkpoint_policy(path: Path):
    """A training checkpoint (<stage>/checkpoints/step-N/) as a frozen policy: the model the stage
    started from (its config.yaml's `model` section, with the LoRA adapter the stage trained), the
    checkpoint's trained weights copied in, the adapter merged. A checkpoint holds only the trainable
    weights (trainers/checkpoints.py), under the online loop's `policy.` prefix beside its value head
    (left out here: a policy samples without it)."""
    stage = path.parent.parent
    model, tokenizer = load_causal_lm(
        load_section(ModelConfig, stage / "config.yaml", "model"), trainable=True
    )
    try:
        state = load_checkpoint(path, only=("model",))["model"]
    except (ValueError, OSError) as e:
        raise ModelError(f"{path}: cannot read the checkpoint ({e})") from None
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in state.items():
            # The value head, a critic, or a critic adapter beside the policy's on its base (design §6.9).
            if key.startswith(("value_head.", "critic.")) or f".{CRITIC_ADAPTER}." in key:
                continue
            name = key.removeprefix("policy.")
            if name not in params:
                raise ModelError(
                    f"{path}: weight {key} does not fit the model of {stage}/config.yaml; evaluate the "
                    "checkpoint with the config it was trained with"
                )
            params[name].copy_(value)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer


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
    draws_of: dict[str, int] | None = None,
) -> EvalResult:
    """`models` maps a display name to a model, run folder or training checkpoint; `reference` (one of
    the names) is the policy the others are compared with and best-of-n draws from; `reward` is an RM
    folder or `module:function`; `draws_of` gives some policies fewer draws per prompt (a checkpoint's
    curve point) than settings.samples_per_prompt. Prompts: the first `n_prompts` rows of `source`'s test
    split, rendered in `template` with the reference's tokenizer. Models are loaded one at a time."""
    rows = load_rows(source, "test")[:n_prompts]
    first = reference if reference is not None else next(iter(models))
    loaded = load_policy(models[first])
    # The others load when compare_policies reaches them, and are dropped after.
    policies = {
        name: loaded if name == first else partial(load_policy, path) for name, path in models.items()
    }
    tokenizer = loaded[1]
    prompts, references = prompts_and_references(rows, source, template, tokenizer)
    reward_fn = (
        load_reward(reward, normalize=normalize_reward, policy_tokenizer=tokenizer) if reward else None
    )
    total = eval_sample_count(len(prompts), list(policies), settings, reference, reward_fn, draws_of)
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
        draws_of=draws_of,
        rows=rows,
    )
    bar.close()
    return result
