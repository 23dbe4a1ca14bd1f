"""The tiny pipeline end to end: every stage, the evaluation, and a report that agrees with metrics.jsonl."""

import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from rlhfkit.cli import main
from rlhfkit.config import PipelineConfig, load_config
from rlhfkit.evaluate.compare import best_of_n, best_of_n_reference, win_rate
from rlhfkit.evaluate.report import fmt, training_rows
from rlhfkit.run.logger import read_metrics
from rlhfkit.trainers.pipeline import plan_pipeline, split_overrides

CONFIG = str(Path(__file__).parents[2] / "configs" / "tiny" / "pipeline.yaml")
SMALL = [
    "sft.train.max_steps=150",
    "sft.train.eval_every=75",
    "sft.sft.eval_generate=16",
    "prefs.n_prompts=256",
    "rm.train.max_steps=12",
    "rm.train.batch_size=8",
    "rm.train.eval_every=6",
    "rm.data.eval_size=16",
    "rm.rm.norm_samples=16",
    "ppo.ppo.iterations=3",
    "ppo.rollout.batch_size=16",
    "ppo.ppo.eval_every=3",
    "ppo.ppo.eval_prompts=16",
    "eval.prompts=12",
    "eval.best_of_n=[1,2,4]",
    "eval.show=3",
]
QUIET = [f"{s}.run.{k}" for s in ("sft", "rm", "ppo") for k in ("report_to=[]", "progress=false")]


def test_overrides_are_routed_by_stage_prefix():
    own, staged = split_overrides(
        ["sft.train.lr=1e-4", "prefs.n_prompts=5", "eval.prompts=3", "name=x", "sft=a.yaml"]
    )
    assert own == ["eval.prompts=3", "name=x", "sft=a.yaml"]
    assert staged["sft"] == ["train.lr=1e-4"] and staged["prefs"] == ["n_prompts=5"] and staged["ppo"] == []


@pytest.mark.parametrize("template", ["human_assistant", "chat"])
def test_the_sft_stages_template_is_wired_to_prefs_rm_and_ppo(template):
    # The other stages' own settings lose to the wiring: a policy is scored only in its own format.
    staged = {"sft": [f"data.template={template}"], "rm": ["data.template=human_assistant"], "ppo": []}
    plan = plan_pipeline(load_config(PipelineConfig, CONFIG), CONFIG, staged)
    assert plan.sft.data.template == plan.prefs.template == template
    assert plan.rm.data.template == plan.ppo.data.template == template


def test_best_of_n_matches_the_plain_loop_and_reports_the_kl_bound_beside_its_estimate():
    generator = torch.Generator().manual_seed(0)
    gold, reward = torch.rand(40, 8, generator=generator), torch.randn(40, 8, generator=generator)
    for row in best_of_n(gold, reward, [1, 2, 4, 8]):
        expected_gold, expected_reward = best_of_n_reference(gold.tolist(), reward.tolist(), row["n"])
        assert row["gold"] == pytest.approx(expected_gold) and row["reward"] == pytest.approx(expected_reward)
        assert row["kl_bound"] == pytest.approx(math.log(row["n"]) - (row["n"] - 1) / row["n"])
        assert 0 <= row["kl"] <= row["kl_bound"] + 1e-9
    rows = best_of_n(gold, reward, [1, 8])
    assert rows[1]["reward"] > rows[0]["reward"]  # picking the max of 8 cannot lower the mean reward
    with pytest.raises(ValueError, match="n=9"):
        best_of_n(gold, reward, [9])


