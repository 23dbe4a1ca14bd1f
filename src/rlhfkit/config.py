"""Dataclass configs per stage, loaded from YAML plus dotted `key=value` overrides.

Every field is documented once, here. Loading checks types (including `Literal` choices), the
bounds declared on the fields (`at_least`, `fraction`) and the keys a stage never reads (its
`NO_EFFECT`), and names the closest valid key for a typo, so a bad config fails before any model
is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from rlhfkit.errors import ConfigError

# ----------------------------------------------------------------------------- bounds on fields

BOUND = "rlhfkit.bound"
"""Field metadata key of a `Bound`."""


@dataclass(frozen=True)
class Bound:
    """Allowed values of a numeric field, checked at load time: a zero batch or save interval would
    otherwise surface as a ZeroDivisionError deep in a training loop."""

    low: float
    strict: bool = False
    """`> low` instead of `>= low`."""
    high: float | None = None

    def broken(self, value: float) -> str | None:
        """The limit `value` breaks (`>= 1`, `<= 1`), or None when it is allowed."""
        if value < self.low or (self.strict and value == self.low):
            return f"{'>' if self.strict else '>='} {self.low:g}"
        if self.high is not None and value > self.high:
            return f"<= {self.high:g}"
        return None


def at_least(default: Any, bound: float, strict: bool = False) -> Any:
    """A field whose value (each item, for a list; None is always allowed) must be >= bound, or
    > bound when strict."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={BOUND: Bound(bound, strict)})
    return field(default=default, metadata={BOUND: Bound(bound, strict)})


def fraction(default: float) -> Any:
    """A field that must lie in [0, 1]: a probability or a share of rows."""
    return field(default=default, metadata={BOUND: Bound(0.0, high=1.0)})


# ----------------------------------------------------------------------------- shared sections


@dataclass
class ModelConfig:
    name: str = "tiny"
    """Hub id (`gpt2`), local HF folder, a `.gguf` file, a run folder's stage (`runs/x/sft`),
    or a built-in asset: `tiny` (GPT-2 built locally) or `smollm2` (SmolLM2-135M-Instruct)."""
    gguf_file: str | None = None
    """Not implemented (rejected when set): put the `.gguf` file's path in `name`. Kept so that
    config.yaml files of earlier runs, which list it, still load."""
    tokenizer: str | None = None
    """Tokenizer location when it differs from `name`."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: bool = True
    """Train a LoRA adapter (base frozen) instead of all weights."""
    lora_r: int = at_least(16, 1)
    lora_alpha: int = 32
    lora_dropout: float = fraction(0.0)
    lora_target_modules: list[str] | None = None
    """None picks per-architecture defaults (models/lora.py)."""
    disable_dropout: bool = True
    """Dropout off everywhere: PPO's ratio-is-1 invariant needs deterministic forwards."""
    trust_remote_code: bool = False
    """Let transformers run Python code shipped with the model (its modeling_*.py). Off: such a model
    is refused with an error. Turn it on only for a model whose code you have read and trust."""
    tiny_seed: int = 0
    """Seed of the locally built tiny model when `name` is `tiny`."""


# ModelConfig keys that no stage reads; every stage's NO_EFFECT lists them.
MODEL_NO_EFFECT: dict[str, str] = {
    "model.gguf_file": "not implemented: put the .gguf file's path in model.name",
}


