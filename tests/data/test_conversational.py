"""Conversational data (role/content message lists, TRL's formats) in SFT, preference pairs and PPO
prompts: rendered with the chat template, with only the final assistant turn learned (issue #17)."""

import json
from pathlib import Path

import pytest

from rlhfkit.config import PrefsConfig, load_config
from rlhfkit.data import IGNORE, tokenize_sft
from rlhfkit.data.labelling import make_preferences
from rlhfkit.data.preferences import load_preference_pairs, tokenize_pairs
from rlhfkit.data.sft import prompt_text
from rlhfkit.data.templates import user_turn
from rlhfkit.errors import DataError
from rlhfkit.models import load_tokenizer
from rlhfkit.tasks import task_rows
from tests.data.chat import tiny_chat_model, tiny_chat_tokenizer

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return tiny_chat_tokenizer(tiny_dir)


def read(name: str | Path) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def template_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The prompt's ids as the tokenizer's own chat template makes them (it adds no second BOS)."""
    return tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"]


def template_text(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("fixture", ["messages.jsonl", "prompt_completion_messages.jsonl"])
def test_sft_learns_the_final_assistant_turn_only(tokenizer, fixture):
    rows = read(fixture)
    data = tokenize_sft(rows, tokenizer, fixture, "chat", 256, "error")
    assert len(data) == len(rows)
    for row, ids, labels in zip(rows, data.input_ids, data.labels):
        messages = row.get("messages") or row["prompt"] + row["completion"]
        n = len(template_ids(tokenizer, messages[:-1]))
        assert ids[:n] == template_ids(tokenizer, messages[:-1])
        # The boundary: labels start exactly where the final assistant turn does.
        assert labels[:n] == [IGNORE] * n and labels[n:] == ids[n:]
        assert tokenizer.decode(ids[n:-1]) == messages[-1]["content"]
        assert ids[-1] == tokenizer.eos_token_id
        # Earlier turns, an earlier assistant reply included, are prompt: read, never learned.
        assert all(m["content"] in tokenizer.decode(ids[:n]) for m in messages[:-1])


def test_conversational_rows_need_the_chat_template(tiny_dir, tokenizer):
    rows = read("messages.jsonl")
    seed_format = (
        r"^m.jsonl: row 0: conversational rows \(role/content messages\) are rendered with the "
        r"model's chat template: set data.template=chat \(got human_assistant\)$"
    )
    with pytest.raises(DataError, match=seed_format):
        tokenize_sft(rows, tokenizer, "m.jsonl", "human_assistant", 256, "drop")
    no_template = r"^m.jsonl: row 0: data.template=chat \(or conversational rows\) needs a chat template"
    with pytest.raises(DataError, match=no_template):
        tokenize_sft(rows, load_tokenizer(str(tiny_dir)), "m.jsonl", "chat", 256, "drop")


ULTRAFEEDBACK_ROW_2 = {
    "prompt": [
        {"role": "user", "content": "Repeat the word cat 2 times."},
        {"role": "assistant", "content": "cat cat"},
        {"role": "user", "content": "Now 3 times."},
    ],
    "chosen": "cat cat cat",
    "rejected": "cat",
}
TRL_ROW_1 = {
    "prompt": [
        {"role": "system", "content": "You answer in one short line."},
        {"role": "user", "content": "What is 2 plus 3?"},
    ],
    "chosen": "5",
    "rejected": "6",
}


@pytest.mark.parametrize(
    "fixture, row, expected",
    [("prefs_ultrafeedback.jsonl", 2, ULTRAFEEDBACK_ROW_2), ("prefs_conversational.jsonl", 1, TRL_ROW_1)],
)
def test_conversational_pairs_are_rendered_with_the_chat_template(tokenizer, fixture, row, expected):
    data = load_preference_pairs(str(FIXTURES / fixture))
    assert len(data) == data.total == 3 and data.rows == [0, 1, 2]
    assert {k: data.pairs[row][k] for k in expected} == expected
    if fixture == "prefs_ultrafeedback.jsonl":
        assert data.pairs[row]["score_chosen"] == 7.0  # other columns are kept
    assert load_preference_pairs(str(FIXTURES / fixture), single_turn=True).rows == [0, 1]
    tokens = tokenize_pairs(data.pairs, tokenizer, fixture, 256, "error", data.rows, template="chat")
    for pair, chosen, rejected in zip(data.pairs, tokens.chosen_ids, tokens.rejected_ids):
        n = len(template_ids(tokenizer, pair["prompt"]))
        assert chosen[:n] == rejected[:n] == template_ids(tokenizer, pair["prompt"])
        # The RM's input: prompt + reply, no EOS (its score is read at the reply's last token).
        assert tokenizer.decode(chosen[n:]) == pair["chosen"]
        assert tokenizer.decode(rejected[n:]) == pair["rejected"]
        assert chosen[-1] != tokenizer.eos_token_id
    with pytest.raises(DataError, match=rf"^{fixture}: row 0: conversational rows .* set data.template=chat"):
        tokenize_pairs(data.pairs, tokenizer, fixture, 256, "error", data.rows)


def test_seed_format_pairs_are_split_into_turns_for_the_chat_template(tokenizer):
    data = load_preference_pairs(str(FIXTURES / "hh_rlhf.jsonl"))
    tokens = tokenize_pairs(data.pairs, tokenizer, "hh_rlhf.jsonl", 512, "error", data.rows, template="chat")
    goldfish = [
        {"role": "user", "content": "What's a good name for a goldfish?"},
        {"role": "assistant", "content": "How about Bubbles?"},
        {"role": "user", "content": "Something more unusual."},
    ]
    n = len(template_ids(tokenizer, goldfish))
    assert tokens.chosen_ids[2][:n] == template_ids(tokenizer, goldfish)
    assert tokenizer.decode(tokens.chosen_ids[2][n:]) == "You could call it Captain Fin or Marmalade."


msg = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
not_a_list = r"column 'messages' must be a non-empty list of \{role, content\} messages, got"


@pytest.mark.parametrize(
    "messages, error",
    [
        ([], not_a_list + " an empty list"),
        ("hi", not_a_list + " str"),
        ([{"content": "hi"}, msg[1]], r"'messages' message 0 has no 'role'"),
        (
            [{"role": "bot", "content": "hi"}, msg[1]],
            r"'messages' message 0 has unknown role 'bot' \(expected",
        ),
        (
            [msg[0], {"role": "assistant", "content": ["hi"]}],
            r"'messages' message 1: 'content' must be a string, "
            r"got list",
        ),
        ([msg[0], {"role": "assistant"}], r"'messages' message 1: 'content' must be a string, got nothing"),
        ([msg[0]], r"'messages' must end with an assistant turn, but its last message is 'user'"),
        ([msg[1]], r"'messages' has no turn before the final assistant turn"),
        ([msg[0], {"role": "assistant", "content": " "}], r"empty final assistant turn in 'messages'"),
    ],
)
def test_malformed_sft_messages_are_one_line_errors_naming_the_row(tokenizer, messages, error):
    rows = [{"messages": msg}, {"messages": messages}]
    with pytest.raises(DataError, match=rf"^m.jsonl: row 1: {error}") as info:
        tokenize_sft(rows, tokenizer, "m.jsonl", "chat", 256, "drop")
    assert "\n" not in str(info.value)


reply, other = [{"role": "assistant", "content": "x"}], [{"role": "assistant", "content": "y"}]


@pytest.mark.parametrize(
    "row, error",
    [
        (
            {"prompt": msg[:1], "chosen": reply, "rejected": [msg[0]]},
            r"'rejected' must end with an assistant",
        ),
        ({"prompt": msg[:1], "chosen": reply, "rejected": []}, r"column 'rejected' must be a non-empty list"),
        (
            {"prompt": [{"role": "human", "content": "hi"}], "chosen": reply, "rejected": reply},
            r"'prompt' message 0 has unknown role 'human'",
        ),
        (
            {"chosen": [msg[0], *reply], "rejected": [{"role": "user", "content": "other"}, *reply]},
            r"'chosen' and 'rejected' conversations differ before the final assistant turn",
        ),
        ({"chosen": reply, "rejected": other}, r"no turn before the final assistant turn"),
        (
            {"prompt": msg[:1], "chosen": reply, "rejected": "y"},
            r"column 'rejected' must be a non-empty .* str",
        ),
        (
            {"prompt": msg[:1], "chosen": reply, "rejected": [{"role": "assistant", "content": " "}]},
            r"empty 'rejected' response",
        ),
    ],
)
def test_malformed_conversational_pairs_are_one_line_errors_naming_the_row(tmp_path, row, error):
    good = {"prompt": msg[:1], "chosen": reply, "rejected": other}
    with pytest.raises(DataError, match=rf"^.*p.jsonl: row 1: {error}") as info:
        load_preference_pairs(write_jsonl(tmp_path / "p.jsonl", [good, row]))
    assert "\n" not in str(info.value)


def test_ppo_prompts_from_conversational_rows_stop_where_the_reply_starts(tokenizer):
    rows = read("messages.jsonl") + read("prefs_conversational.jsonl")
    prompts = [prompt_text(r, f"f: row {i}", "chat", tokenizer) for i, r in enumerate(rows)]
    assert prompts[2] == template_text(tokenizer, rows[2]["messages"][:-1])
    assert prompts[5] == template_text(tokenizer, rows[5]["prompt"])
    prompt_only = prompt_text({"messages": msg[:1]}, "f", "chat", tokenizer)
    assert prompt_only.endswith("<|user|>\nhi\n<|assistant|>\n")
    with pytest.raises(DataError, match=r"^f: row 4: conversational rows .* set data.template=chat"):
        prompt_text(rows[4], "f: row 4", "human_assistant", tokenizer)


def test_chat_preference_pairs_are_conversational_rows_the_rm_reads_back(tmp_path, tiny_dir, tokenizer):
    model = tiny_chat_model(tiny_dir, tmp_path / "chat-model")
    out = tmp_path / "prefs.jsonl"
    cfg = load_config(
        PrefsConfig,
        None,
        [
            f"model={model}",
            "template=chat",
            "n_prompts=24",
            f"out={out}",
            "max_new_tokens=8",
            "batch_size=24",
            "drop_gold_ties=false",
        ],
    )
    summary = make_preferences(cfg)
    rows = read(out)  # an absolute path: FIXTURES / out is out
    assert summary["pairs"] == len(rows) > 0
    builtin = {
        user_turn(r["instruction"], r["input"])[0]["content"]: r
        for r in task_rows("default", "train", n=24, seed=0)
    }
    for row in rows:
        assert len(row["prompt"]) == 1 and row["prompt"][0]["role"] == "user"
        assert row["prompt"][0]["content"] in builtin
        assert [m["role"] for m in row["chosen"] + row["rejected"]] == ["assistant", "assistant"]
    pairs = load_preference_pairs(str(out))
    tokens = tokenize_pairs(pairs.pairs, tokenizer, str(out), 256, "drop", pairs.rows, template="chat")
    # The RM's prompt ids are those PPO samples after for the same built-in row.
    first = builtin[rows[0]["prompt"][0]["content"]]
    turn = user_turn(first["instruction"], first["input"])
    assert prompt_text(first, "builtin", "chat", tokenizer) == template_text(tokenizer, turn)
    assert tokens.chosen_ids[0][: len(template_ids(tokenizer, turn))] == template_ids(tokenizer, turn)
