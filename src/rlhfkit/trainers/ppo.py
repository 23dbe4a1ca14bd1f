"""PPO against a reward (Ziegler et al. 2019; Ouyang et al. 2022), one iteration read top to bottom:
rollout -> score -> KL-shaped rewards -> GAE -> PPO epochs -> diagnostics -> health check.

With N processes (accelerate/torchrun) each samples and trains on its b = rollout.batch_size rows
of the iteration's global batch; whitening, minibatch losses and logged metrics use the whole
batch's statistics, so N x b trains like 1 x N*b. Rank 0 alone logs, evaluates and saves."""

from __future__ import annotations

import contextlib
import random
import time

import torch
from safetensors.torch import save

from rlhfkit.config import ModelConfig, PPOConfig
from rlhfkit.data import load_rows
from rlhfkit.data.batching import global_batch_at, micro_batch
from rlhfkit.data.sft import TokenizedSFT, collate_sft, completion_tokens, prompt_text, tokenize_sft
from rlhfkit.data.sources import is_builtin
from rlhfkit.errors import ConfigError
from rlhfkit.evaluate.compare import add_scores, paired_gain, sample_policy
from rlhfkit.evaluate.completions import prompts_and_references
from rlhfkit.evaluate.health import health_warnings
from rlhfkit.models import load_causal_lm
from rlhfkit.models.load import disable_dropout
from rlhfkit.models.reward import load_reward_model
from rlhfkit.ops import (
    adaptive_kl_coef,
    entropy_from_logits,
    explained_variance,
    gae,
    k1_exact_z,
    kl_exact,
    kl_k1,
    kl_k3,
    kl_shaped_rewards,
    masked_mean,
    masked_nll,
    masked_sum,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)
from rlhfkit.rewards import is_function_reward, load_reward, reward_normalisation, same_tokenizer
from rlhfkit.rollout.ppo import Rollout, critic_values, decode_responses, row_noise, sample_prompts, score
from rlhfkit.run import metrics as M
from rlhfkit.trainers.checkpoints import restore_training_state, save_training_state
from rlhfkit.trainers.collectives import gather_rows, reduce_sum
from rlhfkit.trainers.final import save_final
from rlhfkit.trainers.guard import NonFiniteGuard, guarded_step
from rlhfkit.trainers.optim import build_optimizer
from rlhfkit.trainers.stage import RunResult, finish, progress_bar, start_stage


class PolicyWithValue(torch.nn.Module):
    """The policy and its critic: a scalar value head on the policy's last hidden state (one forward
    gives both), or a separate value model initialised from the reward model (design §6.8)."""

    def __init__(self, policy: torch.nn.Module, hidden_size: int, critic: torch.nn.Module | None = None,
                 critic_norm: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.critic_norm = critic_norm
        if critic is None:
            self.value_head = torch.nn.Linear(hidden_size, 1)
            # Zero init: values start at 0, so early advantages are the plain returns (Huang et al. 2024).
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, rollout: Rollout, temperature: float, ptx: dict | None = None) -> dict[str, torch.Tensor]:
        """Response log-probs, logits and values; with `ptx` (an SFT batch) also its NLL. One call,
        so that DDP sees one forward per backward."""
        if self.critic is None:
            out = score(self.policy, rollout, temperature, with_values=True, value_head=self.value_head)
        else:
            out = score(self.policy, rollout, temperature)
            out["values"] = critic_values(self.critic, rollout, *self.critic_norm)
        if ptx is not None:
            logits = self.policy(input_ids=ptx["input_ids"], attention_mask=ptx["attention_mask"]).logits
            out["ptx_loss"] = masked_nll(logits, ptx["labels"])[0]
        return out


def load_prompts(cfg: PPOConfig, tokenizer, global_batch: int) -> tuple[list[str], list[dict]]:
    d = cfg.data
    rows = load_rows(d.source, "train", d.builtin_size, d.builtin_noise)[: d.max_train_rows or None]
    prompts = list(dict.fromkeys(prompt_text(r, f"{d.source}: row {i}", d.template, tokenizer) for i, r in enumerate(rows)))
    if len(prompts) < global_batch:
        raise ConfigError(f"{d.source}: {len(prompts)} distinct prompts cannot fill one rollout batch of {global_batch} "
                          "(rollout.batch_size x processes)")
    eval_rows = []
    if is_builtin(d.eval_source or d.source):
        eval_rows = load_rows(d.eval_source or d.source, "test")[: cfg.ppo.eval_prompts]
    print(f"rlhfkit: ppo prompts: {len(prompts)} distinct train prompts, {len(eval_rows)} held-out for gold/score", flush=True)
    return prompts, eval_rows


