"""Load a causal LM and its tokenizer from any place a config can name.

`model.name` may be a built-in asset (`tiny`, `smollm2`), a local HF folder, a stage folder of
a run (its `final/` is used), a LoRA adapter folder (merged into its base, so that "the
reference" of a later stage is this model and not silently the base), a `.gguf` file, or a hub id.

A LoRA stage's final/ names its base in `rlhfkit_base.json` so that a run folder can be moved or
copied to another machine (`base_reference`): a base inside the same run folder by a path relative
to final/, a built-in by name, a hub id as itself, anything else by its absolute path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch

from rlhfkit.config import ModelConfig
from rlhfkit.errors import ModelError
from rlhfkit.models import assets
from rlhfkit.models.errors import LOAD_ERRORS, load_error
from rlhfkit.models.gguf import export_gguf
from rlhfkit.models.lora import add_lora

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BASE_RECORD = "rlhfkit_base.json"


def resolve_model_path(name: str, tiny_seed: int = 0) -> str:
    """A local folder holding config.json (or adapter_config.json), or a hub id to try as is."""
    if name == "tiny":
        return str(assets.tiny_model_dir(tiny_seed))
    if name == "smollm2":
        return str(assets.smollm2_dir())
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        return str(_exported_gguf(path))
    if path.is_dir():
        for candidate in (path, path / "final"):
            if (candidate / "config.json").is_file() or (candidate / "adapter_config.json").is_file():
                return str(candidate)
        if (path / "config.yaml").is_file():
            # A run's stage folder whose stage never finished (killed, failed, or still running).
            raise ModelError(
                f"{path}: no final/ yet (the stage did not finish); finish it with --resume "
                "or name a finished stage"
            )
        raise ModelError(
            f"{path}: folder has no config.json, adapter_config.json or final/ to load a model from"
        )
    if path.exists():
        raise ModelError(f"{path}: expected a model folder or a .gguf file, found a file")
    if name.startswith((".", "/", "~")) or not HUB_ID.match(name):
        raise ModelError(f"{name}: model path does not exist")
    return name  # a hub id: from_pretrained will try the hub (or its local cache)


def _exported_gguf(path: Path) -> Path:
    if not path.is_file():
        raise ModelError(f"{path}: GGUF file does not exist")
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    out = assets.cache_dir() / f"gguf-{path.stem}-{key}"
    if not (out / "config.json").is_file():
        print(f"rlhfkit: exporting {path.name} to {out} (once) ...", flush=True)
        export_gguf(path, out)
    return out


def load_tokenizer(location: str, trust_remote_code: bool = False, padding_side: str = "right"):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as e:
        raise ModelError(f"{location}: cannot load tokenizer ({load_error(e)})") from None
    if tokenizer.pad_token is None:
        # GPT-2 style tokenizers have no pad token. Padding is masked by attention_mask, never by
        # token id, so reusing EOS is safe (and the model's real EOS is still learned).
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def disable_dropout(model: torch.nn.Module) -> None:
    """p=0 in every Dropout module and every *dropout/*pdrop config field (PPO needs exact reruns)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    if config is not None:
        for key, value in list(vars(config).items()):
            if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
                setattr(config, key, 0.0)


def load_causal_lm(cfg: ModelConfig, trainable: bool = True):
    """(model, tokenizer) ready for training: dropout off if asked, LoRA added if cfg.lora."""
    from transformers import AutoModelForCausalLM

    location = resolve_model_path(cfg.name, cfg.tiny_seed)
    dtype = DTYPES[cfg.dtype]
    adapter = Path(location) / "adapter_config.json"
    try:
        if adapter.is_file():
            model = _load_merged_adapter(Path(location), dtype, cfg.trust_remote_code)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                location, dtype=dtype, trust_remote_code=cfg.trust_remote_code
            )
    except LOAD_ERRORS as e:
        raise ModelError(f"{cfg.name}: cannot load model ({load_error(e, location)})") from None
    tokenizer = load_tokenizer(cfg.tokenizer or _tokenizer_location(location), cfg.trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if cfg.disable_dropout:
        disable_dropout(model)
    if trainable and cfg.lora:
        model = add_lora(
            model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules, "CAUSAL_LM"
        )
    elif not trainable:
        model.requires_grad_(False)
    return model, tokenizer


def _tokenizer_location(location: str) -> str:
    path = Path(location)
    if (path / "adapter_config.json").is_file() and not _has_tokenizer(path):
        return adapter_base(path)
    return location


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


def base_reference(name: str, tiny_seed: int, adapter_dir: Path) -> tuple[str, dict]:
    """How the adapter saved into `adapter_dir` (a stage's final/) names the model `name` it was
    trained on: (peft's `base_model_name_or_path`, rlhfkit's record for BASE_RECORD).

    The record is what rlhfkit loads from, and it resolves wherever the run folder is: a base inside
    the same run folder (a LoRA SFT stage under a LoRA PPO stage) as a path relative to `adapter_dir`
    (`../../sft/final`), a built-in by name (rebuilt or found in this machine's cache), a hub id as
    is, any other local model by its absolute path (it must exist there on the machine that loads).

    peft's field keeps peft's meaning: the absolute path on this machine at training time (or the hub
    id). It cannot be relative too: peft and transformers resolve it against the working directory.
    So `from_pretrained(final)` without rlhfkit works in place when the base is a full model. After a
    move it names the old place, which may be gone or (for a copy) hold whatever lies there later:
    pass the base yourself, `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(<base>),
    final)`, with <base> the folder the record names (for a chain, the merged SFT model, which is what
    `load_causal_lm(ModelConfig(name=<run>/sft, lora=False))` returns), or load through rlhfkit.
    """
    location = resolve_model_path(name, tiny_seed)
    here = str(Path(location).resolve())
    if name == "tiny":
        return here, {"base": name, "tiny_seed": tiny_seed}
    if name in assets.BUILTIN_MODELS:
        return here, {"base": name}
    if not Path(location).exists():
        return name, {"base": name}  # a hub id
    # A .gguf is recorded as itself, not as this machine's export of it into the cache.
    local = (Path(name).expanduser() if Path(name).suffix == ".gguf" else Path(location)).resolve()
    adapter_dir = adapter_dir.resolve()
    run_dir = adapter_dir.parents[1]  # runs/<name>/ of runs/<name>/<stage>/final
    if local.is_relative_to(run_dir):
        return here, {"base": os.path.relpath(local, adapter_dir)}
    return here, {"base": str(local)}


def adapter_base(path: Path) -> str:
    """Where the base of the adapter in `path` is on this machine: from BASE_RECORD, else (an adapter
    rlhfkit did not write, or wrote before the record existed) from peft's base_model_name_or_path."""
    record_file = path / BASE_RECORD
    if record_file.is_file():
        try:
            record = json.loads(record_file.read_text())
            base, seed = record["base"], int(record.get("tiny_seed", 0))
        except (ValueError, KeyError, TypeError) as e:
            what = f"{type(e).__name__}: {e}"
            raise ModelError(f'{record_file}: expected {{"base": <model>}} ({what})') from None
    else:
        record_file = path / "adapter_config.json"
        base, seed = json.loads(record_file.read_text()).get("base_model_name_or_path"), 0
    if not isinstance(base, str) or not base:
        raise ModelError(f"{record_file}: no base model to load the adapter onto")
    # base_reference writes a path relative to this folder, not to the working directory.
    relative = base.startswith(".") and record_file.name == BASE_RECORD
    try:
        return resolve_model_path(str((path / base).resolve()) if relative else base, seed)
    except ModelError as e:
        hint = (
            "; the stages of a run folder name each other by relative paths: "
            "move or copy the whole run folder"
        )
        raise ModelError(f"{record_file}: base {base}: {e}{hint if relative else ''}") from None


def _load_merged_adapter(path: Path, dtype: torch.dtype, trust_remote_code: bool):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = adapter_base(path)
    # An adapter trained on a merged adapter (PPO on a LoRA SFT run) names that run: merge the chain.
    if (Path(base_path) / "adapter_config.json").is_file():
        base = _load_merged_adapter(Path(base_path), dtype, trust_remote_code)
    else:
        base = AutoModelForCausalLM.from_pretrained(
            base_path, dtype=dtype, trust_remote_code=trust_remote_code
        )
    return PeftModel.from_pretrained(base, path).merge_and_unload()
