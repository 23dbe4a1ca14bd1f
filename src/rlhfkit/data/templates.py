"""Prompt + response -> text and token ids, the one way every stage does it.

Templates: `human_assistant` (the original gpt2 + Alpaca notebook's "Human: ...\\n\\nAssistant:
<response>") or `chat` (the
tokenizer's own chat template); rows that bring their own formatting (prompt/completion text) are
`raw`. SFT examples, preference pairs, the RM's inputs and PPO's rollouts all go through `render`
(and PPO's text prompts through its `encode_prompt`), so a reward model is trained on exactly the
ids that the policy samples after its prompt and that PPO later scores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlhfkit.errors import DataError

HUMAN = "Human: "
ASSISTANT = "\n\nAssistant:"
RAW = "raw"
ROLES = ("system", "user", "assistant")
_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass(frozen=True)
class Rendered:
    """One prompt (+ response) as text and ids, split exactly where the response starts."""

    prompt: str
    """The rendered prompt, ending where the response starts (what generation continues)."""
    prompt_ids: list[int]
    completion_ids: list[int]
    """The response's ids as they follow the prompt (+ EOS when asked); [] without a response."""

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.completion_ids


def render(
    tokenizer,
    template: str,
    prompt: str | list[dict],
    response: str | None = None,
    eos: bool = False,
    where: str = "",
) -> Rendered:
    """`prompt` is the turns before the reply (role/content messages, rendered with `template`) or
    a prompt already rendered in `template`'s format (text, used as it is). The prompt and the
    response are tokenised apart, as PPO samples response tokens after the prompt's ids, and EOS is
    appended only when asked: SFT learns to stop, while the RM reads its score at the last response
    token (with pad == EOS a trailing EOS would look like padding). `where` names the row in errors."""
    text, completion = render_text(tokenizer, template, prompt, response, where)
    completion_ids = [] if response is None else tokenizer(completion, add_special_tokens=False)["input_ids"]
    if eos:
        completion_ids.append(tokenizer.eos_token_id)
    return Rendered(text, encode_prompt(tokenizer, text), completion_ids)


def render_text(
    tokenizer, template: str, prompt: str | list[dict], response: str | None = None, where: str = ""
) -> tuple[str, str]:
    """(prompt text, completion text) of `render`; the Human/Assistant format puts one space before the
    response, while a chat template ends its prompt where the reply starts."""
    if isinstance(prompt, list):
        prompt = chat_prompt(tokenizer, prompt, where) if template == "chat" else transcript(prompt)
    if response is None:
        return prompt, ""
    return prompt, " " + response if template == "human_assistant" else response


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Ids of a rendered prompt. A chat template that writes BOS itself would get a second one from
    the tokenizer's special tokens, so those are added only when the text does not start with BOS."""
    bos = tokenizer.bos_token
    return tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]


def user_turn(instruction: str, input: str = "") -> list[dict]:
    """Alpaca's (instruction, input) as one user message: "<instruction>[\\n\\n<input>]"."""
    return [{"role": "user", "content": f"{instruction}\n\n{input}" if input else instruction}]


def render_prompt(instruction: str, input: str = "") -> str:
    """Alpaca's (instruction, input) as "Human: <instruction>[\\n\\n<input>]\\n\\nAssistant:"."""
    return transcript(user_turn(instruction, input))


def render_example(instruction: str, input: str, output: str) -> str:
    return render_prompt(instruction, input) + " " + output


def transcript(messages: list[dict]) -> str:
    """Messages in the Human/Assistant format, ending where the assistant speaks next."""
    names = {"user": HUMAN, "assistant": "Assistant: "}
    if any(m["role"] not in names for m in messages):
        # Readers send conversational rows (which may hold system turns) to the chat template only.
        raise ValueError("the human_assistant template renders user and assistant turns only")
    return "\n\n".join(names[m["role"]] + m["content"] for m in messages) + ASSISTANT


def turns(prompt: str, where: str) -> list[dict]:
    """The messages of a prompt in the Human/Assistant format ("Human: a\\n\\nAssistant: b\\n\\nHuman: c
    \\n\\nAssistant:"), so Anthropic-style data can be rendered with a chat template."""
    parts = _TURN.split("\n\n" + prompt.strip())  # ["", role, content, role, content, ...]
    if parts[0].strip() or len(parts) < 5 or parts[-2] != "Assistant" or parts[-1].strip():
        raise DataError(
            f"{where}: prompt is not a 'Human: ...\\n\\nAssistant:' transcript, so it cannot be "
            "rendered with data.template=chat"
        )
    return [
        {"role": "user" if role == "Human" else "assistant", "content": content.strip()}
        for role, content in zip(parts[1:-2:2], parts[2:-2:2])
    ]


def chat_prompt(tokenizer, messages: list[dict], where: str = "") -> str:
    """The turns through the tokenizer's own chat template, ending where the assistant's reply starts."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or "this model"
        at = f"{where}: " if where else ""
        raise DataError(
            f"{at}data.template=chat (or conversational rows) needs a chat template, and the "
            f"tokenizer of {name} has none; use data.template=human_assistant"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def check_messages(value, where: str, key: str, last: str | None = "assistant") -> list[dict]:
    """A column holding role/content messages (TRL's conversational format), checked turn by turn;
    `last` is the role the list must end with (None: any)."""
    if not isinstance(value, list) or not value:
        got = "an empty list" if value == [] else type(value).__name__
        raise DataError(
            f"{where}: column '{key}' must be a non-empty list of {{role, content}} messages, got {got}"
        )
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message:
            raise DataError(
                f"{where}: '{key}' message {i} has no 'role' (expected {{\"role\": ..., \"content\": ...}})"
            )
        if message["role"] not in ROLES:
            raise DataError(
                f"{where}: '{key}' message {i} has unknown role {message['role']!r} "
                f"(expected one of {', '.join(ROLES)})"
            )
        if not isinstance(message.get("content"), str):
            got = type(message["content"]).__name__ if "content" in message else "nothing"
            raise DataError(f"{where}: '{key}' message {i}: 'content' must be a string, got {got}")
    if last is not None and value[-1]["role"] != last:
        raise DataError(
            f"{where}: '{key}' must end with an {last} turn, but its last message is {value[-1]['role']!r}"
        )
    return value


def require_chat(template: str, where: str) -> None:
    """Conversational rows are rendered with the model's chat template; rendering them in the Human/Assistant
    format would train a policy in one format and score it in another."""
    if template != "chat":
        raise DataError(
            f"{where}: conversational rows (role/content messages) are rendered with the model's "
            f"chat template: set data.template=chat (got {template})"
        )
