"""Which examples form each optimizer step's global batch: a pure function of (seed, step).

Because the order is recomputed from the step number, resuming needs no data-loader state, and
N processes x batch b see exactly the examples that 1 process x batch N*b sees.
"""

from __future__ import annotations

import functools
import random


@functools.lru_cache(maxsize=4)
def _epoch_batches(
    lengths: tuple[int, ...], global_batch: int, seed: int, epoch: int, group_by_length: bool
) -> tuple:
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        # Sort within windows of 32 batches: similar lengths share a batch (less padding) while
        # batches stay shuffled across the epoch.
        window = global_batch * 32
        order = [
            i
            for s in range(0, len(order), window)
            for i in sorted(order[s : s + window], key=lambda i: lengths[i])
        ]
    batches = [
        tuple(order[s : s + global_batch]) for s in range(0, len(order) - global_batch + 1, global_batch)
    ]
    if group_by_length:
        rng.shuffle(batches)
    return tuple(batches)


def batches_per_epoch(n_examples: int, global_batch: int) -> int:
    return n_examples // global_batch


def global_batch_at(
    step: int, lengths: tuple[int, ...], global_batch: int, seed: int, group_by_length: bool
) -> tuple[int, ...]:
    """Example indices of optimizer step `step` (0-based); epochs reshuffle with a new seed."""
    per_epoch = batches_per_epoch(len(lengths), global_batch)
    if per_epoch == 0:
        raise ValueError(f"{len(lengths)} examples cannot fill one global batch of {global_batch}")
    epoch, index = divmod(step, per_epoch)
    return _epoch_batches(lengths, global_batch, seed, epoch, group_by_length)[index]


def micro_batch(
    indices: tuple[int, ...], micro_step: int, rank: int, world_size: int, batch_size: int
) -> tuple[int, ...]:
    """This process's share of one micro-step: interleaved so every process gets equal counts."""
    start = (micro_step * world_size + rank) * batch_size
    return indices[start : start + batch_size]
