"""Reward model: Bradley-Terry on (prompt, chosen, rejected), chosen and rejected in one batch that
runs their shared prompt once (models/prefix.py)."""

from __future__ import annotations

import json
import time

import torch

from rlhfkit.config import DPOConfig, ModelConfig, RMConfig
from rlhfkit.data import split_off_eval
from rlhfkit.data.batching import global_batch_at, micro_batch
from rlhfkit.data.collate import right_pad
from rlhfkit.data.preferences import (
    TokenizedPairs,
    load_preference_pairs,
    pair_prompts,
    tokenize_pairs,
)
from rlhfkit.data.templates import render
from rlhfkit.errors import ConfigError
from rlhfkit.evaluate.rm import rm_metrics
from rlhfkit.models import load_causal_lm
from rlhfkit.models.load import base_reference
from rlhfkit.models.prefix import SharedPrompts
from rlhfkit.models.reward import (
    RM_ADAPTER,
    SavedAdapter,
    reward_model_from_causal_lm,
    rewards_at_last_token,
    shared_prompt_rewards,
)
from rlhfkit.ops import bradley_terry_loss
from rlhfkit.rewards import REWARD_STATS
from rlhfkit.rollout import generate
from rlhfkit.run import metrics as M
from rlhfkit.run.progress import progress_bar
from rlhfkit.trainers.checkpoints import save_training_state
from rlhfkit.trainers.final import save_final, wait_for_final
from rlhfkit.trainers.optim import accumulate_and_step, prepare_training
from rlhfkit.trainers.sharding import full_state_dict, full_weights, is_sharded
from rlhfkit.trainers.stage import RunResult, finish, start_stage


def load_pair_data(
    cfg: RMConfig | DPOConfig, tokenizer, stage: str = "rm", eos: bool = False
) -> tuple[TokenizedPairs, TokenizedPairs, list[dict], list[dict]]:
    """(train pairs, held-out pairs, their rows) for a stage that learns from pairs (rm, dpo): the
    stage's section (cfg.rm, cfg.dpo) gives the format and the single-turn filter; `eos` as in
    tokenize_pairs."""
    d, section = cfg.data, getattr(cfg, stage)
    if not d.source:
        raise ConfigError(
            f"data.source is required for the {stage} stage: a preference file "
            "(prompt/chosen/rejected) or hf:<name>"
        )
    loaded = load_preference_pairs(d.source, "train", section.format, section.single_turn)
    _report(stage, "train", loaded, d.source)
    # (source row number, pair), so a message about a pair names its row in the file after the split.
    numbered = list(zip(loaded.rows, loaded.pairs))
    if d.eval_source:
        held = load_preference_pairs(d.eval_source, "test", section.format, section.single_turn)
        _report(stage, "eval", held, d.eval_source)
        eval_pairs = held.pairs[: d.eval_size]
    else:
        numbered, eval_numbered = split_off_eval(numbered, d.eval_fraction, cfg.train.seed, d.eval_size)
        eval_pairs = [p for _, p in eval_numbered]
    if d.max_train_rows:
        numbered = numbered[: d.max_train_rows]
    pairs = [p for _, p in numbered]
    train = tokenize_pairs(
        pairs,
        tokenizer,
        d.source,
        d.max_length,
        d.truncation,
        [i for i, _ in numbered],
        template=d.template,
        eos=eos,
    )
    held_out = tokenize_pairs(
        eval_pairs,
        tokenizer,
        d.eval_source or d.source,
        d.max_length,
        d.truncation,
        template=d.template,
        eos=eos,
    )
    for name, part, total in (("train", train, len(pairs)), ("eval", held_out, len(eval_pairs))):
        note = (
            f", {part.dropped_too_long} dropped as longer than data.max_length={d.max_length}"
            if part.dropped_too_long
            else ""
        )
        print(f"rlhfkit: {stage} {name} pairs: {len(part.chosen_ids)} of {total} kept{note}", flush=True)
    return train, held_out, pairs, [eval_pairs[i] for i in held_out.rows]


def _report(stage: str, name: str, loaded, source: str) -> None:
    parts = [f"{len(loaded.pairs)} pairs"]
    if loaded.kept_single_turn is not None:
        parts.append(f"single-turn filter kept {loaded.kept_single_turn} of {loaded.total}")
    if loaded.dropped_identical:
        parts.append(f"{loaded.dropped_identical} with chosen == rejected dropped")
    print(f"rlhfkit: {stage} {name} data {source}: " + ", ".join(parts), flush=True)


@torch.no_grad()
def reward_stats(cfg: RMConfig, reward_model, tokenizer, train_pairs: list[dict]) -> dict:
    """Mean/std of the RM's score on fresh SFT samples for train prompts: PPO normalises with these."""
    policy, _ = load_causal_lm(ModelConfig(**{**vars(cfg.model), "lora": False}), trainable=False)
    prompts = pair_prompts(train_pairs, tokenizer, cfg.data.template)[: cfg.rm.norm_samples]
    samples = generate(policy, tokenizer, prompts, cfg.rm.max_new_tokens, greedy=False, temperature=1.0)
    ids = [render(tokenizer, cfg.data.template, p, r).ids for p, r in zip(prompts, samples.texts)]
    scores = []
    for start in range(0, len(ids), cfg.train.batch_size):
        chunk = ids[start : start + cfg.train.batch_size]
        input_ids, attention_mask = right_pad(chunk, tokenizer.pad_token_id)
        scores.append(rewards_at_last_token(reward_model, input_ids, attention_mask))
    scores = torch.cat(scores)
    return {
        "mean": scores.mean().item(),
        "std": scores.std().item(),
        "n": len(scores),
        "source": "rm scores of SFT samples (T=1) on train prompts",
        "template": cfg.data.template,
    }


