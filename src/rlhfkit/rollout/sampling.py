"""Batched generation from left-padded prompts, cut at the first EOS."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Completions:
    texts: list[str]
    token_ids: list[list[int]]
    """Response tokens up to and including the first EOS."""
    finished: list[bool]
    """True where the model produced EOS before max_new_tokens."""


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, greedy: bool = True,
             temperature: float = 1.0, batch_size: int = 16, progress: str | None = None) -> Completions:
    """Complete every prompt. Sampling is plain softmax(logits / T): no top-k/top-p warping.

    `progress` names a progress bar over the batches (long jobs such as preference sampling)."""
    from tqdm.auto import tqdm

    model_was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right, so prompts must end aligned
    eos = tokenizer.eos_token_id
    texts, token_ids, finished = [], [], []
    try:
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc=progress, disable=progress is None, mininterval=2.0):
            batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
            sampling = {} if greedy else {"temperature": temperature, "top_k": 0, "top_p": 1.0}
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=not greedy, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos, **sampling,
            )
            for row in out[:, batch["input_ids"].shape[1]:].tolist():
                ended = eos in row
                row = row[: row.index(eos) + 1] if ended else row
                token_ids.append(row)
                finished.append(ended)
                texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = side
        model.train(model_was_training)
    return Completions(texts, token_ids, finished)
