"""Direct preference optimisation on (prompt, chosen, rejected) pairs, from an SFT policy: DPO
(Rafailov et al. 2023), conservative DPO, IPO and the reference-free SimPO (ops/preference.py).

One step reads top to bottom: policy log-probs of chosen and rejected (their prompt run once) -> the SFT
reference's (adapter off, a frozen copy, or a table computed once) -> the preference loss. Like the
rm stage it batches pairs with a global batch that is a pure function of (seed, step), so resume and
N processes need no data state. The sampled evals measure DPO as PPO is measured: held-out gold on
fixed-noise samples and the KL to the SFT policy on the policy's own samples."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file

from rlhfkit.atomic import atomic_write_text
from rlhfkit.config import DataConfig, DPOConfig, ModelConfig, PPOConfig, RolloutSection, TrainConfig
from rlhfkit.data import load_rows
from rlhfkit.data.batching import global_batch_at, micro_batch
from rlhfkit.data.preferences import TokenizedPairs, pair_prompts
from rlhfkit.data.sources import is_builtin
from rlhfkit.errors import ConfigError
from rlhfkit.evaluate.compare import paired_gain, sample_policy
from rlhfkit.evaluate.completions import prompts_and_references
from rlhfkit.models import load_causal_lm
from rlhfkit.models.prefix import SharedPrompts, continuation_logits
from rlhfkit.ops import (
    dpo_loss,
    k1_exact_z,
    kl_exact,
    kl_k1,
    logprobs_from_logits,
    masked_sum,
    sequence_logps,
    simpo_loss,
)
from rlhfkit.rollout.ppo import score
from rlhfkit.run import metrics as M
from rlhfkit.run.progress import progress_bar
from rlhfkit.trainers.checkpoints import save_training_state
from rlhfkit.trainers.context import StageContext
from rlhfkit.trainers.final import save_final
from rlhfkit.trainers.optim import accumulate_and_step, prepare_training
from rlhfkit.trainers.ppo import held_out_gold
from rlhfkit.trainers.rm import load_pair_data
from rlhfkit.trainers.sharding import full_weights, like_sharded_policy
from rlhfkit.trainers.stage import RunResult, finish, start_stage

REFERENCE_TABLE = "reference_logps.safetensors"
"""The run folder's precomputed reference log-probs (dpo.reference=precomputed)."""
FIRST_GOLD = "gold_step0.json"
"""The step-0 (SFT) policy's per-prompt gold scores, which later evals' gains are paired with."""
STAT_METRICS = {
    "loss": M.DPO_LOSS,
    "accuracy": M.DPO_ACCURACY,
    "margin": M.DPO_MARGIN,
    "chosen_logp": M.DPO_CHOSEN_LOGP,
    "rejected_logp": M.DPO_REJECTED_LOGP,
    "chosen_reward": M.DPO_CHOSEN_REWARD,
    "rejected_reward": M.DPO_REJECTED_REWARD,
}
"""ops/preference.py's stats keys -> metric names."""


def check_dpo_config(cfg: DPOConfig) -> None:
    """Refuse combinations the loader cannot see: they involve two sections."""
    p = cfg.dpo
    if p.reference == "adapter_off" and not cfg.model.lora:
        raise ConfigError(
            "dpo.reference=adapter_off needs model.lora=true (the reference is the policy with its "
            "adapter disabled); with full weights use dpo.reference=frozen_copy or precomputed"
        )
    if p.label_smoothing >= 0.5:
        raise ConfigError(
            f"dpo.label_smoothing must be < 0.5 (a flip rate of 0.5 carries no preference), "
            f"got {p.label_smoothing:g}"
        )
    if p.label_smoothing and p.loss != "sigmoid":
        raise ConfigError(f"dpo.label_smoothing (conservative DPO) applies to dpo.loss=sigmoid, not {p.loss}")


# ----------------------------------------------------------------------------- log-probs of pairs


