"""The gold judge against hand-written answers, and the generators' answers against the judge."""

import inspect

import pytest

from rlhfkit.tasks import SPLITS, gold_score, gold_scores, render, task_rows

# (prompt, good answers best first, bad answers): every good beats every bad.
CASES = [
    (
        "Say something nice about cats.",
        ["Cats are wonderful and lovely.", "I love cats.", "Cats are nice."],
        ["Cats are here.", "Cats are awful and sad.", "What a lovely day.", "I hate cats."],
    ),
    (
        "Repeat the word apple 3 times.",
        ["apple apple apple", "Sure: apple, apple, apple.", "apple apple"],
        ["apple", "banana banana banana", "apple apple apple is my favourite fruit", "I will not."],
    ),
    (
        "Name 3 colors.",
        ["red, blue, green", "Here are 3 colors: red, blue and green.", "Red, blue."],
        ["red", "red blue green", "red, red, red", "cat, dog, horse", "red, blue, green, pink, black, white"],
    ),
    (
        "What is 3 plus 4?",
        ["7", "3 plus 4 is 7.", "The answer is 8."],
        ["5", "12", "I do not know.", "The answer is 10."],
    ),
    (
        "Praise cats with as many different kind words as you can.",
        ["Cats are wonderful, lovely, cheerful and bright.", "Cats are great and beautiful.", "I love cats."],
        [
            "Cats are not good and not nice.",
            "Cats are lovely, lovely, lovely.",
            "What a lovely, wonderful day.",
            "I like cats.",
        ],
    ),
    (
        "Describe the sea in at most 4 words.",
        ["The sea is blue.", "I like the sea.", "Sea"],
        ["It is very blue.", "The sea is big and blue and very deep.", ""],
    ),
]


@pytest.mark.parametrize("prompt, good, bad", CASES, ids=[c[0] for c in CASES])
def test_good_answers_beat_bad_ones(prompt, good, bad):
    good_scores = [gold_score(prompt, r) for r in good]
    bad_scores = [gold_score(prompt, r) for r in bad]
    assert good_scores == sorted(good_scores, reverse=True), good_scores
    assert min(good_scores) > max(bad_scores), (good_scores, bad_scores)
    assert good_scores[0] >= 0.9  # a perfect answer sits at the top of the range
    assert all(-1.0 <= s <= 1.0 for s in good_scores + bad_scores)


@pytest.mark.parametrize(
    "prompt, answer",
    [
        ("Repeat the word apple 3 times.", "apple apple apple"),
        ("Name 2 animals.", "cat, dog"),
        ("What is 2 + 5?", "7"),
        ("Describe music in 6 words or fewer.", "Music is nice."),
    ],
)
def test_exact_answers_score_one_and_wrong_ones_low(prompt, answer):
    assert gold_score(prompt, answer) == 1.0
    assert gold_score(prompt, "No.") <= -0.4


def test_rambling_is_penalised():
    prompt = "Say something nice about dogs."
    short = "Dogs are wonderful."
    long = short + " I saw them at the park on a Tuesday and then we walked home through town for hours."
    assert gold_score(prompt, short) == 1.0 and gold_score(prompt, long) <= 0.5
    trailing = [gold_score("What is 1 plus 1?", "2" + " and so on" * k) for k in (0, 3, 6)]
    assert trailing[0] == 1.0 and trailing[1] < trailing[0] and trailing[2] < 0


def test_unfinished_response_is_penalised():
    for prompt, answer in [("What is 1 plus 1?", "2"), ("Name 2 fruits.", "apple, pear")]:
        assert gold_score(prompt, answer, finished=False) == pytest.approx(gold_score(prompt, answer) - 0.5)


def test_graded_partial_credit():
    prompt = "Repeat the word star 4 times."
    scores = [gold_score(prompt, " ".join(["star"] * k)) for k in (4, 3, 2, 1)]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4
    add = [gold_score("What is 5 plus 4?", str(x)) for x in (9, 10, 11, 14)]
    assert add == sorted(add, reverse=True) and add[-1] == -1.0


def test_empty_response_scores_minimum():
    assert gold_score("Name 2 birds.", "  ") == -1.0


def test_rendered_prompt_and_bare_instruction_agree():
    instruction = "Give me 2 drinks."
    assert render(instruction) == "Human: Give me 2 drinks.\n\nAssistant:"
    assert gold_score(render(instruction), " tea, milk") == gold_score(instruction, "tea, milk") == 1.0


def test_judge_is_deterministic():
    args = ("Write a kind sentence about the moon.", "The moon is lovely tonight.")
    assert len({gold_score(*args) for _ in range(5)}) == 1


def test_unknown_prompt_raises_naming_it():
    with pytest.raises(ValueError, match="Tell me a joke"):
        gold_score("Human: Tell me a joke.\n\nAssistant:", "No.")
    with pytest.raises(ValueError, match=r"\.\.\.'$") as info:
        gold_score("x" * 500, "y")
    assert len(str(info.value)) < 130
    with pytest.raises(ValueError, match="unknown list category"):
        gold_score("Name 3 planets.", "mars, venus, earth")


def test_gold_scores_is_a_reward_plugin():
    assert list(inspect.signature(gold_scores).parameters) == ["prompts", "responses"]
    prompts = [render("What is 2 plus 2?"), render("Name 2 colors.")]
    assert gold_scores(prompts, [" 4", " red, blue"]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        gold_scores(prompts, ["4"])


@pytest.mark.parametrize("split", SPLITS)
def test_every_reference_scores_well(split):
    # Catches a generator whose answers its own judge disagrees with.
    for row in task_rows(split=split) + task_rows("praise", split):
        prompt = render(row["instruction"])
        assert row["output"] in row["references"]
        for ref in row["references"]:
            assert gold_score(prompt, ref) >= 0.9, (row["instruction"], ref)


def test_flawed_demonstrations_score_lower_on_average():
    clean = task_rows("default,praise", split="train", seed=3)
    flawed = task_rows("default,praise", split="train", seed=3, noise=1.0)
    assert [r["id"] for r in clean] == [r["id"] for r in flawed]
    worse = [gold_score(f["instruction"], f["output"]) < 1.0 for f in flawed]
    assert sum(worse) / len(worse) > 0.9


def test_praise_counts_distinct_kind_words_in_a_positive_reading():
    from rlhfkit.tasks.praise import kind_words

    prompt = "Describe the sea in glowing terms."
    assert kind_words("The sea is lovely, LOVELY and calm, I like it.") == {"lovely"}  # calm 1.3, like 1.5
    ladder = [
        "The sea.",
        "The sea is nice.",
        "The sea is nice and fun.",
        "The sea is nice, fun and bright.",
        "The sea is nice, fun, bright and lovely.",
        "The sea is nice, fun, bright, lovely and great.",
    ]
    scores = [gold_score(prompt, r) for r in ladder]
    assert scores == pytest.approx([-0.7, -0.2, 0.3, 0.8, 1.0, 1.0])  # +0.5 a word, full credit at 4
    assert gold_score(prompt, "The sea is not nice, not fun, not bright and not lovely.") == pytest.approx(
        -0.7
    )
    assert gold_score(prompt, "Nice, fun, bright and lovely.") == pytest.approx(0.7)  # topic unnamed: -0.6
