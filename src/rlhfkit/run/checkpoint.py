"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is written to a temp folder and renamed into place, with a manifest of sha256
hashes; loading verifies the manifest and falls back to an older checkpoint (with a warning)
when the newest one is damaged.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rlhfkit.atomic import atomic_dir

STEP_DIR = re.compile(r"^step-(\d+)$")


def flatten_state(obj, tensors: dict[str, torch.Tensor], prefix: str = "t"):
    """A JSON-able skeleton of `obj`, with every tensor moved into `tensors` under a unique key."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {
            "__dict__": [
                [flatten_state(k, tensors, prefix), flatten_state(v, tensors, prefix)] for k, v in obj.items()
            ]
        }
    if isinstance(obj, (list, tuple)):
        return {
            "__list__" if isinstance(obj, list) else "__tuple__": [
                flatten_state(v, tensors, prefix) for v in obj
            ]
        }
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} without pickle")


def unflatten_state(skeleton, tensors: dict[str, torch.Tensor]):
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            return [unflatten_state(v, tensors) for v in skeleton["__list__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
    return skeleton


def rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])


def save_checkpoint(checkpoints_dir: Path, step: int, parts: dict[str, object], keep_last: int) -> Path:
    """Write `parts` (name -> nested state with tensors) as step-<step>/, then prune old ones."""
    out = Path(checkpoints_dir) / f"step-{step}"
    with atomic_dir(out) as tmp:
        for name, state in parts.items():
            tensors: dict[str, torch.Tensor] = {}
            skeleton = flatten_state(state, tensors)
            save_file(tensors, str(tmp / f"{name}.safetensors"))
            (tmp / f"{name}.json").write_text(json.dumps(skeleton))
        manifest = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / "manifest.json").write_text(json.dumps({"step": step, "files": manifest}, indent=1))
    for old in list_checkpoints(checkpoints_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return out


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp folders of an interrupted save are ignored)."""
    if not Path(checkpoints_dir).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(checkpoints_dir).iterdir() if (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path, only: tuple[str, ...] | None = None) -> dict[str, object]:
    """All parts of one checkpoint (or the parts named in `only`, e.g. ("model",) to evaluate its
    weights without reading the optimizer); raises ValueError if the manifest does not match the files."""
    path = Path(path)
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise ValueError(f"{path}: no manifest.json")
    manifest = json.loads(manifest_file.read_text())["files"]
    for name, digest in manifest.items():
        if only is not None and name.rsplit(".", 1)[0] not in only:
            continue
        if not (path / name).is_file() or _sha256(path / name) != digest:
            raise ValueError(f"{path}/{name}: missing or does not match its hash in manifest.json")
    parts = {}
    for skeleton_file in sorted(path.glob("*.json")):
        if skeleton_file.name == "manifest.json" or (only is not None and skeleton_file.stem not in only):
            continue
        name = skeleton_file.stem
        tensors = load_file(str(path / f"{name}.safetensors"))
        parts[name] = unflatten_state(json.loads(skeleton_file.read_text()), tensors)
    return parts


def load_latest_checkpoint(checkpoints_dir: Path) -> tuple[int, dict] | None:
    """(step, parts) of the newest checkpoint that verifies, warning about each damaged one skipped."""
    for path in reversed(list_checkpoints(checkpoints_dir)):
        try:
            parts = load_checkpoint(path)
        except (ValueError, OSError, json.JSONDecodeError) as e:
            print(f"rlhfkit: warning: skipping damaged checkpoint {path.name}: {e}", flush=True)
            continue
        return int(STEP_DIR.match(path.name).group(1)), parts
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
