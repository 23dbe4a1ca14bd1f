"""Noisy Bradley-Terry labels and the noise ceiling they imply."""

import math
from random import Random

import pytest

from rlhfkit.tasks import (
    DEFAULT_TEMPERATURE,
    expected_agreement,
    gold_score,
    noisy_label,
    preference_probability,
    task_rows,
)


def test_preference_probability_is_a_logistic_of_the_gap():
    assert preference_probability(0.5, 0.5, 1.0) == 0.5
    assert preference_probability(1.0, 0.0, 0.5) == pytest.approx(1 / (1 + math.exp(-2)))
    assert preference_probability(0.0, 1.0, 0.5) == pytest.approx(1 - preference_probability(1.0, 0.0, 0.5))
    assert preference_probability(1e6, -1e6, 1e-3) == 1.0  # no overflow
    assert preference_probability(-1e6, 1e6, 1e-3) == 0.0


def test_temperature_zero_is_the_noiseless_judge():
    assert preference_probability(0.2, 0.1, 0.0) == 1.0
    assert preference_probability(0.1, 0.2, 0.0) == 0.0
    assert preference_probability(0.1, 0.1, 0.0) == 0.5
    rng = Random(0)
    assert {noisy_label(0.3, -0.3, 0.0, rng) for _ in range(50)} == {1}


def test_bad_temperature_raises():
    for t in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            preference_probability(1.0, 0.0, t)


def test_noisy_labels_match_the_probability_and_are_seeded():
    labels = [noisy_label(0.5, 0.0, 0.5, Random(i)) for i in range(4000)]
    assert sum(labels) / len(labels) == pytest.approx(preference_probability(0.5, 0.0, 0.5), abs=0.03)
    rng_a, rng_b = Random(9), Random(9)
    assert [noisy_label(0.1, 0.0, 1.0, rng_a) for _ in range(20)] == [
        noisy_label(0.1, 0.0, 1.0, rng_b) for _ in range(20)
    ]


def _demo_pairs():
    # Two noisy demonstrations of each train prompt: a stand-in for "two SFT samples".
    first = task_rows(split="train", seed=1, noise=0.5)
    second = {r["id"]: r for r in task_rows(split="train", seed=2, noise=0.5)}
    return [
        (gold_score(r["instruction"], r["output"]), gold_score(r["instruction"], second[r["id"]]["output"]))
        for r in first
    ]


def test_default_temperature_gives_human_like_agreement():
    pairs = _demo_pairs()
    assert 0.70 <= expected_agreement(pairs, DEFAULT_TEMPERATURE) <= 0.80
    # Sampled labels agree about as often as expected.
    rng = Random(0)
    untied = [(a, b) for a, b in pairs if a != b]
    agree = [noisy_label(a, b, DEFAULT_TEMPERATURE, rng) == int(a > b) for a, b in untied]
    assert sum(agree) / len(agree) == pytest.approx(expected_agreement(pairs, DEFAULT_TEMPERATURE), abs=0.04)


def test_agreement_falls_as_temperature_rises():
    pairs = _demo_pairs()
    agreement = [expected_agreement(pairs, t) for t in (0.0, 0.2, 0.6, 2.0, 100.0)]
    assert agreement[0] == 1.0
    assert agreement == sorted(agreement, reverse=True) and agreement[-1] == pytest.approx(0.5, abs=0.01)


def test_agreement_ignores_ties_and_needs_one_untied_pair():
    assert expected_agreement([(1.0, 1.0), (1.0, 0.0)], 0.0) == 1.0
    with pytest.raises(ValueError, match="tied"):
        expected_agreement([(0.5, 0.5)], 1.0)