@dataclass
class DataConfig:
    source: str = "builtin:default"
    """`builtin:<task>`, `hf:<name>[:split]`, or a local .json/.jsonl/.parquet file."""
    eval_source: str | None = None
    """Held-out data; None uses the source's test split (builtin) or `eval_fraction` of it."""
    eval_fraction: float = fraction(0.05)
    eval_size: int = at_least(64, 0)
    """Held-out rows used for eval loss and generation metrics."""
    max_train_rows: int | None = at_least(None, 1)
    builtin_size: int = at_least(2000, 1)
    """Rows drawn from a `builtin:` task's train split."""
    builtin_noise: float = fraction(0.0)
    """Fraction of deliberately imperfect demonstrations in `builtin:` data."""
    template: Literal["human_assistant", "chat"] = "human_assistant"
    """`human_assistant`: "Human: ...\\n\\nAssistant: ..." (the original gpt2 + Alpaca notebook's format,
    design §8.1). `chat`: the tokenizer's chat template
    (conversational rows need it). SFT, RM and PPO must agree: the pipeline wires the sft stage's."""
    max_length: int = at_least(256, 1)
    """Tokens per example, prompt plus completion."""
    truncation: Literal["drop", "error", "truncate_prompt"] = "drop"
    """Rows longer than max_length: drop them (counted and reported), stop with an error, or cut
    the prompt from the left. A completion is never silently cut to nothing."""


@dataclass
class TrainConfig:
    seed: int = 0
    lr: float = at_least(3e-4, 0)
    weight_decay: float = at_least(0.0, 0)
    warmup_steps: int = at_least(10, 0)
    max_steps: int = at_least(200, 0)
    """Optimizer steps."""
    batch_size: int = at_least(16, 1)
    """Per-process micro-batch (of packed rows with sft.packing)."""
    grad_accum: int = at_least(1, 1)
    max_grad_norm: float = at_least(1.0, 0, strict=True)
    log_every: int = at_least(10, 1)
    eval_every: int = at_least(50, 1)
    save_every: int = at_least(100, 1)
    keep_last: int = at_least(2, 0)
    """Checkpoints kept in checkpoints/ (oldest deleted first); 0 keeps every one."""
    threads: int | None = at_least(None, 1)
    """torch intra-op threads; None leaves torch's default."""
    mixed_precision: Literal["no", "bf16"] = "no"
    """`bf16`: forwards under bfloat16 autocast (accelerate), weights and optimizer states in float32.
    The launcher's --mixed_precision must agree (docs/scaling.md)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of storing them: less memory, about a
    third more compute (docs/scaling.md's memory model)."""
    max_nonfinite_steps: int = at_least(5, 1)
    """Optimizer steps in a row whose loss or gradient norm is NaN/inf that are skipped (counted as
    train/skipped_steps) before the run stops with an error; the weights stay at the last good step."""


@dataclass
class RunConfig:
    name: str = "default"
    dir: str = "runs"
    """Runs go to `<dir>/<name>/<stage>/`."""
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=lambda: ["tensorboard"])
    """Any of `tensorboard`, `wandb`; empty for metrics.jsonl only."""
    push_to_hub: str | None = None
    """`<user>/<name>`: upload final/ when the stage ends (needs network)."""
    progress: bool = True


# ----------------------------------------------------------------------------- stages


@dataclass
class SFTSection:
    packing: bool = False
    """Pack several examples into each row of up to `data.max_length` tokens (best-fit decreasing),
    position ids restarted per example so none attends to another; `train.batch_size` then counts
    rows. Same token-mean loss, less padding (data/packing.py, docs/design.md §3.3)."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding)."""
    save_merged: bool = False
    """Also write final/merged/: the LoRA adapter folded into the base weights."""
    eval_generate: int = at_least(32, 0)
    """Held-out prompts to complete greedily at each eval (gold score / BLEU); 0 turns it off."""
    max_new_tokens: int = at_least(48, 1)


@dataclass
class SFTConfig:
    # Keys this stage reads nowhere, with why. load_config rejects any value but this class's
    # default, so a run's resolved config.yaml (every key, defaults included) still loads.
    STAGE: ClassVar[str] = "sft"
    NO_EFFECT: ClassVar[dict[str, str]] = {**MODEL_NO_EFFECT}

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    sft: SFTSection = field(default_factory=SFTSection)


