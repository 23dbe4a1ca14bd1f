"""The online RL loop: PPO against a reward (Ziegler et al. 2019; Ouyang et al. 2022) and the critic-free
GRPO, RLOO and REINFORCE++ as choices of it (design §10), one iteration read top to bottom:
rollout (G samples per prompt) -> score -> rewards -> advantages -> clipped policy updates ->
diagnostics -> health check. The methods differ only in functions picked by name from registries:
the advantage estimator (ops.ADVANTAGE_ESTIMATORS; a value head is built only for those in
NEEDS_VALUES), where the KL goes (the reward, or the loss as an ops.KL_LOSS_FORMS term) and the loss
aggregation.

With N processes (accelerate/torchrun) each samples and trains on its b = rollout.batch_size rows
of the iteration's global batch; whitening, minibatch losses and logged metrics use the whole
batch's statistics, so N x b trains like 1 x N*b. Rank 0 alone logs, evaluates and saves."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save

from rlhfkit.config import GROUP_ADVANTAGES, METHOD_OF_ADVANTAGE, ModelConfig, PPOConfig, PPOSection
from rlhfkit.data import load_rows
from rlhfkit.data.batching import global_batch_at, micro_batch
from rlhfkit.data.sft import TokenizedSFT, collate_sft, completion_tokens, prompt_text, tokenize_sft
from rlhfkit.data.sources import is_builtin
from rlhfkit.errors import ConfigError
from rlhfkit.evaluate.compare import PolicySamples, add_scores, sample_policy
from rlhfkit.evaluate.completions import prompts_and_references
from rlhfkit.evaluate.health import HeldOutEvals, health_warnings, kl_check_stats
from rlhfkit.models import load_causal_lm
from rlhfkit.models.load import base_reference, disable_dropout
from rlhfkit.models.reward import load_reward_model
from rlhfkit.models.shared import (
    CRITIC_ADAPTER,
    REWARD_ADAPTER,
    AdapterHead,
    adapters_off,
    add_scored_adapter,
)
from rlhfkit.ops import (
    ADVANTAGE_ESTIMATORS,
    NEEDS_VALUES,
    adaptive_kl_coef,
    aggregate_loss,
    aggregation_count,
    explained_variance,
    k1_exact_z,
    kl_exact,
    kl_k1,
    kl_k3,
    kl_loss_term,
    kl_shaped_rewards,
    masked_mean,
    masked_nll,
    masked_sum,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    response_scores,
)
from rlhfkit.rewards import (
    is_function_reward,
    load_reward,
    reward_normalisation,
    same_tokenizer,
    shareable_adapter,
)
from rlhfkit.rollout.backend import InProcessSampler, RolloutBackend
from rlhfkit.rollout.ppo import Rollout, critic_values, decode_responses, row_noise, score
from rlhfkit.run import metrics as M
from rlhfkit.run.progress import progress_bar
from rlhfkit.trainers.checkpoints import restore_training_state, save_training_state
from rlhfkit.trainers.collectives import Shard, check_replicas_agree
from rlhfkit.trainers.context import StageContext
from rlhfkit.trainers.final import save_final
from rlhfkit.trainers.guard import guarded_step
from rlhfkit.trainers.optim import build_optimizer
from rlhfkit.trainers.sharding import (
    full_state_dict,
    full_weights,
    is_sharded,
    like_sharded_policy,
    use_gradient_checkpointing,
)
from rlhfkit.trainers.stage import RunResult, finish, start_stage


class PolicyWithValue(torch.nn.Module):
    """The policy and its critic: a scalar value head on the policy's last hidden state (one forward
    gives both), or a separate value model initialised from the reward model (design §6.8). With
    `value_head=False` (a critic-free estimator) there is no critic at all and no "values"."""

    def __init__(
        self,
        policy: torch.nn.Module,
        hidden_size: int,
        critic: torch.nn.Module | None = None,
        critic_norm: tuple[float, float] = (0.0, 1.0),
        value_head: bool = True,
    ):
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.critic_norm = critic_norm
        self.value_head = None
        if critic is None and value_head:
            self.value_head = torch.nn.Linear(hidden_size, 1)
            # Zero init: values start at 0, so early advantages are the plain returns (Huang et al. 2024).
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)

    def forward(
        self, rollout: Rollout, temperature: float, ptx: dict | None = None, **diagnostics
    ) -> dict[str, torch.Tensor]:
        """Response log-probs and values; with `ptx` (an SFT batch) also its NLL; `diagnostics`
        (`score`'s entropy, logit_rows) for the rollout's pass. One call, so that DDP sees one
        forward per backward."""
        if self.critic is None:
            out = score(
                self.policy,
                rollout,
                temperature,
                with_values=self.value_head is not None,
                value_head=self.value_head,
                **diagnostics,
            )
        else:
            out = score(self.policy, rollout, temperature, **diagnostics)
            out["values"] = critic_values(self.critic, rollout, *self.critic_norm)
        if ptx is not None:
            logits = self.policy(input_ids=ptx["input_ids"], attention_mask=ptx["attention_mask"]).logits
            out["ptx_loss"] = masked_nll(logits, ptx["labels"])[0]
        return out


def load_prompts(cfg: PPOConfig, tokenizer, global_batch: int) -> tuple[list[str], list[dict], dict]:
    """(distinct train prompts, held-out rows, each train prompt's first dataset row: the metadata a
    function reward sees)."""
    d = cfg.data
    rows = load_rows(d.source, "train", d.builtin_size, d.builtin_noise)[: d.max_train_rows or None]
    metadata: dict[str, dict] = {}
    for i, row in enumerate(rows):
        metadata.setdefault(prompt_text(row, f"{d.source}: row {i}", d.template, tokenizer), row)
    prompts = list(metadata)
    if len(prompts) < global_batch:
        raise ConfigError(
            f"{d.source}: {len(prompts)} distinct prompts cannot fill one rollout batch of {global_batch} "
            "(rollout.batch_size x processes)"
        )
    eval_rows = []
    if is_builtin(d.eval_source or d.source):
        eval_rows = load_rows(d.eval_source or d.source, "test")[: cfg.ppo.eval_prompts]
    print(
        f"rlhfkit: {METHOD_OF_ADVANTAGE[cfg.ppo.advantage]} prompts: {len(prompts)} distinct train prompts, "
        f"{len(eval_rows)} held-out for "
        "the gold score",
        flush=True,
    )
    return prompts, eval_rows, metadata


def load_ptx_data(cfg: PPOConfig, tokenizer, world: int) -> TokenizedSFT | None:
    """SFT examples for PPO-ptx (ppo.ptx_source, or the prompt source's own completions)."""
    p, d = cfg.ppo, cfg.data
    if not p.ptx_coef:
        return None
    source = p.ptx_source or d.source
    rows = load_rows(source, "train", d.builtin_size, d.builtin_noise)
    data = tokenize_sft(rows, tokenizer, source, d.template, d.max_length, d.truncation)
    if len(data) < p.ptx_batch_size * world:
        raise ConfigError(
            f"{source}: {len(data)} SFT examples cannot fill one ptx batch of {p.ptx_batch_size * world} "
            "(ppo.ptx_batch_size x processes)"
        )
    print(f"rlhfkit: ppo-ptx: {len(data)} SFT examples from {source}, coefficient {p.ptx_coef}", flush=True)
    return data


def load_reward_and_critic(cfg: PPOConfig, ctx: StageContext, policy, tokenizer) -> tuple:
    """(reward function, critic or None, the critic's tokenizer, its (mean, std)). A LoRA rm stage
    trained on the policy's own base runs as adapters on the policy's base weights (design §6.9): the
    reward as a frozen adapter, a `ppo.critic=reward_model` critic as a trainable one initialised from
    it. Any other RM is loaded merged, and so is such a critic (a trainable copy)."""
    p = cfg.ppo
    adapter = shared_reward_adapter(cfg, ctx, tokenizer)
    scorer = add_scored_adapter(policy, REWARD_ADAPTER, adapter, trainable=False) if adapter else None
    reward_fn = load_reward(
        p.reward, p.normalize_reward, tokenizer, cfg.data.template, p.extra_rewards, scorer
    )
    if p.critic != "reward_model":
        return reward_fn, None, None, (0.0, 1.0)
    # Gradient checkpointing recomputes each block in the backward pass with the adapter active then
    # (the policy's), not the critic's: such a critic is trained as a copy of its own.
    if adapter is None or cfg.train.gradient_checkpointing:
        return reward_fn, *load_critic(cfg, tokenizer)
    critic = add_scored_adapter(policy, CRITIC_ADAPTER, adapter, trainable=True)
    return reward_fn, critic, tokenizer, reward_normalisation(p.reward, p.normalize_reward)


def shared_reward_adapter(cfg: PPOConfig, ctx: StageContext, tokenizer) -> Path | None:
    """The RM adapter folder to run on the policy's base, or None: a function reward, or a reward
    model loaded merged (the log says why)."""
    p = cfg.ppo
    if is_function_reward(p.reward):
        return None
    if not p.shared_base:
        adapter, why = None, "ppo.shared_base=false"
    elif is_sharded(ctx.accelerator):
        # final/critic/ would have to gather the critic adapter's shards out of the policy's.
        adapter, why = None, "a sharded (FSDP) run"
    else:
        adapter, why = shareable_adapter(p.reward, cfg.model, tokenizer)
    if ctx.is_main:
        how = "as an adapter on the policy's base weights" if adapter else f"merged, on its own ({why})"
        print(f"rlhfkit: reward model {p.reward}: {how}", flush=True)
    return adapter


def load_critic(cfg: PPOConfig, policy_tokenizer):
    """(value model, its tokenizer, (mean, std)): the RM in ppo.reward, trainable, dropout off."""

    p = cfg.ppo
    if is_function_reward(p.reward):
        raise ConfigError(
            f"ppo.critic=reward_model needs ppo.reward to be a reward-model folder, not {p.reward}"
        )
    critic, tokenizer = load_reward_model(p.reward)
    if not same_tokenizer(tokenizer, policy_tokenizer) or not hasattr(critic, "score"):
        raise ConfigError(
            f"ppo.critic=reward_model: {p.reward} must be a decoder RM (a `score` head) on the policy's "
            "tokenizer, so it can read the policy's tokens; use ppo.critic=head"
        )
    disable_dropout(critic)
    critic.requires_grad_(True)
    return critic, tokenizer, reward_normalisation(p.reward, p.normalize_reward)


def reference_context(model: PolicyWithValue, lora: bool):
    """With LoRA the reference is the same weights with every adapter off: no second copy (design §6.3)."""
    return adapters_off(model.policy) if lora else contextlib.nullcontext()


def check_ppo_config(cfg: PPOConfig) -> None:
    """Refuse settings under which the update's forward cannot equal the rollout's (design §6.1-6.2)."""
    m, r = cfg.model, cfg.rollout
    if m.lora and m.lora_dropout > 0 and m.disable_dropout:
        raise ConfigError(
            f"model.lora_dropout={m.lora_dropout:g}: PPO needs the rollout's and the update's forwards "
            "to agree (the probability ratio, design §6.2) and model.disable_dropout=true turns every "
            "other dropout off: set model.lora_dropout=0"
        )
    check_online_config(cfg)
    if r.allow_mismatched_sampling:
        return
    if r.top_k:
        raise ConfigError(
            "rollout.top_k warps sampling away from the distribution PPO scores (design §6.1): "
            "set rollout.top_k=0 (or rollout.allow_mismatched_sampling=true to reproduce the bug)"
        )
    if r.repetition_penalty != 1.0:
        raise ConfigError(
            "rollout.repetition_penalty warps sampling away from the distribution PPO scores (design "
            "§6.1): set rollout.repetition_penalty=1 (or rollout.allow_mismatched_sampling=true)"
        )


def check_online_config(cfg: PPOConfig) -> None:
    """Refuse combinations of the loop's choices that cannot mean what they say (design §10)."""
    p, group = cfg.ppo, cfg.rollout.group_size
    if p.advantage in GROUP_ADVANTAGES and group < 2:
        raise ConfigError(
            f"ppo.advantage={p.advantage} baselines each sample against the other samples "
            f"of its prompt: set rollout.group_size >= 2 (got {group})"
        )
    if p.advantage not in NEEDS_VALUES and (p.critic != "head" or p.critic_lr is not None):
        raise ConfigError(
            f"ppo.advantage={p.advantage} uses no critic, so ppo.critic and ppo.critic_lr "
            "have no effect: remove them (or use ppo.advantage=gae)"
        )
    if p.kl_in == "reward" and p.kl_loss_estimator != "k3":
        raise ConfigError(
            f"ppo.kl_loss_estimator={p.kl_loss_estimator} has no effect with ppo.kl_in=reward "
            "(the reward's KL penalty is k1): set ppo.kl_in=loss or remove it"
        )


def whitens(p: PPOSection) -> bool:
    """ppo.whiten_advantages, or by estimator when unset: GAE and REINFORCE++ (its global-batch
    normalisation) whiten; the group estimators are already baselined per prompt."""
    return p.advantage in ("gae", "reinforce_pp") if p.whiten_advantages is None else p.whiten_advantages


@dataclass
class PPOSetup:
    """Everything the loop needs that is built once: models, optimizer, reward, prompts."""

    net: PolicyWithValue
    """Samples and scores (no DDP wrapper: generation and no-grad passes need no gradient sync)."""
    model: torch.nn.Module
    """`net` as accelerate prepared it (DDP-wrapped with several processes): runs the update."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    tokenizer: object
    reference: torch.nn.Module | None
    """A frozen copy of the SFT policy for full fine-tuning; None with LoRA (adapter disabled)."""
    reward_fn: Callable
    prompts: list[str]
    metadata: dict[str, dict]
    """Each train prompt's dataset row, handed to `f(samples)` rewards."""
    eval_rows: list[dict]
    ptx: TokenizedSFT | None
    critic_tokenizer: object
    start: int
    """First iteration to run (> 0 after --resume)."""
    resumed: dict
    """The checkpoint's loop state (KL coefficient, gold baseline, health history); {} when fresh."""
    sampler: RolloutBackend
    """Samples the rollouts (the policy itself in process; rollout/backend.py)."""


def setup_ppo(cfg: PPOConfig, ctx: StageContext, resume: bool) -> PPOSetup:
    """Load the policy (and its reference and critic), the reward, the prompts and the optimizer;
    restore the latest checkpoint under --resume."""
    r, p, world = cfg.rollout, cfg.ppo, ctx.accelerator.num_processes
    rows = r.batch_size * r.group_size * world
    if rows % p.minibatches:
        groups = f" x rollout.group_size={r.group_size}" if r.group_size > 1 else ""
        across = f" x {world} processes" if world > 1 else ""
        total = f" = {rows} rows" if groups or across else ""
        raise ConfigError(
            f"rollout.batch_size={r.batch_size}{groups}{across}{total} must be divisible by "
            f"ppo.minibatches={p.minibatches}"
        )
    policy, tokenizer = load_causal_lm(cfg.model)
    # Full fine-tuning needs a frozen copy as the reference; LoRA reuses the base (adapter disabled).
    reference = like_sharded_policy(
        ctx.accelerator,
        None
        if cfg.model.lora
        else load_causal_lm(ModelConfig(**{**vars(cfg.model), "lora": False}), trainable=False)[0],
    )
    reward_fn, critic, critic_tokenizer, critic_norm = load_reward_and_critic(cfg, ctx, policy, tokenizer)
    net = PolicyWithValue(
        policy,
        policy.config.get_text_config().hidden_size,
        critic,
        critic_norm,
        value_head=p.advantage in NEEDS_VALUES,
    )
    prompts, eval_rows, metadata = load_prompts(cfg, tokenizer, r.batch_size * world)
    ptx = load_ptx_data(cfg, tokenizer, world)
    critic_lr = p.critic_lr or (cfg.train.lr if critic is not None else None)
    optimizer = build_optimizer(
        net, cfg.train.lr, cfg.train.weight_decay, "critic." if critic else "value_head", critic_lr
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    use_gradient_checkpointing(policy, cfg.train.gradient_checkpointing)
    model, optimizer = ctx.accelerator.prepare(net, optimizer)
    start, extras = restore_training_state(ctx, model, optimizer, scheduler) if resume else (0, {})
    sampler = InProcessSampler(net.policy, tokenizer, r, lambda: full_weights(ctx.accelerator, model))
    return PPOSetup(
        net,
        model,
        optimizer,
        scheduler,
        tokenizer,
        reference,
        reward_fn,
        prompts,
        metadata,
        eval_rows,
        ptx,
        critic_tokenizer,
        start,
        extras,
        sampler,
    )


def train_ppo(cfg: PPOConfig, resume: bool = False, overwrite: bool = False) -> RunResult:
    """The online loop of every method; ppo.advantage names it, its stage folder and its metrics' prefix."""
    r, p, method = cfg.rollout, cfg.ppo, METHOD_OF_ADVANTAGE[cfg.ppo.advantage]
    check_ppo_config(cfg)
    ctx = start_stage(cfg, method, resume, overwrite)
    s = setup_ppo(cfg, ctx, resume)
    ctx.open_run()
    shard, names = Shard(ctx.accelerator, r.batch_size * r.group_size), M.online(method)
    gold = HeldOutGold(s, cfg, ctx, s.resumed.get("held_out"))
    health = HealthReport(p.health_window, ctx, method, **s.resumed.get("health", {}))
    kl_coef = s.resumed.get("kl_coef", p.kl_coef)
    health.record(gold.baseline())  # step 0: the starting (SFT) policy, before any update
    bar = progress_bar(p.iterations, s.start, method, ctx.is_main and cfg.run.progress)
    for iteration in range(s.start, p.iterations):
        started = time.perf_counter()
        # 1. rollout: G rows per prompt; prompts and each row's sampling noise are pure functions of (seed,
        # iteration, global row), so resume needs no data state and N processes x b sample what 1 x N*b does.
        prompts, noise = rollout_prompts(s.prompts, cfg, iteration, shard)
        s.sampler.load_weights(s.net.policy)  # the generation backend's seam (rollout/backend.py)
        rollout = s.sampler.sample(prompts, noise)
        # 2. score: old log-probs (+ values with a critic), reference log-probs, reward
        old, ref = score_rollout(ctx, s, rollout, cfg)
        raw_scores, scores = reward_scores(s, prompts, rollout, p)
        # 3. per-token rewards: the score on the last token, minus kl_coef x k1 when the KL is in the reward
        mask, reward_kl = rollout.response_mask, (kl_coef if p.kl_in == "reward" else 0.0)
        rewards = kl_shaped_rewards(scores, old["logprobs"], ref["logprobs"], mask, reward_kl)
        # 4. advantages by the named estimator, whitened with the whole (all processes') batch's statistics
        estimator = ADVANTAGE_ESTIMATORS[p.advantage]
        advantages, returns = estimator(
            rewards, old.get("values"), mask, group_size=r.group_size, gamma=p.gamma, lam=p.lam
        )
        if whitens(p):
            advantages = masked_whiten(
                advantages, mask, stats_from=(shard.gather(advantages), shard.gather(mask))
            )
        # 5. clipped policy updates (+ value loss with a critic, + KL term with kl_in=loss) over minibatches
        kept = {key: old[key] for key in ("logprobs", "values") if key in old}
        targets = {**kept, "ref_logprobs": ref["logprobs"], "advantages": advantages, "returns": returns}
        update = ppo_update(ctx, s, shard, rollout, targets, cfg, iteration, kl_coef)
        # 6. diagnostics over the global batch, the KL controller, held-out gold
        stats = {**update, **diagnostics(shard, rollout, old, ref, raw_scores, rewards, returns, cfg)}
        stats |= {M.PPO_KL_COEF: kl_coef, M.SKIPPED_STEPS: ctx.guard.skipped}
        stats[M.PPO_SECONDS] = time.perf_counter() - started
        if p.target_kl is not None:
            kl_coef = adaptive_kl_coef(
                kl_coef, stats[M.PPO_KL_K1], p.target_kl, p.kl_horizon, shard.global_size
            )
        done = iteration + 1
        stats.update(gold.at(due=done % p.eval_every == 0 or done == p.iterations))
        ctx.logger.log(done, {names.get(key, key): value for key, value in stats.items()})
        # 7. health check: symptoms -> warnings naming the cause and the config key (rank 0 reports)
        health.check(done, stats, bar)
        bar.update(1)
        bar.set_postfix(reward=f"{stats[M.PPO_REWARD_RM]:.3f}", kl=f"{stats[M.PPO_KL_K1]:.3f}", refresh=False)
        if done % cfg.train.save_every == 0 and done < p.iterations:
            state = {"kl_coef": kl_coef, "held_out": gold.state(), "health": health.state()}
            save_training_state(ctx, done, s.model, s.optimizer, s.scheduler, extra=state)
    bar.close()
    check_replicas_agree(ctx.accelerator, s.net, method)
    return finish(ctx, save_ppo_final(ctx, s))


def score_rollout(ctx: StageContext, s: PPOSetup, rollout: Rollout, cfg: PPOConfig) -> tuple[dict, dict]:
    """(old, ref): the rollout scored by the policy (and its critic) and by the reference, no grad.
    Besides log-probs (and values) they keep only what the diagnostics read: the policy's per-token
    entropy and both passes' logits on the ppo.kl_exact_rows rows of the exact KL (design §6.9).

    The reference runs under the accelerator's autocast, as the prepared policy's forward does
    (train.mixed_precision=bf16): in float32 the KL would hold bf16 rounding (0.0019 nats on the tiny
    model at iteration 1, where the policy is the reference; docs/scaling.md section 2.4)."""
    rows, temperature = cfg.ppo.kl_exact_rows, cfg.rollout.temperature
    with torch.no_grad():
        old = s.net(rollout, temperature, entropy=True, logit_rows=rows)
        with reference_context(s.net, cfg.model.lora), ctx.accelerator.autocast():
            ref = score(s.reference or s.net.policy, rollout, temperature, logit_rows=rows)
    return old, ref


def reward_scores(s: PPOSetup, prompts: list[str], rollout: Rollout, p) -> tuple[torch.Tensor, torch.Tensor]:
    """(the reward's raw scores, the scores the loop uses: no-EOS penalty, empty responses, clip)."""
    raw = s.reward_fn(
        prompts,
        decode_responses(s.tokenizer, rollout),
        rollout.token_rows(),
        rollout.finished.tolist(),
        [s.metadata[x] for x in prompts],
    )
    lengths = rollout.response_lengths
    return raw, response_scores(
        raw, rollout.finished, lengths, p.no_eos_penalty, p.empty_score, p.reward_clip
    )


def rollout_prompts(
    prompts: list[str], cfg: PPOConfig, iteration: int, shard: Shard
) -> tuple[list[str], torch.Tensor]:
    """(this process's rows' prompts, their sampling noise) for `iteration`. The global batch is a seeded
    draw of shard.global_size / G prompts, each repeated G times (row i answers prompt i // G, the group
    estimators' convention); this process holds rows shard.rows(), whole groups since G divides them."""
    seed, group = cfg.train.seed * 1_000_003 + iteration, cfg.rollout.group_size
    mine = shard.rows()
    drawn = random.Random(seed).sample(prompts, shard.global_size // group)
    batch = [prompt for prompt in drawn for _ in range(group)][mine.start : mine.stop]
    return batch, row_noise(seed, mine, cfg.rollout.max_new_tokens)


def diagnostics(
    shard: Shard,
    rollout: Rollout,
    old: dict,
    ref: dict,
    raw_scores: torch.Tensor,
    rewards: torch.Tensor,
    returns: torch.Tensor,
    cfg: PPOConfig,
) -> dict[str, float]:
    """design §2's per-iteration metrics, over the global batch (every process's rows)."""
    mask, all_mask, temperature = (
        rollout.response_mask,
        shard.gather(rollout.response_mask),
        cfg.rollout.temperature,
    )
    k1 = masked_sum(kl_k1(old["logprobs"], ref["logprobs"]), mask, dim=-1)  # (b,) sequence KLs
    exact = exact_kl(old["logits"], ref["logits"], mask, temperature, cfg.ppo.kl_exact_rows)
    # k1 on the same rows as the exact KL (each process's first rows), to test the estimator for bias
    k1_rows, exact_rows = shard.gather(k1[: exact.shape[0]]), shard.gather(exact)
    stats = {
        M.PPO_KL_K1: shard.gather(k1).mean().item(),
        M.PPO_KL_K3: shard.gather(masked_sum(kl_k3(old["logprobs"], ref["logprobs"]), mask, dim=-1))
        .mean()
        .item(),
        M.PPO_KL_EXACT: exact_rows.mean().item(),
        M.PPO_ENTROPY: masked_mean(shard.gather(old["entropy"]), all_mask).item(),
        M.PPO_REWARD_RM: shard.gather(raw_scores).mean().item(),
        M.PPO_REWARD_TOTAL: masked_sum(shard.gather(rewards), all_mask, dim=-1).mean().item(),
        M.PPO_RESPONSE_LEN: all_mask.sum(-1).float().mean().item(),
        M.PPO_EOS_RATE: shard.gather(rollout.finished.float()).mean().item(),
    }
    if "values" in old:  # a critic to judge (critic-free estimators have none)
        values, all_returns = shard.gather(old["values"]), shard.gather(returns)
        stats[M.PPO_VALUE_EXPLAINED_VAR] = explained_variance(values, all_returns, all_mask).item()
    if exact_rows.shape[0] >= 2:
        stats[M.PPO_KL_K1_Z] = k1_exact_z(k1_rows, exact_rows).item()
    stats.update(kl_check_stats(shard.gather(k1), k1_rows, exact_rows))
    return stats


class HeldOutGold:
    """gold/score and the RM's reward of the same held-out samples (rank 0; built-in tasks): at step 0,
    before any update, then every ppo.eval_every iterations. Changes are paired by prompt with the
    step-0 eval and the best one (evaluate.health.HeldOutEvals); --resume restores both from the
    checkpoint rather than measuring the resumed policy."""

    def __init__(self, s: PPOSetup, cfg: PPOConfig, ctx: StageContext, state: dict | None = None):
        self.s, self.cfg, self.ctx = s, cfg, ctx
        self.enabled = ctx.is_main and bool(s.eval_rows)
        self.tracker = HeldOutEvals(k=1)
        self.tracker.first, self.tracker.best = (state or {}).get("first"), (state or {}).get("best")

    def baseline(self) -> dict[str, float]:
        """The step-0 eval (logged at step 0); {} when there is none or it was restored."""
        stats = self.at(due=self.tracker.first is None)
        if stats:
            self.ctx.logger.log(0, stats)
        return stats

    def at(self, due: bool) -> dict[str, float]:
        """Rank 0 measures; every process enters full_weights (it gathers a sharded policy)."""
        if not (due and self.s.eval_rows):
            return {}
        with full_weights(self.ctx.accelerator, self.s.model):
            return self.measure() if self.enabled else {}

    def measure(self) -> dict[str, float]:
        samples = held_out_gold(
            self.s.net.policy, self.s.tokenizer, self.s.eval_rows, self.cfg, self.s.reward_fn
        )
        return self.tracker.stats(samples.gold, samples.reward)

    def state(self) -> dict:
        return {"first": self.tracker.first, "best": self.tracker.best}


class HealthReport:
    """Runs the health check on the history so far; a lasting symptom is repeated every
    health_window iterations, not every iteration. The history is part of the checkpoint, so a
    resumed run judges the same window as an uninterrupted one."""

    def __init__(
        self,
        window: int,
        ctx: StageContext,
        method: str = "ppo",
        history: list[dict] | None = None,
        last_warned: dict[str, int] | None = None,
    ):
        self.window, self.ctx, self.method, self.enabled = window, ctx, method, ctx.is_main
        self.history: list[dict] = list(history or [])
        self.last_warned: dict[str, int] = dict(last_warned or {})

    def record(self, stats: dict) -> None:
        """Add a record the rules read without checking it (the step-0 held-out eval)."""
        if stats:
            self.history.append(stats)

    def check(self, done: int, stats: dict, bar) -> None:
        self.history.append(stats)
        for warning in health_warnings(self.history, self.window) if self.enabled else []:
            kind = warning.split(":", 1)[0]
            if done - self.last_warned.get(kind, -self.window) >= self.window:
                self.last_warned[kind] = done
                bar.write(f"rlhfkit: {self.method} warning (iteration {done}): {warning}")
                self.ctx.logger.log(done, {M.HEALTH_WARNING: warning})

    def state(self) -> dict:
        return {"history": self.history, "last_warned": self.last_warned}


def save_ppo_final(ctx: StageContext, s: PPOSetup):
    """final/: the policy, plus its value head (value_head.safetensors) or critic (final/critic/) if any."""
    if s.net.critic is None and s.net.value_head is None:
        return save_final(ctx, s.net.policy, s.tokenizer)
    if s.net.critic is None:
        value_head = save({k: v.contiguous() for k, v in full_state_dict(s.net.value_head).items()})
        return save_final(ctx, s.net.policy, s.tokenizer, extra_files={"value_head.safetensors": value_head})
    critic, m = s.net.critic, ctx.cfg.model
    if isinstance(critic, AdapterHead):  # an adapter on the policy's base: saved as the rm stage's adapter/
        critic = critic.saved(base_reference(m.name, m.tiny_seed, ctx.out / "final"))
    return save_final(ctx, s.net.policy, s.tokenizer, extra_models={"critic": (critic, s.critic_tokenizer)})


def ptx_minibatch(
    shard: Shard, ptx: TokenizedSFT, step: int, cfg: PPOConfig, pad_token_id: int
) -> tuple[dict, float]:
    """(this process's SFT batch for minibatch update `step`, its share of the global batch's tokens)."""
    acc, size = shard.accelerator, cfg.ppo.ptx_batch_size
    rank, world = acc.process_index, acc.num_processes
    lengths = tuple(len(ids) for ids in ptx.input_ids)
    indices = global_batch_at(step, lengths, size * world, cfg.train.seed, group_by_length=False)
    ids = micro_batch(indices, 0, rank, world, size)
    batch = collate_sft([ptx.input_ids[i] for i in ids], [ptx.labels[i] for i in ids], pad_token_id)
    share = sum(completion_tokens(ptx.labels[i]) for i in ids) / sum(
        completion_tokens(ptx.labels[i]) for i in indices
    )
    return batch, share


def minibatch_order(global_size: int, cfg: PPOConfig, iteration: int) -> list[torch.Tensor]:
    """Global row indices of each minibatch update: ppo.epochs fresh random orders of the batch,
    each cut into ppo.minibatches chunks; a pure function of (seed, iteration)."""
    size = global_size // cfg.ppo.minibatches
    generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + iteration)
    orders = [torch.randperm(global_size, generator=generator) for _ in range(cfg.ppo.epochs)]
    return [order[start : start + size] for order in orders for start in range(0, global_size, size)]


@dataclass
class MinibatchShare:
    """A process's part of one minibatch update, so that the processes' losses sum to the loss of the
    whole (global) minibatch and DDP's gradient average, times `world`, is its gradient."""

    tokens: float
    """Share of the minibatch's response tokens: weights token means (value loss, statistics)."""
    total: float
    """The global minibatch's ops.aggregation_count: the policy and KL losses' denominator."""
    ptx: float
    """Share of the minibatch's ptx (SFT) tokens."""
    world: int
    present: bool
    """False for a process with no rows in the minibatch: it joins DDP's sum with one row, weight 0."""


def ppo_update(
    ctx: StageContext,
    s: PPOSetup,
    shard: Shard,
    rollout: Rollout,
    targets: dict,
    cfg: PPOConfig,
    iteration: int,
    kl_coef: float,
) -> dict[str, float]:
    """ppo.epochs passes over the global batch in minibatches. A process trains on its own rows of
    each minibatch; its policy and KL losses are aggregated with the whole minibatch's count
    (ppo.loss_aggregation) and its value loss weighted by its share of the minibatch's tokens (x
    processes, undoing DDP's gradient average), so every step is the loss of the whole minibatch
    whatever the number of processes. `targets`: the rollout's (B, T) log-probs, reference log-probs,
    advantages, returns (and values with a critic)."""
    p, acc = cfg.ppo, ctx.accelerator
    all_mask = shard.gather(rollout.response_mask)
    chunks = minibatch_order(shard.global_size, cfg, iteration)
    s.model.train()
    totals: dict[str, list[float]] = {}
    for update, chunk in enumerate(chunks):
        rows = shard.mine(chunk)
        # A process with no rows in this minibatch still joins the gradient sum: one row, weight 0.
        index = rows if len(rows) else torch.tensor([0])
        part = rollout.rows(index)
        tokens = part.response_mask.sum().item() / max(all_mask[chunk].sum().item(), 1) if len(rows) else 0.0
        total = max(aggregation_count(all_mask[chunk], p.loss_aggregation).item(), 1.0)
        ptx_batch, ptx_share = (None, 0.0)
        if s.ptx is not None:
            step = iteration * len(chunks) + update
            ptx_batch, ptx_share = ptx_minibatch(shard, s.ptx, step, cfg, s.net.policy.config.pad_token_id)
        new = s.model(part, cfg.rollout.temperature, ptx_batch)
        share = MinibatchShare(tokens, total, ptx_share, acc.num_processes, bool(len(rows)))
        mine = {key: value[index] for key, value in targets.items()}
        loss, local_stats, ratio_max = minibatch_loss(new, mine, part, cfg, share, kl_coef)
        s.optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        grad_norm = acc.clip_grad_norm_(
            s.model.parameters(), cfg.train.max_grad_norm
        )  # global: after DDP's sum
        step_stats = dict(zip(local_stats, shard.sum(torch.stack(list(local_stats.values()))).tolist()))
        # The global loss and gradient norm: every process makes the same skip decision.
        guarded_step(
            ctx.guard, s.optimizer, s.scheduler, step_stats.pop("loss"), float(grad_norm), iteration + 1
        )
        step_stats["ratio_max"] = shard.gather((ratio_max * bool(len(rows))).view(1)).max().item()
        for key, value in step_stats.items():
            totals.setdefault(key, []).append(value)
        if p.approx_kl_stop is not None and step_stats["approx_kl"] > p.approx_kl_stop:
            break  # the same decision on every process: approx_kl is the global one
    return update_metrics(totals)


def minibatch_loss(
    new: dict, rows: dict, part: Rollout, cfg: PPOConfig, share: MinibatchShare, kl_coef: float
) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """(this process's loss, its statistics weighted to be summed over processes, its largest ratio).
    `rows`: the minibatch rows' targets (old log-probs, reference log-probs, advantages, returns, values)."""
    p, mask = cfg.ppo, part.response_mask
    # The policy and KL terms are already this process's part of the global minibatch's aggregate
    # (total = the global count); x world undoes DDP's average, x 0 silences a filler row.
    scale = share.world if share.present else 0.0
    pg_loss, pg_stats = ppo_policy_loss(
        new["logprobs"],
        rows["logprobs"],
        rows["advantages"],
        mask,
        p.clip_range,
        clip_low=p.clip_low,
        clip_high=p.clip_high,
        aggregation=p.loss_aggregation,
        total=share.total,
    )
    loss = pg_loss * scale
    # Minibatch statistics as token means over the whole minibatch (all processes).
    stats = {k: v.float() * share.tokens for k, v in pg_stats.items() if k not in ("ratio_max", "pg_loss")}
    stats["pg_loss"] = pg_loss.detach().float() * float(share.present)
    if "values" in new:
        vf_loss, vf_stats = ppo_value_loss(
            new["values"], rows["values"], rows["returns"], mask, p.value_clip_range
        )
        loss = loss + p.vf_coef * vf_loss * share.tokens * share.world
        stats.update({k: v.float() * share.tokens for k, v in vf_stats.items()})
    if p.kl_in == "loss":
        # GRPO-style: + kl_coef x the KL term (each form has the reverse KL's gradient, ops/kl_loss.py).
        term = kl_loss_term(
            new["logprobs"], rows["logprobs"], rows["ref_logprobs"], p.kl_loss_estimator, mask
        )
        kl_loss = aggregate_loss(term, mask, p.loss_aggregation, share.total)
        loss = loss + kl_coef * kl_loss * scale
        stats["kl_loss"] = kl_loss.detach().float() * float(share.present)
    if "ptx_loss" in new:
        # PPO-ptx (Ouyang et al. 2022, eq. 2): + gamma * E_pretrain[-log pi(x)].
        loss = loss + p.ptx_coef * new["ptx_loss"] * share.ptx * share.world
        stats["ptx_loss"] = new["ptx_loss"].detach().float() * share.ptx
    # 0 exactly when the update's forward equals the rollout's (ratio_mean cannot see a mismatch).
    logratio = (new["logprobs"] - rows["logprobs"]).abs().detach()
    stats["logratio_abs"] = masked_mean(logratio, mask).float() * share.tokens
    stats["loss"] = loss.detach().float() / share.world
    return loss, stats, pg_stats["ratio_max"]


def update_metrics(totals: dict[str, list[float]]) -> dict[str, float]:
    """Per-iteration metrics from the minibatch updates' statistics (the optional losses when logged)."""
    mean = {k: sum(v) / len(v) for k, v in totals.items()}
    # Before the first update the new and old policies are the same weights on the same inputs.
    out = {
        M.PPO_RATIO_FIRST: totals["ratio_mean"][0],
        M.PPO_LOGRATIO_FIRST: totals["logratio_abs"][0],
        M.PPO_CLIPFRAC: mean["clipfrac"],
        M.PPO_APPROX_KL: mean["approx_kl"],
        M.PPO_PG_LOSS: mean["pg_loss"],
        M.PPO_RATIO_MAX: max(totals["ratio_max"]),
        M.PPO_MINIBATCH_UPDATES: len(totals["pg_loss"]),
    }
    optional = {
        "vf_loss": M.PPO_VF_LOSS,
        "kl_loss": M.PPO_KL_LOSS,
        "ptx_loss": M.PPO_PTX_LOSS,
        "clipfrac_low": M.PPO_CLIPFRAC_LOW,
        "clipfrac_high": M.PPO_CLIPFRAC_HIGH,
    }
    out.update({name: mean[key] for key, name in optional.items() if key in mean})
    return out


def exact_kl(
    logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor, temperature: float, rows: int
) -> torch.Tensor:
    """(rows,) sequence KLs from full next-token distributions on the first `rows` rows (the oracle)."""
    rows = min(rows, logits.shape[0])
    per_token = kl_exact(logits[:rows], ref_logits[:rows], temperature=temperature)  # (rows, R)
    return masked_sum(per_token, mask[:rows], dim=-1)


def held_out_gold(
    policy,
    tokenizer,
    eval_rows: list[dict],
    cfg: PPOConfig,
    reward_fn: Callable | None,
    batch_size: int = 64,
    on_rollout: Callable[[Rollout, int], None] | None = None,
) -> PolicySamples:
    """One sample per held-out prompt at the rollout temperature, with its gold score (and reward):
    the policy PPO optimises is the sampling distribution, and its reward is measured on samples, so
    gold is too (greedy decoding can get worse while every sample gets better). The reward scores the
    same samples, as in training (each prompt's dataset row, the true finished flags), so the health
    check can pair its change with gold's and a verifiable reward can check the answers. Every eval
    reuses the same sampling noise (negative seeds: never a training row's), so a change between evals
    is the policy's, not the draw's. `on_rollout` sees each sampled batch (sample_policy)."""
    prompts, _ = prompts_and_references(
        eval_rows, cfg.data.eval_source or cfg.data.source, cfg.data.template, tokenizer
    )
    samples = sample_policy(
        policy,
        tokenizer,
        prompts,
        cfg.rollout.max_new_tokens,
        cfg.rollout.temperature,
        batch_size=batch_size,
        noise_seed=-(cfg.train.seed + 1),
        on_rollout=on_rollout,
    )
    add_scores(samples, gold=True, reward_fn=reward_fn, batch_size=batch_size, rows=eval_rows)
    return samples
