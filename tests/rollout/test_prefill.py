"""The sampler runs each distinct prompt once (models/prefix.py prefill, design §3.5): rows that repeat a
prompt (best-of-n's draws, RLOO's group, a pair's two samples) draw what each row drawn alone draws."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhfkit.data.collate import left_pad, right_pad
from rlhfkit.models.prefix import PromptCache
from rlhfkit.rollout.ppo import row_noise, sample
from tests.data.tiny_models import tiny_llama

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
ROWS = [0, 1, 0, 0, 2, 1]  # prompt 0 three times, prompt 1 twice
EOS, PAD, STEPS = 3, 0, 8


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request, tiny_dir):
    return (
        AutoModelForCausalLM.from_pretrained(tiny_dir) if request.param == "gpt2" else tiny_llama(64)
    ).eval()


def draw(model, prompts: list[list[int]], noise: torch.Tensor):
    ids, mask = left_pad(prompts, PAD)
    return sample(model, ids, mask, STEPS, 1.0, EOS, PAD, noise=noise)


def test_repeated_prompts_run_once_and_sample_what_each_row_alone_samples(model):
    prompts = [PROMPTS[i] for i in ROWS]
    noise = row_noise(3, range(len(prompts)), STEPS)
    batch_sizes = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: batch_sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        together = draw(model, prompts, noise)
    finally:
        hook.remove()
    assert batch_sizes[0] == len(PROMPTS), "the prompt pass runs each distinct prompt once"
    assert all(size == len(prompts) for size in batch_sizes[1:]) and len(batch_sizes) > 2
    for row, prompt in enumerate(prompts):
        alone = draw(model, [prompt], noise[row : row + 1])
        width = alone.response_ids.shape[1]
        assert torch.equal(together.response_ids[row, :width], alone.response_ids[0])
        assert not together.response_mask[row, width:].any()
        torch.testing.assert_close(
            together.sampled_logprobs[row, :width], alone.sampled_logprobs[0], atol=1e-5, rtol=0
        )


def test_a_kept_prompt_cache_scores_continuations_as_the_whole_rows_forward(model):
    """PromptCache (the evaluation's reference): two calls on the kept prompts give the plain forward's
    logits (the first call does not change the cache); a prompt it does not hold gives None."""
    cached = PromptCache(model, PROMPTS, PAD)
    calls = (([2, 0, 0], [[20, 21, 22], [23], []]), ([1, 2], [[24, 25], [26, 27, 28, 29]]))
    for rows, continuations in calls:
        ids, mask = right_pad(continuations, PAD)
        got = cached.logits([PROMPTS[r] for r in rows], ids, mask)
        whole, whole_mask = right_pad([PROMPTS[r] + c for r, c in zip(rows, continuations)], PAD)
        with torch.no_grad():
            logits = model(input_ids=whole, attention_mask=whole_mask).logits
        for i, (r, c) in enumerate(zip(rows, continuations)):
            start = len(PROMPTS[r]) - 1  # the prompt's last position predicts continuation token 0
            torch.testing.assert_close(got[i, : len(c)], logits[i, start : start + len(c)], atol=1e-5, rtol=0)
    assert cached.logits([[99, 98]], ids, mask) is None
