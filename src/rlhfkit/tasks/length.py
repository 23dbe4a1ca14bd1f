"""`length`: "Describe {topic} in at most {n} words." (n in 4, 6, 8).

Score = 0.6 * limit + 0.4 * (+1 if the topic is named else -1), where limit is 1 within the
limit and drops by 0.5 per word over it (down to -1); a one-word answer gets limit 0.
"""

from random import Random

from .sentiment import TOPIC_PATTERN
from .spec import Family, Params
from .text import capitalize, clip, mentions, words
from .vocab import TOPICS

LIMITS = (4, 6, 8)
_DESCRIPTIONS = (
    "I like {topic}.",
    "{Topic} {be} nice.",
    "Many people enjoy {topic}.",
    "{Topic} {be} common and useful.",
    "{Topic} {be} part of daily life.",
    "People often talk about {topic}.",
    "{Topic} {be} simple but very interesting.",
    "I think about {topic} quite a lot.",
    "Most people know {topic} and like {topic} very much.",
)
_OFF_TOPIC = ("It is nice.", "Very good.", "I do not know.")


def _fill(template: str, topic: str) -> str:
    return template.format(topic=topic, Topic=capitalize(topic), be=TOPICS.get(topic, "is"))


def _parse(groups: dict[str, str]) -> Params:
    n = int(groups["n"])
    if n < 1:
        raise ValueError(f"word limit must be at least 1, got {n}")
    return {"topic": groups["topic"].lower(), "n": n}


def _references(p: Params, rng: Random) -> list[str]:
    texts = [_fill(t, p["topic"]) for t in _DESCRIPTIONS]
    return [t for t in texts if len(words(t)) <= p["n"]]


def _imperfect(p: Params, rng: Random) -> str:
    texts = [_fill(t, p["topic"]) for t in _DESCRIPTIONS]
    too_long = [t for t in texts if len(words(t)) > p["n"]]
    if too_long and rng.random() < 0.7:
        return rng.choice(too_long)
    return rng.choice(_OFF_TOPIC)


def _score(p: Params, response: str) -> float:
    n_words = len(words(response))
    limit = 1.0 if n_words <= p["n"] else max(-1.0, 1.0 - 0.5 * (n_words - p["n"]))
    if n_words < 2:
        limit = 0.0
    topic = 1.0 if mentions(response, p["topic"]) else -1.0
    return clip(0.6 * limit + 0.4 * topic)


FAMILY = Family(
    name="length",
    templates=(
        "Describe {topic} in at most {n} words.",
        "Describe {topic} in {n} words or fewer.",
        "Use at most {n} words to describe {topic}.",
    ),
    patterns={"topic": TOPIC_PATTERN, "n": r"\d+"},
    grid=tuple({"topic": t, "n": n} for t in TOPICS for n in LIMITS),
    split_key=("topic", "n"),
    parse=_parse,
    references=_references,
    imperfect=_imperfect,
    score=_score,
    max_words=lambda p: p["n"] + 6,
)
