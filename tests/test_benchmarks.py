"""The benchmark runner's bookkeeping on fake measurements: ratios, table, result file, FLOPs.

No timing is asserted (benchmarks never assert speed); the runner is loaded from benchmarks/ the
way `python benchmarks/run.py` loads it.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def run():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCH))


def fake(side, stage, value, rss, shape="gpt2-small", **extra):
    metric = {"sft": "tokens/s", "rm": "pairs/s", "ppo": "s/iter"}[stage]
    return {
        "side": side,
        "stage": stage,
        "shape": shape,
        "metric": metric,
        "value": value,
        "peak_rss_mb": rss,
        **extra,
    }


STATS = {"pair_tokens": 100.0, "prompt_tokens": 20.0}
PEAK = {"gpt2-small": {"gflops": 100.0}, "gpt2-tiny": {"gflops": 50.0}}


def test_speedup_inverts_seconds_per_iteration(run):
    assert run.speedup("tokens/s", 300.0, 100.0) == pytest.approx(3.0)
    assert run.speedup("s/iter", 2.0, 6.0) == pytest.approx(3.0)  # rlhfkit takes a third of the time
    assert run.speedup("pairs/s", 1.0, None) is None


def test_rows_ratios_targets_and_best_of_repeats(run):
    measurements = [
        fake("rlhfkit", "sft", 150.0, 2000.0),
        fake("rlhfkit", "sft", 210.0, 2100.0, cpu_value=240.0),
        fake("trl", "sft", 100.0, 3000.0, cpu_value=200.0),
        fake("rlhfkit", "ppo", 4.0, 1000.0),
        fake("rlhfkit", "ppo", 5.0, 900.0),
        fake("trl", "ppo", 10.0, 2000.0),
    ]
    rows = {r["stage"]: r for r in run.build_rows(measurements, PEAK, STATS)}
    sft, ppo = rows["sft"], rows["ppo"]
    assert sft["rlhfkit"] == 210.0 and sft["speedup"] == pytest.approx(2.1)  # the faster repeat is kept
    assert sft["rss_ratio"] == pytest.approx(2100 / 3000)
    assert ppo["rlhfkit"] == 4.0 and ppo["speedup"] == pytest.approx(2.5)  # fewer seconds is faster
    assert sft["speed_target"] == 1.5 and ppo["speed_target"] == 2.0 and sft["rss_target"] == 0.7
    # SFT model FLOPs: tokens/s x 4N, N = trunk + LM head matmul weights of gpt2-small.
    trunk, head = run.W.matmul_params("gpt2-small")
    assert trunk == 12 * 12 * 768**2 and head == 768 * 50257
    # Per CPU second where measured (cpu_value), else per wall second.
    assert sft["mfu_rlhfkit"] == pytest.approx(240.0 * 4 * (trunk + head) / 100e9)
    assert ppo["mfu_trl"] == pytest.approx(
        run.W.model_flops("ppo", "gpt2-small", 8 * (20.0 + 32)) / 10.0 / 100e9
    )

    table = run.format_table(list(rows.values()))
    lines = table.splitlines()
    assert lines[0].startswith("| model | stage | metric, wall (per CPU second) | rlhfkit | TRL |")
    sft_line = next(line for line in lines if "| sft |" in line)
    assert "| 210 (240) | 100 (200) | 2.10× (≥1.5 met) | 1.20× (≥1.5 NOT met)" in sft_line
    assert "0.70× (≤0.7 met)" in sft_line
    ppo_line = next(line for line in lines if "| ppo |" in line)
    assert "| 4.00 | 10.00 |" in ppo_line and "2.50× (≥2.0 met)" in ppo_line


def test_missed_target_and_missing_trl_are_shown(run):
    measurements = [
        fake("rlhfkit", "rm", 1.2, 2500.0),
        fake("trl", "rm", 1.0, 3000.0),
        fake("rlhfkit", "sft", 300.0, 1000.0, shape="gpt2-tiny"),
        fake("rlhfkit", "ppo", 3.0, 1000.0, shape="gpt2-tiny"),
        fake("trl", "ppo", None, 300.0, shape="gpt2-tiny", error="no PPOTrainer in trl 1.16.0"),
    ]
    rows = run.build_rows(measurements, PEAK, STATS)
    table = run.format_table(rows)
    rm_line = next(line for line in table.splitlines() if "| rm |" in line)
    assert "1.20× (≥1.5 NOT met)" in rm_line and "0.83× (≤0.7 NOT met)" in rm_line
    tiny_sft = next(r for r in rows if (r["shape"], r["stage"]) == ("gpt2-tiny", "sft"))
    assert tiny_sft["trl"] is None and tiny_sft["speedup"] is None and "speed_target" not in tiny_sft
    assert "TRL gpt2-tiny sft: TRL not measured" in table
    assert "TRL gpt2-tiny ppo: no PPOTrainer in trl 1.16.0" in table
    tiny_ppo = next(r for r in rows if (r["shape"], r["stage"]) == ("gpt2-tiny", "ppo"))
    assert tiny_ppo["rss_ratio"] is None  # a failed TRL run's RSS is not a comparison


def test_result_file_is_named_by_date_and_host_and_is_json(run, tmp_path):
    now = datetime.datetime(2026, 11, 25, 21, 0, tzinfo=datetime.timezone.utc)
    path = run.result_path(tmp_path / "results", now, "box")
    assert path.name == "2026-11-25-box.json"
    run.write_json(path, {"rows": [], "table": "t"})
    assert json.loads(path.read_text()) == {"rows": [], "table": "t"}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_steady_excludes_warmup_steps(run):
    assert run.W.steady([1.0, 2.0, 4.0, 7.0]) == (2, 5.0)  # from the end of step 2 to the end of step 4
    with pytest.raises(ValueError, match="more than 2 steps"):
        run.W.steady([1.0, 2.0])


def test_bench_command_runs_the_repository_runner(monkeypatch):
    from rlhfkit import cli

    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    main = cli.main

    assert main(["bench", "--shapes", "gpt2-tiny", "--trl-python", "none"]) == 0
    assert calls[0][1] == str(BENCH / "run.py")
    assert calls[0][2:] == ["--shapes", "gpt2-tiny", "--trl-python", "none"]
