from rlhfkit.data.sft import IGNORE, collate_sft, prompt_and_completion, tokenize_sft
from rlhfkit.data.sources import load_rows, read_local, split_off_eval
from rlhfkit.data.templates import render, render_example, render_prompt

__all__ = [
    "IGNORE",
    "collate_sft",
    "load_rows",
    "prompt_and_completion",
    "read_local",
    "render",
    "render_example",
    "render_prompt",
    "split_off_eval",
    "tokenize_sft",
]
