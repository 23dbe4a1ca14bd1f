"""Padding token lists into batches. Padding is always masked by attention, never by token id."""

from __future__ import annotations

import torch


def right_pad(sequences: list[list[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (B, T), attention_mask (B, T)), real tokens first: training batches and RM inputs."""
    width = max(len(s) for s in sequences)
    values = torch.full((len(sequences), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for b, seq in enumerate(sequences):
        values[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[b, : len(seq)] = 1
    return values, mask


def left_pad(sequences: list[list[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (B, T), attention_mask (B, T)), real tokens last: prompts that generation extends."""
    width = max(len(s) for s in sequences)
    values = torch.full((len(sequences), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for b, seq in enumerate(sequences):
        if seq:
            values[b, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[b, width - len(seq) :] = 1
    return values, mask
