"""Batched generation from left-padded prompts (tokenised as every stage does), cut at the first EOS."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.data.collate import left_pad
from rlhfkit.data.templates import encode_prompt


@dataclass
class Completions:
    texts: list[str]
    token_ids: list[list[int]]
    """Response tokens up to and including the first EOS."""
    finished: list[bool]
    """True where the model produced EOS before max_new_tokens."""


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    greedy: bool = True,
    temperature: float = 1.0,
    batch_size: int = 16,
    progress: str | None = None,
) -> Completions:
    """Complete every prompt. Sampling is plain softmax(logits / T): no top-k/top-p warping.

    `progress` names a progress bar over the batches (long jobs such as preference sampling)."""
    from tqdm.auto import tqdm

    model_was_training = model.training
    model.eval()
    eos = tokenizer.eos_token_id
    texts, token_ids, finished = [], [], []
    try:
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc=progress, disable=progress is None, mininterval=2.0):
            chunk = [encode_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
            # Left-padded: generation appends on the right, so prompts must end aligned.
            input_ids, attention_mask = left_pad(chunk, tokenizer.pad_token_id)
            sampling = {} if greedy else {"temperature": temperature, "top_k": 0, "top_p": 1.0}
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=not greedy,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
                # transformers syncs every step across processes when it sees FSDP; a caller that
                # samples from a sharded model gathers its weights first (trainers/sharding.py), and
                # then one process may generate alone.
                synced_gpus=False,
                **sampling,
            )
            for row in out[:, input_ids.shape[1] :].tolist():
                ended = eos in row
                row = row[: row.index(eos) + 1] if ended else row
                token_ids.append(row)
                finished.append(ended)
                texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        model.train(model_was_training)
    return Completions(texts, token_ids, finished)
