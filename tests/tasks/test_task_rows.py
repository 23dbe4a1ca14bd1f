"""Task rows: schema, determinism, held-out splits, task selection, and the tokenizer corpus."""

import ast
from collections import Counter
from pathlib import Path

import pytest

import rlhfkit.tasks as tasks
from rlhfkit.tasks import (
    DEFAULT_FAMILIES,
    FAMILIES,
    SPLITS,
    corpus,
    parse_prompt,
    task_families,
    task_names,
    task_rows,
)
from rlhfkit.tasks.text import words

FAMILY_NAMES = list(FAMILIES)


def test_rows_follow_the_schema():
    for row in task_rows(n=20, noise=0.5):
        assert set(row) == {"id", "family", "instruction", "input", "output", "references"}
        assert row["input"] == "" and row["family"] in FAMILIES
        assert len(row["references"]) >= 2 and all(isinstance(r, str) for r in row["references"])
        assert 1 <= len(words(row["output"])) <= 25


def test_rows_are_deterministic_and_seeded():
    assert task_rows(n=50, seed=1, noise=0.3) == task_rows(n=50, seed=1, noise=0.3)
    assert task_rows(n=50, seed=1) != task_rows(n=50, seed=2)


def test_references_do_not_depend_on_the_seed():
    refs = {r["id"]: r["references"] for r in task_rows(split="test", seed=0)}
    assert all(refs[r["id"]] == r["references"] for r in task_rows(split="test", seed=7))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_splits_are_disjoint_and_sized(family):
    train = {r["instruction"] for r in task_rows(family, "train")}
    test = {r["instruction"] for r in task_rows(family, "test")}
    assert train.isdisjoint(test)
    assert len(train) >= 60 and len(test) >= 15
    assert 0.1 < len(test) / (len(train) + len(test)) < 0.35


def test_held_out_sentiment_topics_are_unseen_in_sentiment_training():
    topic = lambda rows: {parse_prompt(r["instruction"])[1]["topic"] for r in rows}  # noqa: E731
    assert topic(task_rows("sentiment", "train")).isdisjoint(topic(task_rows("sentiment", "test")))


def test_enough_rows_overall():
    assert len(task_rows(split="train")) >= 300
    assert 50 <= len(task_rows(split="test")) <= 400


def test_every_instruction_parses_back_to_its_family():
    for split in SPLITS:
        for row in task_rows(split=split):
            family, params = parse_prompt(row["instruction"])
            assert family.name == row["family"]
            assert any(t.format(**params) == row["instruction"] for t in family.templates)


def test_n_rows_are_balanced_and_cycle_when_needed():
    rows = task_rows(n=503)
    counts = Counter(r["family"] for r in rows)
    assert len(rows) == 503 and max(counts.values()) - min(counts.values()) <= 1
    assert [r["family"] for r in rows[:5]] == list(DEFAULT_FAMILIES)  # any prefix is balanced
    small = task_rows("list", "test", n=60)
    assert len(small) == 60 and len({r["id"] for r in small}) == 60
    assert any("~" in r["id"] for r in small)
    assert task_rows(n=0) == []


def test_noise_swaps_some_outputs_for_flawed_ones():
    clean, noisy = task_rows(n=400, seed=5), task_rows(n=400, seed=5, noise=0.3)
    changed = sum(c["output"] != d["output"] for c, d in zip(clean, noisy))
    assert 0.15 * 400 < changed < 0.45 * 400
    assert any(d["output"] not in d["references"] for d in noisy)


def test_task_names_and_comma_lists():
    assert task_names()[0] == "default" and set(FAMILY_NAMES) <= set(task_names())
    assert task_families("default") == DEFAULT_FAMILIES == tuple(f for f in FAMILY_NAMES if f != "praise")
    assert "arithmetic" not in task_families("no-arithmetic")
    assert task_families("repeat, sentiment") == ("sentiment", "repeat")
    assert {r["family"] for r in task_rows("sentiment,repeat", n=10)} == {"sentiment", "repeat"}


def test_bad_arguments_raise_with_valid_choices():
    with pytest.raises(ValueError, match="unknown task 'poems'.*sentiment"):
        task_rows("poems")
    with pytest.raises(ValueError, match="unknown split 'dev'.*train, test"):
        task_rows(split="dev")
    with pytest.raises(ValueError, match="noise"):
        task_rows(noise=1.5)
    with pytest.raises(ValueError, match="n must be"):
        task_rows(n=-1)


def test_corpus_covers_every_word_of_both_splits():
    vocabulary = {w for text in corpus() for w in words(text)}
    assert {"human", "assistant"} <= vocabulary
    for split in SPLITS:
        for row in task_rows(split=split, noise=0.5):
            assert set(words(row["instruction"] + " " + row["output"])) <= vocabulary


def test_tasks_import_nothing_from_other_rlhfkit_packages():
    for path in Path(tasks.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1 and not (node.module or "").startswith("rlhfkit"), path.name
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("rlhfkit") for a in node.names), path.name
