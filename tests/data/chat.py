"""Tokenizers with a chat template for the rendering tests: the tiny one (which has none of its own)
given a template that writes BOS itself and a tokenizer that adds BOS too (the double-BOS case), and
SmolLM2's real one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rlhfkit.models import load_tokenizer

# ChatML-like, on the tiny model's byte-level vocabulary; `bos_token` first, as Llama-3 and Gemma do.
TINY_CHAT = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_chat_tokenizer(tiny_dir: Path, template: str = TINY_CHAT, add_bos: bool = True):
    tokenizer = load_tokenizer(str(tiny_dir))
    tokenizer.chat_template = template
    tokenizer.add_bos_token = add_bos  # so tokenizer(text) would put a second BOS before the template's
    return tokenizer


def tiny_chat_model(tiny_dir: Path, folder: Path) -> Path:
    """A copy of the tiny model whose saved tokenizer has TINY_CHAT and adds BOS."""
    shutil.copytree(tiny_dir, folder)
    tiny_chat_tokenizer(tiny_dir).save_pretrained(folder)
    return folder


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer; its first use exports the model from the GGUF (~1 min)."""
    pytest.importorskip("gguf", reason="make install puts gguf in the venv")
    from rlhfkit.models.assets import smollm2_dir

    return load_tokenizer(str(smollm2_dir()))
