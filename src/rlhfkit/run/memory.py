"""A memory model of one training process per stage (docs/scaling.md): bytes for weights, gradients,
AdamW states, activations kept for the backward pass, logits, and the KV cache of rollouts. Pure
arithmetic on a model's shape, so it can size a 7B run on a laptop. It is an estimate, checked against
measured peak RSS of tiny and SmolLM2 runs in docs/scaling.md; allocator slack and transient copies
(e.g. loading a checkpoint) come on top."""

from __future__ import annotations

from dataclasses import dataclass, replace

GB = 1e9


@dataclass(frozen=True)
class Shape:
    """What memory depends on in a decoder: parameter count and the widths of the tensors a forward keeps."""

    params: float
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    kv_width: int
    """Key (= value) width per token and layer: kv heads x head dim."""

    def lora_params(self, r: int, projections: int = 4) -> float:
        """Adapter parameters of rank r on `projections` square-ish hidden x hidden matrices per layer
        (q, k, v, o), as models/lora.py's defaults."""
        return self.layers * projections * r * 2 * self.hidden


# Shapes of the models the docs size (the tiny one and SmolLM2 are the tested ones).
SHAPES = {
    "tiny": Shape(params=0.94e6, layers=4, hidden=128, intermediate=512, vocab=1024, kv_width=128),
    "smollm2-135m": Shape(134.5e6, 30, 576, 1536, 49152, 192),
    "llama-7b": Shape(6.74e9, 32, 4096, 11008, 32000, 4096),
    "llama3-8b": Shape(8.03e9, 32, 4096, 14336, 128256, 1024),
}


@dataclass(frozen=True)
class Run:
    """One process of a stage. Rows and tokens are per process (train.batch_size, rollout rows)."""

    stage: str
    """sft, rm, dpo, ppo (any online method: ppo/grpo/rloo/reinforce-pp)."""
    shape: Shape
    rows: int
    """Sequences in one forward (DPO: pairs x 2; PPO: the minibatch's rows)."""
    tokens: int
    """Tokens per sequence (prompt + completion)."""
    lora_r: int = 0
    """0: full fine-tuning."""
    weight_bytes: int = 4
    """4 float32, 2 bfloat16 (model.dtype). train.mixed_precision=bf16 keeps float32 weights."""
    activation_bytes: int = 4
    """2 under train.mixed_precision=bf16 autocast."""
    gradient_checkpointing: bool = False
    shards: int = 1
    """FSDP processes sharding weights, gradients and optimizer states (1: DDP or one process)."""
    response: int = 0
    """PPO: response tokens per row (the scored positions)."""
    rollout_rows: int = 0
    """PPO: rows sampled per process in one generate call (b x G)."""
    critic: str = "head"
    """PPO: `head` (value head on the policy), `reward_model` (a full trainable copy), `none`."""
    reward_model: bool = True
    """PPO: a reward model (the same shape) held beside the policy; False for f(samples) rewards."""


def weights(run: Run) -> float:
    """Every copy of the weights a process holds. FSDP shards what accelerate prepared (the policy and
    a trained critic); the frozen reference copy and the reward model stay whole on every process."""
    s, w = run.shape, run.weight_bytes
    sharded, whole = 1.0, 0.0
    if run.stage in ("ppo", "dpo") and not run.lora_r:
        whole += 1  # a frozen reference copy (LoRA: the base with the adapter off, no copy)
    if run.stage == "ppo" and run.reward_model:
        whole += 1  # the reward model
    if run.stage == "ppo" and run.critic == "reward_model":
        sharded += 1  # the critic initialised from it, trained
    return (sharded / run.shards + whole) * s.params * w


def trainable(run: Run) -> float:
    s = run.shape
    policy = s.lora_params(run.lora_r) if run.lora_r else s.params
    critic = s.params if run.stage == "ppo" and run.critic == "reward_model" else 0.0
    return policy + critic


def gradients_and_adam(run: Run) -> float:
    """float32 gradient + AdamW's two float32 moments per trainable parameter: 12 bytes."""
    return 12 * trainable(run) / run.shards


def activations(run: Run) -> float:
    """What the forward keeps for the backward: per token and layer about 6h + 4i values (norm inputs,
    q/k/v/o, the MLP's intermediate tensors; attention scores are not kept by SDPA). With gradient
    checkpointing only each layer's input is kept, plus one layer's full set while it is recomputed."""
    s, tokens = run.shape, run.rows * run.tokens
    per_layer = (6 * s.hidden + 4 * s.intermediate) * tokens * run.activation_bytes
    if run.gradient_checkpointing:
        return s.layers * s.hidden * tokens * run.activation_bytes + per_layer
    forwards = 2 if run.stage == "ppo" and run.critic == "reward_model" else 1
    return forwards * s.layers * per_layer


def logits(run: Run) -> float:
    """float32 logits and their log-softmax and gradient (3 copies) at the positions that are scored:
    every position for sft/dpo, the last for rm, the response for ppo, which also keeps the rollout's
    and the reference's response logits for the exact KL (2 more)."""
    s = run.shape
    if run.stage == "rm":
        return 0.0
    positions = run.response if run.stage == "ppo" else run.tokens
    kept = 5 if run.stage == "ppo" else 3
    return kept * run.rows * positions * s.vocab * 4


def kv_cache(run: Run) -> float:
    """PPO's sampling: keys and values of every layer for every sampled row and token."""
    if run.stage != "ppo":
        return 0.0
    s = run.shape
    return 2 * s.layers * s.kv_width * run.rollout_rows * run.tokens * run.activation_bytes


def sharded_layer(run: Run) -> float:
    """FSDP gathers one layer's full weights at a time (two with prefetch)."""
    if run.shards == 1:
        return 0.0
    return 2 * run.shape.params / run.shape.layers * run.weight_bytes


def estimate(run: Run) -> dict[str, float]:
    """Bytes by part, and their total."""
    parts = {
        "weights": weights(run),
        "gradients_adam": gradients_and_adam(run),
        "activations": activations(run),
        "logits": logits(run),
        "kv_cache": kv_cache(run),
        "sharded_layer": sharded_layer(run),
    }
    parts["total"] = sum(parts.values())
    return parts


def fits(run: Run, budget: float = 80 * GB, margin: float = 0.9) -> bool:
    """Whether `run` fits `budget` bytes leaving (1 - margin) for the allocator and the runtime."""
    return estimate(run)["total"] <= budget * margin


def with_shards(run: Run, shards: int) -> Run:
    return replace(run, shards=shards)