def load_ptx_data(cfg: PPOConfig, tokenizer, world: int) -> TokenizedSFT | None:
    """SFT examples for PPO-ptx (ppo.ptx_source, or the prompt source's own completions)."""
    p, d = cfg.ppo, cfg.data
    if not p.ptx_coef:
        return None
    source = p.ptx_source or d.source
    rows = load_rows(source, "train", d.builtin_size, d.builtin_noise)
    data = tokenize_sft(rows, tokenizer, source, d.template, d.max_length, d.truncation)
    if len(data) < p.ptx_batch_size * world:
        raise ConfigError(f"{source}: {len(data)} SFT examples cannot fill one ptx batch of {p.ptx_batch_size * world} "
                          "(ppo.ptx_batch_size x processes)")
    print(f"rlhfkit: ppo-ptx: {len(data)} SFT examples from {source}, coefficient {p.ptx_coef}", flush=True)
    return data


def load_critic(cfg: PPOConfig, policy_tokenizer):
    """(value model, its tokenizer, (mean, std)): the RM in ppo.reward, trainable, dropout off."""

    p = cfg.ppo
    if is_function_reward(p.reward):
        raise ConfigError(f"ppo.critic=reward_model needs ppo.reward to be a reward-model folder, not {p.reward}")
    critic, tokenizer = load_reward_model(p.reward)
    if not same_tokenizer(tokenizer, policy_tokenizer) or not hasattr(critic, "score"):
        raise ConfigError(f"ppo.critic=reward_model: {p.reward} must be a decoder RM (a `score` head) on the policy's "
                          "tokenizer, so it can read the policy's tokens; use ppo.critic=head")
    disable_dropout(critic)
    critic.requires_grad_(True)
    return critic, tokenizer, reward_normalisation(p.reward, p.normalize_reward)


def reference_context(model: PolicyWithValue, lora: bool):
    """With LoRA the reference is the same weights with the adapter off: no second copy (design §6.3)."""
    return model.policy.disable_adapter() if lora else contextlib.nullcontext()


def check_sampling(cfg: PPOConfig) -> None:
    r = cfg.rollout
    if r.allow_mismatched_sampling:
        return
    if r.top_k:
        raise ConfigError("rollout.top_k warps sampling away from the distribution PPO scores (design §6.1): "
                          "set rollout.top_k=0 (or rollout.allow_mismatched_sampling=true to reproduce the bug)")
    if r.repetition_penalty != 1.0:
        raise ConfigError("rollout.repetition_penalty warps sampling away from the distribution PPO scores (design "
                          "§6.1): set rollout.repetition_penalty=1 (or rollout.allow_mismatched_sampling=true)")