@dataclass
class RMSection:
    format: Literal["auto", "generic", "rm-static", "hh-rlhf", "conversational"] = "auto"
    """Preference file layout; `auto` detects it from the columns (message lists: `conversational`)."""
    single_turn: bool = False
    """Keep only prompts with exactly one Human turn (how the original notebook filtered Dahoas/rm-static
    to match its single-turn SFT data, design §8.1)."""
    margin: float = 0.0
    """Required reward gap in the Bradley-Terry loss: -log sigmoid(r_c - r_r - margin)."""
    center_coef: float = at_least(0.0, 0)
    """Weight of mean((r_c + r_r)^2), which keeps rewards centred at 0 (Eisenstein et al. 2023)."""
    head_lr: float | None = at_least(None, 0)
    """Learning rate of the new scalar head (zero-initialised); None uses train.lr."""
    norm_samples: int = at_least(64, 2)
    """SFT samples on train prompts scored after training to store the reward mean/std PPO uses
    (a std needs two)."""
    max_new_tokens: int = at_least(32, 1)
    """Length of those samples."""


@dataclass
class RMConfig:
    # Keys this stage reads nowhere, with why (as SFTConfig.NO_EFFECT).
    STAGE: ClassVar[str] = "rm"
    NO_EFFECT: ClassVar[dict[str, str]] = {
        **MODEL_NO_EFFECT,
        **dict.fromkeys(
            ("data.builtin_size", "data.builtin_noise"),
            "it reads preference pairs, which builtin: tasks do not have; make them with "
            "`rlhfkit data prefs`",
        ),
    }

    model: ModelConfig = field(default_factory=ModelConfig)
    """The SFT model (e.g. runs/<name>/sft); its trunk gets a scalar head."""
    data: DataConfig = field(default_factory=lambda: DataConfig(source="", max_length=128))
    """Preference pairs: a .jsonl/.json/.parquet file or hf:<name> with prompt/chosen/rejected."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, batch_size=8))
    run: RunConfig = field(default_factory=RunConfig)
    rm: RMSection = field(default_factory=RMSection)


@dataclass
class PrefsConfig:
    """`rlhfkit data prefs`: preference pairs for a built-in task, sampled from a model and
    labelled by the gold judge through a noisy Bradley-Terry draw."""

    model: str = "tiny"
    """The policy to sample from (normally the SFT stage's folder)."""
    task: str = "default"
    split: Literal["train", "test"] = "train"
    template: Literal["human_assistant", "chat"] = "human_assistant"
    """How prompts are rendered for sampling: the SFT model's data.template (the pipeline wires it
    from the sft stage). `chat` writes conversational rows (message lists) that the rm stage renders
    with the same chat template."""
    n_prompts: int = at_least(1000, 1)
    temperature: float = at_least(1.0, 0, strict=True)
    """Sampling temperature of the two responses."""
    noise_temperature: float = at_least(0.6, 0)
    """Bradley-Terry temperature of the labeller: 0 = the noiseless judge; larger = noisier labels."""
    max_new_tokens: int = at_least(32, 1)
    batch_size: int = at_least(64, 1)
    """Prompts sampled per generate call."""
    drop_gold_ties: bool = True
    """Skip pairs the judge scores equal: their label would be a coin flip that no RM can learn."""
    seed: int = 0
    out: str = "prefs.jsonl"


@dataclass
class RolloutSection:
    batch_size: int = at_least(32, 1)
    """Prompts sampled per PPO iteration and process (like train.batch_size): N processes x b sample
    and train on exactly what 1 process x N*b does; the iteration's global batch is b x processes."""
    max_new_tokens: int = at_least(32, 1)
    temperature: float = at_least(1.0, 0, strict=True)
    """Sampling temperature; every scoring pass divides logits by the same T (design §6.1)."""
    top_k: int = at_least(0, 0)
    """0 = no warping. Any other value samples from a distribution the log-probs do not describe,
    so it is refused unless `allow_mismatched_sampling` (which exists only so tests can reproduce the
    negative KL of sampling with a warp and scoring without it, design §6.7)."""
    repetition_penalty: float = at_least(1.0, 0, strict=True)
    """1 = none. Like top_k, a warp the log-probs do not describe (the original notebook sampled with 1.2
    and scored without it, so its KL went negative): refused
    unless `allow_mismatched_sampling`."""
    allow_mismatched_sampling: bool = False
    group_size: int = at_least(1, 1)
    """G: samples per prompt. An iteration draws rollout.batch_size prompts per process and samples
    each G times (b x G rows, each with its own sampling noise); a prompt's G rows stay on one process,
    so the group estimators (grpo, dr_grpo, rloo) see whole groups."""


# Online RL methods sharing the one loop (trainers/ppo.py), named by their advantage estimator: the
# method names the stage folder (runs/<name>/<method>/) and the prefix of its metrics (grpo/kl_k1).
METHOD_OF_ADVANTAGE = {
    "gae": "ppo",
    "grpo": "grpo",
    "dr_grpo": "grpo",
    "rloo": "rloo",
    "reinforce_pp": "reinforce_pp",
}
# Estimators that baseline a row against the other rows of its prompt's group.
GROUP_ADVANTAGES = ("grpo", "dr_grpo", "rloo")
# `rlhfkit grpo|rloo|reinforce-pp` (method reinforce_pp): the PPO stage with these defaults, under the YAML
# file and the
# overrides (design §10). GRPO (Shao et al. 2024): G samples, KL in the loss (corrected k3), rows
# averaged per sequence; RLOO (Ahmadian et al. 2024): G >= 2, KL in the reward; REINFORCE++ (Hu 2025):
# one sample per prompt, KL in the reward, whitened over the global batch (whiten_advantages=None).
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "ppo": {},
    "grpo": {
        "ppo.advantage": "grpo",
        "rollout.group_size": 4,
        "ppo.kl_in": "loss",
        "ppo.kl_loss_estimator": "k3",
        "ppo.loss_aggregation": "seq-mean-token-mean",
    },
    "rloo": {"ppo.advantage": "rloo", "rollout.group_size": 4, "ppo.kl_in": "reward"},
    "reinforce_pp": {"ppo.advantage": "reinforce_pp", "ppo.kl_in": "reward"},
}


