"""Preference pairs (prompt, chosen, rejected) for reward-model training.

Three schemas are read, detected by their columns:
  generic            prompt, chosen, rejected (prompt may be a bare instruction)
  Dahoas/rm-static   prompt, response, chosen, rejected (prompt "\\n\\nHuman: ...\\n\\nAssistant:")
  Anthropic/hh-rlhf  chosen, rejected, each a whole transcript ending in the assistant's reply
Every pair comes out in the seed's format: prompt "Human: ...\\n\\nAssistant:" and the bare
response texts, so a sequence is prompt + " " + response, as in SFT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rlhfkit.data.collate import right_pad
from rlhfkit.data.sft import fit_prompt
from rlhfkit.data.sources import load_rows
from rlhfkit.data.templates import ASSISTANT, render_prompt
from rlhfkit.errors import ConfigError, DataError

FORMATS = ("auto", "generic", "rm-static", "hh-rlhf")
COLUMNS = {
    "generic": ("prompt", "chosen", "rejected"),
    "rm-static": ("prompt", "response", "chosen", "rejected"),
    "hh-rlhf": ("chosen", "rejected"),
}
SCHEMAS = (
    "prompt, chosen, rejected (generic), prompt, response, chosen, rejected (Dahoas/rm-static) "
    "or chosen, rejected transcripts (Anthropic/hh-rlhf)"
)
TURN = "\n\nHuman:"


@dataclass
class PreferenceRows:
    pairs: list[dict]
    """{"prompt", "chosen", "rejected"} plus the row's other columns (gold scores ...)."""
    dropped_identical: int
    """Pairs whose chosen and rejected responses were the same text (no preference to learn)."""
    kept_single_turn: int | None
    """Rows with exactly one human turn, out of `total`; None when single_turn was off."""
    total: int
    """Rows in the source."""
    rows: list[int] = field(default_factory=list)
    """Source row index of each pair, for error messages further down (see tokenize_pairs)."""

    def __len__(self) -> int:
        return len(self.pairs)


def load_preference_pairs(
    source: str, split: str = "train", format: str = "auto", single_turn: bool = False
) -> PreferenceRows:
    """Validated pairs from any `load_rows` source; prints nothing (the caller reports the counts).

    Every row is validated, then `single_turn` keeps prompts with one human turn (the seed's
    filter), then pairs with chosen == rejected are dropped and counted.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown preference data format {format!r}; valid: {', '.join(FORMATS)}")
    rows = load_rows(source, split)
    fmt = detect_format(rows[0], f"{source}: row 0") if format == "auto" else format
    pairs, kept_rows, dropped_identical, kept_single_turn = [], [], 0, 0
    for i, row in enumerate(rows):
        pair = pair_of(row, fmt, f"{source}: row {i}")
        if single_turn:
            if human_turns(pair["prompt"]) != 1:
                continue
            kept_single_turn += 1
        if pair["chosen"] == pair["rejected"]:
            dropped_identical += 1
            continue
        pairs.append(pair)
        kept_rows.append(i)
    if not pairs:
        kept = f"{kept_single_turn} of {len(rows)} rows single-turn, " if single_turn else f"{len(rows)} rows, "
        raise DataError(f"{source}: dataset is empty after filtering ({kept}{dropped_identical} with chosen == rejected)")
    return PreferenceRows(pairs, dropped_identical, kept_single_turn if single_turn else None, len(rows), kept_rows)


def detect_format(row: dict, where: str) -> str:
    if "prompt" in row:
        return "rm-static" if "response" in row else "generic"
    if "chosen" in row or "rejected" in row:
        return "hh-rlhf"
    raise DataError(f"{where}: missing columns; expected {SCHEMAS}, found {', '.join(sorted(row)) or 'none'}")


def human_turns(prompt: str) -> int:
    # Count turn markers, not every "Human:" (a message may quote the word).
    return ("\n\n" + prompt).count(TURN)


def pair_of(row: dict, fmt: str, where: str) -> dict:
    """One row as {"prompt", "chosen", "rejected", **other columns}; raises DataError naming `where`."""
    missing = [key for key in COLUMNS[fmt] if key not in row]
    if missing:
        raise DataError(
            f"{where}: missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)} "
            f"for the {fmt} format (expected {SCHEMAS})"
        )
    for key in COLUMNS[fmt]:
        if not isinstance(row[key], str):
            raise DataError(f"{where}: column '{key}' must be a string, got {type(row[key]).__name__}")
    for key, value in row.items():
        if "score" in key and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise DataError(f"{where}: column '{key}' must be a finite number, got {value!r}")
    if fmt == "hh-rlhf":
        prompt, chosen = split_transcript(row["chosen"], where, "chosen")
        rejected_prompt, rejected = split_transcript(row["rejected"], where, "rejected")
        if rejected_prompt != prompt:
            raise DataError(f"{where}: 'chosen' and 'rejected' transcripts differ before the last assistant turn")
    else:
        prompt, chosen, rejected = normalise_prompt(row["prompt"], where), row["chosen"].strip(), row["rejected"].strip()
    for key, text in (("chosen", chosen), ("rejected", rejected)):
        if not text:
            raise DataError(f"{where}: empty '{key}' response")
    extras = {k: v for k, v in row.items() if k not in COLUMNS[fmt]}
    return {**extras, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def normalise_prompt(text: str, where: str) -> str:
    """The seed's "Human: ...\\n\\nAssistant:" from a bare instruction or an Anthropic-style prompt."""
    prompt = text.strip()
    if not prompt:
        raise DataError(f"{where}: empty 'prompt'")
    if "Assistant:" not in prompt:
        return render_prompt(prompt)
    if not prompt.endswith(ASSISTANT):
        # The response is appended after the prompt, so it must end where the assistant speaks.
        raise DataError(f"{where}: 'prompt' mentions 'Assistant:' but does not end with '\\n\\nAssistant:'")
    return prompt