def train_ppo(cfg: PPOConfig, resume: bool = False, overwrite: bool = False) -> RunResult:
    r, p = cfg.rollout, cfg.ppo
    check_sampling(cfg)
    ctx = start_stage(cfg, "ppo", resume, overwrite)
    rank, world = ctx.accelerator.process_index, ctx.accelerator.num_processes
    if (r.batch_size * world) % p.minibatches:
        across = f" (x {world} processes: a global batch of {r.batch_size * world})" if world > 1 else ""
        raise ConfigError(f"rollout.batch_size={r.batch_size}{across} must be divisible by ppo.minibatches={p.minibatches}")
    policy, tokenizer = load_causal_lm(cfg.model)
    # Full fine-tuning needs a frozen copy as the reference; LoRA reuses the base (adapter disabled).
    reference = None if cfg.model.lora else load_causal_lm(ModelConfig(**{**vars(cfg.model), "lora": False}),
                                                           trainable=False)[0]
    critic, critic_tokenizer, critic_norm = load_critic(cfg, tokenizer) if p.critic == "reward_model" else (None,) * 3
    net = PolicyWithValue(policy, policy.config.get_text_config().hidden_size, critic, critic_norm or (0.0, 1.0))
    reward_fn = load_reward(p.reward, p.normalize_reward, tokenizer, cfg.data.template)
    prompts, eval_rows = load_prompts(cfg, tokenizer, r.batch_size * world)
    ptx = load_ptx_data(cfg, tokenizer, world)
    critic_lr = p.critic_lr or (cfg.train.lr if critic is not None else None)
    optimizer = build_optimizer(net, cfg.train.lr, cfg.train.weight_decay, "critic." if critic else "value_head", critic_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    # `model` (DDP-wrapped with several processes) runs the update; `net` samples and scores.
    model, optimizer = ctx.accelerator.prepare(net, optimizer)
    start, extras = restore_training_state(ctx, model, optimizer, scheduler) if resume else (0, {})
    ctx.open_run()
    kl_coef = extras.get("kl_coef", p.kl_coef)

    history: list[dict] = []
    last_warned: dict[str, int] = {}
    bar = progress_bar(p.iterations, start, "ppo", ctx.is_main and cfg.run.progress)
    for iteration in range(start, p.iterations):
        # The run's first gold/score is measured before any update: the starting (SFT) policy's.
        first_eval = eval_rows and iteration == start and ctx.is_main
        if first_eval:
            gold_first = held_out_gold(net.policy, tokenizer, eval_rows, cfg)  # per prompt: the paired baseline
        started = time.perf_counter()
        # 1. rollout: prompts and each row's sampling noise are pure functions of (seed, iteration,
        # global row), so resume needs no data state and N processes x b sample what 1 x N*b does.
        seed = cfg.train.seed * 1_000_003 + iteration
        mine = range(rank * r.batch_size, (rank + 1) * r.batch_size)
        batch_prompts = random.Random(seed).sample(prompts, r.batch_size * world)[mine.start : mine.stop]
        rollout = make_rollout(net, tokenizer, batch_prompts, row_noise(seed, mine, r.max_new_tokens), cfg)
        # 2. score: old log-probs + values, reference log-probs, reward
        with torch.no_grad():
            old = net(rollout, r.temperature)
            with reference_context(net, cfg.model.lora):
                ref = score(reference or net.policy, rollout, r.temperature)
        mask = rollout.response_mask
        responses = decode_responses(tokenizer, rollout)
        raw_scores = reward_fn(batch_prompts, responses, rollout.token_rows())
        scores = (raw_scores + p.no_eos_penalty * (~rollout.finished).float()).clamp(-p.reward_clip, p.reward_clip)
        # 3. KL-shaped per-token rewards
        rewards = kl_shaped_rewards(scores, old["logprobs"], ref["logprobs"], mask, kl_coef)
        # 4. GAE, then advantages whitened with the statistics of the whole (all processes') batch
        advantages, returns = gae(rewards, old["values"], mask, p.gamma, p.lam)
        everyone = lambda t: gather_rows(ctx, t)  # noqa: E731 - (B_global, ...) in global row order
        all_mask = everyone(mask)
        if p.whiten_advantages:
            advantages = masked_whiten(advantages, mask, stats_from=(everyone(advantages), all_mask))
        # 5. PPO epochs over minibatches (of the global batch; each process trains on its rows of each)
        update = ppo_update(ctx, model, optimizer, scheduler, rollout, old, advantages, returns, all_mask, ptx, cfg,
                            iteration, ctx.guard)
        # 6. diagnostics (design §2 names), over the global batch
        k1_local = masked_sum(kl_k1(old["logprobs"], ref["logprobs"]), mask, dim=-1)  # (b,) sequence KLs
        exact_local = exact_kl(old["logits"], ref["logits"], mask, r.temperature, p.kl_exact_rows)
        # k1 on the same rows as the exact KL (each process's first rows), to test the estimator for bias
        k1_rows, exact_rows = everyone(k1_local[: exact_local.shape[0]]), everyone(exact_local)
        stats = {
            **update,
            M.PPO_KL_K1: everyone(k1_local).mean().item(),
            M.PPO_KL_K3: everyone(masked_sum(kl_k3(old["logprobs"], ref["logprobs"]), mask, dim=-1)).mean().item(),
            M.PPO_KL_EXACT: exact_rows.mean().item(),
            M.PPO_ENTROPY: masked_mean(everyone(entropy_from_logits(old["logits"], r.temperature)), all_mask).item(),
            M.PPO_VALUE_EXPLAINED_VAR: explained_variance(everyone(old["values"]), everyone(returns), all_mask).item(),
            M.PPO_REWARD_RM: everyone(raw_scores).mean().item(),
            M.PPO_REWARD_TOTAL: masked_sum(everyone(rewards), all_mask, dim=-1).mean().item(),
            M.PPO_KL_COEF: kl_coef,
            M.PPO_RESPONSE_LEN: all_mask.sum(-1).float().mean().item(),
            M.PPO_EOS_RATE: everyone(rollout.finished.float()).mean().item(),
            M.SKIPPED_STEPS: ctx.guard.skipped,
            M.PPO_SECONDS: time.perf_counter() - started,
        }
        if exact_rows.shape[0] >= 2:
            stats[M.PPO_KL_K1_Z] = k1_exact_z(k1_rows, exact_rows).item()
        if p.target_kl is not None:
            kl_coef = adaptive_kl_coef(kl_coef, stats[M.PPO_KL_K1], p.target_kl, p.kl_horizon, r.batch_size * world)
        done = iteration + 1
        if first_eval:
            stats[M.GOLD_SCORE] = sum(gold_first) / len(gold_first)
        elif eval_rows and ctx.is_main and (done % p.eval_every == 0 or done == p.iterations):
            gold = held_out_gold(net.policy, tokenizer, eval_rows, cfg)
            stats[M.GOLD_SCORE] = sum(gold) / len(gold)
            stats[M.GOLD_GAIN_STDERR] = paired_gain(gold, gold_first, k=1)[1]
        ctx.logger.log(done, stats)
        # 7. health check: symptoms -> warnings naming the cause and the config key (rank 0 reports)
        history.append(stats)
        for warning in health_warnings(history, p.health_window) if ctx.is_main else []:
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
    check_replicas_agree(ctx, net)
    if critic is None:
        value_head = save({k: v.contiguous() for k, v in net.value_head.state_dict().items()})
        final = save_final(ctx, net.policy, tokenizer, extra_files={"value_head.safetensors": value_head})
    else:
        final = save_final(ctx, net.policy, tokenizer, extra_models={"critic": (net.critic, critic_tokenizer)})
    return finish(ctx, final)


def check_replicas_agree(ctx, net: torch.nn.Module) -> None:
    """Every process must end with the same weights (DDP keeps them equal); fail loudly if not."""
    if ctx.accelerator.num_processes == 1:
        return
    total = sum(p.detach().double().abs().sum() for p in net.parameters() if p.requires_grad)
    totals = gather_rows(ctx, total.view(1))
    if (totals - totals[0]).abs().max() > 1e-9 * totals[0].abs():
        raise RuntimeError(f"ppo: processes ended with different weights (|w| sums {totals.tolist()})")
    if ctx.is_main:
        print(f"rlhfkit: ppo: {len(totals)} processes agree on the trained weights (|w| sum {totals[0].item():.6f})",
              flush=True)


def make_rollout(model: PolicyWithValue, tokenizer, prompts: list[str], noise: torch.Tensor, cfg: PPOConfig) -> Rollout:
    r = cfg.rollout
    return sample_prompts(model.policy, tokenizer, prompts, r.max_new_tokens, r.temperature, top_k=r.top_k,
                          repetition_penalty=r.repetition_penalty, noise=noise)


def ptx_minibatch(ctx, ptx: TokenizedSFT, step: int, cfg: PPOConfig, pad_token_id: int) -> tuple[dict, float]:
    """(this process's SFT batch for minibatch update `step`, its share of the global batch's tokens)."""
    rank, world, size = ctx.accelerator.process_index, ctx.accelerator.num_processes, cfg.ppo.ptx_batch_size
    lengths = tuple(len(ids) for ids in ptx.input_ids)
    indices = global_batch_at(step, lengths, size * world, cfg.train.seed, group_by_length=False)
    ids = micro_batch(indices, 0, rank, world, size)
    batch = collate_sft([ptx.input_ids[i] for i in ids], [ptx.labels[i] for i in ids], pad_token_id)
    share = sum(completion_tokens(ptx.labels[i]) for i in ids) / sum(completion_tokens(ptx.labels[i]) for i in indices)
    return batch, share


def ppo_update(ctx, model, optimizer, scheduler, rollout: Rollout, old: dict, advantages: torch.Tensor,
               returns: torch.Tensor, all_mask: torch.Tensor, ptx: TokenizedSFT | None, cfg: PPOConfig,
               iteration: int, guard: NonFiniteGuard) -> dict[str, float]:
    """ppo.epochs passes over the global batch, each in a fresh random order of ppo.minibatches
    minibatches. A process trains on its own rows of each minibatch, its loss weighted by its share
    of the minibatch's tokens (x processes, undoing DDP's gradient average), so every step is the
    token mean over the whole minibatch whatever the number of processes."""
    p, acc = cfg.ppo, ctx.accelerator
    rank, world = acc.process_index, acc.num_processes
    local = rollout.query_ids.shape[0]
    batch = local * world
    size = batch // p.minibatches
    generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + iteration)
    orders = [torch.randperm(batch, generator=generator) for _ in range(p.epochs)]
    chunks = [order[start : start + size] for order in orders for start in range(0, batch, size)]
    model.train()
    totals: dict[str, list[float]] = {}
    ratio_first = None
    pad_token_id = acc.unwrap_model(model).policy.config.pad_token_id
    for update, chunk in enumerate(chunks):
        rows = chunk[(chunk >= rank * local) & (chunk < (rank + 1) * local)] - rank * local
        # A process with no rows in this minibatch still joins the gradient sum: one row, weight 0.
        index = rows if len(rows) else torch.tensor([0])
        part = rollout.rows(index)
        share = part.response_mask.sum().item() / max(all_mask[chunk].sum().item(), 1) if len(rows) else 0.0
        ptx_batch, ptx_share = (None, 0.0)
        if ptx is not None:
            ptx_batch, ptx_share = ptx_minibatch(ctx, ptx, iteration * len(chunks) + update, cfg, pad_token_id)
        new = model(part, cfg.rollout.temperature, ptx_batch)
        pg_loss, pg_stats = ppo_policy_loss(new["logprobs"], old["logprobs"][index], advantages[index],
                                            part.response_mask, p.clip_range)
        vf_loss, vf_stats = ppo_value_loss(new["values"], old["values"][index], returns[index], part.response_mask,
                                           p.value_clip_range)
        loss = (pg_loss + p.vf_coef * vf_loss) * share * world
        if ptx is not None:
            # PPO-ptx (Ouyang et al. 2022, eq. 2): + gamma * E_pretrain[-log pi(x)].
            loss = loss + p.ptx_coef * new["ptx_loss"] * ptx_share * world
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)  # global: after DDP's sum
        # Minibatch statistics as token means over the whole minibatch (all processes).
        local_stats = {k: v.float() * share for k, v in {**pg_stats, **vf_stats}.items() if k != "ratio_max"}
        local_stats["loss"] = loss.detach().float() / world
        if ptx is not None:
            local_stats["ptx_loss"] = new["ptx_loss"].detach().float() * ptx_share
        summed = reduce_sum(ctx, torch.stack(list(local_stats.values())))
        step_stats = dict(zip(local_stats, summed.tolist()))
        # The global loss and gradient norm: every process makes the same skip decision.
        guarded_step(guard, optimizer, scheduler, step_stats.pop("loss"), float(grad_norm), iteration + 1)
        step_stats["ratio_max"] = gather_rows(ctx, (pg_stats["ratio_max"] * bool(len(rows))).view(1)).max().item()
        if ratio_first is None:
            # Before any update the new and old policies are the same weights on the same inputs.
            ratio_first = step_stats["ratio_mean"]
        for key, value in step_stats.items():
            totals.setdefault(key, []).append(value)
        if p.approx_kl_stop is not None and step_stats["approx_kl"] > p.approx_kl_stop:
            break  # the same decision on every process: approx_kl is the global one
    mean = {k: sum(v) / len(v) for k, v in totals.items()}
    out = {M.PPO_RATIO_FIRST: ratio_first, M.PPO_CLIPFRAC: mean["clipfrac"], M.PPO_APPROX_KL: mean["approx_kl"],
           "ppo/pg_loss": mean["pg_loss"], "ppo/vf_loss": mean["vf_loss"], "ppo/ratio_max": max(totals["ratio_max"]),
           "ppo/minibatch_updates": len(totals["pg_loss"])}
    if ptx is not None:
        out[M.PPO_PTX_LOSS] = mean["ptx_loss"]
    return out


