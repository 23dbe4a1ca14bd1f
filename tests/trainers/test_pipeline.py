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
QUIET = [
    f"{s}.run.{k}"
    for s in ("sft", "rm", "ppo", "grpo", "rloo", "dpo")
    for k in ("report_to=[]", "progress=false")
]
# Three methods from the one SFT model, pairs and RM, each keeping checkpoints for its frontier curve.
METHODS = [
    "methods=[ppo,grpo,dpo]",
    "ppo.train.save_every=1",
    "grpo.ppo.iterations=3",
    "grpo.rollout.batch_size=4",
    "grpo.ppo.eval_every=3",
    "grpo.ppo.eval_prompts=16",
    "grpo.train.save_every=1",
    "dpo.train.max_steps=4",
    "dpo.train.batch_size=8",
    "dpo.train.warmup_steps=1",
    "dpo.train.log_every=1",
    "dpo.train.eval_every=2",
    "dpo.train.save_every=2",
    "dpo.dpo.eval_every=2",
    "dpo.dpo.eval_prompts=16",
    "dpo.data.eval_size=16",
    "eval.best_of_n=[1,2,4,8]",
    "eval.checkpoint_samples_per_prompt=2",
]
# A fourth method whose reward raises at its first held-out eval.
FAILING_RLOO = [
    "methods=[ppo,grpo,dpo,rloo]",
    "rloo.rollout.batch_size=4",
    "rloo.ppo.iterations=2",
    "rloo.ppo.eval_prompts=4",
    "rloo.ppo.extra_rewards=[tests.trainers.test_pipeline:raising_reward]",
]


