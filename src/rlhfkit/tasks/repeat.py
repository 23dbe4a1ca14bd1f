"""`repeat`: "Repeat the word {word} {n} times." (n in 2..5).

Score = 2 * (1 - min(1, |count - n| / n)) - 1 - 0.25 * extra_words.
So the exact count scores 1, being one off out of 4 scores 0.5, and no occurrence scores -1.
Up to three polite filler words ("Sure:", "Here you go:") are free; any other word is extra.
"""

from random import Random

from .spec import Family, Params
from .text import capitalize, clip, words
from .vocab import REPEAT_WORDS

COUNTS = range(2, 6)
FILLER = frozenset({"sure", "here", "you", "go", "okay", "ok"})
FREE_FILLER = 3
EXTRA_WORD_PENALTY = 0.25


def _say(word: str, n: int, style: int) -> str:
    spaced, commas = " ".join([word] * n), ", ".join([word] * n)
    return (
        spaced,
        commas,
        f"Sure: {spaced}",
        f"Here you go: {commas}.",
        f"Okay! {capitalize(spaced)}.",
    )[style]


def _parse(groups: dict[str, str]) -> Params:
    n = int(groups["n"])
    if n < 1:
        raise ValueError(f"repeat count must be at least 1, got {n}")
    return {"word": groups["word"].lower(), "n": n}


def _references(p: Params, rng: Random) -> list[str]:
    return [_say(p["word"], p["n"], style) for style in range(5)]


def _imperfect(p: Params, rng: Random) -> str:
    word, n = p["word"], p["n"]
    kind = rng.randrange(3)
    if kind == 0:  # wrong count
        return _say(word, max(1, n + rng.choice((-1, 1))), rng.randrange(5))
    if kind == 1:  # wrong word
        return _say(rng.choice([w for w in REPEAT_WORDS if w != word]), n, rng.randrange(5))
    return f"{_say(word, n, 0)} is a nice word"  # chatter


def _score(p: Params, response: str) -> float:
    word, n = p["word"], p["n"]
    ws = words(response)
    count = ws.count(word)
    others = [w for w in ws if w != word]
    filler = sum(w in FILLER for w in others)
    extra = len(others) - filler + max(0, filler - FREE_FILLER)
    closeness = 1.0 - min(1.0, abs(count - n) / n)
    return clip(2.0 * closeness - 1.0 - EXTRA_WORD_PENALTY * extra)


FAMILY = Family(
    name="repeat",
    templates=(
        "Repeat the word {word} {n} times.",
        "Say {word} {n} times.",
        "Write {word} exactly {n} times.",
    ),
    patterns={"word": r"[a-z']+", "n": r"\d+"},
    grid=tuple({"word": w, "n": n} for w in REPEAT_WORDS for n in COUNTS),
    split_key=("word", "n"),
    parse=_parse,
    references=_references,
    imperfect=_imperfect,
    score=_score,
    max_words=lambda p: p["n"] + FREE_FILLER + 2,
)
