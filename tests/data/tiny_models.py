"""Tiny randomly initialised models of architectures the shipped fixtures do not cover."""

import torch


def tiny_opt(vocab: int, max_positions: int):
    """An OPT: it places positions from the attention mask, so restarted position ids do not reach it."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=vocab,
        hidden_size=32,
        word_embed_proj_dim=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_positions,
    )
    return OPTForCausalLM(config)
