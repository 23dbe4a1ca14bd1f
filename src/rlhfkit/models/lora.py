"""LoRA wrapping with per-architecture default target modules."""

from __future__ import annotations

from rlhfkit.errors import ModelError

# Attention projections by default: enough capacity for SFT/RM/PPO at a fraction of the memory.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "bert": ["query", "key", "value"],
}


def default_target_modules(model_type: str) -> list[str]:
    if model_type in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[model_type]
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults
    except ImportError:  # pragma: no cover - older/newer peft layouts
        peft_defaults = {}
    if model_type in peft_defaults:
        return list(peft_defaults[model_type])
    raise ModelError(
        f"no default LoRA target modules for model type '{model_type}'; set model.lora_target_modules"
    )


def add_lora(model, r: int, alpha: int, dropout: float, target_modules: list[str] | None, task_type: str):
    from peft import LoraConfig, get_peft_model

    targets = target_modules or default_target_modules(model.config.model_type)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        task_type=task_type,
        # GPT-2 stores its projections as Conv1D with transposed weights.
        fan_in_fan_out=model.config.model_type == "gpt2",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise ModelError(f"model.lora_target_modules={targets}: {str(e).splitlines()[0][:200]}") from None
