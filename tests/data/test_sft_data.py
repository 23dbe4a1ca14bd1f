import json
from pathlib import Path

import pytest

from rlhfkit.data import IGNORE, collate_sft, render_prompt, tokenize_sft
from rlhfkit.errors import DataError
from rlhfkit.models import load_tokenizer

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return load_tokenizer(str(tiny_dir))


def test_alpaca_schema_renders_in_the_seed_format():
    assert (
        render_prompt("Add the two numbers.", "2 and 3")
        == "Human: Add the two numbers.\n\n2 and 3\n\nAssistant:"
    )
    assert render_prompt("Name a painter.") == "Human: Name a painter.\n\nAssistant:"


def test_labels_cover_the_completion_and_eos_only(tokenizer):
    rows = json.loads((FIXTURES / "alpaca.json").read_text())
    data = tokenize_sft(rows, tokenizer, "alpaca.json", "human_assistant", 512, "drop")
    assert len(data) == len(rows)
    for row, ids, labels in zip(rows, data.input_ids, data.labels):
        prompt_len = sum(1 for x in labels if x == IGNORE)
        prompt = render_prompt(row["instruction"], row["input"])
        assert tokenizer.decode(ids[:prompt_len]) == prompt
        assert tokenizer.decode(labels[prompt_len:-1]) == " " + row["output"]
        assert labels[-1] == tokenizer.eos_token_id
        assert all(x != IGNORE for x in labels[prompt_len:])


def test_truncation_policy_never_drops_silently(tokenizer):
    rows = [{"instruction": "word " * 200, "output": "ok"}, {"instruction": "hi", "output": "ok"}]
    dropped = tokenize_sft(rows, tokenizer, "f.jsonl", "human_assistant", 32, "drop")
    assert len(dropped) == 1 and dropped.dropped_too_long == 1 and dropped.rows == [1]
    cut = tokenize_sft(rows, tokenizer, "f.jsonl", "human_assistant", 32, "truncate_prompt")
    assert len(cut) == 2 and cut.truncated_prompts == 1 and len(cut.input_ids[0]) == 32
    assert cut.labels[0][-1] == tokenizer.eos_token_id
    with pytest.raises(DataError, match=r"f.jsonl: row 0: \d+ tokens > data.max_length=32"):
        tokenize_sft(rows, tokenizer, "f.jsonl", "human_assistant", 32, "error")
    with pytest.raises(DataError, match=r"empty after filtering \(1 rows longer"):
        tokenize_sft(rows[:1], tokenizer, "f.jsonl", "human_assistant", 32, "drop")


@pytest.mark.parametrize(
    "row, message",
    [
        ({"instruction": "a"}, r"row 0: missing or non-string column 'output'"),
        ({"output": "a"}, r"row 0: missing or non-string column 'instruction'"),
        ({"question": "a", "answer": "b"}, r"row 0: missing columns; expected instruction, output"),
        ({"prompt": "a"}, r"row 0: missing or non-string column 'completion'"),
        ({"instruction": "a", "output": "  "}, r"row 0: empty 'output'"),
    ],
)
def test_missing_columns_name_the_row(tokenizer, row, message):
    with pytest.raises(DataError, match=message):
        tokenize_sft([row], tokenizer, "f.jsonl", "human_assistant", 64, "drop")


def test_collate_pads_right_with_masked_labels(tokenizer):
    batch = collate_sft([[5, 6, 7], [8]], [[IGNORE, 6, 7], [8]], pad_token_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, 3)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


def test_chat_template_is_used_when_asked(tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"
    )
    tokenizer.pad_token = tokenizer.eos_token
    data = tokenize_sft(
        [{"instruction": "Name 2 colors.", "output": "red, blue"}], tokenizer, "f", "chat", 64, "drop"
    )
    prompt_len = sum(1 for x in data.labels[0] if x == IGNORE)
    assert tokenizer.decode(data.input_ids[0][:prompt_len]) == "<user>Name 2 colors.\n<assistant>"
    assert tokenizer.decode(data.labels[0][prompt_len:-1]) == "red, blue"
