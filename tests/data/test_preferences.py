import json
from pathlib import Path

import pytest

from rlhfkit.data.preferences import collate_pairs, load_preference_pairs, tokenize_pairs
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.models import load_tokenizer
from rlhfkit.models.reward import last_attended

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return load_tokenizer(str(tiny_dir))


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def hh(prompt_turns: str, response: str) -> str:
    return f"{prompt_turns}\n\nAssistant: {response}"


def test_rm_static_single_turn_filter_counts():
    # Fixture: 10 rows, 4 multi-turn (rows 2, 4, 7, 9), one single-turn pair with chosen == rejected (row 6).
    every = load_preference_pairs(str(FIXTURES / "rm_static.jsonl"))
    assert (len(every), every.dropped_identical, every.kept_single_turn, every.total) == (9, 1, None, 10)
    single = load_preference_pairs(str(FIXTURES / "rm_static.jsonl"), single_turn=True)
    assert (len(single), single.dropped_identical, single.kept_single_turn, single.total) == (5, 1, 6, 10)
    assert single.rows == [0, 1, 3, 5, 8]
    first = single.pairs[0]
    assert first["prompt"] == "Human: What is a good way to keep basil fresh?\n\nAssistant:"
    assert first["chosen"].startswith("Trim the stems") and first["rejected"] == "Put it in the freezer."
    assert "response" not in first  # rm-static's response column duplicates chosen
    multi = every.pairs[2]["prompt"]
    assert multi.startswith("Human: How do I get my toddler") and multi.endswith(
        "About three times a night.\n\nAssistant:"
    )
    assert multi.count("\n\nHuman:") == 2 and multi.count("\n\nAssistant:") == 3


def test_hh_rlhf_splits_at_the_last_assistant_turn():
    every = load_preference_pairs(str(FIXTURES / "hh_rlhf.jsonl"))
    # Fixture: 10 rows, 4 multi-turn (rows 2, 4, 7, 9); the identical pair (row 7) is multi-turn.
    assert (len(every), every.dropped_identical, every.kept_single_turn, every.total) == (9, 1, None, 10)
    assert every.pairs[2] == {
        "prompt": (
            "Human: What's a good name for a goldfish?\n\nAssistant: How about Bubbles?"
            "\n\nHuman: Something more unusual.\n\nAssistant:"
        ),
        "chosen": "You could call it Captain Fin or Marmalade.",
        "rejected": "Fish.",
    }
    single = load_preference_pairs(str(FIXTURES / "hh_rlhf.jsonl"), single_turn=True)
    assert (len(single), single.dropped_identical, single.kept_single_turn) == (6, 0, 6)
    assert single.rows == [0, 1, 3, 5, 6, 8]


def test_generic_prompts_are_rendered_and_extra_columns_kept():
    data = load_preference_pairs(str(FIXTURES / "prefs.jsonl"))
    assert (len(data), data.dropped_identical, data.total) == (8, 0, 8)
    assert data.pairs[0] == {
        "prompt": "Human: Write a positive sentence about the ocean.\n\nAssistant:",
        "chosen": "The ocean is beautiful and calm today.",
        "rejected": "The ocean is cold.",
        "family": "sentiment",
        "chosen_score": 1.0,
        "rejected_score": 0.0,
        "noise_temperature": 0.5,
    }
    # A prompt already in the seed's format is kept as it is.
    assert data.pairs[5]["prompt"] == "Human: What is 3 plus 4?\n\nAssistant:"


def test_identical_pairs_are_dropped_and_counted(tmp_path):
    rows = [
        {"prompt": "a", "chosen": " same ", "rejected": "same"},
        {"prompt": "b", "chosen": "x", "rejected": "y"},
    ]
    data = load_preference_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    assert (
        data.dropped_identical == 1
        and data.rows == [1]
        and data.pairs[0]["prompt"] == "Human: b\n\nAssistant:"
    )


single = "\n\nHuman: hi"
both = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?"


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [{"prompt": "a", "chosen": "x"}],
            r"p.jsonl: row 0: missing column 'rejected' for the generic format \(expected prompt",
        ),
        (
            [{"question": "a", "answer": "b"}],
            r"p.jsonl: row 0: missing columns; expected prompt, chosen, rejected .* found answer, question",
        ),
        (
            [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "a", "chosen": "x"}],
            r"p.jsonl: row 1: missing column 'rejected'",
        ),
        (
            [{"prompt": "a", "chosen": 3, "rejected": "y"}],
            r"p.jsonl: row 0: column 'chosen' must be a string, got int",
        ),
        (
            [
                {"prompt": "a", "chosen": "x", "rejected": "y"},
                {"prompt": "a", "chosen": "x", "rejected": "  "},
            ],
            r"p.jsonl: row 1: empty 'rejected' response",
        ),
        (
            [{"prompt": "a", "chosen": "x", "rejected": "y", "chosen_score": float("nan")}],
            r"p.jsonl: row 0: column 'chosen_score' must be a finite number, got nan",
        ),
        (
            [{"prompt": "a", "chosen": "x", "rejected": "y", "rejected_score": float("inf")}],
            r"p.jsonl: row 0: column 'rejected_score' must be a finite number, got inf",
        ),
        ([{"prompt": "  ", "chosen": "x", "rejected": "y"}], r"p.jsonl: row 0: empty 'prompt'"),
        (
            [{"prompt": "Human: a\n\nAssistant: b", "chosen": "x", "rejected": "y"}],
            r"p.jsonl: row 0: 'prompt' mentions 'Assistant:' but does not end",
        ),
        (
            [{"chosen": hh(single, "x"), "rejected": hh(both, "y")}],
            r"p.jsonl: row 0: 'chosen' and 'rejected' transcripts differ",
        ),
        (
            [{"chosen": hh(single, "x"), "rejected": hh(single, "")}],
            r"p.jsonl: row 0: empty 'rejected' response",
        ),
        (
            [{"chosen": "\n\nHuman: no reply", "rejected": hh(single, "y")}],
            r"p.jsonl: row 0: 'chosen' transcript has no '\\n\\nAssistant:' turn",
        ),
        ([{"chosen": hh(single, "x")}], r"p.jsonl: row 0: missing column 'rejected' for the hh-rlhf format"),
    ],
)
def test_bad_rows_are_one_line_errors_naming_the_row(tmp_path, rows, message):
    # json.dumps writes NaN/Infinity, which json.loads reads back as floats, like a parquet file would hold.
    with pytest.raises(DataError, match=message) as info:
        load_preference_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    assert "\n" not in str(info.value)


