"""Rewards from a trained reward model: the rm stage's folder, or any local sequence classifier.

A reward model that shares the policy's tokenizer scores the sampled token ids themselves
(design §6.10); any other re-tokenises the decoded text with its own tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhfkit.config import ModelConfig
from rlhfkit.data.collate import right_pad
from rlhfkit.data.templates import render
from rlhfkit.errors import ModelError, RlhfkitError
from rlhfkit.models.load import adapter_base, load_tokenizer, resolve_model_path
from rlhfkit.models.prefix import PromptCache, SharedPrompts
from rlhfkit.models.reward import (
    RM_ADAPTER,
    kept_prompt_rewards,
    load_reward_model,
    rewards_at_last_token,
    score_head,
    shared_prompt_rewards,
)
from rlhfkit.models.shared import AdapterHead, has_score_head

REWARD_STATS = "reward_stats.json"


def same_tokenizer(a, b) -> bool:
    """Same vocabulary (ids) and the same pad id: ids from one mean the same tokens in the other."""
    return (
        a is not None
        and b is not None
        and a.get_vocab() == b.get_vocab()
        and a.pad_token_id == b.pad_token_id
    )


def stats_path(folder: str) -> Path:
    """reward_stats.json of an rm stage folder (in its final/) or of a final/ folder itself."""
    final = Path(folder) / "final" if (Path(folder) / "final").is_dir() else Path(folder)
    return final / REWARD_STATS


def reward_normalisation(folder: str, normalize: bool) -> tuple[float, float]:
    """(mean, std) the RM's scores are normalised with: stats measured on SFT samples by the rm stage."""
    if not normalize:
        return 0.0, 1.0
    stats_file = stats_path(folder)
    if not stats_file.is_file():
        raise RlhfkitError(
            f"{stats_file}: missing; train the RM with `rlhfkit rm` or set ppo.normalize_reward=false"
        )
    stats = json.loads(stats_file.read_text())
    return stats["mean"], max(stats["std"], 1e-6)


def check_template(folder: str, template: str) -> None:
    """An RM trained on one template has never seen prompts in another, so its scores of them mean
    nothing: refuse the mismatch (the rm stage records its data.template beside the stats)."""
    stats_file = stats_path(folder)
    trained = json.loads(stats_file.read_text()).get("template") if stats_file.is_file() else None
    if trained is not None and trained != template:
        raise RlhfkitError(
            f"{folder}: this reward model was trained with data.template={trained} but the "
            f"prompts it would score are rendered with data.template={template}; use the same "
            "template in both"
        )


def shareable_adapter(folder: str, model: ModelConfig, policy_tokenizer) -> tuple[Path | None, str]:
    """(the RM's adapter folder, "") when the reward-model folder can score as an adapter on the
    policy's own base (design §6.9), else (None, why not): the policy is LoRA, the RM is a LoRA rm
    stage (final/adapter/: LoRA on the trunk and a `score` head) trained on the very model the policy
    loads as its base (`model.name`, the same tiny_seed), and its tokenizer is the policy's."""
    final = Path(stats_path(folder)).parent
    adapter = final / RM_ADAPTER
    if not model.lora:
        return None, "the policy is not LoRA"
    if not (adapter / "adapter_config.json").is_file():
        return None, f"{folder} has no {RM_ADAPTER}/ (not a LoRA rm stage)"
    config = json.loads((adapter / "adapter_config.json").read_text())
    if (
        config.get("peft_type") != "LORA"
        or config.get("task_type") != "SEQ_CLS"
        or not has_score_head(adapter)
    ):
        return None, f"{adapter} is not a LoRA sequence classifier with a `score` head"
    try:
        rm_base = Path(adapter_base(adapter)).resolve()
    except ModelError as e:  # the base it names is gone: the merged RM in final/ needs none
        return None, str(e)
    policy_base = Path(resolve_model_path(model.name, model.tiny_seed)).resolve()
    if rm_base != policy_base:
        return None, f"the RM was trained on {rm_base}, the policy's base is {policy_base}"
    if not same_tokenizer(load_tokenizer(str(final)), policy_tokenizer):
        return None, "the RM's tokenizer is not the policy's"
    return adapter, ""


