"""Preference pairs (prompt, chosen, rejected) for reward-model training (and any stage that
learns from pairs: the reader knows nothing of the loss).

Four schemas are read, detected by their columns:
  generic            prompt, chosen, rejected (prompt may be a bare instruction)
  Dahoas/rm-static   prompt, response, chosen, rejected (prompt "\\n\\nHuman: ...\\n\\nAssistant:")
  Anthropic/hh-rlhf  chosen, rejected, each a whole transcript ending in the assistant's reply
  conversational     chosen, rejected as role/content message lists ending with the assistant's
                     turn: whole conversations (UltraFeedback-binarized; a `prompt` string beside
                     them is not needed) or, after a `prompt` message list, the reply alone (TRL)
A pair's prompt is text in the Human/Assistant format ("Human: ...\\n\\nAssistant:") or, for
conversational rows, the list of turns before the reply; its responses are bare texts.
`tokenize_pairs` renders both with data.template (templates.render), as SFT and PPO do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rlhfkit.data.collate import right_pad
from rlhfkit.data.sft import fit_prompt
from rlhfkit.data.sources import load_rows
from rlhfkit.data.templates import (
    ASSISTANT,
    check_messages,
    render,
    render_prompt,
    render_text,
    require_chat,
    turns,
)
from rlhfkit.errors import ConfigError, DataError

FORMATS = ("auto", "generic", "rm-static", "hh-rlhf", "conversational")
COLUMNS = {
    "generic": ("prompt", "chosen", "rejected"),
    "rm-static": ("prompt", "response", "chosen", "rejected"),
    "hh-rlhf": ("chosen", "rejected"),
    "conversational": ("chosen", "rejected"),
}
SCHEMAS = (
    "prompt, chosen, rejected (generic), prompt, response, chosen, rejected (Dahoas/rm-static), "
    "chosen, rejected transcripts (Anthropic/hh-rlhf) or message lists (conversational)"
)
TURN = "\n\nHuman:"


@dataclass
class PreferenceRows:
    pairs: list[dict]
    """{"prompt", "chosen", "rejected"} plus the row's other columns (gold scores ...); the prompt is
    text in the Human/Assistant format or, for conversational rows, a list of messages."""
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

    Every row is validated, then `single_turn` keeps prompts with one human turn (the original
    notebook's filter for Dahoas/rm-static, design §8.1), then pairs with chosen == rejected are dropped
    and counted.
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
        kept = (
            f"{kept_single_turn} of {len(rows)} rows single-turn, " if single_turn else f"{len(rows)} rows, "
        )
        raise DataError(
            f"{source}: dataset is empty after filtering ({kept}{dropped_identical} with chosen == rejected)"
        )
    return PreferenceRows(
        pairs, dropped_identical, kept_single_turn if single_turn else None, len(rows), kept_rows
    )


def detect_format(row: dict, where: str) -> str:
    # Message lists hold dicts; a list of strings is a wrong column type, reported as such.
    if any(
        isinstance(row.get(key), list) and any(isinstance(m, dict) for m in row[key])
        for key in COLUMNS["generic"]
    ):
        return "conversational"
    if "prompt" in row:
        return "rm-static" if "response" in row else "generic"
    if "chosen" in row or "rejected" in row:
        return "hh-rlhf"
    raise DataError(f"{where}: missing columns; expected {SCHEMAS}, found {', '.join(sorted(row)) or 'none'}")


def human_turns(prompt: str | list[dict]) -> int:
    if isinstance(prompt, list):
        return sum(message["role"] == "user" for message in prompt)
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
    strings = () if fmt == "conversational" else COLUMNS[fmt]  # message lists are checked turn by turn
    for key in strings:
        if not isinstance(row[key], str):
            raise DataError(f"{where}: column '{key}' must be a string, got {type(row[key]).__name__}")
    for key, value in row.items():
        if "score" in key and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
            raise DataError(f"{where}: column '{key}' must be a finite number, got {value!r}")
    if fmt == "conversational":
        prompt, chosen, rejected = conversation_pair(row, where)
    elif fmt == "hh-rlhf":
        prompt, chosen = split_transcript(row["chosen"], where, "chosen")
        rejected_prompt, rejected = split_transcript(row["rejected"], where, "rejected")
        if rejected_prompt != prompt:
            raise DataError(
                f"{where}: 'chosen' and 'rejected' transcripts differ before the last assistant turn"
            )
    else:
        prompt, chosen, rejected = (
            normalise_prompt(row["prompt"], where),
            row["chosen"].strip(),
            row["rejected"].strip(),
        )
    for key, text in (("chosen", chosen), ("rejected", rejected)):
        if not text:
            raise DataError(f"{where}: empty '{key}' response")
    extras = {k: v for k, v in row.items() if k not in COLUMNS[fmt]}
    return {**extras, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def conversation_pair(row: dict, where: str) -> tuple[list[dict], str, str]:
    """(turns before the reply, chosen reply, rejected reply) of a conversational row: the prompt is
    the `prompt` message list (if any) followed by every turn of a conversation but its last."""
    prefix = row.get("prompt")
    if prefix is not None and not isinstance(prefix, (list, str)):
        raise DataError(
            f"{where}: column 'prompt' must be a list of messages or a string, got {type(prefix).__name__}"
        )
    # A `prompt` string beside whole conversations (UltraFeedback-binarized) repeats their first turn.
    prefix = check_messages(prefix, where, "prompt", last=None) if isinstance(prefix, list) else []
    chosen = check_messages(row["chosen"], where, "chosen")
    rejected = check_messages(row["rejected"], where, "rejected")
    prompt = prefix + chosen[:-1]
    if prefix + rejected[:-1] != prompt:
        raise DataError(
            f"{where}: 'chosen' and 'rejected' conversations differ before the final assistant turn"
        )
    if not prompt:
        raise DataError(
            f"{where}: no turn before the final assistant turn (expected a 'prompt' message "
            "list or conversations that start with the user's turn)"
        )
    return prompt, chosen[-1]["content"].strip(), rejected[-1]["content"].strip()


def normalise_prompt(text: str, where: str) -> str:
    """The "Human: ...\\n\\nAssistant:" from a bare instruction or an Anthropic-style prompt."""
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
        raise DataError(
            f"{where}: '{key}' transcript has no '\\n\\nAssistant:' turn (expected Anthropic/hh-rlhf format)"
        )
    cut += len(ASSISTANT)
    return text[:cut].lstrip(), text[cut:].strip()


@dataclass
class TokenizedPairs:
    chosen_ids: list[list[int]] = field(default_factory=list)
    rejected_ids: list[list[int]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    """Index of each pair's source row (its position in `pairs`, or `row_ids[i]` when given)."""
    prompt_lengths: list[int] = field(default_factory=list)
    """Prompt tokens each pair's chosen and rejected share: the responses start there (DPO scores them)."""
    dropped_too_long: int = 0
    truncated_prompts: int = 0

    def __len__(self) -> int:
        return len(self.chosen_ids)

    def pair_rows(self, pairs: list[int]) -> tuple[list[list[int]], list[int]]:
        """(rows, prompt lengths) of these pairs, the chosen then the rejected: the 2B rows a step scores,
        each pair's two rows starting with the same prompt ids (models.prefix.SharedPrompts.split)."""
        rows = [self.chosen_ids[i] for i in pairs] + [self.rejected_ids[i] for i in pairs]
        return rows, [self.prompt_lengths[i] for i in pairs] * 2


