"""The built-in offline task: prompt families, reference answers, a gold judge and a noisy labeller.

A programmatic gold scorer stands in for the human (Gao et al. 2022, "Scaling Laws for Reward
Model Overoptimization"): it writes SFT demonstrations, labels preference pairs noisily for the
reward model, and measures PPO's true progress. Families (scoring in each module):
`sentiment` (VADER), `repeat`, `list`, `arithmetic`, `length` (the `default` mix), and `praise` (VADER's
lexicon; the demo's family with headroom). Depends on the standard library
and vaderSentiment only.
"""

from .families import DEFAULT_FAMILIES, FAMILIES, parse_prompt
from .judge import gold_score, gold_scores
from .labels import DEFAULT_TEMPERATURE, expected_agreement, noisy_label, preference_probability
from .rows import SPLITS, TASK_NAMES, corpus, task_families, task_names, task_rows
from .text import render

__all__ = [
    "DEFAULT_FAMILIES",
    "DEFAULT_TEMPERATURE",
    "FAMILIES",
    "SPLITS",
    "TASK_NAMES",
    "corpus",
    "expected_agreement",
    "gold_score",
    "gold_scores",
    "noisy_label",
    "parse_prompt",
    "preference_probability",
    "render",
    "task_families",
    "task_names",
    "task_rows",
]
