"""`praise`: "Praise {topic} with as many different kind words as you can." judged by VADER's lexicon.

With k the distinct kind words (VADER valence > 1.5: "great", "lovely", "cheerful"; "like" is not
one), counted only when the whole response reads positive (VADER compound > 0.05, so "not good,
not nice" earns nothing):
Score = 0.5 * min(k, 4) - 1 + 0.3 * (+1 if the topic is named else -1) - 0.2 per repeated content
word (4+ letters), and the judge's 16-word budget.
So "I love cats." (k = 1) scores -0.2, "Cats are great and beautiful." 0.3, and full credit needs
four different kind words in one short, on-topic sentence: `make demo`'s family with headroom
(docs/design.md §5.1). It is not in the `default` mix, so an SFT model trained on `default` has
never seen its answers; repeating a kind word or running past the budget is penalised, the
shortcuts a reward model learned from a few hundred pairs may still pay for.
"""

from random import Random

from .sentiment import TOPIC_PATTERN, _analyzer, _fill, _parse, compound
from .spec import Family, Params
from .text import clip, mentions, words
from .vocab import TOPICS

KIND_VALENCE = 1.5
"""A word is kind when VADER's lexicon gives it a valence above this (1.5 leaves out "like")."""
FULL_CREDIT_WORDS = 4
POSITIVE_COMPOUND = 0.05

_KIND = ("lovely", "wonderful", "cheerful", "gentle", "charming", "bright", "delightful", "brilliant")
_GOOD = (
    "{Topic} {be} {0}, {1}, {2} and {3}.",
    "I love {topic}: {pron} {be} {0}, {1} and {2}.",
    "{Topic} {be} truly {0}, {1} and {2}.",
    "Such {0}, {1}, {2} and {3} {topic}!",
)
_FLAWED = (
    "{Topic} {be} nice.",  # one kind word
    "I like {topic}.",  # none ("like" is not kind enough)
    "{Topic} {be} great and fun.",  # two
    "What a lovely, wonderful, cheerful day.",  # kind but off topic
    "{Topic} {be} lovely, lovely, lovely.",  # a repeat
    "{Topic} {be} not good and not nice.",  # kind words, negative reading
)


def kind_words(response: str) -> set[str]:
    """The distinct words of `response` whose VADER valence exceeds KIND_VALENCE."""
    lexicon = _analyzer().lexicon
    return {w for w in words(response) if lexicon.get(w, 0.0) > KIND_VALENCE}


def _references(p: Params, rng: Random) -> list[str]:
    # Kind words first, then the topic's placeholders, which the first format passes through.
    keep = {name: "{" + name + "}" for name in ("topic", "Topic", "be", "pron")}
    return [_fill(t.format(*rng.sample(_KIND, 4), **keep), p["topic"]) for t in _GOOD]


def _imperfect(p: Params, rng: Random) -> str:
    return _fill(rng.choice(_FLAWED), p["topic"])


def _score(p: Params, response: str) -> float:
    k = len(kind_words(response)) if compound(response) > POSITIVE_COMPOUND else 0
    topic = 1.0 if mentions(response, p["topic"]) else -1.0
    content = [w for w in words(response) if len(w) >= 4]
    repeats = len(content) - len(set(content))
    return clip(0.5 * min(k, FULL_CREDIT_WORDS) - 1.0 + 0.3 * topic - 0.2 * repeats)


FAMILY = Family(
    name="praise",
    templates=(
        "Praise {topic} with as many different kind words as you can.",
        "Describe {topic} in glowing terms.",
        "Say the nicest things you can about {topic}.",
        "Give {topic} a warm, enthusiastic compliment.",
    ),
    patterns={"topic": TOPIC_PATTERN},
    grid=tuple({"topic": t} for t in TOPICS),
    split_key=("topic",),  # held-out topics are never seen in this family's training prompts
    parse=_parse,
    references=_references,
    imperfect=_imperfect,
    score=_score,
    max_words=lambda p: 16,
)
