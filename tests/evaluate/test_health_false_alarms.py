"""A run that learns nothing must not set off the health check: 1,000 simulated runs whose metrics are
drawn from their definitions (tests/evaluate/simulated_runs.py), each rule checked after every iteration
as the trainer does; every rule must stay quiet in > 99% of runs."""

import pytest
import torch

from rlhfkit.evaluate.health import health_warnings
from tests.evaluate.simulated_runs import kl_pools, learning_nothing

RUNS = 1000
RULES = (
    "negative-kl",
    "kl-estimator-bias",
    "ratio-first",
    "value-loss",
    "eos-collapse",
    "entropy-collapse",
    "reward-hacking",
)


def false_alarm_rates(runs: int, seed: int = 0) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    pools = kl_pools(generator)
    fired = dict.fromkeys(RULES, 0)
    for _ in range(runs):
        records = learning_nothing(generator, pools)
        window = [3, 5, 10][torch.randint(3, (1,), generator=generator).item()]
        kinds = set()
        for i in range(len(records)):
            kinds |= {w.split(":")[0] for w in health_warnings(records[: i + 1], window)}
        for kind in kinds:
            fired[kind] += 1
    return {kind: count / runs for kind, count in fired.items()}


@pytest.mark.slow  # ~45 s on one core
def test_no_rule_false_alarms_in_one_percent_of_runs_that_learn_nothing():
    rates = false_alarm_rates(RUNS)
    print("false-alarm rate per rule over", RUNS, "runs:", rates)
    assert all(rate < 0.01 for rate in rates.values()), rates
