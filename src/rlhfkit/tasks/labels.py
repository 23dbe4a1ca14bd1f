"""Noisy Bradley-Terry preference labels from gold scores, like human raters.

P(a preferred over b) = sigmoid((score_a - score_b) / temperature). Temperature 0 is the
noiseless judge. The default was chosen so that labels agree with the noiseless judge on about
75% of untied pairs of typical responses (design.md section 5 aims at 70-80%). Measured at 0.6
on the train split: two noise=0.5 demonstrations of one prompt 77%, a reference against a flawed
answer 78%, two flawed answers 73% (0.5 would give 80%, 81%, 76%).
"""

import math
from collections.abc import Iterable
from random import Random

DEFAULT_TEMPERATURE = 0.6


def _check_temperature(temperature: float) -> None:
    if not temperature >= 0.0 or math.isinf(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")


def preference_probability(score_a: float, score_b: float, temperature: float) -> float:
    """P(a preferred) = sigmoid((a - b) / temperature); temperature 0 -> 1, 0 or 0.5 on a tie."""
    _check_temperature(temperature)
    diff = score_a - score_b
    if math.isnan(diff):
        raise ValueError(f"gold scores must be numbers, got {score_a} and {score_b}")
    if temperature == 0.0 or diff == 0.0:
        return 0.5 if diff == 0.0 else float(diff > 0.0)
    z = diff / temperature
    # The two branches of the logistic keep exp() from overflowing for large |z|.
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def noisy_label(score_a: float, score_b: float, temperature: float, rng: Random) -> int:
    """1 if the simulated rater prefers a, else 0; always draws exactly one number from `rng`."""
    return int(rng.random() < preference_probability(score_a, score_b, temperature))


def expected_agreement(score_pairs: Iterable[tuple[float, float]], temperature: float) -> float:
    """Expected fraction of noisy labels that match the noiseless judge: the noise ceiling.

    Ties are left out, since the noiseless judge has no preference on them; raises ValueError
    when every pair is tied.
    """
    gaps = [abs(a - b) for a, b in score_pairs if a != b]
    if not gaps:
        raise ValueError("every pair of gold scores is tied: agreement with the judge is undefined")
    return sum(preference_probability(g, 0.0, temperature) for g in gaps) / len(gaps)