def pair_logps(model, batch: SharedPrompts, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) response log-probs (B,) each, summed over response tokens (DPO) or averaged
    (SimPO), from pairs_batch's 2B rows: each pair's prompt runs once for both responses, and the LM
    head only at the positions that predict response tokens (models/prefix.py, design §3.5)."""
    logits = continuation_logits(model, batch)  # (2B, R, V): [:, t] predicts response token t
    logprobs = logprobs_from_logits(logits, batch.ids)  # (2B, R)
    logps = sequence_logps(logprobs, batch.mask, average=average)  # (2B,)
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


def pairs_batch(pairs: TokenizedPairs, ids: list[int], pad_token_id: int) -> SharedPrompts:
    """The pairs' chosen then rejected responses, each naming its pair's prompt."""
    return SharedPrompts.split(*pairs.pair_rows(ids), pad_token_id)


@contextlib.contextmanager
def reference_model(policy, frozen, autocast: Callable = contextlib.nullcontext):
    """The SFT reference to call: the frozen copy, or (LoRA) the policy with its adapter disabled, inside
    `autocast` (the accelerator's). The prepared policy's forward runs under it, so the reference must
    too: a frozen copy in float32 against a bf16 policy puts bf16 rounding into the loss and the KL
    (step 1's loss log 2 - 1.2e-4 on the tiny model, where policy = reference; docs/scaling.md
    section 2.4)."""
    with autocast():
        if frozen is not None:
            yield frozen
            return
        with policy.disable_adapter():
            yield policy


@torch.no_grad()
def all_pair_logps(
    model, pairs: TokenizedPairs, pad_token_id: int, batch_size: int, average: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (N,), rejected (N,)) log-probs of every pair under `model`."""
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        batch = pairs_batch(pairs, list(range(start, min(start + batch_size, len(pairs)))), pad_token_id)
        c, r = pair_logps(model, batch, average)
        chosen.append(c)
        rejected.append(r)
    return torch.cat(chosen), torch.cat(rejected)


def reference_table(ctx: StageContext, s: DPOSetup) -> dict[str, torch.Tensor]:
    """dpo.reference=precomputed: the reference's log-probs of every train and held-out pair, computed
    once (before step 1) into the run folder; --resume reads them back."""
    path = ctx.out / REFERENCE_TABLE
    if ctx.resume and path.is_file():
        table = load_file(path)
        if len(table["train_chosen"]) == len(s.train) and len(table["eval_chosen"]) == len(s.held_out):
            return table
    table = {}
    with reference_model(s.policy, s.frozen, s.autocast) as ref:
        for name, pairs in (("train", s.train), ("eval", s.held_out)):
            c, r = all_pair_logps(ref, pairs, s.tokenizer.pad_token_id, ctx.cfg.train.batch_size, False)
            table[f"{name}_chosen"], table[f"{name}_rejected"] = c, r
    if ctx.is_main:
        # Written whole, then renamed: a kill mid-write leaves no half table for --resume to trust.
        save_file(table, str(path) + ".tmp")
        os.replace(str(path) + ".tmp", path)
    print(
        f"rlhfkit: dpo reference log-probs of {len(s.train)} + {len(s.held_out)} pairs stored in {path}",
        flush=True,
    )
    return table


def preference_loss(
    cfg: DPOConfig,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor | None,
    ref_rejected: torch.Tensor | None,
) -> tuple[torch.Tensor, dict]:
    """dpo.loss on a batch of sequence log-probs (B,): ops.dpo_loss (sigmoid, ipo) or ops.simpo_loss."""
    p = cfg.dpo
    if p.loss == "simpo":
        return simpo_loss(chosen, rejected, p.beta, p.simpo_gamma)
    return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, p.beta, p.loss, p.label_smoothing)


# ----------------------------------------------------------------------------- setup


@dataclass
class DPOSetup:
    """What the loop needs that is built once."""

    model: torch.nn.Module
    """The policy as accelerate prepared it (DDP-wrapped with several processes): runs the update."""
    policy: torch.nn.Module
    """The same policy unwrapped: reference passes (adapter off), sampling and saving."""
    frozen: torch.nn.Module | None
    """A frozen copy of the SFT policy (full weights, or dpo.reference=frozen_copy); None when the
    reference is the LoRA policy with its adapter disabled."""
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train: TokenizedPairs
    held_out: TokenizedPairs
    eval_pairs: list[dict]
    start: int
    global_batch: int
    autocast: Callable
    """The accelerator's autocast (train.mixed_precision), for the reference passes (`reference_model`)."""