def split_transcript(text: str, where: str, key: str) -> tuple[str, str]:
    """(prompt up to and including the last "\\n\\nAssistant:", stripped final response)."""
    cut = text.rfind(ASSISTANT)
    if cut < 0:
        raise DataError(f"{where}: '{key}' transcript has no '\\n\\nAssistant:' turn (expected Anthropic/hh-rlhf format)")
    cut += len(ASSISTANT)
    return text[:cut].lstrip(), text[cut:].strip()


@dataclass
class TokenizedPairs:
    chosen_ids: list[list[int]] = field(default_factory=list)
    rejected_ids: list[list[int]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    """Index of each pair's source row (its position in `pairs`, or `row_ids[i]` when given)."""
    dropped_too_long: int = 0
    truncated_prompts: int = 0

    def __len__(self) -> int:
        return len(self.chosen_ids)


def tokenize_pairs(
    pairs: list[dict],
    tokenizer,
    source: str,
    max_length: int,
    truncation: str,
    row_ids: list[int] | None = None,
) -> TokenizedPairs:
    """prompt ids + " " + response ids for both responses, with no EOS appended: the reward is read
    at the last real token, and with pad == eos a trailing EOS would be indistinguishable from padding.

    `row_ids` (PreferenceRows.rows) makes messages and `.rows` name source rows, not list positions.
    """
    out = TokenizedPairs()
    for i, pair in enumerate(pairs):
        row = row_ids[i] if row_ids is not None else i
        where = f"{source}: row {row}"
        prompt_ids = tokenizer(pair["prompt"])["input_ids"]
        chosen = tokenizer(" " + pair["chosen"], add_special_tokens=False)["input_ids"]
        rejected = tokenizer(" " + pair["rejected"], add_special_tokens=False)["input_ids"]
        # One cut for both, so chosen and rejected still share the same prompt tokens.
        fitted = fit_prompt(prompt_ids, max(len(chosen), len(rejected)), max_length, truncation, where)
        if fitted is None:
            out.dropped_too_long += 1
            continue
        out.truncated_prompts += len(fitted) < len(prompt_ids)
        prompt_ids = fitted
        out.chosen_ids.append(prompt_ids + chosen)
        out.rejected_ids.append(prompt_ids + rejected)
        out.rows.append(row)
    if not out.chosen_ids:
        raise DataError(
            f"{source}: dataset is empty after filtering ({out.dropped_too_long} pairs longer than "
            f"data.max_length={max_length})"
        )
    return out


def collate_pairs(chosen_ids: list[list[int]], rejected_ids: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One right-padded batch of 2B rows, the B chosen then the B rejected, so one forward pass
    scores both (models.reward.rewards_at_last_token reads each row where its attention mask ends)."""
    if len(chosen_ids) != len(rejected_ids):
        raise ValueError(f"{len(chosen_ids)} chosen but {len(rejected_ids)} rejected sequences")
    input_ids, attention_mask = right_pad(list(chosen_ids) + list(rejected_ids), pad_token_id)  # (2B, T)
    return {"input_ids": input_ids, "attention_mask": attention_mask}
