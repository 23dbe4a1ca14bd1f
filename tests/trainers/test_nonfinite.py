"""Non-finite guard (trainers/guard.py NonFiniteGuard) in every loop: a NaN/inf loss or gradient
skips the optimizer step and is counted; K in a row stop the run with one line naming the step and
the likely cause; no checkpoint or final/ is written from a poisoned state."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import PPOConfig, RMConfig, SFTConfig, load_config
from rlhfkit.errors import RlhfkitError
from rlhfkit.run import metrics as M
from rlhfkit.trainers.guard import NonFiniteGuard

REPO = Path(__file__).parents[2]
SFT_QUICK = [
    "train.batch_size=4",
    "train.eval_every=100",
    "train.log_every=1",
    "sft.eval_generate=0",
    "data.builtin_size=64",
    "data.eval_size=8",
    "train.threads=1",
    "run.report_to=[]",
    "run.progress=false",
    "train.keep_last=0",
]


def test_guard_counts_skips_resets_on_a_finite_step_and_stops_after_k_in_a_row():
    guard = NonFiniteGuard(limit=3, label="sft step")
    assert guard.allows(1.0, 0.5, 1)
    assert not guard.allows(float("nan"), 0.5, 2)
    assert not guard.allows(1.0, float("inf"), 3)
    assert guard.allows(1.0, 0.5, 4) and guard.in_a_row == 0 and guard.skipped == 2
    assert not guard.allows(float("nan"), float("nan"), 5)
    assert not guard.allows(float("nan"), float("nan"), 6)
    with pytest.raises(
        RlhfkitError,
        match=r"^sft step 7: non-finite loss or gradient in 3 steps in a row, the first at "
        r"sft step 5 \(loss inf, gradient norm 1\); stopped\. Likely cause: train\.lr too high",
    ):
        guard.allows(float("inf"), 1.0, 7)
    assert guard.skipped == 5


def nan_on_steps(monkeypatch, module, name: str, bad_calls: set[int] | None):
    """Replace `module.name` (a loss returning (loss, stats)) by one whose loss is NaN on the given
    calls (None = every call); the NaN flows through backward like a real overflow would."""
    real = getattr(module, name)
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, stats = real(*args, **kwargs)
        if bad_calls is None or calls["n"] in bad_calls:
            loss = loss * float("nan")
        return loss, stats

    monkeypatch.setattr(module, name, poisoned)


def test_sft_skips_nan_steps_counts_them_and_does_not_checkpoint_them(tmp_path, tiny_dir, monkeypatch):
    import rlhfkit.trainers.sft as sft

    nan_on_steps(monkeypatch, sft, "completion_nll", {3, 4})  # one micro-batch per step: steps 3 and 4
    cfg = load_config(
        SFTConfig,
        REPO / "configs/tiny/sft.yaml",
        [f"run.dir={tmp_path}", *SFT_QUICK, "train.max_steps=6", "train.save_every=1"],
    )
    result = sft.train_sft(cfg)
    skipped = {r["step"]: r[M.SKIPPED_STEPS] for r in result.metrics if M.SKIPPED_STEPS in r}
    assert skipped == {1: 0, 2: 0, 3: 1, 4: 2, 5: 2, 6: 2}
    names = sorted(p.name for p in (result.dir / "checkpoints").iterdir())
    assert names == ["step-1", "step-2", "step-5"], "steps whose update was skipped must not be checkpointed"
    for name in names:
        assert all(
            torch.isfinite(t).all()
            for t in load_file(result.dir / "checkpoints" / name / "model.safetensors").values()
        )
    assert all(torch.isfinite(t).all() for t in load_file(result.final / "model.safetensors").values())


def test_sft_with_an_absurd_learning_rate_stops_and_sets_aside_the_checkpoint_that_diverged(
    tmp_path, tiny_dir
):
    from rlhfkit.trainers.sft import train_sft

    # Step 1's loss is finite, but its update (lr 1e30) makes every later loss NaN: step-1 holds
    # finite but poisoned weights, so stopping renames it and --resume cannot pick it up.
    cfg = load_config(
        SFTConfig,
        REPO / "configs/tiny/sft.yaml",
        [
            f"run.dir={tmp_path}",
            *SFT_QUICK,
            "train.lr=1e30",
            "train.warmup_steps=0",
            "train.max_steps=20",
            "train.save_every=1",
            "train.max_nonfinite_steps=3",
        ],
    )
    with pytest.raises(
        RlhfkitError,
        match=r"^sft step 4: non-finite loss or gradient in 3 steps in a row, the first at sft "
        r"step 2 .*; stopped; checkpoints step-1 renamed nonfinite-.*train\.lr too high",
    ):
        train_sft(cfg)
    out = tmp_path / "tiny" / "sft"
    assert not (out / "final").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["nonfinite-step-1"]


def test_rm_stops_after_k_non_finite_steps(tmp_path, tiny_dir, monkeypatch):
    import rlhfkit.trainers.rm as rm

    nan_on_steps(monkeypatch, rm, "bradley_terry_loss", None)
    cfg = load_config(
        RMConfig,
        None,
        [
            f"run.dir={tmp_path}",
            "model.name=tiny",
            f"data.source={REPO / 'tests/fixtures/prefs.jsonl'}",
            "data.eval_fraction=0.25",
            "train.max_steps=5",
            "train.batch_size=2",
            "train.save_every=1",
            "train.max_nonfinite_steps=2",
            "run.report_to=[]",
            "run.progress=false",
        ],
    )
    with pytest.raises(
        RlhfkitError,
        match=r"rm step 2: non-finite loss or gradient in 2 steps in a row, the first at rm step 1 "
        r"\(loss nan, gradient norm nan\); stopped\. ",
    ):
        rm.train_rm(cfg)
    out = tmp_path / "default" / "rm"
    assert not (out / "final").exists() and not list((out / "checkpoints").glob("step-*"))


def test_ppo_uses_the_same_guard(tmp_path, tiny_dir, monkeypatch):
    import rlhfkit.trainers.ppo as ppo

    nan_on_steps(monkeypatch, ppo, "ppo_policy_loss", {2})  # the 2nd of 4 minibatch updates of iteration 1
    cfg = load_config(
        PPOConfig,
        REPO / "configs/tiny/ppo.yaml",
        [
            f"run.dir={tmp_path}",
            "model.name=tiny",
            "ppo.reward=rlhfkit.tasks:gold_scores",
            "ppo.iterations=2",
            "rollout.batch_size=4",
            "rollout.max_new_tokens=6",
            "ppo.eval_prompts=0",
            "run.report_to=[]",
            "run.progress=false",
        ],
    )
    result = ppo.train_ppo(cfg)
    assert [r[M.SKIPPED_STEPS] for r in result.metrics if M.SKIPPED_STEPS in r] == [1, 1]
    nan_on_steps(monkeypatch, ppo, "ppo_policy_loss", None)
    with pytest.raises(
        RlhfkitError,
        match="ppo iteration 2: non-finite loss or gradient in 5 steps in a row, the first at "
        "ppo iteration 1",
    ):
        ppo.train_ppo(
            load_config(
                PPOConfig,
                REPO / "configs/tiny/ppo.yaml",
                [
                    f"run.dir={tmp_path}",
                    "run.name=poisoned",
                    "model.name=tiny",
                    "ppo.reward=rlhfkit.tasks:gold_scores",
                    "ppo.iterations=3",
                    "rollout.batch_size=4",
                    "rollout.max_new_tokens=6",
                    "ppo.eval_prompts=0",
                    "run.report_to=[]",
                    "run.progress=false",
                ],
            )
        )
    assert not (tmp_path / "poisoned" / "ppo" / "final").exists()
