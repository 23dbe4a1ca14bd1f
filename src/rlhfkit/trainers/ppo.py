"""PPO against a reward (Ziegler et al. 2019; Ouyang et al. 2022), one iteration read top to bottom:
rollout -> score -> KL-shaped rewards -> GAE -> PPO epochs -> diagnostics -> health check."""

from __future__ import annotations

import contextlib
import io
import random
import time

import torch
from safetensors.torch import save

from rlhfkit.config import ModelConfig, PPOConfig
from rlhfkit.data import load_rows
from rlhfkit.data.sft import prompt_text
from rlhfkit.errors import ConfigError
from rlhfkit.evaluate.completions import completion_metrics, prompts_and_references
from rlhfkit.evaluate.health import health_warnings
from rlhfkit.evaluate.text import is_builtin
from rlhfkit.models import load_causal_lm
from rlhfkit.ops import (
    adaptive_kl_coef,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_exact,
    kl_k1,
    kl_k3,
    kl_shaped_rewards,
    masked_mean,
    masked_sum,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)
from rlhfkit.rewards import load_reward
from rlhfkit.rollout.ppo import Rollout, decode_responses, sample_prompts, score
from rlhfkit.run import metrics as M
from rlhfkit.trainers.common import (
    NonFiniteGuard,
    RunResult,
    build_optimizer,
    finish,
    guarded_step,
    progress_bar,
    restore_training_state,
    save_final,
    save_training_state,
    start_stage,
)


class PolicyWithValue(torch.nn.Module):
    """The policy and a scalar value head on its last hidden state (one forward gives both)."""

    def __init__(self, policy: torch.nn.Module, hidden_size: int):
        super().__init__()
        self.policy = policy
        self.value_head = torch.nn.Linear(hidden_size, 1)
        # Zero init: values start at 0, so early advantages are the plain returns (Huang et al. 2024).
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)


def load_prompts(cfg: PPOConfig, tokenizer) -> tuple[list[str], list[dict]]:
    d = cfg.data
    rows = load_rows(d.source, "train", d.builtin_size, d.builtin_noise)[: d.max_train_rows or None]
    prompts = list(dict.fromkeys(prompt_text(r, f"{d.source}: row {i}", d.template, tokenizer) for i, r in enumerate(rows)))
    eval_rows = []
    if is_builtin(d.eval_source or d.source):
        eval_rows = load_rows(d.eval_source or d.source, "test")[: cfg.ppo.eval_prompts]
    print(f"rlhfkit: ppo prompts: {len(prompts)} distinct train prompts, {len(eval_rows)} held-out for gold/score", flush=True)
    return prompts, eval_rows


def reference_context(model: PolicyWithValue, lora: bool):
    """With LoRA the reference is the same weights with the adapter off: no second copy (design §6.3)."""
    return model.policy.disable_adapter() if lora else contextlib.nullcontext()


