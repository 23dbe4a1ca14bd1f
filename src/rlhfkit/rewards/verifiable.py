"""Verifiable rewards: exact checks of the built-in task's answers that can be checked, and a format
check, in the `f(samples)` form (rewards/function.py), e.g.
`ppo.reward=rlhfkit.rewards.verifiable:verifiable_reward` with no reward model at all.

Unlike the gold judge (tasks/judge.py), which grades closeness for every family, these score 1 for
a correct answer and 0 otherwise (a list earns a third per check passed): a group estimator (GRPO,
RLOO) then compares the samples of one prompt by correctness alone.
"""

from __future__ import annotations

import re

from rlhfkit.rewards.function import RewardSample
from rlhfkit.tasks import parse_prompt
from rlhfkit.tasks.repeat import FILLER
from rlhfkit.tasks.text import words
from rlhfkit.tasks.vocab import CATEGORIES

_NUMBER = re.compile(r"\d+")
_SEPARATOR = re.compile(r",|\band\b", re.IGNORECASE)
_TURN = re.compile(r"\b(Human|Assistant):")


def arithmetic_correct(params: dict, response: str) -> float:
    """1 when the last number of the response is a + b (as the judge reads the answer), else 0."""
    numbers = _NUMBER.findall(response)
    return float(bool(numbers) and int(numbers[-1]) == params["a"] + params["b"])


def repeat_correct(params: dict, response: str) -> float:
    """1 when the word appears exactly n times and every other word is filler ("Sure, here you go"),
    else 0."""
    ws = words(response)
    others = [w for w in ws if w != params["word"]]
    return float(ws.count(params["word"]) == params["n"] and all(w in FILLER for w in others))


def _in_category(item: str, vocab) -> str | None:
    """The vocabulary word `item` names (plural forms accepted), or None."""
    for form in (item, item[:-2] if item.endswith("es") else "", item[:-1] if item.endswith("s") else ""):
        if form in vocab:
            return form
    return None


def list_correct(params: dict, response: str) -> float:
    """A third for each check: exactly n items, all distinct, all in the category. Items are split on
    commas and "and" after the last colon (a preamble such as "Here are 3 colors:" is ignored)."""
    vocab, n = CATEGORIES[params["category"]], params["n"]
    items = [" ".join(ws) for ws in (words(s) for s in _SEPARATOR.split(response.rsplit(":", 1)[-1])) if ws]
    if not items:
        return 0.0
    named = [_in_category(item, vocab) for item in items]
    keys = [name or item for name, item in zip(named, items)]  # "cats" and "cat" are one item
    checks = (len(items) == n, len(set(keys)) == len(keys), all(name is not None for name in named))
    return sum(checks) / len(checks)


# Family -> exact check; families missing here (sentiment, length) have no checkable answer.
CHECKS = {"arithmetic": arithmetic_correct, "repeat": repeat_correct, "list": list_correct}


def verifiable_reward(samples: list[RewardSample]) -> list[float]:
    """The exact check of each row's family (CHECKS), the prompt read from the row's `instruction`
    metadata when the dataset has one (any template), else from the rendered prompt. Raises
    ValueError for a family with no checkable answer: train on builtin:arithmetic,repeat,list."""
    scores = []
    for sample in samples:
        family, params = parse_prompt(sample.metadata.get("instruction") or sample.prompt)
        if family.name not in CHECKS:
            raise ValueError(
                f"{family.name} prompts have no checkable answer (checkable: {', '.join(CHECKS)})"
            )
        scores.append(CHECKS[family.name](params, sample.response))
    return scores


def format_reward(samples: list[RewardSample]) -> list[float]:
    """1 when the response ended with EOS, is not empty and starts no new dialogue turn ("Human:"),
    else 0: a check to add to another reward (ppo.extra_rewards), not a task score."""
    return [float(s.finished and bool(s.response.strip()) and not _TURN.search(s.response)) for s in samples]
