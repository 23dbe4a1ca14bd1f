"""Several LoRA adapters on one copy of the base weights (design §6.9).

A LoRA policy's peft model can hold more named adapters than its own ("default", the trainable one):
a LoRA reward model trained on the same base (an rm stage's final/adapter/) becomes a frozen adapter
"reward" beside it, and a critic initialised from that RM a trainable adapter "critic". Each is a
trunk adapter plus a scalar head, a small Linear of its own (`AdapterHead`). A pass switches to its
adapter and back; the reference is every adapter off. So the policy, its reference, the reward model
and the critic hold one copy of the base weights instead of up to four.

peft's own switches change more than which adapter runs: `set_adapter` makes the adapter it turns on
trainable and every other one frozen, and leaving `disable_adapter` does the same for the active one.
Beside a frozen reward adapter and a trainable critic that would silently freeze the critic (or let
the RM train), so `adapter_on` and `adapters_off` put every parameter's requires_grad back.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from rlhfkit.errors import ModelError
from rlhfkit.models.prefix import cache_name
from rlhfkit.models.reward import SavedAdapter

REWARD_ADAPTER = "reward"
CRITIC_ADAPTER = "critic"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEAD_KEY = re.compile(r"(^|\.)score\.(weight|bias)$")
"""A decoder classifier's scalar head in a peft SEQ_CLS adapter file (`base_model.model.score.weight`)."""