def train_ppo(cfg: PPOConfig, resume: bool = False, overwrite: bool = False) -> RunResult:
    r, p = cfg.rollout, cfg.ppo
    if r.top_k and not r.allow_mismatched_sampling:
        raise ConfigError("rollout.top_k warps sampling away from the distribution PPO scores (design §6.1): "
                          "set rollout.top_k=0 (or rollout.allow_mismatched_sampling=true to reproduce the bug)")
    if r.batch_size % p.minibatches:
        raise ConfigError(f"rollout.batch_size={r.batch_size} must be divisible by ppo.minibatches={p.minibatches}")
    ctx = start_stage(cfg, "ppo", resume, overwrite)
    policy, tokenizer = load_causal_lm(cfg.model)
    # Full fine-tuning needs a frozen copy as the reference; LoRA reuses the base (adapter disabled).
    reference = None if cfg.model.lora else load_causal_lm(ModelConfig(**{**vars(cfg.model), "lora": False}),
                                                           trainable=False)[0]
    model = PolicyWithValue(policy, policy.config.get_text_config().hidden_size)
    reward_fn = load_reward(p.reward, p.normalize_reward)
    prompts, eval_rows = load_prompts(cfg, tokenizer)
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    start, extras = restore_training_state(ctx, model, optimizer, scheduler) if resume else (0, {})
    ctx.open_run()
    kl_coef = extras.get("kl_coef", p.kl_coef)

    history: list[dict] = []
    last_warned: dict[str, int] = {}
    bar = progress_bar(p.iterations, start, "ppo", ctx.is_main and cfg.run.progress)
    for iteration in range(start, p.iterations):
        # The run's first gold/score is measured before any update: the starting (SFT) policy's.
        gold_before = held_out_gold(model.policy, tokenizer, eval_rows, cfg) if eval_rows and iteration == start else None
        started = time.perf_counter()
        # 1. rollout: prompts are a pure function of (seed, iteration), so resume needs no data state
        batch_prompts = random.Random(cfg.train.seed * 1_000_003 + iteration).sample(prompts, min(r.batch_size, len(prompts)))
        rollout = make_rollout(model, tokenizer, batch_prompts, cfg)
        # 2. score: old log-probs + values, reference log-probs, reward
        with torch.no_grad():
            old = score(model.policy, rollout, r.temperature, with_values=True, value_head=model.value_head)
            with reference_context(model, cfg.model.lora):
                ref = score(reference or model.policy, rollout, r.temperature)
        mask = rollout.response_mask
        responses = decode_responses(tokenizer, rollout)
        raw_scores = reward_fn(batch_prompts, responses)
        scores = (raw_scores + p.no_eos_penalty * (~rollout.finished).float()).clamp(-p.reward_clip, p.reward_clip)
        # 3. KL-shaped per-token rewards
        rewards = kl_shaped_rewards(scores, old["logprobs"], ref["logprobs"], mask, kl_coef)
        # 4. GAE, then whitened advantages
        advantages, returns = gae(rewards, old["values"], mask, p.gamma, p.lam)
        if p.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        # 5. PPO epochs over minibatches
        update = ppo_update(model, optimizer, scheduler, rollout, old, advantages, returns, cfg, iteration, ctx.guard)
        # 6. diagnostics (design §2 names)
        stats = {
            **update,
            M.PPO_KL_K1: masked_sum(kl_k1(old["logprobs"], ref["logprobs"]), mask, dim=-1).mean().item(),
            M.PPO_KL_K3: masked_sum(kl_k3(old["logprobs"], ref["logprobs"]), mask, dim=-1).mean().item(),
            M.PPO_KL_EXACT: exact_kl(old["logits"], ref["logits"], mask, r.temperature, p.kl_exact_rows),
            M.PPO_ENTROPY: masked_mean(entropy_from_logits(old["logits"], r.temperature), mask).item(),
            M.PPO_VALUE_EXPLAINED_VAR: explained_variance(old["values"], returns, mask).item(),
            M.PPO_REWARD_RM: raw_scores.mean().item(),
            M.PPO_REWARD_TOTAL: masked_sum(rewards, mask, dim=-1).mean().item(),
            M.PPO_KL_COEF: kl_coef,
            M.PPO_RESPONSE_LEN: rollout.response_lengths.float().mean().item(),
            M.PPO_EOS_RATE: rollout.finished.float().mean().item(),
            M.SKIPPED_STEPS: ctx.guard.skipped,
            M.PPO_SECONDS: time.perf_counter() - started,
        }
        if p.target_kl is not None:
            kl_coef = adaptive_kl_coef(kl_coef, stats[M.PPO_KL_K1], p.target_kl, p.kl_horizon, len(batch_prompts))
        done = iteration + 1
        if gold_before is not None:
            stats[M.GOLD_SCORE] = gold_before
        elif eval_rows and (done % p.eval_every == 0 or done == p.iterations):
            stats[M.GOLD_SCORE] = held_out_gold(model.policy, tokenizer, eval_rows, cfg)
        ctx.logger.log(done, stats)
        # 7. health check: symptoms -> warnings naming the cause and the config key
        history.append(stats)
        for warning in health_warnings(history, p.health_window):
            kind = warning.split(":", 1)[0]
            # A lasting symptom is repeated every health_window iterations, not every iteration.
            if done - last_warned.get(kind, -p.health_window) >= p.health_window:
                last_warned[kind] = done
                bar.write(f"rlhfkit: ppo warning (iteration {done}): {warning}")
                ctx.logger.log(done, {M.HEALTH_WARNING: warning})
        bar.update(1)
        bar.set_postfix(reward=f"{stats[M.PPO_REWARD_RM]:.3f}", kl=f"{stats[M.PPO_KL_K1]:.3f}", refresh=False)
        if done % cfg.train.save_every == 0 and done < p.iterations:
            save_training_state(ctx, done, model, optimizer, scheduler, extra={"kl_coef": kl_coef})
    bar.close()
    value_head = save({k: v.contiguous() for k, v in model.value_head.state_dict().items()})
    final = save_final(ctx, model.policy, tokenizer, extra_files={"value_head.safetensors": value_head})
    return finish(ctx, final)


