"""Reward model: the SFT model's trunk with a scalar head, as AutoModelForSequenceClassification.

Built from the causal LM (a LoRA SFT adapter is merged first) so the RM starts from the policy's
own representation, as in InstructGPT. The reward is read at each row's last attended token (inputs
end with the response's last real token, no EOS), found from the attention mask: transformers' own
pooling reads the rightmost token that is not the pad id, which is an earlier token whenever a
response's last real token is the pad id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from rlhfkit.config import ModelConfig
from rlhfkit.errors import ModelError
from rlhfkit.models.load import (
    BASE_RECORD,
    LOAD_ERRORS,
    load_causal_lm,
    load_error,
    load_tokenizer,
    resolve_model_path,
)
from rlhfkit.models.lora import add_lora
from rlhfkit.models.prefix import PromptCache, SharedPrompts, continuation_hidden


def reward_model_from_causal_lm(cfg: ModelConfig, trainable: bool = True):
    """(sequence-classification model with num_labels=1, tokenizer)."""
    from transformers import AutoModelForSequenceClassification

    causal, tokenizer = load_causal_lm(ModelConfig(**{**vars(cfg), "lora": False}), trainable=False)
    config = causal.config
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    # Built on the meta device and given the causal LM's own tensors (assign=True): no second,
    # randomly initialised copy of the model exists at any moment, so loading costs one model's memory.
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config, dtype=causal.dtype)
    missing, unexpected = model.load_state_dict(causal.state_dict(), strict=False, assign=True)
    # Only the new head may be missing; only the LM head may be left over.
    if any("score" not in k and "classifier" not in k for k in missing):
        raise ValueError(f"reward model is missing trunk weights, e.g. {missing[0]}")
    head = model.score
    # Zero init: reward 0 for every input, no arbitrary initial preference.
    model.score = torch.nn.Linear(head.in_features, 1, bias=head.bias is not None, dtype=causal.dtype)
    torch.nn.init.zeros_(model.score.weight)
    if model.score.bias is not None:
        torch.nn.init.zeros_(model.score.bias)
    _fill_meta_buffers(model, causal)
    model.requires_grad_(True)
    if trainable and cfg.lora:
        model = add_lora(
            model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules, "SEQ_CLS"
        )
    elif not trainable:
        model.requires_grad_(False)
    return model, tokenizer


def _fill_meta_buffers(model: torch.nn.Module, causal: torch.nn.Module) -> None:
    """Buffers outside the state dict (rotary frequencies) are still on the meta device: take the causal
    LM's, which sit at the same names under the shared trunk."""
    source = dict(causal.named_buffers())
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:
            if name not in source:
                raise ValueError(f"reward model buffer {name} has no counterpart in the causal LM")
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = source[name]


RM_ADAPTER = "adapter"
"""final/adapter/ of a LoRA rm stage: its adapter and head on the model it was trained on, besides the
merged model in final/, so that a LoRA policy on the same base can score with this adapter on its own
base instead of loading a second copy of it (design §6.9)."""


