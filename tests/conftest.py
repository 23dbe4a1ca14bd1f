import os
import tempfile
from pathlib import Path

import pytest

# Tests never touch the user's cache: the tiny model is built once per session into a temp cache.
_CACHE = Path(os.environ.get("RLHFKIT_TEST_CACHE", Path(tempfile.gettempdir()) / "rlhfkit-test-cache"))
os.environ["RLHFKIT_CACHE"] = str(_CACHE)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    from rlhfkit.models.assets import tiny_model_dir

    return tiny_model_dir(seed=0)


@pytest.fixture(scope="session")
def tiny_sft_dir(tiny_dir, tmp_path_factory) -> Path:
    """The tiny model after a short SFT (~10 s): it answers in the task's format and stops with EOS."""
    from rlhfkit.config import SFTConfig, load_config
    from rlhfkit.trainers.sft import train_sft

    run_dir = tmp_path_factory.mktemp("sft-runs")
    config = Path(__file__).parents[1] / "configs" / "tiny" / "sft.yaml"
    cfg = load_config(
        SFTConfig,
        config,
        [
            f"run.dir={run_dir}",
            "train.max_steps=150",
            "train.eval_every=1000",
            "train.save_every=1000",
            "sft.eval_generate=0",
            "run.report_to=[]",
            "run.progress=false",
        ],
    )
    return train_sft(cfg).dir


@pytest.fixture(scope="session")
def tiny_rm_dir(tiny_sft_dir, tmp_path_factory) -> Path:
    """A reward model on the tiny SFT trunk after 2 steps on the preference fixture (with its reward
    stats)."""
    from rlhfkit.config import RMConfig, load_config
    from rlhfkit.trainers.rm import train_rm

    fixture = Path(__file__).parent / "fixtures" / "prefs.jsonl"
    cfg = load_config(
        RMConfig,
        None,
        [
            f"run.dir={tmp_path_factory.mktemp('rm-runs')}",
            f"model.name={tiny_sft_dir}",
            f"data.source={fixture}",
            "data.eval_fraction=0.25",
            "train.max_steps=2",
            "train.batch_size=2",
            "rm.norm_samples=6",
            "run.report_to=[]",
            "run.progress=false",
        ],
    )
    return train_rm(cfg).dir


@pytest.fixture(scope="session")
def straight_runs(tmp_path_factory):
    """Uninterrupted subprocess runs kept for the session (tests/trainers/runs.py: StraightRuns): the
    SIGKILL-and-resume tests of test_kill_resume.py and the `*_sigkill_after_checkpoint_*` tests of
    test_sft.py, test_rm.py and test_ppo.py train the same commands, and each stage's command runs straight
    once for both."""
    from tests.trainers.runs import StraightRuns

    return StraightRuns(tmp_path_factory.mktemp("straight-runs"))


@pytest.fixture(scope="session")
def two_process_runs(tmp_path_factory, tiny_dir, tiny_sft_dir) -> Path:
    """The 2-process halves of the DDP tests of test_sft.py, test_rm.py and test_dpo.py (each module's
    `DDP`/`ddp(sft)` arguments), run one after the other by ONE torchrun (tests/trainers/run_commands.py),
    so the launcher's and two workers' start-up and imports are paid once, not once per stage. Each test
    runs its 1-process half itself and compares it with <returned dir>/two/<stage>."""
    from tests.trainers import test_dpo, test_rm, test_sft
    from tests.trainers.runs import torchrun_commands, two_process_args

    run_dir = tmp_path_factory.mktemp("two-process-runs")
    cases = [test_sft.DDP, test_rm.DDP, test_dpo.ddp(tiny_sft_dir)]
    torchrun_commands([two_process_args(run_dir, **case) for case in cases])
    return run_dir