def make_rollout(model: PolicyWithValue, tokenizer, prompts: list[str], cfg: PPOConfig) -> Rollout:
    return sample_prompts(model.policy, tokenizer, prompts, cfg.rollout.max_new_tokens, cfg.rollout.temperature,
                          top_k=cfg.rollout.top_k)


def ppo_update(model: PolicyWithValue, optimizer, scheduler, rollout: Rollout, old: dict, advantages: torch.Tensor,
               returns: torch.Tensor, cfg: PPOConfig, iteration: int,
               guard: NonFiniteGuard) -> dict[str, float]:
    p = cfg.ppo
    batch = rollout.query_ids.shape[0]
    size = batch // p.minibatches
    generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + iteration)
    model.train()
    totals: dict[str, list[float]] = {}
    ratio_first = None
    # ppo.epochs passes over the batch, each in a fresh random order of ppo.minibatches minibatches.
    orders = [torch.randperm(batch, generator=generator) for _ in range(p.epochs)]
    for rows in (order[start : start + size] for order in orders for start in range(0, batch, size)):
        part = Rollout(*(t[rows] for t in (rollout.query_ids, rollout.query_mask, rollout.response_ids,
                                             rollout.response_mask, rollout.finished)))
        new = score(model.policy, part, cfg.rollout.temperature, with_values=True, value_head=model.value_head)
        pg_loss, pg_stats = ppo_policy_loss(new["logprobs"], old["logprobs"][rows], advantages[rows],
                                            part.response_mask, p.clip_range)
        vf_loss, vf_stats = ppo_value_loss(new["values"], old["values"][rows], returns[rows], part.response_mask,
                                           p.value_clip_range)
        optimizer.zero_grad(set_to_none=True)
        loss = pg_loss + p.vf_coef * vf_loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
        guarded_step(guard, optimizer, scheduler, loss.item(), grad_norm.item(), iteration + 1)
        if ratio_first is None:
            # Before any update the new and old policies are the same weights on the same inputs.
            ratio_first = pg_stats["ratio_mean"].item()
        for key, value in {**pg_stats, **vf_stats}.items():
            totals.setdefault(key, []).append(float(value))
        if p.approx_kl_stop is not None and pg_stats["approx_kl"].item() > p.approx_kl_stop:
            break
    mean = {k: sum(v) / len(v) for k, v in totals.items()}
    return {M.PPO_RATIO_FIRST: ratio_first, M.PPO_CLIPFRAC: mean["clipfrac"], M.PPO_APPROX_KL: mean["approx_kl"],
            "ppo/pg_loss": mean["pg_loss"], "ppo/vf_loss": mean["vf_loss"], "ppo/ratio_max": max(totals["ratio_max"]),
            "ppo/minibatch_updates": len(totals["pg_loss"])}


def exact_kl(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor, temperature: float, rows: int) -> float:
    """Mean sequence KL from full next-token distributions on the first `rows` rows (the oracle)."""
    rows = min(rows, logits.shape[0])
    per_token = kl_exact(logits[:rows], ref_logits[:rows], temperature=temperature)  # (rows, R)
    return masked_sum(per_token, mask[:rows], dim=-1).mean().item()


def held_out_gold(policy, tokenizer, eval_rows: list[dict], cfg: PPOConfig) -> float:
    prompts, references = prompts_and_references(eval_rows, cfg.data.eval_source or cfg.data.source,
                                                  cfg.data.template, tokenizer)
    with contextlib.redirect_stdout(io.StringIO()):
        metrics, _ = completion_metrics(policy, tokenizer, prompts, references, cfg.rollout.max_new_tokens, gold=True,
                                        batch_size=64)
    return metrics[M.GOLD_SCORE]
