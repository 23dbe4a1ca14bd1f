"""`sentiment`: "Say something nice about {topic}." judged by VADER.

Score = 0.7 * clip(compound / 0.5) + 0.3 * (+1 if the topic is named else -1)
        - 0.2 per repeated content word (4+ letters).
VADER's compound gives a graded signal for RL; saturating at 0.5 means one clearly positive
sentence earns full credit, so piling on superlatives ("love love love") gains nothing.
"""

from functools import lru_cache
from random import Random

from .spec import Family, Params
from .text import capitalize, clip, mentions, words
from .vocab import TOPICS

SATURATION = 0.5
TOPIC_PATTERN = r"[a-z][a-z' -]*?"

_GOOD = (
    "I love {topic}.",
    "{Topic} {be} wonderful.",
    "{Topic} {be} great and beautiful.",
    "Sure! {Topic} {be} lovely and fun.",
    "I really like {topic}, {pron} {be} amazing.",
    "{Topic} {be} truly delightful.",
    "There is so much to love about {topic}.",
    "{Topic} {be} the best!",
)
_FLAWED = (
    "{Topic} {be} here.",  # neutral
    "I saw {topic} today.",
    "{Topic} {be} fine I guess.",  # lukewarm
    "{Topic} {be} boring.",  # negative
    "I do not like {topic}.",
    "What a lovely day.",  # positive but off topic
    "{Topic} {be} great, {topic} {be} great.",  # repetitive
)


@lru_cache(maxsize=1)
def _analyzer():
    # Loading the lexicon takes ~0.1 s; the judge runs thousands of times.
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@lru_cache(maxsize=65536)
def compound(text: str) -> float:
    return _analyzer().polarity_scores(text)["compound"]


def _fill(template: str, topic: str) -> str:
    be = TOPICS.get(topic, "is")
    pron = "they" if be == "are" else "it"
    return template.format(topic=topic, Topic=capitalize(topic), be=be, pron=pron)


def _parse(groups: dict[str, str]) -> Params:
    return {"topic": groups["topic"].lower()}


def _references(p: Params, rng: Random) -> list[str]:
    return [_fill(t, p["topic"]) for t in _GOOD]


def _imperfect(p: Params, rng: Random) -> str:
    return _fill(rng.choice(_FLAWED), p["topic"])


def _score(p: Params, response: str) -> float:
    sentiment = clip(compound(response) / SATURATION)
    topic = 1.0 if mentions(response, p["topic"]) else -1.0
    content = [w for w in words(response) if len(w) >= 4]
    repeats = len(content) - len(set(content))
    return clip(0.7 * sentiment + 0.3 * topic - 0.2 * repeats)


FAMILY = Family(
    name="sentiment",
    templates=(
        "Say something nice about {topic}.",
        "Write a kind sentence about {topic}.",
        "Compliment {topic} in one sentence.",
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
