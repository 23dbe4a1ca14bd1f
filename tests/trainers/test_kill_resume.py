"""SIGKILL every stage in the middle of writing a checkpoint and again at a random moment; the
resumed run ends with the weights and metrics of an uninterrupted one (tests/trainers/runs.py). Each
stage's uninterrupted run is the one its test_<stage>.py SIGKILL test compares against (the session
fixture `straight_runs`): the same command, run straight once."""

import pytest

from tests.trainers import test_ppo, test_rm, test_sft
from tests.trainers.runs import kill_mid_checkpoint_and_at_random_then_resume


@pytest.mark.slow
def test_sft_killed_mid_checkpoint_and_at_random(tmp_path, tiny_dir, straight_runs):
    kill_mid_checkpoint_and_at_random_then_resume(
        tmp_path,
        "sft",
        test_sft.TINY,
        test_sft.KILL_ARGS,
        stall_step=16,
        weights="model.safetensors",
        seed=1,
        straight_runs=straight_runs,
    )


@pytest.mark.slow
def test_rm_killed_mid_checkpoint_and_at_random(tmp_path, tiny_dir, straight_runs):
    kill_mid_checkpoint_and_at_random_then_resume(
        tmp_path,
        "rm",
        "",
        test_rm.KILL_ARGS,
        stall_step=8,
        weights="model.safetensors",
        seed=2,
        straight_runs=straight_runs,
    )


@pytest.mark.slow
def test_ppo_killed_mid_checkpoint_and_at_random(tmp_path, tiny_sft_dir, straight_runs):
    kill_mid_checkpoint_and_at_random_then_resume(
        tmp_path,
        "ppo",
        test_ppo.TINY,
        [  # the arguments of test_ppo.py's SIGKILL test: the same straight run
            f"model.name={tiny_sft_dir}",
            *test_ppo.QUICK,
            "ppo.iterations=6",
            "train.save_every=2",
            "model.lora=true",
            "model.lora_r=4",
            "ppo.target_kl=0.5",
        ],
        stall_step=4,
        weights="adapter_model.safetensors",
        metric="ppo/kl_coef",
        seed=3,
        straight_runs=straight_runs,
    )
