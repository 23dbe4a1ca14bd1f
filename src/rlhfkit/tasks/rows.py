"""Task rows (Alpaca schema plus `id`, `family`, `references`), held-out splits and the corpus.

The split is a hash of each family's `split_key` parameters, so it is fixed forever, needs no
stored file, and a held-out prompt can never appear in train.
"""

import hashlib
from random import Random

from .families import DEFAULT_FAMILIES, FAMILIES
from .spec import Family, Params
from .text import render
from .vocab import CATEGORIES, REPEAT_WORDS, TOPICS

SPLITS = ("train", "test")
TEST_PERCENT = 20
TASKS: dict[str, tuple[str, ...]] = {
    "default": DEFAULT_FAMILIES,
    # design.md section 5: a tiny RM could not learn addition and PPO exploited it.
    "no-arithmetic": tuple(f for f in DEFAULT_FAMILIES if f != "arithmetic"),
    **{name: (name,) for name in FAMILIES},
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def task_names() -> list[str]:
    """Named tasks; `task_rows` also takes a comma list of them, e.g. "sentiment,repeat"."""
    return list(TASK_NAMES)


def task_families(task: str) -> tuple[str, ...]:
    """The families a task name (or comma list of names) covers, in registry order."""
    chosen: set[str] = set()
    for part in (p.strip() for p in task.split(",")):
        if part not in TASKS:
            raise ValueError(f"unknown task {part!r}; valid: {', '.join(TASK_NAMES)} (or a comma list)")
        chosen.update(TASKS[part])
    return tuple(f for f in FAMILIES if f in chosen)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def split_of(family: Family, params: Params, template: int) -> str:
    values = {**params, "template": template}
    key = "|".join(f"{k}={values[k]}" for k in family.split_key)
    return "test" if int(_digest(f"{family.name}|{key}")[:8], 16) % 100 < TEST_PERCENT else "train"


def prompts(family: Family, split: str) -> list[tuple[str, Params]]:
    """Every (instruction, params) of one family in one split, in a fixed order."""
    return [
        (template.format(**params), params)
        for params in family.grid
        for t, template in enumerate(family.templates)
        if split_of(family, params, t) == split
    ]


def _row(family: Family, instruction: str, params: Params, copy: int, seed: int, noise: float) -> dict:
    prompt_id = f"{family.name}-{_digest(instruction)[:10]}"
    # References depend on the prompt only, so every seed evaluates against the same ones.
    references = family.references(params, Random(prompt_id))
    rng = Random(f"{seed}|{prompt_id}|{copy}")
    # Draw the coin first so that raising `noise` only swaps outputs, never reshuffles the rest.
    flawed = rng.random() < noise
    output = rng.choice(references)
    if flawed:
        output = family.imperfect(params, rng)
    return {
        "id": prompt_id if copy == 0 else f"{prompt_id}~{copy}",
        "family": family.name,
        "instruction": instruction,
        "input": "",
        "output": output,
        "references": references,
    }


def task_rows(
    task: str = "default", split: str = "train", n: int | None = None, seed: int = 0, noise: float = 0.0
) -> list[dict]:
    """Rows of the built-in task, deterministic given the arguments.

    n=None gives every prompt of the split once. Otherwise n rows are shared as evenly as
    possible between the families; a family with fewer prompts than its share cycles through
    them again with freshly drawn output wording (ids get a "~k" suffix). Families alternate
    row by row, so any prefix is balanced. `noise` is the chance that a row's output is a flawed
    demonstration (wrong count, neutral sentence ...) instead of a reference: design.md found
    clean demos made 86% of sampled pairs ties.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    if n is not None and n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    names = task_families(task)
    per_family = []
    for i, name in enumerate(names):
        family = FAMILIES[name]
        items = prompts(family, split)
        if not items:  # cannot happen with the shipped vocabularies; guards edits to them
            raise ValueError(f"family {name!r} has no {split} prompts")
        Random(f"{seed}|{name}|{split}").shuffle(items)
        count = len(items) if n is None else n // len(names) + (i < n % len(names))
        per_family.append(
            [_row(family, *items[j % len(items)], j // len(items), seed, noise) for j in range(count)]
        )
    longest = max(len(rows) for rows in per_family)
    return [rows[j] for j in range(longest) for rows in per_family if j < len(rows)]


def corpus(seed: int = 0) -> list[str]:
    """Texts to train a tiny BPE tokenizer on: every prompt of both splits, rendered with one of
    its answers, all references, flawed answers and the raw vocabularies."""
    texts: list[str] = []
    for split in SPLITS:
        clean = task_rows("default", split, seed=seed)
        flawed = task_rows("default", split, seed=seed, noise=1.0)
        for row, bad in zip(clean, flawed):
            texts.append(f"{render(row['instruction'])} {row['output']}")
            texts.extend(row["references"])
            texts.append(bad["output"])
    texts.append(" ".join(TOPICS))
    texts.append(" ".join(REPEAT_WORDS))
    texts.extend(" ".join(items) for items in CATEGORIES.values())
    texts.append(" ".join(str(i) for i in range(100)))
    return texts
