"""The gold judge: a deterministic score in [-1, 1] standing in for a human rater.

gold = clip(family score - 0.1 per word past the family's length budget
            - 0.5 if the response never ended, to [-1, 1]); an empty response scores -1.
The family scores are documented in each family's module. Penalising rambling and a missing
end of sequence here, for every family, keeps PPO from winning by running on.
"""

from .families import parse_prompt
from .text import clip, words

RAMBLE_PENALTY_PER_WORD = 0.1
UNFINISHED_PENALTY = 0.5


def gold_score(prompt: str, response: str, finished: bool = True) -> float:
    """Score `response` to a built-in task prompt (rendered or bare instruction), in [-1, 1].

    `finished=False` means generation hit max_new_tokens without an end of sequence.
    Raises ValueError if the prompt is not one of the built-in families' wordings.
    """
    family, params = parse_prompt(prompt)
    response = response.strip()
    n_words = len(words(response))
    if n_words == 0:
        return -1.0
    ramble = RAMBLE_PENALTY_PER_WORD * max(0, n_words - family.max_words(params))
    unfinished = 0.0 if finished else UNFINISHED_PENALTY
    return clip(family.score(params, response) - ramble - unfinished)


def gold_scores(prompts: list[str], responses: list[str]) -> list[float]:
    """Batch gold scores, every response taken as finished; the `module:function` reward plugin."""
    if len(prompts) != len(responses):
        raise ValueError(f"gold_scores got {len(prompts)} prompts but {len(responses)} responses")
    return [gold_score(p, r) for p, r in zip(prompts, responses)]