@contextlib.contextmanager
def requires_grad_kept(module: torch.nn.Module) -> Iterator[None]:
    """Every parameter of `module` leaves the block with the requires_grad it entered with."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


@contextlib.contextmanager
def adapter_on(peft_model, name: str) -> Iterator[None]:
    """Only adapter `name` runs inside the block, then the active one again; no parameter changes
    requires_grad (peft's set_adapter would)."""
    previous = peft_model.active_adapter
    if name == previous:
        yield
        return
    with requires_grad_kept(peft_model):
        peft_model.set_adapter(name)
    try:
        yield
    finally:
        with requires_grad_kept(peft_model):
            peft_model.set_adapter(previous)


@contextlib.contextmanager
def adapters_off(peft_model) -> Iterator[None]:
    """The base model alone inside the block (every adapter off: the reference); requires_grad as before
    afterwards (leaving peft's disable_adapter would freeze every adapter but the active one)."""
    with requires_grad_kept(peft_model), peft_model.disable_adapter():
        yield


def _mergeable_layers(peft_model) -> list | None:
    """The LoRA Linear layers of the active adapter, or None when a merged weight could not stand in
    for them: DoRA, LoRA biases, other layer types, modules_to_save copies, an adapter already merged
    in place, or FSDP-managed parameters (FSDP swaps their storage itself)."""
    from peft.tuners.lora import Linear, LoraLayer
    from peft.utils import ModulesToSaveWrapper
    from torch.distributed.fsdp import FSDPModule

    name = getattr(peft_model, "active_adapter", None)
    layers = []
    for module in peft_model.modules():
        if isinstance(module, (ModulesToSaveWrapper, FSDPModule)):
            return None
        if isinstance(module, LoraLayer) and name in module.lora_A:
            plain = isinstance(module, Linear) and not module.merged
            if not plain or module.use_dora.get(name) or getattr(module, "lora_bias", {}).get(name):
                return None
            layers.append(module)
    return layers or None


def _merged_weight(layer, name: str) -> torch.Tensor:
    """W + s·BA as a new tensor in W's layout (GPT-2's Conv1D stores W transposed: W + s·AᵀBᵀ)."""
    weight, scale = layer.get_base_layer().weight, layer.scaling[name]
    a, b = layer.lora_A[name].weight.to(weight.dtype), layer.lora_B[name].weight.to(weight.dtype)
    if layer.fan_in_fan_out:
        return torch.addmm(weight, a.t(), b.t(), alpha=scale)
    return torch.addmm(weight, b, a, alpha=scale)


@contextlib.contextmanager
def adapter_merged(peft_model) -> Iterator[bool]:
    """Inside the block the active adapter runs folded into the base weights (W + s·BA: one matmul per
    adapted layer instead of three, design §6.1) and the block gets True; for a model it cannot
    merge (`_mergeable_layers`) nothing changes and it gets False. The merged weights are new tensors
    swapped into the base parameters, never written into them: leaving the block puts the very same
    tensors back, bit-identical. (peft's merge_adapter/unmerge_adapter would leave W + BA - BA, which
    is not W: the reference, adapters off, would drift and an exact resume would break.) No grad."""
    layers = _mergeable_layers(peft_model) if hasattr(peft_model, "disable_adapter") else None
    if layers is None:
        yield False
        return
    name, swapped = peft_model.active_adapter, []
    try:
        with torch.no_grad():
            for layer in layers:
                weight = layer.get_base_layer().weight
                merged = _merged_weight(layer, name)
                swapped.append((weight, weight.data))
                weight.data = merged
        with adapters_off(peft_model):  # the base layers now hold the merged weights
            yield True
    finally:
        for weight, original in swapped:
            weight.data = original


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(training)


def adapter_parameters(peft_model, name: str) -> list[torch.nn.Parameter]:
    """The parameters of adapter `name` alone, found from peft's layers (not by matching names)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    params = []
    for module in peft_model.modules():
        if isinstance(module, BaseTunerLayer):
            for layer_name in module.adapter_layer_names:
                layers = getattr(module, layer_name)
                if name in layers:
                    part = layers[name]
                    params += [part] if isinstance(part, torch.nn.Parameter) else list(part.parameters())
    return params


def trunk(peft_model) -> torch.nn.Module:
    """The transformer under the LM head (GPT-2's `transformer`, Llama's `model`), adapters inside it:
    its last_hidden_state is after the final norm, the input a classifier's `score` head reads."""
    return peft_model.get_base_model().base_model


def has_score_head(folder: Path) -> bool:
    with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as f:
        return any(HEAD_KEY.search(key) for key in f.keys())


class AdapterHead(torch.nn.Module):
    """A decoder sequence classifier made of adapter `adapter` on a peft model's trunk and a scalar head
    `score` of its own. Called as transformers' classifier is by rewards_at_last_token and
    rollout.critic_values (they read `hidden_states[-1]` and apply `score`), it runs the trunk with only
    its adapter on. The peft model is not a submodule: its weights are the policy's, so this module's
    own parameters are the head alone. A frozen head (the RM) scores in eval mode, as the merged RM does."""

    def __init__(self, peft_model, adapter: str, score: torch.nn.Linear, config: dict, trainable: bool):
        super().__init__()
        self.score = score
        self.adapter = adapter
        self.trainable = trainable
        self.adapter_config = config
        """The SEQ_CLS adapter config it was loaded with, for `saved`."""
        self._peft = (peft_model,)  # a tuple: not registered as a submodule

    @property
    def peft_model(self):
        return self._peft[0]

    def forward(self, input_ids, attention_mask, position_ids=None, use_cache=False, **extra):
        """The trunk's final hidden states; with use_cache, also its KV cache (given back and taken as
        the trunk's, so models/prefix.py can run a shared prompt once)."""
        from transformers.modeling_outputs import BaseModelOutputWithPast

        name = cache_name()
        mode = contextlib.nullcontext() if self.trainable else eval_mode(self.peft_model)
        with mode, adapter_on(self.peft_model, self.adapter):
            out = trunk(self.peft_model)(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                **{name: extra.get(name)},
            )
        hidden = out.last_hidden_state
        return BaseModelOutputWithPast(
            last_hidden_state=hidden, hidden_states=(hidden,), **{name: getattr(out, name)}
        )

    def saved(self, base: tuple[str, dict]) -> SavedAdapter:
        """This adapter and head as a peft SEQ_CLS adapter folder (the rm stage's final/adapter/ format),
        one level below the final/ that `base` (models.load.base_reference) was made for."""
        from peft import get_peft_model_state_dict

        weights = get_peft_model_state_dict(self.peft_model, adapter_name=self.adapter)
        weights = {k: v.detach().clone() for k, v in weights.items()}
        weights.update(
            {f"base_model.model.score.{k}": v.detach().clone() for k, v in self.score.state_dict().items()}
        )
        return SavedAdapter.made(weights, dict(self.adapter_config), base, depth=1)


def add_scored_adapter(peft_model, name: str, folder: Path, trainable: bool) -> AdapterHead:
    """Adapter `name` on `peft_model` from a peft SEQ_CLS LoRA folder trained on the same base, with its
    scalar head; trainable (the critic) or frozen (the reward). The peft model's active adapter and
    every existing parameter's requires_grad stay as they were."""
    from peft import LoraConfig, set_peft_model_state_dict

    weights = load_file(folder / ADAPTER_WEIGHTS)
    head = {m.group(2): v for k, v in weights.items() if (m := HEAD_KEY.search(k))}
    lora = {k: v for k, v in weights.items() if not HEAD_KEY.search(k)}
    saved_config = json.loads((folder / "adapter_config.json").read_text())
    config = LoraConfig.from_pretrained(str(folder))
    config.task_type = peft_model.peft_config[peft_model.active_adapter].task_type
    config.modules_to_save = None  # the head is a Linear of its own, not a wrapped module of the LM
    config.lora_dropout = 0.0  # PPO's passes must be deterministic (design §6.2); the RM scores in eval
    config.inference_mode = not trainable
    with requires_grad_kept(peft_model):
        peft_model.add_adapter(name, config)
    loaded = set_peft_model_state_dict(peft_model, lora, adapter_name=name)
    missing = [k for k in loaded.missing_keys if f".{name}." in k]
    if loaded.unexpected_keys or missing or "weight" not in head:
        example = (loaded.unexpected_keys or missing or ["score.weight"])[0]
        raise ModelError(f"{folder}: the adapter does not fit the policy's base model (e.g. {example})")
    for param in adapter_parameters(peft_model, name):
        param.requires_grad_(trainable)
    dtype = peft_model.get_base_model().dtype
    score = torch.nn.Linear(head["weight"].shape[1], 1, bias="bias" in head, dtype=dtype)
    score.load_state_dict({k: v.to(dtype) for k, v in head.items()})
    score.requires_grad_(trainable)
    return AdapterHead(peft_model, name, score, saved_config, trainable)
