"""Subprocess helpers shared by the stage tests: the same kill/resume and DDP checks for every stage."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.cli import main
from rlhfkit.run.logger import read_metrics

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
REPO = Path(__file__).parents[2]


def cli_args(stage: str, config: str, run_dir: Path, *args: str) -> list[str]:
    config_args = ["--config", config] if config else []
    return [stage, *config_args, f"run.dir={run_dir}", *args]


def stage_command(
    stage: str, config: str, run_dir: Path, *args: str, launcher: list[str] | None = None
) -> list[str]:
    launcher = launcher or [sys.executable]
    return [*launcher, "-m", "rlhfkit.cli", *cli_args(stage, config, run_dir, *args)]


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


class StraightRuns:
    """Uninterrupted subprocess runs, each distinct (stage, config, args) run once and kept: the two
    kill-and-resume tests of a stage that train the same command (its test_<stage>.py
    `*_sigkill_after_checkpoint_*` and test_kill_resume.py's) compare against one run. The session
    fixture `straight_runs` in tests/conftest.py holds the session's. A run is started in the background
    (`start`) and waited for when its result is read (`get`), so it trains while a test's own
    interrupted run does: both are single-threaded (OMP_NUM_THREADS=1), and 2 cores run both at once."""

    def __init__(self, root: Path):
        self.root = root
        self.runs: dict[tuple[str, ...], tuple[Path, float]] = {}
        self.running: dict[tuple[str, ...], tuple[subprocess.Popen, Path, float]] = {}

    def start(self, stage: str, config: str, args: list[str]) -> None:
        key = (stage, config, *args)
        if key in self.runs or key in self.running:
            return
        run_dir = self.root / f"{stage}-{len(self.runs) + len(self.running)}"
        run_dir.mkdir(parents=True)
        with open(run_dir / "output.log", "w") as log:  # a file, not a pipe: nothing to drain meanwhile
            cmd = stage_command(stage, config, run_dir, "run.name=straight", *args)
            proc = subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        self.running[key] = (proc, run_dir, time.time())

    def get(self, stage: str, config: str, args: list[str]) -> tuple[Path, float]:
        """The straight run's stage folder and its wall-clock seconds (start-up included)."""
        key = (stage, config, *args)
        self.start(stage, config, args)
        if key in self.running:
            proc, run_dir, started = self.running.pop(key)
            code = proc.wait(timeout=600)
            assert code == 0, (run_dir / "output.log").read_text()[-3000:]
            self.runs[key] = (run_dir / "straight" / stage, time.time() - started)
        return self.runs[key]


def kill_after_checkpoint_then_resume(
    tmp_path: Path,
    stage: str,
    config: str,
    args: list[str],
    checkpoint_step: int,
    weights: str,
    metric: str = "loss",
    straight_runs: StraightRuns | None = None,
) -> None:
    """Run straight (in the background, or take the run `straight_runs` has) while the same command
    runs, is SIGKILLed once checkpoints/step-N exists and is --resumed; compare the two."""
    straight_runs = straight_runs or StraightRuns(tmp_path)
    straight_runs.start(stage, config, args)
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
    straight = straight_runs.get(stage, config, args)[0]
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
    straight_runs: StraightRuns | None = None,
) -> None:
    """Run straight (in the background, or take the run `straight_runs` has). Run again: SIGKILL it while
    checkpoints/step-<stall_step> is half-written (tests/trainers/slow_checkpoint.py stalls the write);
    --resume and SIGKILL at a random moment; --resume to the end. Weights and logged metrics must equal
    the straight run's, with no step logged twice and no temp folder left behind."""
    straight_runs = straight_runs or StraightRuns(tmp_path)
    straight_runs.start(stage, config, args)
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
    straight, duration = straight_runs.get(stage, config, args)
    proc = subprocess.Popen(cmd + ["--resume"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    delay = random.Random(seed).uniform(0.2, 0.9) * duration
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    # 3. resumed to the end
    assert "resumed" in run_ok(cmd + ["--resume"]).stdout
    assert_same_weights(straight / "final" / weights, killed / "final" / weights, atol=1e-6)
    assert losses(straight, metric), f"no {metric} logged"
    assert losses(killed, metric) == pytest.approx(losses(straight, metric), rel=1e-5)
    steps = [r["step"] for r in read_metrics(killed / "metrics.jsonl")]
    assert steps == [r["step"] for r in read_metrics(straight / "metrics.jsonl")], (
        "a step was logged twice or lost"
    )
    leftovers = [p.name for p in killed.rglob("*") if p.name.startswith((".tmp-", ".old-"))]
    assert not leftovers, f"temp folders left behind: {leftovers}"


@contextmanager
def one_thread():
    """One torch thread in process, as the subprocesses run (ENV: OMP_NUM_THREADS=1): the same kernels,
    and no 2-thread OpenMP runtime spinning against other work on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def two_process_args(
    run_dir: Path,
    stage: str,
    config: str,
    args: list[str],
    batch: int,
    batch_keys: tuple[str, ...] = ("train.batch_size",),
) -> list[str]:
    """The rlhfkit arguments of a DDP test's 2-process half: run.name=two, each of `batch_keys` at batch/2."""
    return cli_args(stage, config, run_dir, *args, "run.name=two", *(f"{k}={batch // 2}" for k in batch_keys))


def torchrun_commands(commands: list[list[str]]) -> str:
    """Run rlhfkit commands one after the other under ONE 2-process torchrun (run_commands.py: the
    start-up and imports once for all of them); returns the launch's stdout."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    launch = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "tests.trainers.run_commands"]
    joined = [arg for i, command in enumerate(commands) for arg in (["--then"] if i else []) + command]
    return run_ok([*launch, *joined]).stdout


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
    two_process_dir: Path | None = None,
) -> str:
    """2 processes x batch/2 (torchrun, gloo) give the losses and weights of 1 process x batch, where
    every per-process batch size in `batch_keys` is set to batch (1 process) or batch/2 (2 processes).
    `weights=None` leaves the weight comparison to the caller. The 1-process run goes in process (the
    same CLI, without a second start-up and imports). The 2-process run is launched here, unless
    `two_process_dir` says where an earlier launch ran these very arguments (`two_process_args`; the
    conftest fixture `two_process_runs`). Returns the 2-process launch's stdout ("" if not launched here)."""
    one_args = cli_args(stage, config, tmp_path, *args, "run.name=one", *(f"{k}={batch}" for k in batch_keys))
    with one_thread():
        assert main(one_args) == 0
    stdout = ""
    if two_process_dir is None:
        stdout = torchrun_commands([two_process_args(tmp_path, stage, config, args, batch, batch_keys)])
        two_process_dir = tmp_path
    one, two = tmp_path / "one" / stage, two_process_dir / "two" / stage
    assert len(losses(one, metric)) > 1
    assert losses(two, metric) == pytest.approx(losses(one, metric), rel=1e-4, abs=atol)
    if weights is not None:
        assert_same_weights(one / "final" / weights, two / "final" / weights, atol=atol)
    return stdout