def test_explicit_format_checks_its_own_columns(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "x", "rejected": "y"}])
    with pytest.raises(DataError, match=r"row 0: missing column 'response' for the rm-static format"):
        load_preference_pairs(path, format="rm-static")
    with pytest.raises(ConfigError, match=r"unknown preference data format 'csv'"):
        load_preference_pairs(path, format="csv")


def test_empty_after_filtering_says_why(tmp_path):
    rows = [
        {"chosen": hh(both, "x"), "rejected": hh(both, "y")},
        {"chosen": hh(single, "same"), "rejected": hh(single, "same")},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(
        DataError,
        match=r"p.jsonl: dataset is empty after filtering "
        r"\(1 of 2 rows single-turn, 1 with chosen == rejected\)",
    ):
        load_preference_pairs(path, single_turn=True)
    with pytest.raises(DataError, match=r"empty after filtering \(1 rows, 1 with chosen == rejected\)"):
        load_preference_pairs(write_jsonl(tmp_path / "q.jsonl", rows[1:]))


def test_sequences_are_prompt_then_response_without_eos(tokenizer):
    data = load_preference_pairs(str(FIXTURES / "rm_static.jsonl"))
    tokens = tokenize_pairs(data.pairs, tokenizer, "rm_static.jsonl", 512, "error", row_ids=data.rows)
    assert len(tokens) == len(data) and tokens.rows == data.rows
    assert tokens.dropped_too_long == tokens.truncated_prompts == 0
    for pair, chosen, rejected in zip(data.pairs, tokens.chosen_ids, tokens.rejected_ids):
        n = len(tokenizer(pair["prompt"])["input_ids"])
        assert chosen[:n] == rejected[:n]
        assert tokenizer.decode(chosen[:n]) == pair["prompt"]
        assert tokenizer.decode(chosen[n:]) == " " + pair["chosen"]
        assert tokenizer.decode(rejected[n:]) == " " + pair["rejected"]
        assert chosen[-1] != tokenizer.eos_token_id and rejected[-1] != tokenizer.eos_token_id


def test_truncation_policy_never_drops_silently(tokenizer):
    pairs = [
        {
            "prompt": "Human: " + "word " * 200 + "\n\nAssistant:",
            "chosen": "ok",
            "rejected": "a much longer answer",
        },
        {"prompt": "Human: hi\n\nAssistant:", "chosen": "ok", "rejected": "no"},
        {"prompt": "Human: hi\n\nAssistant:", "chosen": "ok", "rejected": "word " * 100},
    ]
    dropped = tokenize_pairs(pairs, tokenizer, "f.jsonl", 32, "drop")
    assert len(dropped) == 1 and dropped.dropped_too_long == 2 and dropped.rows == [1]
    cut = tokenize_pairs(pairs, tokenizer, "f.jsonl", 32, "truncate_prompt", row_ids=[4, 5, 6])
    # Row 6's rejected response alone is longer than max_length: dropped and counted, not cut.
    assert cut.rows == [4, 5] and cut.truncated_prompts == 1 and cut.dropped_too_long == 1
    assert max(len(cut.chosen_ids[0]), len(cut.rejected_ids[0])) == 32
    answer = tokenizer(" a much longer answer", add_special_tokens=False)["input_ids"]
    assert cut.rejected_ids[0][-len(answer) :] == answer
    prompt_len = len(cut.rejected_ids[0]) - len(answer)
    assert cut.chosen_ids[0][:prompt_len] == cut.rejected_ids[0][:prompt_len]
    with pytest.raises(DataError, match=r"f.jsonl: row 7: \d+ tokens > data.max_length=32"):
        tokenize_pairs(pairs, tokenizer, "f.jsonl", 32, "error", row_ids=[7, 8, 9])
    with pytest.raises(DataError, match=r"empty after filtering \(1 pairs longer"):
        tokenize_pairs(pairs[:1], tokenizer, "f.jsonl", 32, "drop")


def test_collate_puts_chosen_first_and_reads_at_the_last_real_token():
    batch = collate_pairs([[5, 6, 7], [8]], [[9, 10], [11, 12, 13, 14]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0], [9, 10, 0, 0], [11, 12, 13, 14]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    last = batch["input_ids"].gather(1, last_attended(batch["attention_mask"])[:, None]).squeeze(1)
    assert last.tolist() == [7, 8, 10, 14]
    with pytest.raises(ValueError, match="2 chosen but 1 rejected"):
        collate_pairs([[1], [2]], [[3]], pad_token_id=0)
