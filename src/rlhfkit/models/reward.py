"""Reward model: the SFT model's trunk with a scalar head, as AutoModelForSequenceClassification.

Built from the causal LM (a LoRA SFT adapter is merged first) so the RM starts from the policy's
own representation, as in InstructGPT. The reward is read at the last attended token; inputs end
with the response's last real token (no EOS), so transformers' own pooling ("rightmost token that
is not pad") picks the same position even where pad == eos.
"""

from __future__ import annotations

import torch

from rlhfkit.config import ModelConfig
from rlhfkit.errors import ModelError
from rlhfkit.models.load import LOAD_ERRORS, load_causal_lm, load_error, load_tokenizer, resolve_model_path
from rlhfkit.models.lora import add_lora


def reward_model_from_causal_lm(cfg: ModelConfig, trainable: bool = True):
    """(sequence-classification model with num_labels=1, tokenizer)."""
    from transformers import AutoModelForSequenceClassification

    causal, tokenizer = load_causal_lm(ModelConfig(**{**vars(cfg), "lora": False}), trainable=False)
    config = causal.config
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForSequenceClassification.from_config(config, dtype=causal.dtype)
    missing, unexpected = model.load_state_dict(causal.state_dict(), strict=False)
    # Only the new head may be missing; only the LM head may be left over.
    if any("score" not in k and "classifier" not in k for k in missing):
        raise ValueError(f"reward model is missing trunk weights, e.g. {missing[0]}")
    with torch.no_grad():
        model.score.weight.zero_()  # start at reward 0 for every input: no arbitrary initial preference
    model.requires_grad_(True)
    if trainable and cfg.lora:
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules, "SEQ_CLS")
    elif not trainable:
        model.requires_grad_(False)
    return model, tokenizer


def rewards_at_last_token(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
    """(B,) scalar rewards read at position attention_mask.sum(-1) - 1 of right-padded inputs
    (`extra`: e.g. token_type_ids of an encoder RM, whose own pooling reads the first token)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=False, **extra)
    return out.logits.squeeze(-1).float()  # HF pools at the rightmost non-pad token (see module doc)


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
