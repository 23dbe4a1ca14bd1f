"""FSDP2 with 2 CPU processes (gloo; trainers/sharding.py; docs/scaling.md section 2.2): every stage (SFT, RM,
PPO, GRPO, RLOO, REINFORCE++, DPO) trains like one process with the double batch, and final/ is the same
loadable HF folder (the RM with LoRA and with full weights); an RM run stopped after its sharded checkpoint
resumes to the uninterrupted run's losses and final/; a bf16 PPO's reference agrees with the policy at
iteration 1. One torchrun runs the eleven commands (tests/trainers/run_commands.py: the start-up and
imports once); the 1-process runs go in process."""

import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.cli import main
from rlhfkit.run import metrics as M
from rlhfkit.run.logger import read_metrics
from tests.trainers.run_commands import STOP
from tests.trainers.runs import ENV, assert_same_weights, losses, one_thread, run_ok
from tests.trainers.test_dpo import QUICK as DPO_QUICK
from tests.trainers.test_online import GROUPS, GRPO, REINFORCE_PP, RLOO
from tests.trainers.test_ppo import QUICK as PPO_QUICK
from tests.trainers.test_ppo import TINY as PPO_TINY
from tests.trainers.test_rm import RM_ARGS
from tests.trainers.test_sft import QUICK as SFT_QUICK
from tests.trainers.test_sft import TINY as SFT_TINY

FSDP_ENV = {
    **ENV,
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
}
LORA = ["model.lora=true", "model.lora_r=4"]
ADAPTER = "adapter_model.safetensors"
# The online methods' rollouts: 2 iterations of short responses, no held-out eval.
ONLINE = ["ppo.iterations=2", "rollout.max_new_tokens=8", "ppo.eval_prompts=0"]


def commands(sft_dir: Path) -> dict[str, tuple[list[str], str, int]]:
    """{stage folder: (rlhfkit arguments, the per-process batch key, the 1-process batch)}. The group
    methods' batch counts prompts: 2 processes x 2 prompts x G hold the rows of 1 x 4 prompts x G."""
    policy = f"model.name={sft_dir}"
    return {
        "sft": (
            ["sft", "--config", SFT_TINY, *SFT_QUICK, *LORA, "train.max_steps=3", "train.lr=1e-2"],
            "train.batch_size",
            8,
        ),
        "rm": (["rm", *RM_ARGS, *LORA, "train.max_steps=3", "train.save_every=2"], "train.batch_size", 4),
        "rm_full": (["rm", *RM_ARGS, "model.lora=false", "train.max_steps=3"], "train.batch_size", 4),
        "ppo": (
            ["ppo", "--config", PPO_TINY, policy, *PPO_QUICK, "rollout.max_new_tokens=8"],
            "rollout.batch_size",
            8,
        ),
        "grpo": (["grpo", "--config", GRPO, policy, *PPO_QUICK, *GROUPS, *ONLINE], "rollout.batch_size", 4),
        "rloo": (["rloo", "--config", RLOO, policy, *PPO_QUICK, *GROUPS, *ONLINE], "rollout.batch_size", 4),
        "reinforce_pp": (
            ["reinforce-pp", "--config", REINFORCE_PP, policy, *PPO_QUICK, *ONLINE],
            "rollout.batch_size",
            4,
        ),
        "dpo": (
            ["dpo", policy, *DPO_QUICK, "train.grad_accum=1", "train.max_steps=2"],
            "train.batch_size",
            6,
        ),
    }


def online(method: str) -> list[str]:
    names = M.online(method)
    return [names[M.PPO_KL_K1], names[M.PPO_PG_LOSS], names[M.PPO_REWARD_RM], names[M.PPO_APPROX_KL]]


# What each stage must log alike (rel 1e-3), and its final/ files that must hold the same weights.
METRICS = {
    "sft": [M.LOSS],
    "rm": [M.LOSS, M.RM_LOSS, M.RM_ACCURACY, M.RM_REWARD_MEAN],
    "rm_full": [M.LOSS, M.RM_LOSS, M.RM_ACCURACY, M.RM_REWARD_MEAN],
    "ppo": [M.PPO_KL_K1, M.PPO_PG_LOSS, M.PPO_REWARD_RM],
    "grpo": [*online("grpo"), M.online("grpo")[M.PPO_KL_LOSS]],
    "rloo": online("rloo"),
    "reinforce_pp": online("reinforce_pp"),
    "dpo": [M.DPO_LOSS],
}
WEIGHTS = {
    "sft": (ADAPTER, 1e-4),
    "rm": ("model.safetensors", 1e-4),  # the merged RM ...
    "rm/adapter": (ADAPTER, 1e-4),  # ... and its adapter with the head (design §6.9)
    "rm_full": ("model.safetensors", 1e-4),
    "ppo": ("value_head.safetensors", 1e-3),
    "dpo": (ADAPTER, 1e-4),
}
# Full-weight policies: how far each moved from the SFT model, alike to rel 5e-3 (measured: 5e-4).
UPDATED = ("grpo", "rloo", "reinforce_pp")


