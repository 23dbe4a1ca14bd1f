"""`list`: "Name {n} {category}." answered as a comma-separated list (n in 2..5).

Text before the last colon is a preamble and ignored ("Here are 3 colors: red, blue, green.").
The rest is split on commas and "and"; an item is valid if it is in the category's vocabulary
(plural forms accepted). With v distinct valid items and b bad items (invalid or repeated):
Score = 2 * min(v, n) / n - 1 - 0.25 * b - 0.25 * max(0, v - n).
Items separated only by spaces count as one invalid item: following the format is part of the task.
"""

import re
from random import Random

from .spec import Family, Params
from .text import capitalize, clip, words
from .vocab import CATEGORIES

COUNTS = range(2, 6)
ITEM_PENALTY = 0.25
_SEPARATOR = re.compile(r",|\band\b", re.IGNORECASE)


def _join(items: list[str], style: int, n: int, category: str) -> str:
    commas = ", ".join(items)
    and_list = ", ".join(items[:-1]) + " and " + items[-1]
    return (
        commas,
        f"{capitalize(and_list)}.",
        f"Sure: {commas}",
        f"Here are {n} {category}: {commas}.",
    )[style]


def _singular(word: str, vocab: tuple[str, ...]) -> str:
    for form in (word, word[:-2] if word.endswith("es") else "", word[:-1] if word.endswith("s") else ""):
        if form in vocab:
            return form
    return word


def _parse(groups: dict[str, str]) -> Params:
    category, n = groups["category"].lower(), int(groups["n"])
    if category not in CATEGORIES:
        raise ValueError(f"unknown list category {category!r}; known: {', '.join(CATEGORIES)}")
    if not 1 <= n <= len(CATEGORIES[category]):
        raise ValueError(f"cannot name {n} {category}: between 1 and {len(CATEGORIES[category])}")
    return {"category": category, "n": n}


def _references(p: Params, rng: Random) -> list[str]:
    vocab, n = CATEGORIES[p["category"]], p["n"]
    return [_join(rng.sample(vocab, n), style, n, p["category"]) for style in range(4)]


def _imperfect(p: Params, rng: Random) -> str:
    category, n = p["category"], p["n"]
    vocab = CATEGORIES[category]
    items = rng.sample(vocab, n)
    kind = rng.randrange(5)
    if kind == 0:  # one short
        items = items[:-1]
    elif kind == 1:  # one too many
        items.append(rng.choice([v for v in vocab if v not in items]))
    elif kind == 2:  # an item from another category
        other = rng.choice([c for c in CATEGORIES if c != category])
        items[-1] = rng.choice([v for v in CATEGORIES[other] if v not in vocab])
    elif kind == 3:  # a repeat
        items[-1] = items[0]
    else:  # no commas
        return " ".join(items)
    return _join(items, rng.randrange(4), n, category)


def _score(p: Params, response: str) -> float:
    vocab, n = CATEGORIES[p["category"]], p["n"]
    body = response.rsplit(":", 1)[-1]
    segments = [ws for ws in (words(s) for s in _SEPARATOR.split(body)) if ws]
    valid: set[str] = set()
    bad = 0
    for ws in segments:
        item = _singular(ws[0], vocab) if len(ws) == 1 else ""
        if item in vocab and item not in valid:
            valid.add(item)
        else:
            bad += 1
    v = len(valid)
    return clip(2.0 * min(v, n) / n - 1.0 - ITEM_PENALTY * bad - ITEM_PENALTY * max(0, v - n))


FAMILY = Family(
    name="list",
    templates=("Name {n} {category}.", "List {n} {category}.", "Give me {n} {category}."),
    patterns={"n": r"\d+", "category": r"[a-z]+"},
    grid=tuple({"category": c, "n": n} for c in CATEGORIES for n in COUNTS),
    # Only 32 (category, n) pairs: hashing the wording too gives a steadier held-out share.
    split_key=("category", "n", "template"),
    parse=_parse,
    references=_references,
    imperfect=_imperfect,
    score=_score,
    max_words=lambda p: p["n"] + 8,
)
