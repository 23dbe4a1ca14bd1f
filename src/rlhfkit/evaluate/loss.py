"""Held-out next-token loss on completion tokens, token-weighted over the whole set."""

from __future__ import annotations

import torch

from rlhfkit.data.sft import TokenizedSFT, collate_sft
from rlhfkit.ops import masked_nll


@torch.no_grad()
def held_out_loss(model, data: TokenizedSFT, pad_token_id: int, batch_size: int = 16) -> float:
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(data), batch_size):
        batch = collate_sft(
            data.input_ids[start : start + batch_size], data.labels[start : start + batch_size], pad_token_id
        )
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, stats = masked_nll(logits, batch["labels"])
        total += loss.item() * stats["tokens"].item()
        tokens += int(stats["tokens"].item())
    model.train(was_training)
    return total / max(tokens, 1)
