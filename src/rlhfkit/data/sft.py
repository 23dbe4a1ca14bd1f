"""SFT examples: prompt + completion token ids, with labels on completion tokens only."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhfkit.data.collate import right_pad
from rlhfkit.data.templates import RAW, check_messages, render, render_text, require_chat, user_turn
from rlhfkit.errors import DataError

IGNORE = -100
SCHEMAS = "instruction, output[, input] (Alpaca), prompt, completion, or messages (role/content turns)"


def sft_parts(row: dict, where: str, template: str) -> tuple[str | list[dict], str, str]:
    """(prompt, response, the template to render them with) of one row in any schema; a missing or
    malformed column is a one-line error naming the row. Conversational rows (`messages`, or TRL's
    `prompt`/`completion` message lists) keep every turn before the final assistant turn in the
    prompt, so only that last turn is learned."""
    if "messages" in row:
        return final_turn(check_messages(row["messages"], where, "messages"), where, template, "messages")
    if "instruction" in row or "output" in row:
        for key in ("instruction", "output"):
            if not isinstance(row.get(key), str):
                raise DataError(f"{where}: missing or non-string column '{key}' (expected {SCHEMAS})")
        input_ = row.get("input") or ""
        if not isinstance(input_, str):
            raise DataError(f"{where}: column 'input' must be a string, got {type(input_).__name__}")
        if not row["output"].strip():
            raise DataError(f"{where}: empty 'output' (nothing to learn from)")
        return user_turn(row["instruction"], input_), row["output"], template
    if "prompt" in row:
        if isinstance(row["prompt"], list) or isinstance(row.get("completion"), list):
            completion = check_messages(row.get("completion"), where, "completion")
            prompt = check_messages(row["prompt"], where, "prompt", last=None)
            return final_turn(prompt + completion, where, template, "completion")
        if not isinstance(row["prompt"], str) or not isinstance(row.get("completion"), str):
            raise DataError(f"{where}: missing or non-string column 'completion' (expected {SCHEMAS})")
        # Text rows bring their own formatting: prompt and completion are used as they are.
        return row["prompt"], row["completion"], RAW
    raise DataError(f"{where}: missing columns; expected {SCHEMAS}, found {', '.join(sorted(row)) or 'none'}")


def final_turn(messages: list[dict], where: str, template: str, key: str) -> tuple[list[dict], str, str]:
    """(the turns before the final assistant turn, its content, "chat") of a checked conversation."""
    require_chat(template, where)
    if len(messages) < 2:
        raise DataError(
            f"{where}: '{key}' has no turn before the final assistant turn (nothing to prompt with)"
        )
    if not messages[-1]["content"].strip():
        raise DataError(f"{where}: empty final assistant turn in '{key}' (nothing to learn from)")
    return messages[:-1], messages[-1]["content"], template


def prompt_and_completion(row: dict, where: str, template: str, tokenizer) -> tuple[str, str]:
    """(rendered prompt text, completion text as it follows the prompt) of a row in any schema."""
    prompt, response, how = sft_parts(row, where, template)
    return render_text(tokenizer, how, prompt, response, where)


def prompt_text(row: dict, where: str, template: str, tokenizer) -> str:
    """The rendered prompt of a row in any schema; completions are not needed (PPO prompts)."""
    if "messages" in row or isinstance(row.get("prompt"), list):
        key = "messages" if "messages" in row else "prompt"
        messages = check_messages(row[key], where, key, last=None)
        require_chat(template, where)
        # A conversation that ends with the assistant's reply (an SFT row) prompts with the turns before it.
        prompt = messages[:-1] if messages[-1]["role"] == "assistant" else messages
        if not prompt:
            raise DataError(
                f"{where}: '{key}' has no turn before the final assistant turn (nothing to prompt with)"
            )
    elif "instruction" in row:
        if not isinstance(row["instruction"], str) or not row["instruction"].strip():
            raise DataError(f"{where}: missing or empty column 'instruction'")
        prompt = user_turn(row["instruction"], row.get("input") or "")
    elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
        return row["prompt"]
    else:
        raise DataError(
            f"{where}: missing columns; expected instruction[, input], prompt or messages, "
            f"found {', '.join(sorted(row)) or 'none'}"
        )
    return render_text(tokenizer, template, prompt, where=where)[0]


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

    def collate(self, examples, pad_token_id: int) -> dict[str, torch.Tensor]:
        """The padded batch of these examples (collate_sft); PackedSFT.collate is its packed twin."""
        return collate_sft(
            [self.input_ids[i] for i in examples], [self.labels[i] for i in examples], pad_token_id
        )


def fit_prompt(
    prompt_ids: list[int], response_len: int, max_length: int, truncation: str, where: str
) -> list[int] | None:
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


def tokenize_sft(
    rows: list[dict],
    tokenizer,
    source: str,
    template: str,
    max_length: int,
    truncation: str,
    row_ids: list[int] | None = None,
) -> TokenizedSFT:
    """Each row through `render`: prompt and completion tokenised apart, so the boundary is exact, and
    EOS appended. `row_ids` are the rows' numbers in the source, for messages (`.rows` stays positions
    in `rows`)."""
    out = TokenizedSFT()
    for i, row in enumerate(rows):
        where = f"{source}: row {row_ids[i] if row_ids is not None else i}"
        prompt, response, how = sft_parts(row, where, template)
        example = render(tokenizer, how, prompt, response, eos=True, where=where)
        prompt_ids, completion_ids = example.prompt_ids, example.completion_ids
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


def collate_sft(
    input_ids: list[list[int]], labels: list[list[int]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad a batch: padding gets attention 0 and label IGNORE, so its id never matters."""
    batch_ids, attention_mask = right_pad(input_ids, pad_token_id)
    batch_labels, _ = right_pad(labels, IGNORE)
    return {"input_ids": batch_ids, "attention_mask": attention_mask, "labels": batch_labels}


def completion_tokens(labels: list[int]) -> int:
    # Labels are shifted inside the loss: the first position never has a target.
    return sum(1 for x in labels[1:] if x != IGNORE)
