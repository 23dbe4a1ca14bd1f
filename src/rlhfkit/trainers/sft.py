"""Supervised fine-tuning: next-token loss on completion tokens only (prompt and padding ignored)."""

from __future__ import annotations

import json
import math
import time

import torch

from rlhfkit.config import SFTConfig
from rlhfkit.data import load_rows, split_off_eval, tokenize_sft
from rlhfkit.data.batching import global_batch_at, micro_batch
from rlhfkit.data.packing import PackedSFT, check_packing_is_exact, pack_sft
from rlhfkit.data.sft import TokenizedSFT, completion_tokens
from rlhfkit.data.sources import is_builtin
from rlhfkit.evaluate.completions import completion_metrics, prompts_and_references
from rlhfkit.evaluate.loss import completion_nll, held_out_loss
from rlhfkit.models import load_causal_lm
from rlhfkit.run import metrics as M
from rlhfkit.run.progress import progress_bar
from rlhfkit.trainers.checkpoints import save_training_state
from rlhfkit.trainers.final import save_final
from rlhfkit.trainers.optim import accumulate_and_step, prepare_training
from rlhfkit.trainers.sharding import full_weights
from rlhfkit.trainers.stage import RunResult, finish, start_stage


def load_sft_data(cfg: SFTConfig, tokenizer) -> tuple[TokenizedSFT, TokenizedSFT, list[dict]]:
    """(train examples, held-out examples, held-out rows) with a report of what was dropped."""
    d = cfg.data
    rows = load_rows(d.source, "train", d.builtin_size, d.builtin_noise)
    # (source row number, row): messages about a bad row name its line in the file, not its
    # position after the held-out split shuffled it.
    numbered, eval_numbered = list(enumerate(rows)), []
    if d.eval_source:
        eval_numbered = list(enumerate(load_rows(d.eval_source, "test")))
    elif is_builtin(d.source):
        eval_numbered = list(enumerate(load_rows(d.source, "test")))
    else:
        numbered, eval_numbered = split_off_eval(numbered, d.eval_fraction, cfg.train.seed, d.eval_size)
    if d.max_train_rows:
        numbered = numbered[: d.max_train_rows]
    eval_numbered = eval_numbered[: d.eval_size]
    rows, eval_rows = [r for _, r in numbered], [r for _, r in eval_numbered]
    train = tokenize_sft(
        rows, tokenizer, d.source, d.template, d.max_length, d.truncation, [i for i, _ in numbered]
    )
    held_out = tokenize_sft(
        eval_rows,
        tokenizer,
        d.eval_source or d.source,
        d.template,
        d.max_length,
        d.truncation,
        [i for i, _ in eval_numbered],
    )
    for name, part, total in (("train", train, len(rows)), ("eval", held_out, len(eval_rows))):
        note = (
            f", {part.dropped_too_long} dropped as longer than data.max_length={d.max_length}"
            if part.dropped_too_long
            else ""
        )
        note += f", {part.truncated_prompts} prompts cut from the left" if part.truncated_prompts else ""
        print(f"rlhfkit: sft {name} data: {len(part)} of {total} rows kept{note}", flush=True)
    return train, held_out, [eval_rows[i] for i in held_out.rows]


def packed_rows(train: TokenizedSFT, max_length: int) -> PackedSFT:
    """sft.packing: the training examples in rows of up to data.max_length tokens, with a report."""
    packed = pack_sft(train, max_length)
    tokens = sum(len(ids) for ids in packed.input_ids)
    print(
        f"rlhfkit: sft packing: {len(train)} examples in {len(packed)} rows of <= {max_length} tokens "
        f"({tokens / (len(packed) * max_length):.0%} full)",
        flush=True,
    )
    return packed


