"""A stage's final/: a from_pretrained()-loadable folder written atomically, then pushed to the hub
if asked (offline, a one-line message; nothing local is lost). A LoRA stage's final/ also names its
base in rlhfkit_base.json, in a form that survives moving the run folder (models/load.py:
base_reference, which says what a plain peft user does with a moved folder)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from rlhfkit.atomic import atomic_dir
from rlhfkit.errors import RlhfkitError
from rlhfkit.models.load import BASE_RECORD, base_reference
from rlhfkit.trainers.context import StageContext
from rlhfkit.trainers.guard import check_finite_weights
from rlhfkit.trainers.sharding import full_state_dict, is_sharded


def save_final(
    ctx: StageContext,
    model,
    tokenizer,
    save_merged: bool = False,
    extra_files: dict[str, str | bytes] | None = None,
    extra_models: dict[str, tuple] | None = None,
) -> Path:
    """final/: a from_pretrained()-loadable folder (the adapter for LoRA, plus merged/ if asked);
    `extra_models` {name: (model, tokenizer)} become from_pretrained() folders final/<name>/. Every
    process calls it, or the main process alone with unsharded models while the others call
    wait_for_final (rm's final/ under FSDP)."""
    final = ctx.out / "final"
    unwrapped = ctx.accelerator.unwrap_model(model)
    # A sharded model is gathered into whole tensors on every process (a collective), then saved.
    sharded = is_sharded(ctx.accelerator)
    states = {name: full_state_dict(m) for name, (m, _) in (extra_models or {}).items()} if sharded else {}
    states[""] = full_state_dict(unwrapped) if sharded else None
    with torch.no_grad():
        named = states[""].items() if sharded else unwrapped.named_parameters()
        check_finite_weights(named, f"{ctx.stage} final/", ctx.cfg.train.lr)
    if ctx.is_main:
        try:
            _write_final(
                final,
                unwrapped,
                tokenizer,
                save_merged,
                extra_files,
                extra_models,
                _adapter_base(ctx.cfg, final),
                states,
            )
        except OSError as e:
            raise RlhfkitError(
                f"{final}: cannot write ({e.strerror or e}); checkpoints/ is intact: free space, "
                "then rerun with --resume"
            ) from None
        if ctx.cfg.run.push_to_hub:
            push_to_hub(final, ctx.cfg.run.push_to_hub)
    ctx.accelerator.wait_for_everyone()
    return final


def wait_for_final(ctx: StageContext) -> Path:
    """What a process does while the main process alone saves final/ from a model only it holds (whole
    tensors, so save_final needs no collective): save_final's closing wait."""
    ctx.accelerator.wait_for_everyone()
    return ctx.out / "final"


def _adapter_base(cfg, final: Path) -> tuple[str, dict] | None:
    """The model this stage was loaded from, as (peft's field, rlhfkit's record). A LoRA adapter trained
    on a merged LoRA SFT model must name the SFT run, not the original base peft records: otherwise
    loading final/ silently gives base + adapter without the SFT weights (the trap that made the
    original notebook's PPO reference the base model, design §6.3). The record names it relative to final/,
    so the run folder can move."""
    model = getattr(cfg, "model", None)
    return base_reference(model.name, model.tiny_seed, final) if model is not None else None


def _write_final(
    final: Path,
    unwrapped,
    tokenizer,
    save_merged: bool,
    extra_files: dict | None,
    extra_models: dict | None = None,
    adapter_base: tuple[str, dict] | None = None,
    states: dict | None = None,
) -> None:
    """`states`: whole state dicts of a sharded run by model ("" = the trained one); None saves each
    model's own."""
    states = states or {}
    # A peft model with more adapters than the trained one (a LoRA policy holding its RM's, design §6.9)
    # saves the trained (active) one alone: peft would write every other into a subfolder of final/.
    peft_config = getattr(unwrapped, "peft_config", {})
    only = {"selected_adapters": [unwrapped.active_adapter]} if len(peft_config) > 1 else {}
    with atomic_dir(final) as tmp:
        unwrapped.save_pretrained(tmp, safe_serialization=True, state_dict=states.get(""), **only)
        adapter_config = tmp / "adapter_config.json"
        if adapter_base is not None and adapter_config.is_file():
            peft_base, record = adapter_base
            config = json.loads(adapter_config.read_text())
            config["base_model_name_or_path"] = peft_base
            adapter_config.write_text(json.dumps(config, indent=2))
            # Its own file: an unknown key in adapter_config.json makes peft warn on every load.
            (tmp / BASE_RECORD).write_text(json.dumps(record, indent=1))
        tokenizer.save_pretrained(tmp)
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        for name, (extra_model, extra_tokenizer) in (extra_models or {}).items():
            extra_model.save_pretrained(tmp / name, safe_serialization=True, state_dict=states.get(name))
            extra_tokenizer.save_pretrained(tmp / name)
        if save_merged and hasattr(unwrapped, "merge_and_unload"):
            merged = copy.deepcopy(unwrapped).merge_and_unload()
            merged.save_pretrained(tmp / "merged", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "merged")


def push_to_hub(folder: Path, repo_id: str) -> None:
    """Upload after everything is saved locally; offline this is one line, not a crash."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
        print(f"rlhfkit: pushed {folder} to the hub as {repo_id}", flush=True)
    except Exception as e:  # noqa: BLE001 - any failure here must not lose the local result
        print(
            f"rlhfkit: push_to_hub {repo_id} failed ({type(e).__name__}); {folder} is saved locally",
            flush=True,
        )
