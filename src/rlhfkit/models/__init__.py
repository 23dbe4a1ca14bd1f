from rlhfkit.models.load import disable_dropout, load_causal_lm, load_tokenizer, resolve_model_path

__all__ = ["disable_dropout", "load_causal_lm", "load_tokenizer", "resolve_model_path"]