@torch.no_grad()
def evaluate_sft(
    model, tokenizer, cfg: SFTConfig, held_out: TokenizedSFT, eval_rows: list[dict]
) -> tuple[dict, list]:
    model.eval()
    eval_loss = held_out_loss(model, held_out, tokenizer.pad_token_id, cfg.train.batch_size)
    metrics = {M.EVAL_LOSS: eval_loss, M.EVAL_PERPLEXITY: math.exp(min(eval_loss, 50.0))}
    samples: list[dict] = []
    n = min(cfg.sft.eval_generate, len(eval_rows))
    if n > 0:
        source = cfg.data.eval_source or cfg.data.source
        prompts, references = prompts_and_references(eval_rows[:n], source, cfg.data.template, tokenizer)
        generated, samples = completion_metrics(
            model,
            tokenizer,
            prompts,
            references,
            cfg.sft.max_new_tokens,
            gold=is_builtin(source),
            batch_size=cfg.train.batch_size,
        )
        metrics.update(generated)
    model.train()
    return metrics, samples


def train_sft(cfg: SFTConfig, resume: bool = False, overwrite: bool = False) -> RunResult:
    ctx = start_stage(cfg, "sft", resume, overwrite)
    acc, t = ctx.accelerator, cfg.train
    model, tokenizer = load_causal_lm(cfg.model)
    train, held_out, eval_rows = load_sft_data(cfg, tokenizer)
    if cfg.sft.packing:
        # Before accelerate wraps (or shards) the model: the check is one forward of the whole model.
        check_packing_is_exact(model, cfg.model.name)
        train = packed_rows(train, cfg.data.max_length)
    model, optimizer, scheduler, start_step, global_batch = prepare_training(
        ctx, model, len(train), unit="packed rows" if cfg.sft.packing else "training examples"
    )
    ctx.open_run()
    rank, world = acc.process_index, acc.num_processes
    lengths = tuple(len(ids) for ids in train.input_ids)

    def log_eval(step: int) -> None:
        """Rank 0 evaluates; every process enters full_weights (it gathers a sharded model)."""
        with full_weights(acc, model):
            if not ctx.is_main:
                return
            metrics, samples = evaluate_sft(acc.unwrap_model(model), tokenizer, cfg, held_out, eval_rows)
        ctx.logger.log(step, metrics)
        with open(ctx.out / "samples.jsonl", "a", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps({"step": step, **sample}) + "\n")

    if start_step == 0:
        log_eval(0)
    bar = progress_bar(t.max_steps, start_step, "sft", ctx.is_main and cfg.run.progress)
    for step in range(start_step, t.max_steps):
        started = time.perf_counter()
        indices = global_batch_at(step, lengths, global_batch, t.seed, cfg.sft.group_by_length)
        # Weight each micro-batch by its share of the global batch's completion tokens, so the
        # step's loss is the token mean over the whole global batch whatever the split.
        global_tokens = sum(completion_tokens(train.labels[i]) for i in indices)

        def micro_loss(micro_step: int, indices=indices, global_tokens=global_tokens):
            ids = micro_batch(indices, micro_step, rank, world, t.batch_size)
            # Padded examples carry an attention mask; packed rows carry position ids instead
            # (data/packing.py). Logits only from the first completion token's position on.
            loss, stats = completion_nll(model, train.collate(ids, tokenizer.pad_token_id))
            return loss, stats["tokens"] / global_tokens

        step_loss, grad_norm = accumulate_and_step(
            ctx, model, optimizer, scheduler, micro_loss, t.grad_accum, step + 1
        )
        elapsed = time.perf_counter() - started
        tokens_per_s = sum(lengths[i] for i in indices) / elapsed
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens_per_s:.0f}", refresh=False)
        done = step + 1
        if done % t.log_every == 0 or done == t.max_steps:
            ctx.logger.log(
                done,
                {
                    M.LOSS: step_loss,
                    M.LR: scheduler.get_last_lr()[0],
                    M.GRAD_NORM: float(grad_norm),
                    M.TOKENS_PER_S: tokens_per_s,
                    M.SKIPPED_STEPS: ctx.guard.skipped,
                },
            )
        if done % t.eval_every == 0 or done == t.max_steps:
            log_eval(done)
        if done % t.save_every == 0 and done < t.max_steps:
            save_training_state(ctx, done, model, optimizer, scheduler)
    bar.close()
    final = save_final(ctx, model, tokenizer, save_merged=cfg.sft.save_merged)
    return finish(ctx, final)
