"""Small text helpers shared by the family judges and generators."""

import re
import string

_WORD = re.compile(r"[a-z0-9']+")
_PROMPT_HEAD = "Human:"
_PROMPT_TAIL = "Assistant:"


def words(text: str) -> list[str]:
    """Lower-cased words and numbers; punctuation is dropped ("Red, blue." -> ["red", "blue"])."""
    return _WORD.findall(text.lower())


def clip(x: float, lo: float = -1.0, hi: float = 1.0) -> float:
    return max(lo, min(hi, x))


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def mentions(text: str, topic: str) -> bool:
    """Whether `text` names the topic's head noun, singular or plural ("the sea" -> "sea")."""
    head = topic.lower().split()[-1]
    forms = {head, head + "s", head[:-1] if head.endswith("s") else head}
    return not forms.isdisjoint(words(text))


def render(instruction: str) -> str:
    """The Human/Assistant prompt format (the original gpt2 + Alpaca notebook's, design §8.1); the response
    follows after a space."""
    return f"{_PROMPT_HEAD} {instruction}\n\n{_PROMPT_TAIL}"


def instruction_of(prompt: str) -> str:
    """The bare instruction inside a rendered prompt (or the prompt itself), whitespace collapsed."""
    text = prompt.strip()
    if text.startswith(_PROMPT_HEAD):
        text = text[len(_PROMPT_HEAD) :]
    if text.endswith(_PROMPT_TAIL):
        text = text[: -len(_PROMPT_TAIL)]
    return " ".join(text.split())


def template_regex(template: str, patterns: dict[str, str]) -> re.Pattern:
    """Compile an instruction template into a regex with one named group per placeholder.

    Building the parser from the same template string as the generator keeps the two in step.
    """
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(f"(?P<{field}>{patterns[field]})")
    return re.compile("".join(parts), re.IGNORECASE)
