"""A tiny GPT-2 with a BPE tokenizer trained locally on the built-in task's text.

Deterministic given `seed`: the same corpus, the same BPE merges and the same initial weights,
so tests and the tiny configs are reproducible on any machine without the hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.atomic import atomic_dir
from rlhfkit.data.templates import render_example
from rlhfkit.tasks import corpus, task_rows

EOS = "<|endoftext|>"


@dataclass
class TinyShape:
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 256
    vocab_size: int = 1024


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE like GPT-2's; EOS doubles as BOS, and no pad token (GPT-2 has none either)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def build_tiny_model(out_dir: str | Path, seed: int = 0, shape: TinyShape | None = None) -> Path:
    """Train the tokenizer, initialise GPT-2 weights from `seed`, save both to `out_dir` atomically."""
    from transformers import GPT2Config, GPT2LMHeadModel

    shape = shape or TinyShape()
    # Both splits, rendered in the Human/Assistant template, so "Human:"/"Assistant:" and every held-out
    # prompt's words get whole tokens (the model never sees the test rows, only the tokenizer).
    rows = task_rows("default", "train") + task_rows("default", "test")
    texts = [render_example(r["instruction"], r["input"], r["output"]) for r in rows] + list(corpus(seed=0))
    tokenizer = train_tokenizer(texts, shape.vocab_size)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=shape.n_positions,
        n_embd=shape.n_embd,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
