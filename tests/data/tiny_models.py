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


def tiny_llama(vocab: int, attn: str = "sdpa", max_positions: int = 128):
    """A two-layer Llama (rotary positions, grouped-query attention), as SmolLM2 is built."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config)
