"""FSDP2 with 2 CPU processes (gloo; trainers/sharding.py; docs/scaling.md section 2.2): SFT, PPO, DPO train
like one process with the double batch, and final/ is the same loadable HF folder. One torchrun runs
the three commands (tests/trainers/run_commands.py); the 1-process runs go in process."""

import shutil
import sys
from pathlib import Path

import pytest

from rlhfkit.cli import main
from rlhfkit.run import metrics as M
from tests.trainers.runs import ENV, assert_same_weights, losses, run_ok
from tests.trainers.test_dpo import QUICK as DPO_QUICK
from tests.trainers.test_ppo import QUICK as PPO_QUICK
from tests.trainers.test_ppo import TINY as PPO_TINY
from tests.trainers.test_sft import QUICK as SFT_QUICK
from tests.trainers.test_sft import TINY as SFT_TINY

FSDP_ENV = {
    **ENV,
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
}


@pytest.mark.slow
def test_fsdp_sft_ppo_dpo_equal_one_process_with_double_batch(tmp_path, tiny_sft_dir):
    lora = ["model.lora=true", "model.lora_r=4"]
    commands = {
        "sft": (
            ["sft", "--config", SFT_TINY, *SFT_QUICK, *lora, "train.max_steps=3", "train.lr=1e-2"],
            "train.batch_size",
            8,
        ),
        "ppo": (
            [
                "ppo",
                "--config",
                PPO_TINY,
                f"model.name={tiny_sft_dir}",
                *PPO_QUICK,
                "rollout.max_new_tokens=8",
            ],
            "rollout.batch_size",
            8,
        ),
        "dpo": (
            ["dpo", f"model.name={tiny_sft_dir}", *DPO_QUICK, "train.grad_accum=1", "train.max_steps=2"],
            "train.batch_size",
            6,
        ),
    }
    two = []
    for stage, (command, key, batch) in commands.items():
        command = [*command, f"run.dir={tmp_path}"]
        assert main([*command, "run.name=one", f"{key}={batch}"]) == 0, stage
        two.append([*command, "run.name=fsdp", f"{key}={batch // 2}"])
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    launch = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "tests.trainers.run_commands"]
    done = run_ok([*launch, *two[0], "--then", *two[1], "--then", *two[2]], env=FSDP_ENV)
    assert "agree on the trained weights" not in done.stdout  # FSDP: no replicas, sharded
    metrics = {"sft": [M.LOSS], "ppo": [M.PPO_KL_K1, M.PPO_PG_LOSS, M.PPO_REWARD_RM], "dpo": [M.DPO_LOSS]}
    for stage, names in metrics.items():
        one, fsdp = tmp_path / "one" / stage, tmp_path / "fsdp" / stage
        for name in names:
            assert len(losses(one, name)) >= 2, (stage, name)
            assert losses(fsdp, name) == pytest.approx(losses(one, name), rel=1e-3, abs=1e-4), (stage, name)
    assert losses(tmp_path / "fsdp" / "ppo", M.PPO_RATIO_FIRST) == pytest.approx([1.0] * 2, abs=1e-5)
    for stage, weights in (("sft", "adapter_model.safetensors"), ("dpo", "adapter_model.safetensors")):
        assert_same_weights(
            tmp_path / "one" / stage / "final" / weights, tmp_path / "fsdp" / stage / "final" / weights, 1e-4
        )
    assert_same_weights(
        tmp_path / "one" / "ppo" / "final" / "value_head.safetensors",
        tmp_path / "fsdp" / "ppo" / "final" / "value_head.safetensors",
        1e-3,
    )
