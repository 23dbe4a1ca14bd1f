"""templates.render, the one way every stage turns a prompt and a response into ids: the seed's
format keeps its ids, and a chat template that writes BOS itself gets no second one (issue #15)."""

import pytest

from rlhfkit.data.templates import chat_prompt, render, render_prompt, transcript, turns, user_turn
from rlhfkit.errors import DataError
from rlhfkit.models import load_tokenizer
from tests.data.chat import smollm2_tokenizer, tiny_chat_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return load_tokenizer(str(tiny_dir))


def template_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The prompt as the tokenizer's own chat template tokenises it (no special tokens added)."""
    return tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"]


@pytest.mark.parametrize(
    "instruction, input_, output",
    [("Name 2 colors.", "", "red, blue"), ("Add the two numbers.", "2 and 3", "5")],
)
def test_default_template_keeps_the_ids_every_stage_built_before(tokenizer, instruction, input_, output):
    example = render(tokenizer, "human_assistant", user_turn(instruction, input_), output, eos=True)
    prompt = render_prompt(instruction, input_)
    body = f"{instruction}\n\n{input_}" if input_ else instruction
    assert example.prompt == prompt == f"Human: {body}\n\nAssistant:"
    # What SFT, the RM and PPO tokenised by hand until now: the prompt with the tokenizer's special
    # tokens (the tiny tokenizer adds none), then " " + response without them.
    assert example.prompt_ids == tokenizer(prompt)["input_ids"]
    assert tokenizer.bos_token_id not in example.prompt_ids
    response_ids = tokenizer(" " + output, add_special_tokens=False)["input_ids"]
    assert example.completion_ids == response_ids + [tokenizer.eos_token_id]
    # A prompt that is already rendered text is used as it is.
    assert render(tokenizer, "human_assistant", prompt, output).ids == example.ids[:-1]


def test_seed_transcripts_split_into_turns_and_render_back():
    prompt = "Human: Hi there.\n\nAssistant: Hello!\n\nHuman: Name 2 colors.\n\nAssistant:"
    messages = turns(prompt, "f.jsonl: row 0")
    assert messages == [
        {"role": "user", "content": "Hi there."},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name 2 colors."},
    ]
    assert transcript(messages) == prompt
    error = r"^f.jsonl: row 3: prompt is not a 'Human: \.\.\.\\n\\nAssistant:' transcript"
    for bad in ("Context.\n\nHuman: hi\n\nAssistant:", "Human: hi", "Human: hi\n\nAssistant: half a reply"):
        with pytest.raises(DataError, match=error):
            turns(bad, "f.jsonl: row 3")


def test_a_chat_template_that_writes_bos_gets_exactly_one(tiny_dir):
    tokenizer = tiny_chat_tokenizer(tiny_dir)
    bos = tokenizer.bos_token_id
    messages = [{"role": "system", "content": "Be brief."}, *user_turn("Name 2 colors.")]
    text = chat_prompt(tokenizer, messages)
    assert text.startswith(tokenizer.bos_token)
    assert tokenizer(text)["input_ids"][:2] == [bos, bos]  # tokenizer(text), as every stage did: two
    example = render(tokenizer, "chat", messages, "red, blue", eos=True)
    # bos == eos in the tiny vocabulary: the one other occurrence is the EOS that ends the example.
    assert [i for i, t in enumerate(example.ids) if t == bos] == [0, len(example.ids) - 1]
    assert example.prompt_ids == template_ids(tokenizer, messages)
    # A chat reply starts right after the prompt: no space before it.
    assert tokenizer.decode(example.completion_ids[:-1]) == "red, blue"


def test_a_template_without_bos_keeps_the_one_the_tokenizer_adds(tiny_dir):
    no_bos = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    tokenizer = tiny_chat_tokenizer(tiny_dir, template=no_bos)
    for template in ("chat", "human_assistant"):
        ids = render(tokenizer, template, user_turn("Name 2 colors."), "red").ids
        assert [i for i, t in enumerate(ids) if t == tokenizer.bos_token_id] == [0]


def test_chat_template_missing_is_one_line_naming_the_row(tokenizer):
    error = (
        r"^d.jsonl: row 2: data.template=chat \(or conversational rows\) needs a chat template, and the "
        r"tokenizer of .* has none; use data.template=human_assistant$"
    )
    with pytest.raises(DataError, match=error):
        render(tokenizer, "chat", user_turn("hi"), "ok", where="d.jsonl: row 2")


@pytest.mark.slow
def test_smollm2_chat_examples_are_its_own_template_with_one_bos():
    tokenizer = smollm2_tokenizer()
    # SmolLM2's BOS is <|im_start|>, which also opens every turn; its tokenizer adds no special tokens.
    bos = tokenizer.bos_token_id
    assert tokenizer.bos_token == "<|im_start|>" and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer("hi")["input_ids"] == tokenizer("hi", add_special_tokens=False)["input_ids"]
    messages = [
        *user_turn("Repeat the word cat 2 times."),
        {"role": "assistant", "content": "cat cat"},
        *user_turn("Name 2 colors."),
    ]
    example = render(tokenizer, "chat", messages, "red, blue", eos=True)
    assert example.ids[0] == bos and example.ids[1] != bos
    assert example.prompt_ids == template_ids(tokenizer, messages)
    # The example is the template's own conversation, its EOS (<|im_end|>) closing the final turn.
    reply = {"role": "assistant", "content": "red, blue"}
    full = tokenizer.apply_chat_template([*messages, reply], tokenize=False)
    assert tokenizer.decode(example.ids) + "\n" == full
    assert render(tokenizer, "human_assistant", user_turn("Name 2 colors."), "red").ids[0] != bos