def stage_dir(root: Path, label: str, run: str) -> Path:
    """Where a command's run (`one`, `fsdp`, `stopped`) trains: run.dir/<run.name>/<stage>. The
    full-weight RM, the rm stage again, has a run.dir of its own."""
    return root / "full" / run / "rm" if label == "rm_full" else root / run / label


def assert_same_update(start: Path, one: Path, fsdp: Path, rel: float) -> None:
    """The same keys, and the two runs' weight updates (from `start`) differ by a small part of the
    update. Not element by element: a weight with no gradient (GPT-2's key biases: softmax ignores them)
    gets float noise that AdamW scales up to the learning rate, in each run differently."""
    start, one, fsdp = load_file(start), load_file(one), load_file(fsdp)
    assert one.keys() == fsdp.keys() == start.keys()
    update = torch.cat([(one[k] - start[k]).flatten() for k in one])
    differ = torch.cat([(fsdp[k] - one[k]).flatten() for k in one])
    assert differ.norm() <= rel * update.norm(), f"updates differ by {differ.norm() / update.norm():g}"


@pytest.mark.slow
def test_fsdp_every_stage_equals_one_process_with_double_batch(tmp_path, tiny_sft_dir):
    two, runs = [], commands(tiny_sft_dir)
    for label, (command, key, batch) in runs.items():
        run_dir = stage_dir(tmp_path, label, "one").parents[1]
        command = [*command, f"run.dir={run_dir}", "run.report_to=[]", "run.progress=false"]
        with one_thread():
            assert main([*command, "run.name=one", f"{key}={batch}"]) == 0, label
        two.append([*command, "run.name=fsdp", f"{key}={batch // 2}"])
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    launch = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "tests.trainers.run_commands"]
    # The RM again, stopped on both processes once checkpoints/step-2 is saved (as a kill then), and resumed.
    rm = [arg if arg != "run.name=fsdp" else "run.name=stopped" for arg in two[list(runs).index("rm")]]
    two += [[STOP + "2", *rm], [*rm, "--resume"]]
    # Full-weight PPO with bf16: a frozen reference copy beside the sharded policy (docs/scaling.md 2.4).
    ppo = [arg for arg in two[list(runs).index("ppo")] if arg != "run.name=fsdp"]
    two.append([*ppo, "run.name=bf16", "train.mixed_precision=bf16", "ppo.iterations=1"])
    joined = [arg for i, command in enumerate(two) for arg in (["--then"] if i else []) + command]
    done = run_ok([*launch, *joined], env=FSDP_ENV)
    assert "agree on the trained weights" not in done.stdout  # FSDP: no replicas, sharded
    assert done.stdout.count("run_commands: stopped after checkpoints/step-2") == 2  # on both processes
    assert f"resumed {tmp_path / 'stopped' / 'rm'} from step 2" in done.stdout
    # Iteration 1's policy is the reference; the copy computes in bf16 as the gathered policy does, and
    # the policy's float32 log-probs are not cast to bf16 on the way out: the KL is 0, not bf16 rounding.
    bf16 = read_metrics(tmp_path / "bf16" / "ppo" / "metrics.jsonl")[-1]
    for name in (M.PPO_KL_K1, M.PPO_KL_EXACT):
        assert bf16[name] == pytest.approx(0.0, abs=1e-6), name
    for label, names in METRICS.items():
        one, fsdp = (stage_dir(tmp_path, label, run) for run in ("one", "fsdp"))
        for name in names:
            assert losses(one, name), (label, name)
            assert losses(fsdp, name) == pytest.approx(losses(one, name), rel=1e-3, abs=1e-4), (label, name)
    for method in ("ppo", "grpo", "rloo", "reinforce_pp"):
        first = losses(tmp_path / "fsdp" / method, M.online(method)[M.PPO_RATIO_FIRST])
        assert first == pytest.approx([1.0] * 2, abs=1e-5), method
    for folder, (weights, atol) in WEIGHTS.items():
        label, _, sub = folder.partition("/")
        one, fsdp = (stage_dir(tmp_path, label, run) / "final" / sub for run in ("one", "fsdp"))
        assert_same_weights(one / weights, fsdp / weights, atol)
    for method in UPDATED:
        one, fsdp = (tmp_path / run / method / "final" / "model.safetensors" for run in ("one", "fsdp"))
        assert_same_update(tiny_sft_dir / "final" / "model.safetensors", one, fsdp, 5e-3)
    fsdp, stopped = tmp_path / "fsdp" / "rm", tmp_path / "stopped" / "rm"
    assert [r["step"] for r in read_metrics(stopped / "metrics.jsonl")] == [
        r["step"] for r in read_metrics(fsdp / "metrics.jsonl")
    ]
    for name in METRICS["rm"]:
        assert losses(stopped, name) == pytest.approx(losses(fsdp, name), rel=1e-5), name
    for weights in ("model.safetensors", "adapter/" + ADAPTER):
        assert_same_weights(fsdp / "final" / weights, stopped / "final" / weights, 1e-6)
    # final/adapter/ of the LoRA RM names the same base, so a policy on it loads it as the 1-process one.
    for name in ("adapter_config.json", "rlhfkit_base.json"):
        one, fsdp = (tmp_path / run / "rm" / "final" / "adapter" / name for run in ("one", "fsdp"))
        assert fsdp.read_text() == one.read_text()
