"""Prompt templates: the seed's "Human: ... / Assistant: ..." format, or a model's chat template."""

from __future__ import annotations

HUMAN = "Human: "
ASSISTANT = "\n\nAssistant:"


def render_prompt(instruction: str, input: str = "") -> str:
    """Alpaca's (instruction, input) as "Human: <instruction>[\\n\\n<input>]\\n\\nAssistant:"."""
    body = f"{instruction}\n\n{input}" if input else instruction
    return f"{HUMAN}{body}{ASSISTANT}"


def render_example(instruction: str, input: str, output: str) -> str:
    return render_prompt(instruction, input) + " " + output


def render_chat_prompt(tokenizer, instruction: str, input: str = "") -> str:
    """The same turn through the tokenizer's own chat template, ending where the reply starts."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("data.template=chat but this tokenizer has no chat template; use data.template=human_assistant")
    body = f"{instruction}\n\n{input}" if input else instruction
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
    )


def completion_text(output: str, template: str) -> str:
    # The seed's format puts one space after "Assistant:"; chat templates end the prompt with a newline.
    return " " + output if template == "human_assistant" else output
