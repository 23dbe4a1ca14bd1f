"""The run folder every stage writes: runs/<name>/<stage>/ with config.yaml written first."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from rlhfkit.atomic import atomic_write_text
from rlhfkit.config import config_to_dict
from rlhfkit.errors import RlhfkitError


def stage_dir(cfg, stage: str) -> Path:
    return Path(cfg.run.dir) / cfg.run.name / stage


def check_stage_dir(cfg, stage: str, resume: bool = False, overwrite: bool = False) -> Path:
    """Refuse, before any work, to touch an existing folder unless the user said how."""
    out = stage_dir(cfg, stage)
    if resume and overwrite:
        raise RlhfkitError("--resume and --overwrite contradict each other; pass one")
    existing = out.is_dir() and any(out.iterdir())
    if existing and not resume and not overwrite:
        raise RlhfkitError(f"{out} already exists; pass --resume to continue it or --overwrite to start over")
    if resume and not existing:
        raise RlhfkitError(f"{out}: nothing to resume (no such run folder)")
    return out


def prepare_stage_dir(cfg, stage: str, resume: bool = False, overwrite: bool = False) -> Path:
    """Create (or reopen with --resume) the stage folder and write the resolved config into it."""
    out = check_stage_dir(cfg, stage, resume, overwrite)
    existing = out.is_dir() and any(out.iterdir())
    if existing and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    if resume and (out / "config.yaml").is_file() and (out / "config.yaml").read_text() != text:
        print(
            f"rlhfkit: warning: resuming {out} with a config that differs from its config.yaml; "
            "the new one is saved as config.resumed.yaml",
            flush=True,
        )
        atomic_write_text(out / "config.resumed.yaml", text)
    else:
        atomic_write_text(out / "config.yaml", text)
    return out