def raising_reward(prompts, responses):
    raise ValueError("this reward always fails")


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
    """The tiny pipeline with SMALL and METHODS (ppo, grpo, dpo), run once (in process) into <dir>/t.
    Each test copies the folder:
    test_tiny_pipeline_end_to_end_report_matches_metrics checks its report and reruns it,
    test_pipeline_killed_during_ppo_resumes_and_matches_an_uninterrupted_ppo keeps its SFT, pairs and RM
    and runs PPO again (with a kill)."""
    out = tmp_path_factory.mktemp("pipeline")
    assert main(["pipeline", "--config", CONFIG, f"dir={out}", "name=t", *SMALL, *METHODS, *QUIET]) == 0
    return out / "t"


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_report_matches_metrics(tmp_path, capsys, tiny_pipeline):
    args = ["pipeline", "--config", CONFIG, f"dir={tmp_path}", "name=t", *SMALL, *METHODS, *QUIET]
    root = tmp_path / "t"
    shutil.copytree(tiny_pipeline, root)
    report = (root / "report.md").read_text()
    # Every training number in the report is the first/last value in that stage's metrics.jsonl.
    metrics = {s: read_metrics(root / s / "metrics.jsonl") for s in ("sft", "rm", "ppo", "grpo", "dpo")}
    rows = training_rows(metrics)
    assert {stage for stage, *_ in rows} == {"sft", "rm", "ppo", "grpo", "dpo"}
    for stage, key, first, last in rows:
        assert f"| {stage} | {key} | {fmt(first)} | {fmt(last)} |" in report
    assert ("grpo", "grpo/kl_k1") in {(stage, key) for stage, key, *_ in rows}
    # The headline table is eval.json's numbers; KL to SFT is 0 for SFT itself and >= 0 (k1 mean) elsewhere.
    evaluation = json.loads((root / "eval.json").read_text())
    for label, name in (("base", "base"), ("SFT", "sft"), ("PPO", "ppo"), ("GRPO", "grpo"), ("DPO", "dpo")):
        m = evaluation["metrics"][name]
        assert re.search(
            rf"^\| {label} \| {re.escape(fmt(m['gold']))} \| {re.escape(fmt(m['reward']))} \|", report, re.M
        )
    assert evaluation["metrics"]["sft"]["kl"] == 0.0
    assert [r["n"] for r in evaluation["best_of_n"]] == [1, 2, 4, 8]
    agreement = evaluation["rm_gold_agreement"]  # on best-of-n's pool of SFT draws
    assert 0 < agreement["pairs"] <= evaluation["prompts"] * 8 * 7 // 2 and 0 <= agreement["agreement"] <= 1
    assert f"as the noiseless gold judge does in {fmt(agreement['agreement'])} ±" in report
    assert (
        "Win rate ppo vs sft" in report and "Gold gain dpo vs sft" in report and "## Health check" in report
    )
    # One evaluation for all: each method's final and kept checkpoints (these with 2 draws per prompt).
    checkpoints = {"ppo/step-1", "ppo/step-2", "grpo/step-1", "grpo/step-2", "dpo/step-2"}
    assert set(evaluation["gold_gains"]) == {
        f"{p} vs sft" for p in ("base", "ppo", "grpo", "dpo", *checkpoints)
    }
    assert {p: evaluation["draws_per_prompt"][p] for p in checkpoints} == dict.fromkeys(checkpoints, 2)
    assert evaluation["draws_per_prompt"]["ppo"] == 8 and not evaluation["failed"]
    assert_frontier_tables_match(report, evaluation, json.loads((root / "pipeline.json").read_text()))
    for png in ("training.png", "gold_vs_kl.png", "overoptimisation.png"):
        assert (root / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A rerun skips every finished stage; a fourth method that fails loses none of the others' results:
    # they are evaluated and reported, the failure is recorded, and the run exits non-zero.
    capsys.readouterr()
    assert main([*args, *FAILING_RLOO]) == 2
    out, err = capsys.readouterr()
    assert all(
        f"{s}: already complete, skipping" in out for s in ("sft", "prefs", "rm", "ppo", "grpo", "dpo")
    )
    assert "rloo: failed: ppo.reward=tests.trainers.test_pipeline:raising_reward raised ValueError" in err
    assert f"the other methods' results and the report are in {root / 'report.md'}" in err
    failed = json.loads((root / "pipeline.json").read_text())["failed"]
    assert list(failed) == ["rloo"] and "this reward always fails" in failed["rloo"]
    again = json.loads((root / "eval.json").read_text())
    assert again["failed"] == failed and "rloo" not in again["metrics"]
    assert again["metrics"]["ppo"] == evaluation["metrics"]["ppo"]  # same prompts, same random numbers
    report = (root / "report.md").read_text()
    assert "## Failed methods" in report and f"- **RLOO failed**: {failed['rloo']}" in report
    assert "| PPO | final ★ |" in report and "| DPO | final ★ |" in report


def assert_frontier_tables_match(report: str, evaluation: dict, timings: dict) -> None:
    """The frontier's points, fits, KL-budget picks and costs in report.md are eval.json's."""
    frontier = evaluation["frontier"]
    assert list(frontier) == ["best_of_n", "ppo", "grpo", "dpo"]
    assert [p["label"] for p in frontier["ppo"]["points"]] == ["step 1", "step 2", "final"]
    for method in ("ppo", "grpo", "dpo"):
        curve = frontier[method]
        final = curve["points"][-1]
        gain = evaluation["gold_gains"][f"{method} vs sft"]
        assert final["final"] and final["gold"] == evaluation["metrics"][method]["gold"]
        assert (
            f"| {curve['label']} | final ★ | {fmt(final['kl'])} | {fmt(math.sqrt(max(final['kl'], 0)))} | "
            f"{fmt(final['gold'])} | {gain['mean']:+.3f} ± {gain['stderr']:.3f} |"
        ) in report
        fit = curve["fit"]
        used = sum(1 for p in curve["points"] if p["kl"] > 0)
        if used < 3:
            assert (
                fit is None and f"| {curve['label']} | d(α − β log d) | {used} | not enough points" in report
            )
        else:
            assert (
                f"| {curve['label']} | d(α − β log d) | {used} | {fmt(fit['alpha'])} | {fmt(fit['beta'])} |"
                in report
            )
        assert f"| {curve['label']} | {timings['seconds'][method]:.0f} | {curve['train_samples']} |" in report
    assert frontier["ppo"]["train_samples"] == 3 * 16 and frontier["grpo"]["train_samples"] == 3 * 4 * 4
    assert frontier["dpo"]["train_samples"] == 0
    assert "| method | KL ≤ 1 | KL ≤ 2 | KL ≤ 4 |" in report
    for method, picks in ((m, frontier[m]["gold_within_kl"]) for m in frontier):
        label = picks["1.0"]
        if label is not None:
            point = next(p for p in frontier[method]["points"] if p["label"] == label)
            assert point["kl"] <= 1.0 and f"{fmt(point['gold'])} ({label}, KL {point['kl']:.2f})" in report


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
        {"sft": policy, "copy": copy, "once": lambda: copy},
        "sft",
        prompts,
        [["x"]] * 5,
        settings,
        gold=True,
        reward_fn=reward,
        draws_of={"once": 1},
    )
    # A policy given fewer draws (a checkpoint's curve point) draws with the first draws' random numbers.
    assert (
        result.draws["once"] == 1 and result.samples["once"].responses == result.samples["sft"].responses[::3]
    )
    assert result.gold_gains["once vs sft"] == (0.0, 0.0)
    assert result.samples_per_prompt == 3 and result.n_prompts == 5
    assert result.samples["sft"].prompts == [p for p in prompts for _ in range(3)]
    # The same random numbers for every policy: an identical policy draws identical samples.
    assert result.samples["copy"].responses == result.samples["sft"].responses
    assert len(set(result.samples["sft"].responses[:3])) > 1, "a prompt's draws should differ from each other"
    assert result.win_rates["copy vs sft"] == {"gold": 0.5, "reward": 0.5}
    assert result.metrics["copy"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert result.gold_gains["copy vs sft"] == (0.0, 0.0)
    # The reference draws max(k, best-of-n's pool) once: its first k draws are its own samples.
    assert eval_sample_count(5, ["sft", "copy", "once"], settings, "sft", reward, {"once": 1}) == 5 * (
        3 + 3 + 1
    )
    # best-of-n's pool extends SFT's own draws: best-of-1 is SFT's first draw, paired with its mean.
    first = torch.tensor(result.samples["sft"].gold[::3])
    assert result.best_of_n[0]["gold"] == pytest.approx(first.mean().item())


def test_paired_gain_averages_each_prompts_draws_before_the_standard_error():
    from rlhfkit.evaluate.compare import paired_gain

    # Two prompts with two draws each: per-prompt differences 0.5 and 0.1.
    mean, stderr = paired_gain([1.0, 0.0, 0.2, 0.2], [0.0, 0.0, 0.1, 0.1], k=2)
    assert mean == pytest.approx(0.3)
    assert stderr == pytest.approx(((0.2**2 + 0.2**2) / 1) ** 0.5 / 2**0.5)
    with pytest.raises(ValueError, match="k=3"):
        paired_gain([1.0, 0.0], [0.0, 0.0], k=3)
