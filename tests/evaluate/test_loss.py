"""The SFT loss with the LM head only from the batch's first target on (evaluate/loss.py: completion_nll)
is the full-logits loss, value and gradients, padded or packed, on GPT-2 and Llama."""

import pytest
from transformers import AutoModelForCausalLM

from rlhfkit.data import load_rows, tokenize_sft
from rlhfkit.data.packing import pack_sft
from rlhfkit.evaluate.loss import completion_nll
from rlhfkit.models import load_tokenizer
from rlhfkit.ops import masked_nll
from tests.data.tiny_models import tiny_llama


@pytest.fixture(scope="module")
def examples(tiny_dir):
    """8 built-in rows tokenised as the sft stage does: prompts of ~10 tokens before each completion."""
    tokenizer = load_tokenizer(str(tiny_dir))
    rows = load_rows("builtin:default", "train", 8, 0.0)
    return tokenize_sft(rows, tokenizer, "builtin:default", "human_assistant", 96, "drop")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_loss_from_completion_positions_equals_the_full_logits_loss(tiny_dir, examples, arch, packed):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir) if arch == "gpt2" else tiny_llama(1024)
    model.eval()
    data = pack_sft(examples, 96) if packed else examples
    batch = data.collate(list(range(len(data))), pad_token_id=0)
    head_positions = []
    model.lm_head.register_forward_hook(lambda _m, args, _out: head_positions.append(args[0].shape[1]))

    def loss_and_grads(loss):
        model.zero_grad()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    # As the sft stage ran it: use_cache=False, or transformers would not see the packing.
    full, full_grads = loss_and_grads(masked_nll(model(**inputs, use_cache=False).logits, batch["labels"])[0])
    ours, grads = loss_and_grads(completion_nll(model, batch)[0])
    assert ours == pytest.approx(full, abs=1e-6)
    for a, b in zip(grads, full_grads):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())
    # The head skipped the prompt positions before the batch's first target.
    first = int((batch["labels"][:, 1:] != -100).any(0).nonzero()[0])
    assert first > 0 and head_positions == [batch["labels"].shape[1], batch["labels"].shape[1] - first]
