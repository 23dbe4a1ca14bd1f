"""Over-optimisation on show (issue #18 item 4), on the recorded evals of the real tiny run without a KL
penalty (tests/evaluate/test_health.py): the report finds gold's peak, the RM reward before and after it,
and the health warning's iteration, and draws them."""

import pytest

from rlhfkit.evaluate.frontier import gold_peak
from rlhfkit.evaluate.health import health_warnings
from rlhfkit.evaluate.plots import plot_overoptimisation, warning_lines
from rlhfkit.evaluate.report import overoptimisation_section
from rlhfkit.run import metrics as M
from tests.evaluate.test_health import recorded_kl0_records

# The run's KL at the peak (1.6) and the end (7.6) were recorded; between them an illustrative ramp.
KL = {10: 0.7, 20: 1.6, 30: 2.3, 40: 3.0, 50: 3.8, 60: 4.5, 70: 5.3, 80: 6.0, 90: 6.8, 100: 7.6}


def recorded_rows(method: str) -> list[dict]:
    """metrics.jsonl records as the online loop logs them: evals with the iteration's KL under the
    method's prefix, and a health/warning record wherever the rules fire (they fire once, at 100)."""
    rows, history = [], []
    for step, record in recorded_kl0_records():
        if step in KL:
            record[M.online(method)[M.PPO_KL_K1]] = KL[step]
        history.append(record)
        rows.append({"step": step, **record})
        rows += [{"step": step, M.HEALTH_WARNING: w} for w in health_warnings(history, window=5)]
    return rows


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_the_peak_and_the_warning_are_found_in_the_recorded_kl0_run(method):
    peak = gold_peak(recorded_rows(method), M.online(method)[M.PPO_KL_K1])
    assert peak["first"] == {"step": 0, "gold": 0.2124, "kl": 0.0, "reward": 0.0285}
    assert peak["peak"] == {"step": 20, "gold": 0.2944, "kl": 1.6, "reward": 0.4748}
    assert peak["last"] == {"step": 100, "gold": 0.2139, "kl": 7.6, "reward": 0.8496}
    assert peak["fell"] and peak["drop_stderr"] == 0.0300 and peak["warnings"] == [100]


def test_the_report_says_and_draws_the_peak(tmp_path):
    metrics = {"sft": [], "ppo": recorded_rows("ppo")}
    text = "\n".join(overoptimisation_section(metrics, {"ppo": "PPO"}))
    assert "![overoptimisation](plots/overoptimisation.png)" in text
    assert (
        "PPO: held-out gold peaked at iteration 20 (gold 0.294, KL 1.60 nats, RM reward 0.475), from "
        "gold 0.212 and RM reward 0.029 at iteration 0; by iteration 100 gold fell 0.080 ± 0.030 to 0.214 "
        "(KL 7.60) while the RM reward went 0.475 → 0.850: the RM kept rising after gold peaked "
        "(over-optimisation). The health check's reward-hacking warning fired at iteration 100."
    ) in text
    peak = gold_peak(metrics["ppo"], M.PPO_KL_K1)
    png = plot_overoptimisation(tmp_path / "o.png", metrics, {"ppo": peak})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A lasting warning repeats every health window: one legend entry for all of its lines.
    assert warning_lines([90, 95, 150]) == [
        (90, "reward-hacking warnings (3, from iteration 90)"),
        (95, "_nolegend_"),
        (150, "_nolegend_"),
    ]
    assert warning_lines([100]) == [(100, "reward-hacking warning (iteration 100)")]
    # A run whose gold only rises says so instead.
    rising = [r for r in metrics["ppo"] if r["step"] <= 20 and M.HEALTH_WARNING not in r]
    assert "no fall of gold within this run" in "\n".join(overoptimisation_section({"ppo": rising}, {}))
    # A fall within the noise is not called over-optimisation.
    noisy = [
        {**r, M.GOLD_DROP_STDERR: 0.05} if r["step"] == 100 and M.GOLD_SCORE in r else r
        for r in metrics["ppo"]
    ]
    said = "\n".join(overoptimisation_section({"ppo": noisy}, {}))
    assert "not a fall this run can tell from noise" in said and "(over-optimisation)" not in said


def test_an_evals_kl_is_the_next_rollouts_the_first_sampled_after_its_update():
    # Iteration N logs the KL of its rollout (sampled before update N) and the eval after update N.
    g, r, kl = M.GOLD_SCORE, M.HELDOUT_REWARD_RM, M.PPO_KL_K1
    rows = [
        {"step": 0, g: 0.1, r: 0.0},
        {"step": 1, kl: 0.0},
        {"step": 2, kl: 0.4, g: 0.3, r: 0.5},
        {"step": 3, kl: 0.9},
        {"step": 4, kl: 1.5, g: 0.2, r: 0.8},
    ]
    peak = gold_peak(rows, kl)
    assert peak["first"]["kl"] == 0.0 and peak["peak"]["kl"] == 0.9 and peak["last"]["kl"] == 1.5
