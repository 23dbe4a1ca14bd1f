"""Shared prompts (models/prefix.py) give what the plain forward over whole rows gives: the same
logits and hidden states at every continuation position, and the same gradients, within fp32
rounding, on GPT-2 and Llama, with and without LoRA, with prompts of different lengths."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhfkit.models.lora import add_lora
from rlhfkit.models.prefix import (
    SharedPrompts,
    continuation_hidden,
    continuation_logits,
    continuation_pass,
    prompt_pass,
)
from tests.data.tiny_models import tiny_llama

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
# Rows name their prompt: prompt 0 is shared by three rows (one of them empty), prompt 2 by two.
ROWS = [0, 1, 0, 2, 0, 2]
CONTINUATIONS = [[20, 21, 22], [23], [24, 25, 26, 27, 28], [29, 30], [], [31]]
TOL = 1e-5


@pytest.fixture(scope="module", params=["gpt2", "llama", "gpt2-lora", "llama-lora"])
def model(request, tiny_dir):
    arch, _, lora = request.param.partition("-")
    built = AutoModelForCausalLM.from_pretrained(tiny_dir) if arch == "gpt2" else tiny_llama(64)
    if lora:
        built = add_lora(built, 4, 8, 0.0, None, "CAUSAL_LM")
        with torch.no_grad():  # peft starts B at 0 (LoRA a no-op, A without gradient): make it count
            for name, p in built.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    return built.eval()


def batch() -> SharedPrompts:
    return SharedPrompts.of(PROMPTS, ROWS, CONTINUATIONS, pad_token_id=0)


def plain(model, hidden: bool):
    """The whole rows, prompt + continuation right-padded, through the plain forward (today's batches),
    read where the shared pass reads: from each prompt's last token on."""
    input_ids, attention_mask = batch().full()
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden)
    values = out.hidden_states[-1] if hidden else out.logits
    reads = []
    for row, (r, c) in enumerate(zip(ROWS, CONTINUATIONS)):
        start = len(PROMPTS[r]) - 1
        reads.append(values[row, start : start + len(c) + hidden])  # logits: len(c); hidden: one more
    return reads


def shared(model, hidden: bool):
    values = continuation_hidden(model, batch()) if hidden else continuation_logits(model, batch())
    return [values[row, : len(c) + hidden] for row, c in enumerate(CONTINUATIONS)]


def test_rows_are_built_as_the_plain_batches_are():
    input_ids, attention_mask = batch().full()
    for row, (r, c) in enumerate(zip(ROWS, CONTINUATIONS)):
        n = len(PROMPTS[r]) + len(c)
        assert input_ids[row, :n].tolist() == PROMPTS[r] + c
        assert attention_mask[row].tolist() == [1] * n + [0] * (input_ids.shape[1] - n)
    whole = [PROMPTS[r] + c for r, c in zip(ROWS, CONTINUATIONS)]
    split = SharedPrompts.split(whole, [len(PROMPTS[r]) for r in ROWS], pad_token_id=0)
    assert split.prompt_ids.shape[0] == 3  # identical prompt ids are one prompt
    assert torch.equal(split.full()[0], input_ids)


@pytest.mark.parametrize("hidden", [False, True], ids=["logits", "hidden"])
def test_outputs_equal_the_plain_forward(model, hidden):
    with torch.no_grad():
        for ours, theirs in zip(shared(model, hidden), plain(model, hidden)):
            assert ours.shape == theirs.shape
            torch.testing.assert_close(ours, theirs.float(), atol=TOL, rtol=0)


@pytest.mark.parametrize("hidden", [False, True], ids=["logits", "hidden"])
def test_gradients_equal_the_plain_forward(model, hidden):
    # One weight per read value, so every position and row is in the loss.
    torch.manual_seed(1)
    weights = [torch.randn(v.shape) for v in plain(model, hidden)]

    def grads(reads) -> dict[str, torch.Tensor]:
        model.zero_grad()
        sum((v.float() * w).sum() for v, w in zip(reads, weights)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ours, theirs = grads(shared(model, hidden)), grads(plain(model, hidden))
    assert ours.keys() == theirs.keys() and len(ours) > 0
    for name in theirs:
        # Relative to the tensor's largest entry: a full model's gradients reach ~100 (LoRA's ~1), and
        # an entry that sums many terms (a tied embedding's) is rounded at that scale, not its own.
        scale = max(1.0, theirs[name].abs().max().item())
        assert (ours[name] - theirs[name]).abs().max().item() <= TOL * scale, name


def test_a_prompt_cache_serves_two_continuation_passes_unchanged(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    b = batch()
    with torch.no_grad():
        _, cache = prompt_pass(model, b, hidden=False)
        before = [k.clone() for k, _, _ in cache]
        first = continuation_pass(model, b, cache, hidden=False).logits
        second = continuation_pass(model, b, cache, hidden=False).logits
    assert all(torch.equal(k, kept) for (k, _, _), kept in zip(cache, before))
    assert torch.equal(first, second)


def test_gradient_checkpointing_falls_back_to_the_plain_forward(tiny_dir):
    # A training forward under checkpointing keeps no cache; the plain rows give the same values.
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager")
    model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    expected = [v.detach() for v in shared(model.eval(), hidden=False)]
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    for ours, theirs in zip(shared(model, hidden=False), expected):
        torch.testing.assert_close(ours.detach(), theirs, atol=TOL, rtol=0)
