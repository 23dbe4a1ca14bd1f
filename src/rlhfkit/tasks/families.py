"""The registry of task families and the parser that maps an instruction back to one."""

import re

from . import arithmetic, length, listing, praise, repeat, sentiment
from .spec import Family, Params
from .text import instruction_of, template_regex

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        sentiment.FAMILY,
        repeat.FAMILY,
        listing.FAMILY,
        arithmetic.FAMILY,
        length.FAMILY,
        praise.FAMILY,
    )
}
DEFAULT_FAMILIES: tuple[str, ...] = ("sentiment", "repeat", "list", "arithmetic", "length")
"""The `default` mix (SFT data, the tiny tokenizer's corpus). `praise` stays out: the demo's family with
headroom (`make demo`) is one the SFT model has never seen answered (tasks/praise.py)."""

# (family, template index, regex) for every wording of every family, compiled once.
_PARSERS: tuple[tuple[Family, int, re.Pattern], ...] = tuple(
    (f, i, template_regex(t, f.patterns)) for f in FAMILIES.values() for i, t in enumerate(f.templates)
)


def parse_prompt(prompt: str) -> tuple[Family, Params]:
    """The family and typed parameters of a rendered prompt or bare instruction.

    Raises ValueError when no family's wording matches, or the parameters are out of range.
    """
    instruction = instruction_of(prompt)
    for family, _, regex in _PARSERS:
        match = regex.fullmatch(instruction)
        if match:
            return family, family.parse(match.groupdict())
    shown = instruction if len(instruction) <= 80 else instruction[:77] + "..."
    raise ValueError(f"not a built-in task prompt: {shown!r}")