def setup_dpo(cfg: DPOConfig, ctx: StageContext) -> DPOSetup:
    policy, tokenizer = load_causal_lm(cfg.model)
    frozen = None
    if cfg.dpo.reference == "frozen_copy" or not cfg.model.lora:
        frozen = load_causal_lm(ModelConfig(**{**vars(cfg.model), "lora": False}), trainable=False)[0]
        frozen = like_sharded_policy(ctx.accelerator, frozen)
    train, held_out, _, eval_pairs = load_pair_data(cfg, tokenizer, "dpo", eos=True)
    model, optimizer, scheduler, start, global_batch = prepare_training(ctx, policy, len(train))
    return DPOSetup(
        model,
        ctx.accelerator.unwrap_model(model),
        frozen,
        tokenizer,
        optimizer,
        scheduler,
        train,
        held_out,
        eval_pairs,
        start,
        global_batch,
        ctx.accelerator.autocast,
    )


# ----------------------------------------------------------------------------- the loop


def train_dpo(cfg: DPOConfig, resume: bool = False, overwrite: bool = False) -> RunResult:
    check_dpo_config(cfg)
    ctx = start_stage(cfg, "dpo", resume, overwrite)
    t, p, acc = cfg.train, cfg.dpo, ctx.accelerator
    s = setup_dpo(cfg, ctx)
    ctx.open_run()
    average = p.loss == "simpo"  # SimPO scores length-averaged log-probs and has no reference
    table = reference_table(ctx, s) if p.reference == "precomputed" and not average else None
    evals = DPOEvals(cfg, ctx, s, table)
    if s.start == 0:
        evals.pairs(0)
        evals.sampled(0)
    rank, world, pad = acc.process_index, acc.num_processes, s.tokenizer.pad_token_id
    lengths = tuple(max(len(c), len(r)) for c, r in zip(s.train.chosen_ids, s.train.rejected_ids))
    bar = progress_bar(t.max_steps, s.start, "dpo", ctx.is_main and cfg.run.progress)
    for step in range(s.start, t.max_steps):
        started = time.perf_counter()
        indices = global_batch_at(step, lengths, s.global_batch, t.seed, True)
        totals: dict[str, torch.Tensor] = {}

        def micro_loss(micro_step: int, indices=indices, totals=totals):
            ids = micro_batch(indices, micro_step, rank, world, t.batch_size)
            batch = pairs_batch(s.train, ids, pad)
            # 1. the policy's log-probs of chosen and rejected, their shared prompt run once
            chosen, rejected = pair_logps(s.model, batch, average)
            # 2. the SFT reference's, as constants
            ref_chosen = ref_rejected = None
            if table is not None:
                rows = torch.tensor(list(ids))
                ref_chosen, ref_rejected = table["train_chosen"][rows], table["train_rejected"][rows]
            elif not average:
                with torch.no_grad(), reference_model(s.policy, s.frozen, s.autocast) as ref:
                    ref_chosen, ref_rejected = pair_logps(ref, batch, False)
            # 3. the preference loss; stats weighted by the micro-batch's share of the global batch
            loss, stats = preference_loss(cfg, chosen, rejected, ref_chosen, ref_rejected)
            share = len(ids) / len(indices)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value.float() * share
            return loss, share

        _, grad_norm = accumulate_and_step(
            ctx, s.model, s.optimizer, s.scheduler, micro_loss, t.grad_accum, step + 1
        )
        stats = {
            STAT_METRICS[k]: (acc.reduce(v, "sum") if world > 1 else v).item() for k, v in totals.items()
        }
        pairs_per_s = len(indices) / (time.perf_counter() - started)
        bar.update(1)
        bar.set_postfix(loss=f"{stats[M.DPO_LOSS]:.3f}", acc=f"{stats[M.DPO_ACCURACY]:.2f}", refresh=False)
        done = step + 1
        if done % t.log_every == 0 or done == t.max_steps:
            ctx.logger.log(
                done,
                {
                    **stats,
                    M.LR: s.scheduler.get_last_lr()[0],
                    M.GRAD_NORM: grad_norm,
                    M.RM_PAIRS_PER_S: pairs_per_s,
                    M.SKIPPED_STEPS: ctx.guard.skipped,
                },
            )
        if done % t.eval_every == 0 or done == t.max_steps:
            evals.pairs(done)
        if done % p.eval_every == 0 or done == t.max_steps:
            evals.sampled(done)
        if done % t.save_every == 0 and done < t.max_steps:
            save_training_state(ctx, done, s.model, s.optimizer, s.scheduler)
    bar.close()
    return finish(ctx, save_final(ctx, s.model, s.tokenizer))


