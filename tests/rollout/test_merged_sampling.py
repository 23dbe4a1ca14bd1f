"""A LoRA policy samples from its adapter merged into temporary weights (models.shared.adapter_merged,
design §6.1): the same distribution as the unmerged forward up to float rounding, and afterwards the
base weights are the very same tensors, bit-identical (the reference, adapters off, must not drift)."""

import pytest
import torch

from rlhfkit.config import ModelConfig
from rlhfkit.models import load_causal_lm
from rlhfkit.models.shared import adapter_merged, adapters_off
from rlhfkit.rollout.ppo import row_noise, sample_prompts

PROMPTS = ["Human: say something nice\n\nAssistant:", "Human: hi\n\nAssistant:", "Human: a\n\nAssistant:"]


@pytest.fixture
def lora_policy(tiny_dir):
    """The tiny GPT-2 (Conv1D: the transposed merge) with a LoRA adapter that changes its outputs."""
    model, tokenizer = load_causal_lm(ModelConfig(name=str(tiny_dir), lora=True, lora_r=4))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)  # B = 0 at init would make the merge a no-op
    return model.eval(), tokenizer


def snapshot(model) -> dict[str, tuple[torch.Tensor, int]]:
    return {name: (p.detach().clone(), p.data_ptr()) for name, p in model.named_parameters()}


def test_merged_sampling_leaves_every_weight_bit_identical(lora_policy):
    model, tokenizer = lora_policy
    before = snapshot(model)
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    sample_prompts(model, tokenizer, PROMPTS, 6, 1.0, noise=row_noise(0, range(3), 6))
    for name, param in model.named_parameters():
        value, pointer = before[name]
        assert torch.equal(param, value) and param.data_ptr() == pointer, name
        assert param.requires_grad == grads[name], name
    with pytest.raises(RuntimeError, match="inside"), adapter_merged(model):
        raise RuntimeError("inside")  # an error while merged still puts the base weights back
    assert all(torch.equal(p, before[name][0]) for name, p in model.named_parameters())


def test_merged_forward_matches_the_adapted_forward_and_the_adapter_is_on_again(lora_policy):
    model, tokenizer = lora_policy
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    with torch.no_grad():
        adapted = model(ids).logits
        with adapters_off(model):
            base = model(ids).logits
        with adapter_merged(model) as merged:
            folded = model(ids).logits
        after = model(ids).logits
    assert merged
    assert (adapted - base).abs().max() > 1e-2, "the adapter must change the outputs for this to test"
    torch.testing.assert_close(folded, adapted, atol=1e-5, rtol=0)
    assert torch.equal(after, adapted), "the adapter runs unmerged again after the block"


def test_merged_and_unmerged_sampling_draw_the_same_tokens(lora_policy):
    model, tokenizer = lora_policy
    noise = row_noise(1, range(3), 8)
    merged = sample_prompts(model, tokenizer, PROMPTS, 8, 1.0, noise=noise)
    unmerged = sample_prompts(model, tokenizer, PROMPTS, 8, 1.0, noise=noise, merge_lora=False)
    assert torch.equal(merged.response_ids, unmerged.response_ids)


def test_a_model_without_an_adapter_is_sampled_as_is(tiny_dir):
    model, _ = load_causal_lm(ModelConfig(name=str(tiny_dir), lora=False), trainable=False)
    with adapter_merged(model) as merged:
        assert not merged


def test_sampled_generate_is_the_rollout_sampler(lora_policy):
    # Pairs, the RM's normalisation samples and `rlhfkit generate` draw through rollout.generate, which
    # samples with PPO's sampler (merged adapter, last-position logits): the same tokens for the same
    # random numbers, each row cut after its first EOS, and the model's train/eval mode kept.
    from rlhfkit.rollout import generate

    model, tokenizer = lora_policy
    model.train()
    torch.manual_seed(3)
    out = generate(model, tokenizer, PROMPTS, 12, greedy=False, temperature=0.7, batch_size=2)
    assert model.training
    torch.manual_seed(3)
    first = sample_prompts(model, tokenizer, PROMPTS[:2], 12, 0.7)
    second = sample_prompts(model, tokenizer, PROMPTS[2:], 12, 0.7)
    expected = [
        ids[m.bool()].tolist() for r in (first, second) for ids, m in zip(r.response_ids, r.response_mask)
    ]
    assert out.token_ids == expected
    assert out.finished == [*first.finished.tolist(), *second.finished.tolist()]
    eos = tokenizer.eos_token_id
    for row, done in zip(out.token_ids, out.finished):
        assert (eos in row) == done and (not done or row.index(eos) == len(row) - 1)
        assert len(row) <= 12


@pytest.mark.parametrize("merge", [True, False])
def test_sampled_logprobs_are_the_scoring_passes(lora_policy, merge):
    # Evaluation's KL reads the sampling forward's log-probs instead of a second forward (design §6.1):
    # they must be score()'s (the unmerged full forward) up to float rounding, 0 after each row's EOS.
    from rlhfkit.rollout.ppo import score

    model, tokenizer = lora_policy
    rollout = sample_prompts(
        model, tokenizer, PROMPTS, 10, 0.8, noise=row_noise(1, range(3), 10), merge_lora=merge
    )
    scored = score(model, rollout, 0.8)["logprobs"] * rollout.response_mask
    assert rollout.sampled_logprobs.shape == rollout.response_ids.shape
    assert torch.allclose(rollout.sampled_logprobs, scored, atol=1e-5)
    assert (rollout.sampled_logprobs[rollout.response_mask == 0] == 0).all()
    assert torch.equal(rollout.rows([2, 0]).sampled_logprobs, rollout.sampled_logprobs[[2, 0]])