@dataclass
class PPOSection:
    reward: str = "runs/default/rm"
    """A reward-model stage folder (its final/ and reward_stats.json) or `module:function`
    taking (prompts, responses) -> list[float], e.g. `rlhfkit.tasks:gold_scores`, or (samples) -> list[float]
    with one rewards.RewardSample per row (ids, finished flag, the prompt's dataset row), e.g.
    `rlhfkit.rewards.verifiable:verifiable_reward`."""
    extra_rewards: list[str] = field(default_factory=list)
    """Rewards added to ppo.reward's, each `spec` or `spec@weight` (same forms as ppo.reward), e.g.
    `rlhfkit.rewards.verifiable:format_reward@0.5` beside a reward model."""
    iterations: int = at_least(100, 0)
    epochs: int = at_least(2, 1)
    """Passes over each rollout batch."""
    minibatches: int = at_least(2, 1)
    """Minibatches per epoch, over the global batch (rollout.batch_size x processes must divide by it)."""
    clip_range: float = at_least(0.2, 0, strict=True)
    value_clip_range: float = at_least(0.2, 0, strict=True)
    vf_coef: float = at_least(0.1, 0)
    gamma: float = fraction(1.0)
    lam: float = fraction(0.95)
    kl_coef: float = at_least(0.05, 0)
    target_kl: float | None = at_least(None, 0, strict=True)
    """Sequence KL (nats) the adaptive controller steers to; None keeps kl_coef fixed."""
    kl_horizon: int = at_least(10000, 1)
    whiten_advantages: bool | None = None
    """Whiten advantages over the global batch; None decides by estimator: yes for gae and
    reinforce_pp (REINFORCE++'s global normalisation), no for the group estimators (already
    baselined per prompt; GRPO's std division is its own scale)."""
    advantage: Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp"] = "gae"
    """Advantage estimator (ops.ADVANTAGE_ESTIMATORS): gae is PPO with a critic (value head); the
    others need none, and none is built. It also names the method: ppo, grpo, rloo, reinforce_pp."""
    kl_in: Literal["reward", "loss"] = "reward"
    """Where the KL to the reference goes: `reward` subtracts kl_coef x k1 from each token's reward
    (PPO, RLOO, REINFORCE++); `loss` adds kl_coef x the ppo.kl_loss_estimator term to the policy
    loss and leaves the reward as the score alone (GRPO)."""
    kl_loss_estimator: Literal["k1", "k2", "k3"] = "k3"
    """With kl_in=loss: the KL term's form (ops.KL_LOSS_FORMS; every form has the reverse KL's
    gradient, k3 in its corrected, importance-weighted form). Ignored with kl_in=reward."""
    loss_aggregation: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"] = "token-mean"
    """How per-token policy (and KL) losses become one number (ops.aggregate_loss), over the whole
    minibatch of every process: token-mean (DAPO), seq-mean-token-mean (GRPO), seq-mean-token-sum
    (Dr. GRPO)."""
    clip_low: float | None = at_least(None, 0, strict=True)
    """Lower clip range of the ratio (1 - clip_low); None uses clip_range."""
    clip_high: float | None = at_least(None, 0, strict=True)
    """Upper clip range of the ratio (1 + clip_high; DAPO's clip-higher); None uses clip_range."""
    approx_kl_stop: float | None = at_least(None, 0)
    """Stop this iteration's epochs once a minibatch's approx KL exceeds this."""
    no_eos_penalty: float = -1.0
    """Added to the (normalised) score of a response that hit max_new_tokens without EOS."""
    empty_score: float | None = -1.0
    """Score (normalised scale) that replaces the reward of a response that is EOS alone: a reward
    model never saw one in training (pairs with an empty side are dropped), so what it reads at the
    prompt's last token is arbitrary and could pay the policy for saying nothing. null keeps the
    reward's own score (e.g. a function reward that judges empty answers itself)."""
    reward_clip: float = at_least(5.0, 0, strict=True)
    """Normalised scores are clipped to [-reward_clip, reward_clip]."""
    normalize_reward: bool = True
    """RM scores only: (score - mean) / std with the stats measured on SFT samples (saved by rm)."""
    eval_every: int = at_least(10, 1)
    eval_prompts: int = at_least(64, 0)
    """Held-out prompts sampled once each at rollout.temperature (the same noise every eval) for gold/score
    (built-in tasks) at each eval."""
    kl_exact_rows: int = at_least(8, 0)
    """Rows of each batch (per process) whose exact KL is computed from full next-token distributions."""
    health_window: int = at_least(5, 1)
    critic: Literal["head", "reward_model"] = "head"
    """`head`: a zero-initialised value head on the policy's trunk (one forward for both).
    `reward_model`: a separate, trainable value model initialised from the RM in `ppo.reward` (its
    trunk and scalar head, read at every token; needs an RM on the policy's tokenizer); saved in
    final/critic/."""
    critic_lr: float | None = at_least(None, 0)
    """Learning rate of the value head or critic (its own optimizer group); None uses train.lr."""
    shared_base: bool = True
    """A LoRA policy scores with a LoRA rm stage trained on its own base as a second adapter on the
    policy's base weights (and `critic=reward_model` trains a third), so the base is held once
    (design §6.9); any other RM is loaded merged. false: always load the RM merged."""
    ptx_coef: float = at_least(0.0, 0)
    """PPO-ptx (Ouyang et al. 2022, eq. 2): weight of the SFT next-token loss mixed into every
    minibatch loss, to keep the policy's SFT skills; 0 turns it off."""
    ptx_source: str | None = None
    """SFT rows (prompt/completion or Alpaca schema; same forms as data.source) for the ptx loss;
    None uses data.source's rows and their completions."""
    ptx_batch_size: int = at_least(8, 1)
    """SFT examples per minibatch update and process for the ptx loss."""


