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
