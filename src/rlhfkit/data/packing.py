"""SFT packing (`sft.packing`, docs/design.md §3.3): several tokenized examples share one row of up to
`data.max_length` tokens, and no example sees another.

Attention is kept inside each example by position ids alone: they restart at 0 for every example,
and the batch is given no attention mask. transformers (5.x, `masking_utils.find_packed_sequence_indices`)
reads a row whose position ids restart as several sequences and builds the block-diagonal causal mask
itself, in the format of whatever attention implementation the model uses (eager, sdpa, flex; flash
attention reads the same position ids as variable-length sequences). It does so only when the
attention mask is None and no KV cache exists, so the forward must pass `use_cache=False`. The
restarted ids are also each example's own positions, which GPT-2's learned absolute position
embeddings and Llama's rotary embeddings need to see the example as if it were alone.
`check_packing_is_exact` proves all this on the loaded model before training starts: a model whose
code builds its mask another way (OPT, Bloom: positions or ALiBi from the attention mask) is refused.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import torch

from rlhfkit.data.collate import right_pad
from rlhfkit.data.sft import IGNORE, TokenizedSFT
from rlhfkit.errors import ConfigError


@dataclass
class PackedSFT:
    """Rows of concatenated examples; `examples[r]` are the TokenizedSFT indices in row r, in order."""

    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    position_ids: list[list[int]] = field(default_factory=list)
    examples: list[tuple[int, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    def collate(self, rows, pad_token_id: int) -> dict[str, torch.Tensor]:
        return collate_packed(
            [self.input_ids[r] for r in rows],
            [self.labels[r] for r in rows],
            [self.position_ids[r] for r in rows],
            pad_token_id,
        )


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of item indices, each bin's lengths summing to at most `capacity`.

    Best-fit decreasing: items longest first (ties by index), each into the bin it fills most tightly,
    a new bin when none has room. It has first-fit decreasing's worst case, 11/9 of the optimal number
    of bins (Johnson 1973), and taking the tightest gap keeps large gaps open for the mid-sized items
    that come later. The order is a pure function of the lengths, so every process and every resumed
    run packs the same rows with no seed (`train.seed` shuffles the rows, data/batching.py). `free`
    holds (room left, bin) sorted, so the tightest bin that fits is one bisect away, not a scan of every
    bin (52k Alpaca-like lengths pack in well under a second).
    """
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"item {i} has length {n} > capacity {capacity}")
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            bins.append([i])
            room, b = capacity - n, len(bins) - 1
        else:
            room, b = free.pop(k)
            bins[b].append(i)
            room -= n
        if room > 0:
            bisect.insort(free, (room, b))
    return bins


def best_fit_decreasing_reference(lengths: list[int], capacity: int) -> list[list[int]]:
    """Naive best-fit decreasing: scan every bin for the one left fullest (lowest index on ties)."""
    bins: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fits = [b for b in range(len(bins)) if used[b] + lengths[i] <= capacity]
        if fits:
            b = min(fits, key=lambda b: (capacity - used[b] - lengths[i], b))
            bins[b].append(i)
            used[b] += lengths[i]
        else:
            bins.append([i])
            used.append(lengths[i])
    return bins


def pack_sft(data: TokenizedSFT, max_length: int) -> PackedSFT:
    """The examples packed into rows of at most `max_length` tokens (best_fit_decreasing).

    Each example keeps its labels, except that its first token is never a target: in a row, the
    token before it is the previous example's last, and unpacked that position does not exist
    (masked_nll scores position t against label t + 1; labels[0] is never scored). So the packed rows
    hold exactly the unpacked targets, and the token-mean loss is unchanged."""
    packed = PackedSFT()
    for row in best_fit_decreasing([len(ids) for ids in data.input_ids], max_length):
        packed.examples.append(tuple(row))
        packed.input_ids.append([t for i in row for t in data.input_ids[i]])
        packed.labels.append([t for i in row for t in [IGNORE, *data.labels[i][1:]]])
        packed.position_ids.append([p for i in row for p in range(len(data.input_ids[i]))])
    return packed


def collate_packed(
    input_ids: list[list[int]], labels: list[list[int]], position_ids: list[list[int]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad packed rows: (input_ids, position_ids, labels), and deliberately no attention_mask.

    The padding at a row's end is one more sequence to transformers (its position ids restart at 0),
    so no real token attends to it; its labels are IGNORE, so it is never scored."""
    width = max(len(p) for p in position_ids)
    ids, _ = right_pad(input_ids, pad_token_id)
    batch_labels, _ = right_pad(labels, IGNORE)
    positions = torch.tensor([p + list(range(width - len(p))) for p in position_ids], dtype=torch.long)
    return {"input_ids": ids, "position_ids": positions, "labels": batch_labels}


@torch.no_grad()
def check_packing_is_exact(model, name: str) -> None:
    """Raise ConfigError unless `model` keeps packed examples apart; one tiny forward pass.

    Example B follows example A in one packed row. (1) Changing A's tokens must leave B's logits
    unchanged: exactly so with a block-diagonal mask (masked scores are -inf, their weights exactly 0),
    in any dtype. (2) B's logits must match B run alone, within float noise for the dtype: the
    restarted position ids must reach the position embeddings."""
    vocab = model.get_input_embeddings().weight.shape[0]
    a, a2, b = ([(start + 7 * k) % vocab for k in range(n)] for start, n in ((1, 12), (2, 12), (3, 6)))
    positions = torch.tensor([list(range(12)) + list(range(6))])
    was_training = model.training
    model.eval()
    try:

        def logits(ids, pos):
            out = model(input_ids=torch.tensor([ids]), position_ids=pos, use_cache=False).logits
            return out[0, -len(b) :].float()

        packed, swapped, alone = logits(a + b, positions), logits(a2 + b, positions), logits(b, None)
    finally:
        model.train(was_training)
    scale = 1.0 + alone.abs().max().item()
    noise = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
    leak, shift = (packed - swapped).abs().max().item(), (packed - alone).abs().max().item()
    if leak > 1e-5 * scale or shift > noise * scale:
        config = model.config
        raise ConfigError(
            f"model.name={name}: sft.packing=true cannot keep packed examples apart: a '{config.model_type}' "
            f"model with attention '{getattr(config, '_attn_implementation', '?')}' does not build its mask "
            f"from restarted position ids (logits moved by {max(leak, shift):.2g}); set sft.packing=false"
        )
