"""Decoder reward models are read at each row's last attended token, found from the attention mask:
not where transformers' pooling looks (the rightmost token that is not the pad id)."""

import copy
from pathlib import Path

import pytest
import torch

from rlhfkit.config import ModelConfig
from rlhfkit.data.preferences import collate_pairs, load_preference_pairs, tokenize_pairs
from rlhfkit.models.prefix import SharedPrompts
from rlhfkit.models.reward import (
    reward_model_from_causal_lm,
    rewards_at_last_token,
    shared_prompt_rewards,
)
from rlhfkit.ops import bradley_terry_loss

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


def fixture_pairs(tokenizer):
    """The preference fixture tokenised as the rm and dpo stages tokenise it (prompts of ~10 tokens)."""
    source = str(Path(__file__).parents[1] / "fixtures" / "prefs.jsonl")
    return tokenize_pairs(load_preference_pairs(source).pairs, tokenizer, source, 128, "drop")


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_shared_prompt_rewards_equal_the_plain_rows(kind):
    # Rows that share a prompt (here: the first three), one ending in the pad id, one empty.
    model = tiny_rm(kind)
    prompt, rows = [5, 6, 7], [[8, 9, PAD], [10], [], [11, 12, 13, 14]]
    whole = [prompt + r for r in rows[:3]] + [[15, 16] + rows[3]]
    batch = SharedPrompts.split(whole, [3, 3, 3, 2], pad_token_id=PAD)
    assert batch.prompt_ids.shape[0] == 2
    with torch.no_grad():
        ours = shared_prompt_rewards(model, batch)
    assert torch.allclose(ours, torch.tensor([read_alone(model, row) for row in whole]), atol=1e-5)


def test_rm_step_on_shared_prompts_equals_the_plain_batch(tiny_dir):
    # The rm stage's loss, accuracy and gradients (LoRA and head) from one prompt pass per pair are
    # today's from whole rows (collate_pairs + rewards_at_last_token), up to float rounding.
    model, tokenizer = reward_model_from_causal_lm(ModelConfig(name="tiny", lora=True, lora_r=4))
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a trained adapter and head: both start at zero
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "score" in name:
                parameter.normal_(0, 0.1)
    pairs = fixture_pairs(tokenizer)
    ids = list(range(len(pairs)))

    def step(rewards):
        model.zero_grad()
        loss, stats = bradley_terry_loss(rewards[: len(ids)], rewards[len(ids) :])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.item(), stats["accuracy"].item(), grads

    plain = collate_pairs(pairs.chosen_ids, pairs.rejected_ids, tokenizer.pad_token_id)
    loss, accuracy, grads = step(rewards_at_last_token(model, plain["input_ids"], plain["attention_mask"]))
    batch = SharedPrompts.split(*pairs.pair_rows(ids), tokenizer.pad_token_id)
    assert batch.prompt_ids.shape[0] == len(pairs)  # one prompt pass per pair
    shared_loss, shared_accuracy, shared_grads = step(shared_prompt_rewards(model, batch))
    assert abs(shared_loss - loss) < 1e-6 and shared_accuracy == accuracy
    assert shared_grads.keys() == grads.keys() and any("lora_A" in n for n in grads)
    for name, grad in grads.items():
        assert (shared_grads[name] - grad).abs().max() <= 1e-5 * max(1.0, grad.abs().max().item()), name