# ----------------------------------------------------------------------------- evals


class DPOEvals:
    """Rank 0's evals: implicit-reward metrics on the held-out pairs, and the sampled ones (gold/score
    on a built-in task's held-out prompts, KL to the SFT reference on the policy's own samples)."""

    def __init__(self, cfg: DPOConfig, ctx: StageContext, s: DPOSetup, table: dict | None):
        self.cfg, self.ctx, self.s, self.table = cfg, ctx, s, table
        p, d = cfg.dpo, cfg.data
        self.rows = (
            load_rows(p.eval_source, "test")[: p.eval_prompts] if is_builtin(p.eval_source or "") else []
        )
        if self.rows:
            self.prompts = prompts_and_references(self.rows, p.eval_source, d.template, s.tokenizer)[0]
        else:
            self.prompts = pair_prompts(s.eval_pairs, s.tokenizer, d.template)[: p.eval_prompts]
        first = ctx.out / FIRST_GOLD
        self.first_gold = json.loads(first.read_text()) if ctx.resume and first.is_file() else None

    def pairs(self, step: int) -> None:
        """Rank 0 evaluates; every process enters full_weights (it gathers a sharded policy)."""
        with full_weights(self.ctx.accelerator, self.s.model):
            if self.ctx.is_main:
                self.pairs_on_main(step)

    def pairs_on_main(self, step: int) -> None:
        s, average = self.s, self.cfg.dpo.loss == "simpo"
        logps = all_pair_logps(
            s.policy, s.held_out, s.tokenizer.pad_token_id, self.cfg.train.batch_size, average
        )
        if average:
            ref = (None, None)
        elif self.table is not None:
            ref = (self.table["eval_chosen"], self.table["eval_rejected"])
        else:
            with reference_model(s.policy, s.frozen, s.autocast) as model:
                ref = all_pair_logps(
                    model, s.held_out, s.tokenizer.pad_token_id, self.cfg.train.batch_size, False
                )
        self.ctx.logger.log(step, held_out_pair_metrics(self.cfg, logps, ref, s.eval_pairs))
        s.model.train()

    def sampled(self, step: int) -> None:
        if not self.prompts:
            return
        with full_weights(self.ctx.accelerator, self.s.model):
            if self.ctx.is_main:
                self.sampled_on_main(step)

    def sampled_on_main(self, step: int) -> None:
        s = self.s
        gold, stats = sampled_evals(
            s.policy, s.frozen, s.tokenizer, self.rows, self.prompts, self.cfg, autocast=s.autocast
        )
        if gold is not None:
            stats[M.GOLD_SCORE] = sum(gold) / len(gold)
            if step == 0 or self.first_gold is None:
                self.first_gold = gold
                atomic_write_text(self.ctx.out / FIRST_GOLD, json.dumps(gold))
            else:
                stats[M.GOLD_GAIN_STDERR] = paired_gain(gold, self.first_gold, 1)[1]
        self.ctx.logger.log(step, stats)
        s.model.train()


def held_out_pair_metrics(cfg: DPOConfig, logps: tuple, ref: tuple, rows: list[dict]) -> dict[str, float]:
    """Implicit-reward accuracy and margin on the held-out pairs and, where every row carries the judge's
    scores (built-in pairs), the implicit reward's agreement with the noiseless judge."""
    _, stats = preference_loss(cfg, *logps, *ref)
    out = {M.DPO_EVAL_ACCURACY: stats["accuracy"].item(), M.DPO_EVAL_MARGIN: stats["margin"].item()}
    gold = [(r.get("chosen_score"), r.get("rejected_score")) for r in rows]
    if gold and all(c is not None and r is not None for c, r in gold):
        # The implicit reward's gap of each pair, chosen minus rejected (its sign is all that is compared).
        gap = logps[0] - logps[1] if ref[0] is None else (logps[0] - ref[0]) - (logps[1] - ref[1])
        gold_gap = torch.tensor([c - r for c, r in gold], dtype=torch.float64)
        untied = gold_gap != 0
        if untied.any():
            agree = 0.5 * (1 + torch.sign(gap.double())[untied] * torch.sign(gold_gap)[untied])
            out[M.DPO_GOLD_AGREEMENT] = agree.mean().item()
    return out


