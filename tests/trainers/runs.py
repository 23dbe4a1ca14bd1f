"""Subprocess helpers shared by the stage tests: the same kill/resume and DDP checks for every stage."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rlhfkit.run.logger import read_metrics

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
REPO = Path(__file__).parents[2]


def stage_command(
    stage: str, config: str, run_dir: Path, *args: str, launcher: list[str] | None = None
) -> list[str]:
    launcher = launcher or [sys.executable]
    config_args = ["--config", config] if config else []
    return [*launcher, "-m", "rlhfkit.cli", stage, *config_args, f"run.dir={run_dir}", *args]


def run_ok(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env or ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def losses(stage_dir: Path, key: str = "loss") -> list[float]:
    return [r[key] for r in read_metrics(stage_dir / "metrics.jsonl") if key in r]


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= atol, f"weights differ by up to {worst:g}"


def kill_after_checkpoint_then_resume(
    tmp_path: Path,
    stage: str,
    config: str,
    args: list[str],
    checkpoint_step: int,
    weights: str,
    metric: str = "loss",
) -> None:
    """Run straight; run again, SIGKILL once checkpoints/step-N exists, --resume; compare the two."""
    run_ok(stage_command(stage, config, tmp_path, "run.name=straight", *args))
    cmd = stage_command(stage, config, tmp_path, "run.name=killed", *args)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = tmp_path / "killed" / stage
    checkpoint = killed / "checkpoints" / f"step-{checkpoint_step}"
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists() and not (killed / "final").exists(), "killed too late"
    assert "resumed" in run_ok(cmd + ["--resume"]).stdout
    straight = tmp_path / "straight" / stage
    assert_same_weights(straight / "final" / weights, killed / "final" / weights, atol=1e-6)
    assert losses(straight, metric), f"no {metric} logged"
    assert losses(killed, metric) == pytest.approx(losses(straight, metric), rel=1e-5)


def kill_mid_checkpoint_and_at_random_then_resume(
    tmp_path: Path,
    stage: str,
    config: str,
    args: list[str],
    stall_step: int,
    weights: str,
    metric: str = "loss",
    seed: int = 0,
) -> None:
    """Run straight. Run again: SIGKILL it while checkpoints/step-<stall_step> is half-written
    (tests/trainers/slow_checkpoint.py stalls the write); --resume and SIGKILL at a random moment;
    --resume to the end. Weights and logged metrics must equal the straight run's, with no step
    logged twice and no temp folder left behind."""
    started = time.time()
    run_ok(stage_command(stage, config, tmp_path, "run.name=straight", *args))
    duration = time.time() - started
    cmd = stage_command(stage, config, tmp_path, "run.name=killed", *args)
    killed, marker = tmp_path / "killed" / stage, tmp_path / "stalled"
    checkpoints = killed / "checkpoints"

    # 1. killed in the middle of writing step-<stall_step>
    stall_env = {**ENV, "RLHFKIT_TEST_STALL_STEP": str(stall_step), "RLHFKIT_TEST_STALL_MARKER": str(marker)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.trainers.slow_checkpoint", *cmd[3:]],
        env=stall_env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never reached the stalled checkpoint write"
    assert not (checkpoints / f"step-{stall_step}").exists(), (
        "a half-written checkpoint is visible under its name"
    )
    assert list(checkpoints.glob(f".tmp-step-{stall_step}-*")), "the kill did not land inside the write"

    # 2. resumed, then killed at a random moment (it may also finish first: then it is simply resumed again)
    proc = subprocess.Popen(cmd + ["--resume"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    delay = random.Random(seed).uniform(0.2, 0.9) * duration
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    # 3. resumed to the end
    assert "resumed" in run_ok(cmd + ["--resume"]).stdout
    straight = tmp_path / "straight" / stage
    assert_same_weights(straight / "final" / weights, killed / "final" / weights, atol=1e-6)
    assert losses(straight, metric), f"no {metric} logged"
    assert losses(killed, metric) == pytest.approx(losses(straight, metric), rel=1e-5)
    steps = [r["step"] for r in read_metrics(killed / "metrics.jsonl")]
    assert steps == [r["step"] for r in read_metrics(straight / "metrics.jsonl")], (
        "a step was logged twice or lost"
    )
    leftovers = [p.name for p in killed.rglob("*") if p.name.startswith((".tmp-", ".old-"))]
    assert not leftovers, f"temp folders left behind: {leftovers}"


def two_processes_equal_one(
    tmp_path: Path,
    stage: str,
    config: str,
    args: list[str],
    batch: int,
    weights: str | None,
    batch_keys: tuple[str, ...] = ("train.batch_size",),
    metric: str = "loss",
    atol: float = 1e-5,
) -> str:
    """2 processes x batch/2 (torchrun, gloo) give the losses and weights of 1 process x batch, where
    every per-process batch size in `batch_keys` is set to batch (1 process) or batch/2 (2 processes).
    `weights=None` leaves the weight comparison to the caller. Returns the 2-process run's stdout."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    run_ok(
        stage_command(stage, config, tmp_path, *args, "run.name=one", *(f"{k}={batch}" for k in batch_keys))
    )
    done = run_ok(
        stage_command(
            stage,
            config,
            tmp_path,
            *args,
            "run.name=two",
            *(f"{k}={batch // 2}" for k in batch_keys),
            launcher=[torchrun, "--standalone", "--nproc_per_node", "2"],
        )
    )
    one, two = tmp_path / "one" / stage, tmp_path / "two" / stage
    assert len(losses(one, metric)) > 1
    assert losses(two, metric) == pytest.approx(losses(one, metric), rel=1e-4, abs=atol)
    if weights is not None:
        assert_same_weights(one / "final" / weights, two / "final" / weights, atol=atol)
    return done.stdout