@dataclass
class SavedAdapter:
    """A LoRA adapter with its scalar head as a peft SEQ_CLS adapter folder: `save_pretrained` writes
    adapter_config.json, adapter_model.safetensors (LoRA weights + `score`) and BASE_RECORD, so
    `PeftModel.from_pretrained(<base as a sequence classifier>, folder)` gives the reward model."""

    weights: dict[str, torch.Tensor]
    config: dict
    record: dict

    @classmethod
    def of(cls, peft_model, base: tuple[str, dict], depth: int = 1) -> SavedAdapter:
        """The active adapter of a peft sequence classifier; `base` is (peft's field, rlhfkit's
        record) for final/ (models.load.base_reference), and the folder sits `depth` levels below it."""
        from peft import get_peft_model_state_dict

        name = peft_model.active_adapter
        state = get_peft_model_state_dict(peft_model, adapter_name=name)
        weights = {k: v.detach().clone() for k, v in state.items()}
        config = peft_model.peft_config[name].to_dict()
        config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
        return cls.made(weights, config, base, depth)

    @classmethod
    def made(cls, weights: dict, config: dict, base: tuple[str, dict], depth: int = 1) -> SavedAdapter:
        """From the adapter file's weights and config, naming `base` as `of` does."""
        peft_base, record = base
        config = {**config, "base_model_name_or_path": peft_base}
        # A record relative to final/ (a base in the same run folder) is one level further up from here.
        if record["base"].startswith("."):
            record = {**record, "base": str(Path(*[".."] * depth, record["base"]))}
        return cls(weights, config, record)

    def state_dict(self, keep_vars: bool = False) -> dict[str, torch.Tensor]:
        """As a module's (sharding.full_state_dict passes keep_vars)."""
        return self.weights

    def save_pretrained(
        self, folder, safe_serialization: bool = True, state_dict: dict | None = None
    ) -> None:
        """As a model's save_pretrained (trainers/final.py saves extra models so); `state_dict`: the
        weights as whole tensors when the run is sharded (sharding.full_state_dict of this object)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = self.weights if state_dict is None else state_dict
        save_file({k: v.contiguous() for k, v in weights.items()}, folder / "adapter_model.safetensors")
        (folder / "adapter_config.json").write_text(json.dumps(self.config, indent=2))
        (folder / BASE_RECORD).write_text(json.dumps(self.record, indent=1))


def rewards_at_last_token(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra
) -> torch.Tensor:
    """(B,) scalar rewards read at each row's last attended position (right- or left-padded rows).

    A decoder RM (a `score` head: GPT-2, Llama, ..., LoRA-wrapped or DDP-wrapped too) runs with
    position ids counted over attended tokens and its head is applied to the final hidden state at
    that position. An encoder RM (BERT-like; `extra` e.g. its token_type_ids) keeps its own pooling
    of the first token. Under FSDP2 the head, applied after the forward, belongs to the root unit,
    which stays gathered after forward (trainers/sharding.py: full_weights keeps it so).
    """
    head = score_head(model)
    if head is None:
        return model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits.squeeze(-1).float()
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T): a left-padded row starts at 0
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        output_hidden_states=True,
        **extra,
    )
    # hidden_states[-1] is after the final norm (GPT-2's ln_f, Llama's norm), the input the head is
    # trained on (tests/models/test_reward.py checks it against the model's own logits).
    hidden = out.hidden_states[-1][torch.arange(input_ids.shape[0]), last_attended(attention_mask)]  # (B, H)
    return head(hidden).squeeze(-1).float()


def shared_prompt_rewards(model, batch: SharedPrompts) -> torch.Tensor:
    """(N,) rewards_at_last_token of each row prompt + continuation, with each distinct prompt computed
    once (models/prefix.py, design §3.5): a pair's chosen and rejected, a prompt's k samples. The head
    reads the hidden state at the row's last token (the prompt's last for an empty continuation). An
    encoder RM pools its own first token and reads the whole rows."""
    head = score_head(model)
    if head is None:
        return rewards_at_last_token(model, *batch.full())
    return _head_at_last(head, continuation_hidden(model, batch), batch)


def kept_prompt_rewards(kept: PromptCache, sequences: list[list[int]]) -> torch.Tensor | None:
    """(N,) rewards_at_last_token of whole rows that continue prompts kept in `kept` (a PromptCache of
    this RM's hidden states): no prompt runs again. None when a row starts with no kept prompt."""
    batch = kept.split(sequences)
    if batch is None:
        return None
    return _head_at_last(score_head(kept.model), kept.hidden(batch), batch)


def _head_at_last(head, hidden: torch.Tensor, batch: SharedPrompts) -> torch.Tensor:
    """(N,) the score head at each row's last token: `hidden` (N, Tc + 1, H) holds the prompt's last
    position at 0, so a row's last token sits at its continuation length."""
    last = hidden[torch.arange(hidden.shape[0]), batch.mask.sum(-1)]  # (N, H)
    return head(last).squeeze(-1).float()


def last_attended(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last attended position (0 for a row with none)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * (attention_mask != 0)).argmax(-1)


def score_head(model):
    """The scalar head of a decoder RM, or None for an encoder RM (its head reads a pooled first token).
    Looks through DDP (`.module`) and peft, whose SEQ_CLS wrapper resolves `score` to the trained copy."""
    return getattr(getattr(model, "module", model), "score", None)


def load_reward_model(location: str, trust_remote_code: bool = False):
    """A saved reward model (final/ of an rm stage), frozen, for scoring."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(location)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as e:
        raise ModelError(f"{location}: cannot load reward model ({load_error(e, path)})") from None
    model.requires_grad_(False).eval()
    return model, load_tokenizer(path, trust_remote_code)
