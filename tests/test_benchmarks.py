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
    metric = {"sft": "tokens/s", "rm": "pairs/s", "ppo": "s/iter", "grpo": "s/iter", "rloo": "s/iter"}.get(
        stage, "pairs/s"
    )
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


def test_grpo_rloo_and_dpo_rows_ratios_targets_and_flops(run):
    """Issues #16/#17: GRPO and RLOO rows in s/iter (fewer is faster) with the 2x target, DPO in pairs/s
    with the 1.5x target; FLOP fractions from their own per-token counts."""
    measurements = [
        fake("rlhfkit", "grpo", 5.0, 1400.0, cpu_value=4.0),
        fake("trl", "grpo", 12.0, 2800.0, cpu_value=10.0),
        fake("rlhfkit", "rloo", 8.0, 2500.0),
        fake("trl", "rloo", 12.0, 3000.0),
        fake("rlhfkit", "dpo", 3.0, 1000.0),
        fake("trl", "dpo", 1.5, 2000.0),
    ]
    rows = {r["stage"]: r for r in run.build_rows(measurements, PEAK, STATS)}
    grpo, rloo, dpo = rows["grpo"], rows["rloo"], rows["dpo"]
    assert grpo["speedup"] == pytest.approx(2.4) and grpo["speedup_cpu"] == pytest.approx(2.5)
    assert rloo["speedup"] == pytest.approx(1.5) and dpo["speedup"] == pytest.approx(2.0)
    assert (grpo["speed_target"], rloo["speed_target"], dpo["speed_target"]) == (2.0, 2.0, 1.5)
    assert grpo["rss_ratio"] == pytest.approx(0.5) and rloo["rss_ratio"] == pytest.approx(2500 / 3000)
    # 32 rows (8 prompts x G=4) of prompt + 32 new tokens per iteration; RLOO adds the old log-prob pass.
    trunk, head = run.W.matmul_params("gpt2-small")
    n, tokens = trunk + head, 8 * 4 * (20.0 + 32)
    assert grpo["mfu_rlhfkit"] == pytest.approx((8 * n + 2 * trunk) * tokens / 4.0 / 100e9)
    assert rloo["mfu_trl"] == pytest.approx((10 * n + 2 * trunk) * tokens / 12.0 / 100e9)
    assert dpo["mfu_rlhfkit"] == pytest.approx(6 * n * 3.0 * 100.0 / 100e9)  # 100 tokens per pair (STATS)

    lines = run.format_table(list(rows.values())).splitlines()
    grpo_line = next(line for line in lines if "| grpo |" in line)
    assert "| 5.00 (4.00) | 12.00 (10.00) | 2.40× (≥2.0 met) | 2.50× (≥2.0 met)" in grpo_line
    assert "0.50× (≤0.7 met)" in grpo_line
    rloo_line = next(line for line in lines if "| rloo |" in line)
    assert "1.50× (≥2.0 NOT met)" in rloo_line and "0.83× (≤0.7 NOT met)" in rloo_line
    dpo_line = next(line for line in lines if "| dpo |" in line)
    assert "| 3.00 | 1.50 | 2.00× (≥1.5 met)" in dpo_line and "0.50× (≤0.7 met)" in dpo_line


def test_every_stage_has_steps_a_metric_and_a_target_and_both_sides_take_it(run):
    """A new stage must be known to the runner, the workload and both measuring sides' command line."""
    assert set(run.STAGES) == {"sft", "rm", "ppo", "grpo", "rloo", "dpo"}
    for shape in run.W.SHAPES:
        assert set(run.W.STEPS[shape]) == set(run.STAGES)
        assert all(steps > run.W.WARMUP for steps in run.W.STEPS[shape].values())  # something is timed
    assert set(run.W.METRICS) == set(run.SPEED_TARGETS) == set(run.STAGES)
    assert run.parse_args(["--stages", "grpo", "dpo"]).stages == ["grpo", "dpo"]
    assert run.W.GROUP_PROMPTS * run.W.GROUP_SIZE == 32  # the TRL baseline's 8 prompts x 4 generations
    for side in ("side_rlhfkit.py", "side_trl.py"):
        source = (BENCH / side).read_text()
        assert "W.side_arguments()" in source and "W.METRICS[" in source


def test_rlhfkit_side_configs_match_the_workload(run, tmp_path):
    """The GRPO/RLOO/DPO configs the rlhfkit side measures: `rlhfkit grpo|rloo`'s presets with the
    workload's batch, one update per rollout and the KL weights the TRL side gets; valid configs."""
    from rlhfkit.trainers.dpo import check_dpo_config
    from rlhfkit.trainers.ppo import check_ppo_config

    spec = importlib.util.spec_from_file_location("bench_side_rlhfkit", BENCH / "side_rlhfkit.py")
    side = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(side)
    W = run.W
    made = {s: side.configs(s, tmp_path, "gpt2-tiny", 5, 1, str(tmp_path)) for s in ("grpo", "rloo", "dpo")}
    for stage, beta in (("grpo", W.GRPO_BETA), ("rloo", W.RLOO_BETA)):
        cfg = made[stage]
        check_ppo_config(cfg)
        assert (cfg.ppo.advantage, cfg.rollout.batch_size, cfg.rollout.group_size) == (
            stage,
            W.GROUP_PROMPTS,
            W.GROUP_SIZE,
        )
        assert (cfg.ppo.epochs, cfg.ppo.minibatches, cfg.ppo.kl_coef, cfg.ppo.iterations) == (1, 1, beta, 5)
        assert cfg.rollout.max_new_tokens == W.PPO_NEW_TOKENS and cfg.model.lora_r == W.LORA["r"]
        assert cfg.ppo.reward.endswith("gpt2-tiny-rm") and not cfg.ppo.normalize_reward
    grpo, rloo = made["grpo"].ppo, made["rloo"].ppo
    assert (grpo.kl_in, grpo.kl_loss_estimator) == ("loss", "k3")
    assert grpo.loss_aggregation == "seq-mean-token-mean"
    assert rloo.kl_in == "reward"
    dpo = made["dpo"]
    check_dpo_config(dpo)
    assert (dpo.train.batch_size, dpo.dpo.beta, dpo.dpo.loss, dpo.dpo.reference) == (
        W.DPO_BATCH,
        W.DPO_BETA,
        "sigmoid",
        "adapter_off",
    )
    assert dpo.dpo.eval_prompts == 0 and dpo.train.log_every == 1  # every step logged, nothing sampled


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