def model_reward(
    folder: str,
    normalize: bool,
    policy_tokenizer,
    template: str = "human_assistant",
    scorer: AdapterHead | None = None,
):
    """Scores of a reward-model folder, normalised with the stats the rm stage saved beside it;
    `template` is the one the prompts were rendered with, which the text path joins responses by.
    `scorer`: the folder's RM as an adapter on the policy's own base (models/shared.py), used instead
    of loading it merged."""
    check_template(folder, template)
    model, tokenizer = load_reward_model(folder) if scorer is None else (scorer, policy_tokenizer)
    mean, std = reward_normalisation(folder, normalize)
    shares_ids = same_tokenizer(tokenizer, policy_tokenizer)

    def inputs(prompts: list[str], responses: list[str], token_ids) -> dict[str, torch.Tensor]:
        if shares_ids and token_ids is not None:
            # Same tokenizer: score the sampled ids themselves (no decode/re-encode round trip, which
            # can change a non-canonical tokenisation). Format as in training: prompt + response, no EOS.
            ids = token_ids
        elif tokenizer.sep_token is not None:
            # Encoder RMs (BERT, DeBERTa: OpenAssistant's) are trained on (question, answer) text pairs.
            return dict(tokenizer(prompts, responses, truncation=True, padding=True, return_tensors="pt"))
        else:
            # Our rm stage's format: rendered prompt + response ids, no EOS (data/preferences.tokenize_pairs).
            ids = [render(tokenizer, template, p, r).ids for p, r in zip(prompts, responses)]
        input_ids, attention_mask = right_pad(ids, tokenizer.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    @torch.no_grad()
    def reward(
        prompts: list[str],
        responses: list[str],
        token_ids: list[list[int]] | None = None,
        finished=None,
        metadata=None,
    ) -> torch.Tensor:
        # `finished` and `metadata` are for function rewards; the RM reads the text (or ids) alone.
        if kept and token_ids is not None:
            scores = kept_prompt_rewards(kept[0], token_ids)
            if scores is not None:
                return (scores - mean) / std
        lengths = shared_prefix_lengths(prompts, token_ids) if shares_ids and token_ids is not None else []
        if lengths and min(lengths) > 0 and score_head(model) is not None:
            # The sampled ids of a decoder RM: rows of one prompt (a group's k samples, best-of-n's n
            # draws) run what they share once (design §3.5).
            batch = SharedPrompts.split(token_ids, lengths, tokenizer.pad_token_id)
            scores = shared_prompt_rewards(model, batch)
        else:
            scores = rewards_at_last_token(model, **inputs(prompts, responses, token_ids))
        return (scores - mean) / std

    kept = []

    def keep_prompts(prompt_ids: list[list[int]]) -> None:
        """Run these prompts (ids in the policy's tokenizer) once and keep their pass: rows that start
        with one of them are scored from it in every later call (the evaluation's held-out prompts,
        scored for every policy; design §3.5). A no-op for an RM that cannot read the sampled ids."""
        if shares_ids and score_head(model) is not None:
            kept[:] = [PromptCache(model, prompt_ids, tokenizer.pad_token_id, hidden=True)]

    reward.scores_token_ids = shares_ids
    reward.keep_prompts = keep_prompts
    return reward


def shared_prefix_lengths(prompts: list[str], token_ids: list[list[int]]) -> list[int]:
    """Per row, the length of the ids it shares with every row of the same prompt: their longest common
    prefix, at least the prompt's ids (rows of one prompt start with its encoding), more where the
    responses begin alike, the whole row for a prompt's only row. The boundary is not needed: any shared
    prefix computed once gives each row the same reward."""
    groups: dict[str, list[int]] = {}
    for prompt, ids in zip(prompts, token_ids):
        if prompt not in groups:
            groups[prompt] = list(ids)
        else:
            common = groups[prompt]
            n = next((i for i, (a, b) in enumerate(zip(common, ids)) if a != b), min(len(common), len(ids)))
            del common[n:]
    return [len(groups[prompt]) for prompt in prompts]
