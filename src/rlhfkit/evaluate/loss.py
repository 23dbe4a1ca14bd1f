"""Held-out next-token loss on completion tokens, token-weighted over the whole set."""

from __future__ import annotations

import torch

from rlhfkit.data.sft import IGNORE, TokenizedSFT, collate_sft
from rlhfkit.models.prefix import keep_logits
from rlhfkit.ops import masked_nll


def completion_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """ops.masked_nll of a collated SFT batch (padded, or packed: its position ids instead of a mask),
    with the LM head run only from the position that predicts the batch's first target token on. The
    prompt positions' full-vocabulary logits (49152 wide for SmolLM2) are never scored, so they are
    not computed (logits_to_keep); the loss is the same."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    targets = (labels[:, 1:] != IGNORE).any(0).nonzero()  # column j predicts label j + 1
    first = int(targets[0]) if len(targets) else labels.shape[1] - 1
    keep = labels.shape[1] - first
    # A training forward never reads a KV cache (and with one transformers would not see the packing).
    logits = model(**inputs, use_cache=False, **keep_logits(model, keep)).logits[:, -keep:]
    return masked_nll(logits, labels[:, first:])


@torch.no_grad()
def held_out_loss(model, data: TokenizedSFT, pad_token_id: int, batch_size: int = 16) -> float:
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(data), batch_size):
        batch = collate_sft(
            data.input_ids[start : start + batch_size], data.labels[start : start + batch_size], pad_token_id
        )
        loss, stats = completion_nll(model, batch)
        total += loss.item() * stats["tokens"].item()
        tokens += int(stats["tokens"].item())
    model.train(was_training)
    return total / max(tokens, 1)
