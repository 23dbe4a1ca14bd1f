"""Function rewards that see whole rows (ids, finished flag, the prompt's dataset row), the built-in
verifiable rewards and weighted sums of rewards."""

import pytest
import torch

from rlhfkit.errors import RlhfkitError
from rlhfkit.rewards import RewardSample, load_reward
from rlhfkit.rewards.verifiable import format_reward, verifiable_reward
from rlhfkit.tasks import render


def sample(instruction: str, response: str, finished: bool = True, rendered: bool = True) -> RewardSample:
    return RewardSample(render(instruction) if rendered else instruction, response, None, finished)


@pytest.mark.parametrize(
    "instruction, response, expected",
    [
        ("What is 3 plus 4?", "3 plus 4 is 7.", 1.0),
        ("What is 3 plus 4?", "8", 0.0),
        ("What is 3 plus 4?", "I am not sure.", 0.0),
        ("Repeat the word cat 3 times.", "Sure: cat cat cat", 1.0),
        ("Repeat the word cat 3 times.", "cat cat", 0.0),
        ("Repeat the word cat 3 times.", "cat cat cat dog", 0.0),
        ("Name 3 colors.", "Here are 3 colors: red, blue and green.", 1.0),
        ("Name 3 colors.", "red, blue, red", 2 / 3),  # three items in the category, not distinct
        ("Name 3 colors.", "red, blue", 2 / 3),  # distinct colors, but two
        ("Name 3 colors.", "cat, dog, cow", 2 / 3),  # three distinct items, none a color
        ("Name 3 colors.", "", 0.0),
    ],
)
def test_verifiable_reward_checks_the_answer_exactly(instruction, response, expected):
    assert verifiable_reward([sample(instruction, response)]) == [pytest.approx(expected)]


def test_verifiable_reward_reads_the_rows_instruction_when_the_prompt_is_in_another_template():
    row = RewardSample(
        "<|im_start|>user\nWhat is 2 plus 2?<|im_end|>", "4", metadata={"instruction": "What is 2 plus 2?"}
    )
    assert verifiable_reward([row]) == [1.0]


def test_a_family_without_a_checkable_answer_is_one_line_naming_the_function():
    reward = load_reward("rlhfkit.rewards.verifiable:verifiable_reward", normalize=False)
    with pytest.raises(
        RlhfkitError,
        match=r"^ppo.reward=rlhfkit.rewards.verifiable:verifiable_reward raised "
        r"ValueError: sentiment prompts have no checkable answer",
    ):
        reward([render("Say something nice about dogs.")], ["Dogs are lovely."])


def test_format_reward_wants_eos_text_and_no_new_turn():
    rows = [
        sample("What is 1 plus 1?", "2"),
        sample("What is 1 plus 1?", "2", finished=False),
        sample("What is 1 plus 1?", "  "),
        sample("What is 1 plus 1?", "2\n\nHuman: and 3?"),
    ]
    assert format_reward(rows) == [1.0, 0.0, 0.0, 0.0]


def rows_seen(samples):
    """A reward plugin for tests: scores the number of ids (prompt and response) and records every call."""
    rows_seen.calls = [*getattr(rows_seen, "calls", []), samples]
    rows_seen.last = samples
    return [len(s.token_ids) / 100 if s.token_ids is not None else 0.0 for s in samples]


def wrong_length(samples):
    return [0.0]


def test_a_samples_reward_gets_ids_finished_flags_and_metadata_and_its_errors_are_one_line():
    reward = load_reward("tests.rewards.test_verifiable:rows_seen", normalize=False)
    prompts, responses = ["p1", "p2"], ["a", "b c"]
    scores = reward(prompts, responses, [[1, 2], [1, 2, 3]], [True, False], [{"family": "list"}, {}])
    assert scores.tolist() == pytest.approx([0.02, 0.03])
    assert [(s.prompt, s.response, s.finished, s.metadata) for s in rows_seen.last] == [
        ("p1", "a", True, {"family": "list"}),
        ("p2", "b c", False, {}),
    ]
    bad = load_reward("tests.rewards.test_verifiable:wrong_length", normalize=False)
    with pytest.raises(
        RlhfkitError,
        match=r"^ppo.reward=tests.rewards.test_verifiable:wrong_length "
        r"returned 1 scores for 2 responses$",
    ):
        bad(prompts, responses)


def test_extra_rewards_add_with_their_weights():
    prompts = [render("What is 3 plus 4?")] * 3
    responses, finished = ["7", "6", "7"], [True, True, False]
    total = load_reward(
        "rlhfkit.rewards.verifiable:verifiable_reward",
        normalize=False,
        extra=["rlhfkit.rewards.verifiable:format_reward@0.5", "rlhfkit.tasks:gold_scores"],
    )
    gold = torch.tensor([1.0, 0.5, 1.0])  # the judge: off by one earns 0.5 (finished is not its input here)
    expected = torch.tensor([1.0, 0.0, 1.0]) + 0.5 * torch.tensor([1.0, 1.0, 0.0]) + gold
    assert torch.allclose(total(prompts, responses, None, finished), expected)
    with pytest.raises(RlhfkitError, match="the weight after @ must be a number"):
        load_reward("rlhfkit.tasks:gold_scores", normalize=False, extra=["rlhfkit.tasks:gold_scores@x"])
