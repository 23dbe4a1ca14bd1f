"""Rows from `builtin:<task>[:split]`, `hf:<name>[:split]`, or a local .json/.jsonl/.parquet file.

Every problem is a one-line DataError naming the source (and the row where there is one).
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhfkit.errors import DataError
from rlhfkit.tasks import task_rows

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")


def is_builtin(source: str) -> bool:
    """A `builtin:<task>` source: the offline task suite, whose held-out rows a gold judge can score."""
    return source.startswith("builtin:")


def load_rows(
    source: str, split: str = "train", builtin_size: int | None = None, builtin_noise: float = 0.0
) -> list[dict]:
    """Rows as dicts. `split` applies to builtin:/hf: sources unless the source names its own."""
    if is_builtin(source):
        rows = _builtin(source, split, builtin_size, builtin_noise)
    elif source.startswith("hf:"):
        rows = _hub(source, split)
    else:
        rows = read_local(Path(source))
    if not rows:
        raise DataError(f"{source}: dataset is empty")
    return rows


def _builtin(source: str, split: str, size: int | None, noise: float) -> list[dict]:

    _, task, *rest = source.split(":")
    split = rest[0] if rest else split
    try:
        return task_rows(task or "default", split, n=size if split == "train" else None, noise=noise)
    except ValueError as e:
        raise DataError(f"{source}: {e}") from None


def _hub(source: str, split: str) -> list[dict]:
    name = source[len("hf:") :]
    if ":" in name:
        name, split = name.rsplit(":", 1)
    try:
        import datasets

        dataset = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 - hub/network errors come in many types; all mean "cannot load"
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise DataError(
            f"{source}: cannot load split '{split}' from the Hugging Face hub ({reason})"
        ) from None
    return list(dataset)


def read_local(path: Path) -> list[dict]:
    if path.suffix not in LOCAL_SUFFIXES:
        raise DataError(
            f"{path}: unsupported data file type; expected one of {', '.join(LOCAL_SUFFIXES)} or "
            f"builtin:/hf: source"
        )
    if not path.is_file():
        raise DataError(f"{path}: data file does not exist")
    if path.suffix == ".parquet":
        return _read_parquet(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not UTF-8 text (byte {e.start})") from None
    rows = _parse_jsonl(path, text) if path.suffix == ".jsonl" else _parse_json(path, text)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i}: expected a JSON object, got {type(row).__name__}")
    return rows


def _parse_jsonl(path: Path, text: str) -> list:
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {lineno}: not valid JSON ({e.msg})") from None
    return rows


def _parse_json(path: Path, text: str) -> list:
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(
            f'{path}: expected a JSON list of rows (or {{"data": [...]}}), got {type(data).__name__}'
        )
    return data


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read parquet ({str(e).splitlines()[0][:160]})") from None


def split_off_eval(
    rows: list[dict], fraction: float, seed: int, max_eval: int
) -> tuple[list[dict], list[dict]]:
    """Deterministic held-out split for sources without a test split of their own."""
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(max_eval, max(1, int(len(rows) * fraction))) if len(rows) > 1 else 0
    eval_ids = set(order[:n_eval])
    train = [r for i, r in enumerate(rows) if i not in eval_ids]
    held_out = [rows[i] for i in order[:n_eval]]
    return train, held_out