@dataclass
class PPOConfig:
    # Keys this stage reads nowhere, with why (as SFTConfig.NO_EFFECT).
    STAGE: ClassVar[str] = "ppo"
    NO_EFFECT: ClassVar[dict[str, str]] = {
        **MODEL_NO_EFFECT,
        "train.warmup_steps": "it runs a constant learning rate",
        "train.max_steps": "its length is ppo.iterations",
        "train.batch_size": "its batch is rollout.batch_size, split into ppo.minibatches",
        "train.grad_accum": "each minibatch is one optimizer step",
        "train.log_every": "it logs every iteration",
        "train.eval_every": "its eval interval is ppo.eval_every",
        **dict.fromkeys(
            ("data.eval_fraction", "data.eval_size"),
            "its held-out prompts are a builtin: task's test split, ppo.eval_prompts of them",
        ),
    }

    model: ModelConfig = field(default_factory=ModelConfig)
    """The SFT policy (e.g. runs/<name>/sft). With LoRA the reference is this model with the adapter off."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompts: rows in Alpaca or prompt/completion schema (completions unused)."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(lr=1e-4, max_steps=0, save_every=20, log_every=1)
    )
    run: RunConfig = field(default_factory=RunConfig)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    ppo: PPOSection = field(default_factory=PPOSection)


@dataclass
class DPOSection:
    loss: Literal["sigmoid", "ipo", "simpo"] = "sigmoid"
    """`sigmoid`: DPO (Rafailov et al. 2023), or conservative DPO with label_smoothing > 0. `ipo`: IPO
    (Azar et al. 2023), a squared loss that stays finite on noiseless labels. `simpo`: SimPO (Meng et
    al. 2024), reference-free on length-averaged log-probs (the reference is then only the KL's)."""
    beta: float = at_least(0.1, 0, strict=True)
    """KL strength: the implicit reward is beta * log(pi / ref) (SimPO: beta * mean token log-prob)."""
    label_smoothing: float = fraction(0.0)
    """cDPO's eps in [0, 0.5): the probability that a pair's label is flipped (sigmoid loss only). For
    pairs from `rlhfkit data prefs`, eps = 1 - label_agreement of its summary line (the built-in
    labeller's Bradley-Terry draw at noise_temperature); the tiny recipe's 0.45 gives ~0.2."""
    simpo_gamma: float = at_least(0.5, 0)
    """SimPO's target reward margin gamma (the paper's gamma, not TRL's gamma / beta)."""
    reference: Literal["adapter_off", "frozen_copy", "precomputed"] = "adapter_off"
    """The SFT reference pi_ref. `adapter_off`: the policy with its LoRA adapter disabled (needs
    model.lora, no second copy). `frozen_copy`: a frozen copy of the SFT weights (full fine-tuning).
    `precomputed`: every pair's reference log-probs computed once before training and stored in the
    run folder (reference_logps.safetensors), saving the reference forward at each step; the KL
    evals still read the reference (adapter off with LoRA, else a frozen copy)."""
    format: Literal["auto", "generic", "rm-static", "hh-rlhf", "conversational"] = "auto"
    """Preference file layout, as rm.format."""
    single_turn: bool = False
    """Keep only prompts with exactly one Human turn, as rm.single_turn."""
    eval_every: int = at_least(25, 1)
    """Steps between the sampled evals (gold/score, KL to the reference); also at step 0 and the end.
    The cheap held-out pair metrics follow train.eval_every."""
    eval_source: str | None = "builtin:default"
    """A `builtin:` task whose test split gives the sampled evals' prompts (gold/score needs the task's
    judge); None or another source samples the held-out pairs' prompts instead (KL only, no gold)."""
    eval_prompts: int = at_least(64, 0)
    """Held-out prompts sampled once each (fixed noise, as ppo.eval_prompts) per sampled eval; 0: none."""
    max_new_tokens: int = at_least(32, 1)
    """Length of those samples."""
    temperature: float = at_least(1.0, 0, strict=True)
    """Their sampling temperature; the KL is measured at the same temperature."""
    kl_exact_rows: int = at_least(16, 0)
    """Samples of each eval whose exact KL is computed from full next-token distributions."""


@dataclass
class DPOConfig:
    # Keys this stage reads nowhere, with why (as SFTConfig.NO_EFFECT).
    STAGE: ClassVar[str] = "dpo"
    NO_EFFECT: ClassVar[dict[str, str]] = RMConfig.NO_EFFECT

    model: ModelConfig = field(default_factory=ModelConfig)
    """The SFT model (e.g. runs/<name>/sft): the policy starts from it and it is the reference."""
    data: DataConfig = field(default_factory=lambda: DataConfig(source="", max_length=128))
    """Preference pairs, in every format the rm stage reads."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-4, batch_size=8, warmup_steps=5))
    run: RunConfig = field(default_factory=RunConfig)
    dpo: DPOSection = field(default_factory=DPOSection)


STAGE_CONFIGS: dict[str, type] = {cls.STAGE: cls for cls in (SFTConfig, RMConfig, PPOConfig, DPOConfig)}


@dataclass
class EvalSection:
    prompts: int = at_least(64, 1)
    """Held-out prompts (the test split of the PPO stage's built-in task) for the final comparison."""
    best_of_n: list[int] = at_least([1, 2, 4, 8, 16], 1)
    """Best-of-n from the SFT policy reranked by the RM; max(best_of_n) samples are drawn per prompt."""
    batch_size: int = at_least(64, 1)
    show: int = at_least(6, 0)
    """Side-by-side completions in the report."""
    seed: int = 0
    samples_per_prompt: int = at_least(1, 1)
    """Samples per held-out prompt and policy for the headline means and win rates (a held-out split
    can have only ~100 prompts; more draws shrink the standard error)."""
    checkpoints: bool = True
    """Also evaluate each method's kept training checkpoints (checkpoints/step-N/, train.keep_last of
    them; 0 keeps all) on the same prompts and random numbers: the method's curve on the frontier."""
    checkpoint_samples_per_prompt: int | None = at_least(None, 1)
    """Draws per prompt for a checkpoint (its curve point); None: samples_per_prompt. Fewer is cheaper;
    draw j of prompt i has the same random numbers as every policy's draw j of prompt i."""


@dataclass
class PipelineConfig:
    """`rlhfkit pipeline`: sft -> prefs -> rm -> ppo -> eval -> report into `<dir>/<name>/`.

    Stage configs are paths relative to the pipeline file; the pipeline wires each stage to the
    previous one's output (model paths, preference file, reward model) and sets run.name/run.dir.
    Override a stage key with its stage prefix: `sft.train.max_steps=100`, `prefs.n_prompts=500`."""

    name: str = "default"
    dir: str = "runs"
    methods: list[Literal["ppo", "grpo", "rloo", "reinforce-pp", "dpo"]] = field(
        default_factory=lambda: ["ppo"]
    )
    """Methods trained from the one SFT model, pairs and RM, each into runs/<name>/<method>/ (reinforce-pp
    into reinforce_pp/), in this order; one that fails is recorded and the others still run and are
    evaluated (docs/design.md §10.3)."""
    sft: str = "sft.yaml"
    prefs: str = "prefs.yaml"
    rm: str = "rm.yaml"
    ppo: str = "ppo.yaml"
    grpo: str | None = None
    """GRPO's stage config; None: the ppo file under `rlhfkit grpo`'s presets (config.METHOD_PRESETS)."""
    rloo: str | None = None
    """RLOO's stage config; None: the ppo file under `rlhfkit rloo`'s presets."""
    reinforce_pp: str | None = None
    """REINFORCE++'s stage config; None: the ppo file under `rlhfkit reinforce-pp`'s presets."""
    dpo: str = "dpo.yaml"
    """DPO's stage config (read only when `methods` lists dpo)."""
    eval: EvalSection = field(default_factory=EvalSection)


# ----------------------------------------------------------------------------- loading


def load_config(
    cls: type,
    path: str | Path | None = None,
    overrides: list[str] | tuple = (),
    presets: dict[str, Any] | None = None,
) -> Any:
    """Defaults <- `presets` (a command's own defaults, dotted keys) <- YAML file <- `key=value`
    overrides, type-checked into an instance of `cls`, then checked against the stage's NO_EFFECT
    keys and the bounds declared on the fields."""
    raw: dict = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        raw = _read_yaml(Path(path))
    for key, value in (presets or {}).items():
        if not _has_dotted(raw, key):
            _set_dotted(raw, key, value)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.lr=1e-4)")
        _set_dotted(raw, key.strip(), _parse_scalar(value))
    cfg = _build(cls, raw, prefix="", where=where, root=cls)
    _check_no_effect(cfg, where)
    _check_bounds(cfg, where)
    return cfg


def load_section(cls: type, path: str | Path, key: str) -> Any:
    """One section (`model`) of a saved stage config (a run folder's config.yaml), type-checked as `cls`."""
    raw = _read_yaml(Path(path)).get(key) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {key} must be a mapping")
    return _build(cls, raw, prefix=f"{key}.", where=str(path), root=cls)


def _check_no_effect(cfg: Any, where: str) -> None:
    """Reject a key of the stage's NO_EFFECT that differs from the stage's default: a setting the
    stage would silently ignore."""
    default = type(cfg)()
    for key, reason in getattr(cfg, "NO_EFFECT", {}).items():
        value = _get_dotted(cfg, key)
        if value != _get_dotted(default, key):
            shown = json.dumps(value) if isinstance(value, bool) or value is None else value
            raise ConfigError(
                f"{where}: {key}={shown} has no effect in the {cfg.STAGE} stage ({reason}); remove it"
            )


def _check_bounds(cfg: Any, where: str, prefix: str = "") -> None:
    """Walk the config tree and check every field declared with a Bound (at_least, fraction)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            _check_bounds(value, where, f"{prefix}{f.name}.")
            continue
        bound = f.metadata.get(BOUND)
        if bound is None or value is None:
            continue  # no bound declared, or an Optional left unset
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            broken = bound.broken(item)
            if broken:
                key = f"{prefix}{f.name}" + ("" if i is None else f"[{i}]")
                raise ConfigError(f"{where}: {key} must be {broken}, got {item!r}")


def _get_dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{at}: YAML does not parse: {problem}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (model:, data:, train: ...), got {type(data).__name__}"
        )
    return data


def _parse_scalar(text: str) -> Any:
    # YAML rules give `1e-4` -> str in YAML 1.1, so numbers are tried explicitly first.
    text = text.strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _has_dotted(raw: dict, key: str) -> bool:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part!r} is a value, not a section")
        node = child
    node[last] = value


def _build(cls: type, raw: dict, prefix: str, where: str, root: type, base: Any = None) -> Any:
    """`base` (default: cls()) with the keys in `raw` replaced. A section starts from its parent's
    default for it, so a stage's own defaults (PPO's train.max_steps=0, RM's data.max_length=128)
    survive a YAML section or override that sets other keys of it."""
    base = cls() if base is None else base
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigError(f"{where}: unknown key '{prefix}{key}'{_suggest(prefix, key, cls, root)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            section = getattr(base, f.name)
            kwargs[f.name] = _build(hint, raw[f.name] or {}, f"{prefix}{f.name}.", where, root, section)
        else:
            kwargs[f.name] = _check(raw[f.name], hint, f"{prefix}{f.name}", where)
    return dataclasses.replace(base, **kwargs)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _all_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _suggest(prefix: str, key: str, cls: type, root: type) -> str:
    local = [f.name for f in dataclasses.fields(cls)]
    match = difflib.get_close_matches(key, local, n=1, cutoff=0.5)
    if match:
        return f"; did you mean '{prefix}{match[0]}'?"
    # The key may belong to another section (`lr` under model:).
    for full in _all_keys(root):
        if full.rsplit(".", 1)[-1] == key:
            return f"; did you mean '{full}'?"
    return f"; valid keys here: {', '.join(local)}"


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _check(value: Any, hint: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, key, where)
            except ConfigError as e:
                errors.append(e)
        allowed = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"{where}: {key} must be {allowed}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {key} must be {_type_name(hint)}, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):  # `key=a,b` on the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        return [_check(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: {key}: unsupported config type {hint}")  # pragma: no cover