def train_rm(cfg: RMConfig, resume: bool = False, overwrite: bool = False) -> RunResult:
    ctx = start_stage(cfg, "rm", resume, overwrite)
    acc, t = ctx.accelerator, cfg.train
    model, tokenizer = reward_model_from_causal_lm(cfg.model)
    train, held_out, train_pairs, eval_pairs = load_pair_data(cfg, tokenizer)
    model, optimizer, scheduler, start_step, global_batch = prepare_training(
        ctx, model, len(train.chosen_ids), head="score", head_lr=cfg.rm.head_lr
    )
    ctx.open_run()
    rank, world = acc.process_index, acc.num_processes
    lengths = tuple(max(len(c), len(r)) for c, r in zip(train.chosen_ids, train.rejected_ids))

    def log_eval(step: int) -> None:
        """Rank 0 evaluates; every process enters full_weights (it gathers a sharded model)."""
        with full_weights(acc, model):
            if not ctx.is_main:
                return
            metrics, table = rm_metrics(
                acc.unwrap_model(model), held_out, eval_pairs, tokenizer.pad_token_id, t.batch_size
            )
        ctx.logger.log(step, metrics)
        with open(ctx.out / "calibration.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "bins": table}) + "\n")

    if start_step == 0:
        log_eval(0)
    bar = progress_bar(t.max_steps, start_step, "rm", ctx.is_main and cfg.run.progress)
    for step in range(start_step, t.max_steps):
        started = time.perf_counter()
        indices = global_batch_at(step, lengths, global_batch, t.seed, True)

        def micro_loss(micro_step: int, indices=indices):
            ids = micro_batch(indices, micro_step, rank, world, t.batch_size)
            # chosen then rejected; each pair's prompt runs once for both (design §3.5)
            batch = SharedPrompts.split(*train.pair_rows(ids), tokenizer.pad_token_id)
            rewards = shared_prompt_rewards(model, batch)  # (2b,)
            loss, _ = bradley_terry_loss(
                rewards[: len(ids)], rewards[len(ids) :], cfg.rm.margin, cfg.rm.center_coef
            )
            return loss, len(ids) / len(indices)

        step_loss, grad_norm = accumulate_and_step(
            ctx, model, optimizer, scheduler, micro_loss, t.grad_accum, step + 1
        )
        pairs_per_s = len(indices) / (time.perf_counter() - started)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", pairs_s=f"{pairs_per_s:.1f}", refresh=False)
        done = step + 1
        if done % t.log_every == 0 or done == t.max_steps:
            ctx.logger.log(
                done,
                {
                    M.LOSS: step_loss,
                    M.LR: scheduler.get_last_lr()[0],
                    M.GRAD_NORM: grad_norm,
                    M.RM_PAIRS_PER_S: pairs_per_s,
                    M.SKIPPED_STEPS: ctx.guard.skipped,
                },
            )
        if done % t.eval_every == 0 or done == t.max_steps:
            log_eval(done)
        if done % t.save_every == 0 and done < t.max_steps:
            save_training_state(ctx, done, model, optimizer, scheduler)
    bar.close()
    return finish(ctx, save_rm_final(ctx, cfg, acc.unwrap_model(model), tokenizer, train_pairs))


def save_rm_final(ctx, cfg: RMConfig, unwrapped, tokenizer, train_pairs: list[dict]):
    """final/: the RM merged (no adapter), so AutoModelForSequenceClassification loads it as is, with
    its reward_stats.json; a LoRA RM also keeps its adapter and head in final/adapter/, for a policy on
    the same base (design §6.9)."""
    if is_sharded(ctx.accelerator):
        # Merging the adapter and reward_stats' sampling run on rank 0 alone, which a sharded model
        # cannot (its forward is a collective): rank 0 puts the whole weights in an unsharded RM.
        state = full_state_dict(unwrapped)  # a collective: every process
        if not ctx.is_main:
            return wait_for_final(ctx)
        unwrapped = unsharded_rm(cfg, state)
    adapter = None
    if hasattr(unwrapped, "merge_and_unload"):
        base = base_reference(cfg.model.name, cfg.model.tiny_seed, ctx.out / "final")
        adapter = {RM_ADAPTER: (SavedAdapter.of(unwrapped, base), tokenizer)}
    merged = unwrapped.merge_and_unload() if adapter else unwrapped
    stats = reward_stats(cfg, merged, tokenizer, train_pairs) if ctx.is_main else {}
    final = save_final(
        ctx, merged, tokenizer, extra_files={REWARD_STATS: json.dumps(stats, indent=1)}, extra_models=adapter
    )
    if ctx.is_main:
        ctx.logger.log(cfg.train.max_steps, {M.RM_REWARD_MEAN: stats["mean"], M.RM_REWARD_STD: stats["std"]})
    return final


def unsharded_rm(cfg: RMConfig, state: dict[str, torch.Tensor]):
    """The stage's reward model, built again unsharded, with `state` (whole tensors) as its weights."""
    # fork_rng: building draws LoRA's initial weights; reward_stats then samples with the random
    # numbers an unsharded run's rank 0 has at this point.
    with torch.random.fork_rng(devices=[]):
        model, _ = reward_model_from_causal_lm(cfg.model)
    model.load_state_dict(state)
    return model
