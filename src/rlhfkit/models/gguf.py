"""Export a GGUF checkpoint to a plain (de-quantised) Hugging Face folder, once.

Loading a GGUF through transformers de-quantises every tensor (tens of seconds); a cached
safetensors folder then loads in well under a second.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

from rlhfkit.atomic import atomic_dir
from rlhfkit.errors import ModelError
from rlhfkit.models.errors import load_error


def load_gguf(path: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from one .gguf file; a truncated or foreign file is a one-line error."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: GGUF file does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=dtype, trust_remote_code=False
        )
    # The GGUF reader unpacks the header with struct and numpy: a cut file fails in any of these.
    except (ValueError, OSError, KeyError, IndexError, struct.error, EOFError) as e:
        raise ModelError(f"{path}: cannot read GGUF file; truncated or not GGUF ({load_error(e)})") from None
    # The weights are de-quantised now; without this, save_pretrained refuses or re-tags them as GGUF.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def export_gguf(path: Path, out_dir: Path) -> Path:
    """Write `path` as a safetensors HF folder at `out_dir` (atomically: temp folder + rename)."""
    out_dir = Path(out_dir)
    model, tokenizer = load_gguf(path)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir
