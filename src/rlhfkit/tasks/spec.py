"""What a task family is: how to write its prompts, answer them, and judge the answers."""

from collections.abc import Callable
from dataclasses import dataclass
from random import Random

Params = dict  # a family's parameters, e.g. {"word": "apple", "n": 3}


@dataclass(frozen=True)
class Family:
    name: str
    templates: tuple[str, ...]  # instruction wordings, str.format-ed with the params
    patterns: dict[str, str]  # regex for each placeholder, used to parse instructions back
    grid: tuple[Params, ...]  # every parameter combination the generator uses
    split_key: tuple[str, ...]  # params (or "template") hashed to pick the held-out split
    parse: Callable[[dict[str, str]], Params]  # regex groups -> typed params; ValueError if invalid
    references: Callable[[Params, Random], list[str]]  # good answers in varied wording
    imperfect: Callable[[Params, Random], str]  # a plausible but flawed answer (noisy demos)
    score: Callable[[Params, str], float]  # in [-1, 1], before the judge's shared penalties
    max_words: Callable[[Params], int]  # longest answer that is not rambling
