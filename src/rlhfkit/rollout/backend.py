"""The generation backend seam of the online loop (docs/scaling.md, design §7): what trainers/ppo.py
calls to get a rollout, so a separate inference engine (vLLM, SGLang) can sample without the loop
changing. The loop trusts a backend for the sampled tokens only:
- it pushes the current weights before each iteration's sampling (`load_weights`);
- it recomputes every log-prob itself (rollout/ppo.py: score) under the masks the update uses, so a
  backend's own log-probs are never used;
- its guards see any mismatch between the backend's sampling distribution and the trainer's: the
  first minibatch's ratio (exactly 1 when the update's forward equals the scoring pass) and the k1-vs-
  exact KL z statistic (k1 is unbiased only on samples from the scored distribution; a backend that
  samples from other weights, another precision or a warped distribution moves it, design §6.1).

`InProcessSampler`, the trainer's own model with the KV cache, is the one implementation shipped; it
samples a LoRA policy with the adapter merged into temporary weights (rollout.ppo.sample_prompts)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

import torch

from rlhfkit.rollout.ppo import Rollout, sample_prompts


class RolloutBackend(Protocol):
    def load_weights(self, policy: torch.nn.Module) -> None:
        """Take the policy's current weights (called once per iteration, before `sample`). A backend with
        its own copy reads the full, LoRA-merged weights here (gathered first under FSDP)."""

    def sample(self, prompts: list[str], noise: torch.Tensor) -> Rollout:
        """One response per prompt (rendered text), token by token from softmax(logits / T) with the
        uniforms `noise` (rows, max_new_tokens), stopping a row at its first EOS."""


class InProcessSampler:
    """Samples with the trained module itself, so `load_weights` has nothing to copy. `gather` is entered
    around sampling on every process: under FSDP it gathers the sharded policy (trainers/sharding.py:
    full_weights), since processes sample different rows and stop after different numbers of steps."""

    def __init__(
        self,
        policy: torch.nn.Module,
        tokenizer,
        rollout,
        gather: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ):
        self.policy, self.tokenizer, self.cfg, self.gather = policy, tokenizer, rollout, gather

    def load_weights(self, policy: torch.nn.Module) -> None:
        if policy is not self.policy:
            raise ValueError("InProcessSampler samples with the module it was built with")

    def sample(self, prompts: list[str], noise: torch.Tensor) -> Rollout:
        r = self.cfg
        with self.gather():
            return sample_prompts(
                self.policy,
                self.tokenizer,
                prompts,
                r.max_new_tokens,
                r.temperature,
                top_k=r.top_k,
                repetition_penalty=r.repetition_penalty,
                noise=noise,
            )