def sampled_evals(
    policy,
    frozen,
    tokenizer,
    rows: list[dict],
    prompts: list[str],
    cfg: DPOConfig,
    batch_size: int = 64,
    autocast: Callable = contextlib.nullcontext,
) -> tuple[list[float] | None, dict[str, float]]:
    """(gold scores or None, KL stats) of ONE sample per held-out prompt, drawn once: with built-in
    `rows`, trainers.ppo's held_out_gold (this stage's sampling settings as a PPO config), so DPO's
    and PPO's gold/score are the same measurement, and the KL scores those very draws; without rows,
    the same fixed noise on `prompts` for the KL alone. `autocast`: the reference's (`reference_model`)."""
    p = cfg.dpo
    kl = SampleKL(policy, frozen, cfg, autocast)
    if rows:
        as_ppo = PPOConfig(
            data=DataConfig(source=p.eval_source, template=cfg.data.template),
            train=TrainConfig(seed=cfg.train.seed),
            rollout=RolloutSection(max_new_tokens=p.max_new_tokens, temperature=p.temperature),
        )
        samples = held_out_gold(policy, tokenizer, rows, as_ppo, None, batch_size, on_rollout=kl)
        return samples.gold, kl.stats()
    sample_policy(
        policy,
        tokenizer,
        prompts,
        p.max_new_tokens,
        p.temperature,
        batch_size=batch_size,
        noise_seed=-(cfg.train.seed + 1),  # held_out_gold's: the same draws at every eval
        on_rollout=kl,
    )
    return None, kl.stats()


class SampleKL:
    """KL(pi || pi_SFT) on the policy's own samples, batch by batch as they are drawn (sample_policy's
    on_rollout): k1 per sequence with its standard error, and the exact KL on the first
    dpo.kl_exact_rows samples with k1's z against it."""

    def __init__(self, policy, frozen, cfg: DPOConfig, autocast: Callable = contextlib.nullcontext):
        self.policy, self.frozen, self.p, self.autocast = policy, frozen, cfg.dpo, autocast
        self.k1: list[torch.Tensor] = []
        self.exact: list[torch.Tensor] = []

    @torch.no_grad()
    def __call__(self, rollout, start: int) -> None:
        p = self.p
        mask = rollout.response_mask  # (b, R)
        rows = max(0, min(p.kl_exact_rows - start, mask.shape[0]))
        # Full logits only of the rows the exact KL reads (score keeps no others).
        new = score(self.policy, rollout, p.temperature, logit_rows=rows)
        with reference_model(self.policy, self.frozen, self.autocast) as ref_model:
            ref = score(ref_model, rollout, p.temperature, logit_rows=rows)
        self.k1.append(masked_sum(kl_k1(new["logprobs"], ref["logprobs"]), mask, dim=-1).double())  # (b,)
        if rows:
            per_token = kl_exact(new["logits"], ref["logits"], temperature=p.temperature)  # (rows, R)
            self.exact.append(masked_sum(per_token, mask[:rows], dim=-1).double())

    def stats(self) -> dict[str, float]:
        k1 = torch.cat(self.k1)
        stats = {M.DPO_KL_K1: k1.mean().item()}
        if len(k1) >= 2:
            stats[M.DPO_KL_K1_STDERR] = (k1.std() / len(k1) ** 0.5).item()
        if self.exact:
            exact = torch.cat(self.exact)
            stats[M.DPO_KL_EXACT] = exact.mean().item()
            if len(exact) >= 2:
                stats[M.DPO_KL_K1_Z] = k1_exact_z(k1[: len(exact)], exact).item()
        return stats