def tokenize_pairs(
    pairs: list[dict],
    tokenizer,
    source: str,
    max_length: int,
    truncation: str,
    row_ids: list[int] | None = None,
    template: str = "human_assistant",
    eos: bool = False,
) -> TokenizedPairs:
    """Prompt ids + response ids for both responses through `render` with `template`, with no EOS
    appended: the reward is read at the last real token, and with pad == eos a trailing EOS would be
    indistinguishable from padding. PPO's reward model reads exactly these ids for its rollouts.

    `row_ids` (PreferenceRows.rows) makes messages and `.rows` name source rows, not list positions.
    `eos` ends both responses with EOS, as SFT trained them: DPO scores the whole response's
    probability, stopping included.
    """
    out = TokenizedPairs()
    for i, pair in enumerate(pairs):
        row = row_ids[i] if row_ids is not None else i
        where = f"{source}: row {row}"
        prompt = pair_prompt(pair, template, where)
        chosen = render(tokenizer, template, prompt, pair["chosen"], eos=eos, where=where)
        rejected = render(tokenizer, template, prompt, pair["rejected"], eos=eos, where=where).completion_ids
        prompt_ids = chosen.prompt_ids
        # One cut for both, so chosen and rejected still share the same prompt tokens.
        longer = max(len(chosen.completion_ids), len(rejected))
        fitted = fit_prompt(prompt_ids, longer, max_length, truncation, where)
        if fitted is None:
            out.dropped_too_long += 1
            continue
        out.truncated_prompts += len(fitted) < len(prompt_ids)
        out.chosen_ids.append(fitted + chosen.completion_ids)
        out.rejected_ids.append(fitted + rejected)
        out.rows.append(row)
        out.prompt_lengths.append(len(fitted))
    if not out.chosen_ids:
        raise DataError(
            f"{source}: dataset is empty after filtering ({out.dropped_too_long} pairs longer than "
            f"data.max_length={max_length})"
        )
    return out


def pair_prompt(pair: dict, template: str, where: str) -> str | list[dict]:
    """A pair's prompt as `render` takes it for `template`: text in the Human/Assistant format is split into
    turns for a chat template; conversational turns need one."""
    prompt = pair["prompt"]
    if isinstance(prompt, list):
        require_chat(template, where)
        return prompt
    return turns(prompt, where) if template == "chat" else prompt


def pair_prompts(pairs: list[dict], tokenizer, template: str) -> list[str]:
    """The pairs' distinct prompts, rendered as text with `template` (to sample new responses for)."""
    texts = [
        render_text(tokenizer, template, pair_prompt(pair, template, f"pair {i}"))[0]
        for i, pair in enumerate(pairs)
    ]
    return list(dict.fromkeys(texts))


def collate_pairs(
    chosen_ids: list[list[int]], rejected_ids: list[list[int]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """One right-padded batch of 2B rows, the B chosen then the B rejected, so one forward pass
    scores both (models.reward.rewards_at_last_token reads each row where its attention mask ends)."""
    if len(chosen_ids) != len(rejected_ids):
        raise ValueError(f"{len(chosen_ids)} chosen but {len(rejected_ids)} rejected sequences")
    input_ids, attention_mask = right_pad(list(chosen_ids) + list(rejected_ids), pad_token_id)  # (2B, T)
    return {"input_ids": input_ids, "attention_mask": attention_mask}