def exact_kl(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor, temperature: float,
             rows: int) -> torch.Tensor:
    """(rows,) sequence KLs from full next-token distributions on the first `rows` rows (the oracle)."""
    rows = min(rows, logits.shape[0])
    per_token = kl_exact(logits[:rows], ref_logits[:rows], temperature=temperature)  # (rows, R)
    return masked_sum(per_token, mask[:rows], dim=-1)


def held_out_gold(policy, tokenizer, eval_rows: list[dict], cfg: PPOConfig, batch_size: int = 64) -> list[float]:
    """Gold score of one sample per held-out prompt at the rollout temperature: the policy PPO
    optimises is the sampling distribution, and its reward is measured on samples, so gold is too
    (greedy decoding can get worse while every sample gets better). Every eval reuses the same
    sampling noise (negative seeds: never a training row's), so a change between evals is the
    policy's, not the draw's."""
    prompts, _ = prompts_and_references(eval_rows, cfg.data.eval_source or cfg.data.source, cfg.data.template,
                                        tokenizer)
    samples = sample_policy(policy, tokenizer, prompts, cfg.rollout.max_new_tokens, cfg.rollout.temperature,
                            batch_size=batch_size, noise_seed=-(cfg.train.seed + 1))
    add_scores(samples, gold=True, reward_fn=None)
    return samples.gold
