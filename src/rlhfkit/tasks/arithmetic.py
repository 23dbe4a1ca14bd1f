"""`arithmetic`: "What is {a} plus {b}?" for single digits a, b.

The last number in the response is the answer (so "3 plus 4 is 7." works).
Score = max(-1, 1 - 0.5 * |answer - (a + b)|) - 0.25 per other number that is neither a nor b;
no number at all scores -1. Off by one still earns 0.5: a graded signal for RL.
design.md section 5: a tiny reward model could not learn addition and PPO exploited that, so
tasks can leave this family out ("no-arithmetic").
"""

import re
from random import Random

from .spec import Family, Params
from .text import clip

_NUMBER = re.compile(r"\d+")
STRAY_NUMBER_PENALTY = 0.25


def _parse(groups: dict[str, str]) -> Params:
    return {"a": int(groups["a"]), "b": int(groups["b"])}


def _references(p: Params, rng: Random) -> list[str]:
    a, b = p["a"], p["b"]
    s = a + b
    return [str(s), f"{s}.", f"The answer is {s}.", f"{a} plus {b} is {s}.", f"{a} + {b} = {s}."]


def _imperfect(p: Params, rng: Random) -> str:
    wrong = max(0, p["a"] + p["b"] + rng.choice((-2, -1, 1, 2)))
    return rng.choice((f"{wrong}", f"The answer is {wrong}.", "I am not sure."))


def _score(p: Params, response: str) -> float:
    numbers = [int(x) for x in _NUMBER.findall(response)]
    if not numbers:
        return -1.0
    stray = [x for x in numbers[:-1] if x not in (p["a"], p["b"])]
    error = abs(numbers[-1] - (p["a"] + p["b"]))
    return clip(max(-1.0, 1.0 - 0.5 * error) - STRAY_NUMBER_PENALTY * len(stray))


FAMILY = Family(
    name="arithmetic",
    templates=("What is {a} plus {b}?", "Add {a} and {b}.", "What is {a} + {b}?"),
    patterns={"a": r"\d+", "b": r"\d+"},
    grid=tuple({"a": a, "b": b} for a in range(10) for b in range(10)),
    split_key=("a", "b"),
    parse=_parse,
    references=_references,
    imperfect=_imperfect,
    score=_score,
    max_words=lambda p: 8,
)
