"""SFT examples: prompt + completion token ids, with labels on completion tokens only."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhfkit.data.collate import right_pad
from rlhfkit.data.templates import completion_text, render_chat_prompt, render_prompt
from rlhfkit.errors import DataError

IGNORE = -100
SCHEMAS = "instruction, output[, input] (Alpaca) or prompt, completion"


def prompt_and_completion(row: dict, where: str, template: str, tokenizer) -> tuple[str, str]:
    """(prompt text, completion text) of one row in either schema; a missing column is an error."""
    if "instruction" in row or "output" in row:
        for key in ("instruction", "output"):
            if not isinstance(row.get(key), str):
                raise DataError(f"{where}: missing or non-string column '{key}' (expected {SCHEMAS})")
        input_ = row.get("input") or ""
        if not isinstance(input_, str):
            raise DataError(f"{where}: column 'input' must be a string, got {type(input_).__name__}")
        instruction, output = row["instruction"], row["output"]
    elif "prompt" in row:
        if not isinstance(row["prompt"], str) or not isinstance(row.get("completion"), str):
            raise DataError(f"{where}: missing or non-string column 'completion' (expected {SCHEMAS})")
        return row["prompt"], row["completion"]
    else:
        raise DataError(f"{where}: missing columns; expected {SCHEMAS}, found {', '.join(sorted(row)) or 'none'}")
    if not output.strip():
        raise DataError(f"{where}: empty 'output' (nothing to learn from)")
    if template == "chat":
        return render_chat_prompt(tokenizer, instruction, input_), completion_text(output, "chat")
    return render_prompt(instruction, input_), completion_text(output, "human_assistant")


def prompt_text(row: dict, where: str, template: str, tokenizer) -> str:
    """The rendered prompt of a row in either schema; completions are not needed (PPO prompts)."""
    if "instruction" in row:
        if not isinstance(row["instruction"], str) or not row["instruction"].strip():
            raise DataError(f"{where}: missing or empty column 'instruction'")
        input_ = row.get("input") or ""
        if template == "chat":
            return render_chat_prompt(tokenizer, row["instruction"], input_)
        return render_prompt(row["instruction"], input_)
    if isinstance(row.get("prompt"), str) and row["prompt"].strip():
        return row["prompt"]
    raise DataError(f"{where}: missing columns; expected instruction[, input] or prompt, found {', '.join(sorted(row)) or 'none'}")


@dataclass
class TokenizedSFT:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    """Index of each example's source row."""
    dropped_too_long: int = 0
    truncated_prompts: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


def fit_prompt(prompt_ids: list[int], response_len: int, max_length: int, truncation: str, where: str) -> list[int] | None:
    """The prompt ids that fit beside a response of `response_len` tokens, or None to drop the row.

    data.truncation: `error` stops naming the row; `truncate_prompt` cuts the prompt from the left
    when that is enough; otherwise (and for `drop`) the row is dropped, never a cut completion.
    """
    overflow = len(prompt_ids) + response_len - max_length
    if overflow <= 0:
        return prompt_ids
    if truncation == "error":
        raise DataError(
            f"{where}: {len(prompt_ids) + response_len} tokens > data.max_length={max_length} "
            "(raise it, or set data.truncation=drop or truncate_prompt)"
        )
    if truncation == "truncate_prompt" and overflow < len(prompt_ids):
        return prompt_ids[overflow:]
    return None


def tokenize_sft(rows: list[dict], tokenizer, source: str, template: str, max_length: int, truncation: str,
                 row_ids: list[int] | None = None) -> TokenizedSFT:
    """Tokenize prompt and completion separately (so the boundary is exact) and append EOS.
    `row_ids` are the rows' numbers in the source, for messages (`.rows` stays positions in `rows`)."""
    out = TokenizedSFT()
    for i, row in enumerate(rows):
        where = f"{source}: row {row_ids[i] if row_ids is not None else i}"
        prompt, completion = prompt_and_completion(row, where, template, tokenizer)
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        fitted = fit_prompt(prompt_ids, len(completion_ids), max_length, truncation, where)
        if fitted is None:
            out.dropped_too_long += 1
            continue
        out.truncated_prompts += len(fitted) < len(prompt_ids)
        prompt_ids = fitted
        out.input_ids.append(prompt_ids + completion_ids)
        out.labels.append([IGNORE] * len(prompt_ids) + completion_ids)
        out.rows.append(i)
    if not out.input_ids:
        raise DataError(
            f"{source}: dataset is empty after filtering ({out.dropped_too_long} rows longer than "
            f"data.max_length={max_length})"
        )
    return out


def collate_sft(input_ids: list[list[int]], labels: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: padding gets attention 0 and label IGNORE, so its id never matters."""
    batch_ids, attention_mask = right_pad(input_ids, pad_token_id)
    batch_labels, _ = right_pad(labels, IGNORE)
    return {"input_ids": batch_ids, "attention_mask": attention_mask, "labels": batch_labels}


def completion_tokens(labels: list[int]) -> int:
    # Labels are shifted inside the loss: the first position never has a target.
    return sum(1 for x in labels[1:] if x != IGNORE)