def test_win_rate_counts_ties_as_half():
    assert win_rate([1.0, 0.0, 0.5], [0.0, 1.0, 0.5]) == pytest.approx(0.5)
    assert win_rate([1.0, 1.0], [0.0, 0.5]) == 1.0
    with pytest.raises(ValueError):
        win_rate([1.0], [])


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory, tiny_dir) -> Path:
    """The tiny pipeline with SMALL, run once (in process) into <dir>/t. Each test copies the folder:
    test_tiny_pipeline_end_to_end_report_matches_metrics checks its report and reruns it,
    test_pipeline_killed_during_ppo_resumes_and_matches_an_uninterrupted_ppo keeps its SFT, pairs and RM
    and runs PPO again (with a kill)."""
    out = tmp_path_factory.mktemp("pipeline")
    assert main(["pipeline", "--config", CONFIG, f"dir={out}", "name=t", *SMALL, *QUIET]) == 0
    return out / "t"


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_report_matches_metrics(tmp_path, capsys, tiny_pipeline):
    root = tmp_path / "t"
    shutil.copytree(tiny_pipeline, root)
    report = (root / "report.md").read_text()
    # Every training number in the report is the first/last value in that stage's metrics.jsonl.
    metrics = {s: read_metrics(root / s / "metrics.jsonl") for s in ("sft", "rm", "ppo")}
    rows = training_rows(metrics)
    assert {stage for stage, *_ in rows} == {"sft", "rm", "ppo"}
    for stage, key, first, last in rows:
        assert f"| {stage} | {key} | {fmt(first)} | {fmt(last)} |" in report
    gold = [r["gold/score"] for r in metrics["ppo"] if "gold/score" in r]
    assert fmt(gold[-1]) in report
    # The headline table is eval.json's numbers; KL to SFT is 0 for SFT itself and >= 0 (k1 mean) elsewhere.
    evaluation = json.loads((root / "eval.json").read_text())
    for label, name in (("base", "base"), ("SFT", "sft"), ("PPO", "ppo")):
        m = evaluation["metrics"][name]
        assert re.search(
            rf"^\| {label} \| {re.escape(fmt(m['gold']))} \| {re.escape(fmt(m['reward']))} \|", report, re.M
        )
    assert evaluation["metrics"]["sft"]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert [r["n"] for r in evaluation["best_of_n"]] == [1, 2, 4]
    assert (
        "Win rate ppo vs sft" in report and "Gold gain ppo vs sft" in report and "## Health check" in report
    )
    assert set(evaluation["gold_gains"]) == {"base vs sft", "ppo vs sft"}
    for png in ("training.png", "gold_vs_kl.png"):
        assert (root / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A rerun skips every finished stage and only re-evaluates.
    capsys.readouterr()
    assert main(["pipeline", "--config", CONFIG, f"dir={tmp_path}", "name=t", *SMALL, *QUIET]) == 0
    out = capsys.readouterr().out
    assert all(f"{s}: already complete, skipping" in out for s in ("sft", "prefs", "rm", "ppo"))


def test_pipeline_typo_in_a_stage_key_fails_before_any_work(tmp_path, capsys):
    assert main(["pipeline", "--config", CONFIG, f"dir={tmp_path}", "ppo.ppo.kl_cof=0.1"]) == 2
    assert "did you mean 'ppo.kl_coef'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_pipeline_killed_during_ppo_resumes_and_matches_an_uninterrupted_ppo(tmp_path, tiny_pipeline):
    import signal
    import subprocess
    import time

    from tests.trainers.runs import ENV, assert_same_weights, run_ok

    args = [f"dir={tmp_path}", "name=t", *SMALL, *QUIET, "ppo.ppo.iterations=6", "ppo.train.save_every=2"]
    cmd = [sys.executable, "-m", "rlhfkit.cli", "pipeline", "--config", CONFIG, *args]
    root = tmp_path / "t"
    # The finished SFT, pairs and RM of the shared run; PPO (and its evaluation) from scratch.
    shutil.copytree(
        tiny_pipeline, root, ignore=shutil.ignore_patterns("ppo", "report.md", "eval.json", "plots")
    )
    checkpoint = root / "ppo" / "checkpoints" / "step-2"
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists() and not (root / "ppo" / "final").exists(), "killed too late"
    # The same PPO stage run straight through from its resolved config, while the pipeline resumes
    # (both single-threaded: 2 cores run them at once).
    straight_cmd = [sys.executable, "-m", "rlhfkit.cli", "ppo", "--config", str(root / "ppo" / "config.yaml")]
    with open(tmp_path / "straight.log", "w") as log:
        straight = subprocess.Popen([*straight_cmd, "run.name=straight"], env=ENV, stdout=log, stderr=log)
    out = run_ok(cmd).stdout
    assert all(f"{s}: already complete, skipping" in out for s in ("sft", "prefs", "rm")) and "resumed" in out
    assert (root / "report.md").is_file()
    # The resumed PPO equals the straight one.
    assert straight.wait(timeout=600) == 0, (tmp_path / "straight.log").read_text()[-3000:]
    assert_same_weights(
        tmp_path / "straight" / "ppo" / "final" / "model.safetensors",
        root / "ppo" / "final" / "model.safetensors",
        atol=1e-6,
    )


def test_every_policy_gets_k_paired_samples_per_prompt(tiny_sft_dir):
    from rlhfkit.config import ModelConfig
    from rlhfkit.evaluate.compare import EvalSettings, compare_policies, eval_sample_count
    from rlhfkit.models import load_causal_lm
    from rlhfkit.tasks import task_rows

    policy = load_causal_lm(ModelConfig(name=str(tiny_sft_dir / "final"), lora=False), trainable=False)
    copy = load_causal_lm(ModelConfig(name=str(tiny_sft_dir / "final"), lora=False), trainable=False)
    prompts = [f"Human: {r['instruction']}\n\nAssistant:" for r in task_rows("sentiment", "test", 5)]
    settings = EvalSettings(max_new_tokens=8, best_of_n=[1, 2], samples_per_prompt=3, batch_size=4)
    reward = lambda p, r, ids=None, **rows: __import__("torch").tensor([float(len(x)) for x in r])  # noqa: E731
    result = compare_policies(
        {"sft": policy, "copy": copy}, "sft", prompts, [["x"]] * 5, settings, gold=True, reward_fn=reward
    )
    assert result.samples_per_prompt == 3 and result.n_prompts == 5
    assert result.samples["sft"].prompts == [p for p in prompts for _ in range(3)]
    # The same random numbers for every policy: an identical policy draws identical samples.
    assert result.samples["copy"].responses == result.samples["sft"].responses
    assert len(set(result.samples["sft"].responses[:3])) > 1, "a prompt's draws should differ from each other"
    assert result.win_rates["copy vs sft"] == {"gold": 0.5, "reward": 0.5}
    assert result.metrics["copy"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert result.gold_gains["copy vs sft"] == (0.0, 0.0)
    assert eval_sample_count(5, 2, settings, "sft", reward) == 5 * (2 * 3 + 2)


def test_paired_gain_averages_each_prompts_draws_before_the_standard_error():
    from rlhfkit.evaluate.compare import paired_gain

    # Two prompts with two draws each: per-prompt differences 0.5 and 0.1.
    mean, stderr = paired_gain([1.0, 0.0, 0.2, 0.2], [0.0, 0.0, 0.1, 0.1], k=2)
    assert mean == pytest.approx(0.3)
    assert stderr == pytest.approx(((0.2**2 + 0.2**2) / 1) ** 0.5 / 2**0.5)
    with pytest.raises(ValueError, match="k=3"):
        paired_gain([1.0, 0.0], [0.0, 0.0], k=3)
