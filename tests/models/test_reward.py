"""Decoder reward models are read at each row's last attended token, found from the attention mask:
not where transformers' pooling looks (the rightmost token that is not the pad id)."""

import copy

import pytest
import torch

from rlhfkit.models.reward import rewards_at_last_token

PAD, EOS = 3, 0  # a tokenizer whose pad differs from EOS (transformers then pools by the pad id)
# The first row's last real token is the pad id, as a response can end with that token.
ROWS = [[5, 6, 7, PAD], [8, 9], [10, 11, 12, 13, 14, 15]]


def tiny_rm(kind: str):
    """A random two-layer sequence classifier (num_labels=1) of the given architecture, in eval mode."""
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=32,
            n_embd=16,
            n_layer=2,
            n_head=2,
            num_labels=1,
            pad_token_id=PAD,
            bos_token_id=EOS,
            eos_token_id=EOS,
        )
        model = GPT2ForSequenceClassification(config)
    else:
        config = LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            num_labels=1,
            pad_token_id=PAD,
            bos_token_id=EOS,
            eos_token_id=EOS,
        )
        model = LlamaForSequenceClassification(config)
    return model.eval()


def padded(rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    filler = [[PAD] * (width - len(r)) for r in rows]
    ids = [f + r if left else r + f for r, f in zip(rows, filler)]
    mask = [
        [0] * len(f) + [1] * len(r) if left else [1] * len(r) + [0] * len(f) for r, f in zip(rows, filler)
    ]
    return torch.tensor(ids), torch.tensor(mask)


@torch.no_grad()
def read_alone(model, row: list[int]) -> float:
    """The head on the trunk's last position of the row alone, unpadded: the reward by definition."""
    hidden = model.base_model(input_ids=torch.tensor([row])).last_hidden_state  # (1, T, H)
    return model.score(hidden[0, -1]).item()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_hidden_states_last_is_after_the_final_norm_as_the_head_expects(kind):
    # Reading the head off hidden_states[-1] (here and in rollout/ppo.py critic_values) is right only
    # if that state is after the final norm: then an unpadded row scores as the model's own logits.
    model = tiny_rm(kind)
    ids = torch.tensor([ROWS[2]])
    with torch.no_grad():
        own = model(input_ids=ids).logits.squeeze(-1)
        ours = rewards_at_last_token(model, ids, torch.ones_like(ids))
    assert torch.allclose(ours, own, atol=1e-6)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("left", [False, True])
def test_reward_is_read_where_the_mask_ends_even_when_the_last_token_is_the_pad_id(kind, left):
    model = tiny_rm(kind)
    ids, mask = padded(ROWS, left)
    expected = torch.tensor([read_alone(model, row) for row in ROWS])
    with torch.no_grad():
        ours = rewards_at_last_token(model, ids, mask)
        pooled_by_pad_id = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    assert torch.allclose(ours, expected, atol=1e-5)
    # transformers' pooling reads row 0 at its token 7, one before the end: a different reward.
    assert abs(pooled_by_pad_id[0] - expected[0]) > 1e-3


def test_lora_wrapped_rm_reads_its_trained_head_at_the_mask_end():
    from rlhfkit.models.lora import add_lora

    model = add_lora(tiny_rm("gpt2"), r=4, alpha=8, dropout=0.0, target_modules=None, task_type="SEQ_CLS")
    model.eval()
    torch.manual_seed(1)
    # A trained adapter and head: LoRA B starts at zero and the head's trainable copy equals the base's.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(0.5 * torch.randn_like(parameter))
    merged = copy.deepcopy(model).merge_and_unload().eval()
    ids, mask = padded(ROWS, left=False)
    with torch.no_grad():
        ours = rewards_at_last_token(model, ids, mask)
    assert torch.allclose(ours, torch.tensor([read_alone(merged, row) for row in ROWS]), atol=1e-5)
    assert not torch.allclose(ours, rewards_at_last_token(tiny_rm("gpt2"), ids, mask), atol=1e-3)
