"""Write a folder so that readers only ever see it complete: build in a sibling temp folder, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temp folder beside `out_dir`; on success it becomes `out_dir`, on error it vanishes."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of an earlier write of this folder that was killed midway (one writer per folder).
    for stale in [
        *out_dir.parent.glob(f".tmp-{out_dir.name}-*"),
        *out_dir.parent.glob(f".old-{out_dir.name}-*"),
    ]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if out_dir.exists():
            if not replace:
                raise FileExistsError(f"{out_dir} already exists")
            # rename() cannot replace a non-empty folder: move the old one aside first, so a
            # crash between the two renames still leaves one complete copy on disk.
            old = out_dir.with_name(f".old-{out_dir.name}-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
