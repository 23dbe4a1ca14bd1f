"""--resume continues the run's held-out gold baseline and health-check history (issue #15 item 8):
a resumed run measures its gains against the starting policy's step-0 scores, not the resumed
policy's, and judges the same window of iterations as an uninterrupted run."""

import pytest

from rlhfkit.run.logger import read_metrics
from rlhfkit.trainers import checkpoints, ppo
from tests.trainers.test_ppo import ppo_cfg

ARGS = ["ppo.iterations=4", "train.save_every=2", "ppo.eval_every=2", "ppo.eval_prompts=8"]


class Stop(Exception):
    pass


def test_resume_restores_the_gold_baseline_and_the_health_history(tmp_path, tiny_sft_dir, monkeypatch):
    straight = ppo.train_ppo(ppo_cfg(tmp_path, tiny_sft_dir, "run.name=straight", *ARGS))

    save = checkpoints.save_training_state

    def save_then_stop(ctx, step, *args, **kwargs):
        save(ctx, step, *args, **kwargs)
        raise Stop  # as if killed right after checkpoints/step-2 was written

    monkeypatch.setattr(ppo, "save_training_state", save_then_stop)
    cfg = ppo_cfg(tmp_path, tiny_sft_dir, "run.name=resumed", *ARGS)
    with pytest.raises(Stop):
        ppo.train_ppo(cfg)
    monkeypatch.setattr(ppo, "save_training_state", save)
    seen = []
    warnings = ppo.health_warnings
    monkeypatch.setattr(
        ppo, "health_warnings", lambda history, window: seen.append(len(history)) or warnings(history, window)
    )
    resumed = ppo.train_ppo(cfg, resume=True)

    assert seen[0] == 4, "the health check must see the step-0 eval and iterations 1-2 from before the resume"
    gold = {r["step"]: r for r in read_metrics(resumed.dir / "metrics.jsonl") if "gold/score" in r}
    expected = {r["step"]: r for r in read_metrics(straight.dir / "metrics.jsonl") if "gold/score" in r}
    assert sorted(gold) == sorted(expected) == [0, 2, 4]  # the baseline is not measured again at step 3
    for step in (2, 4):
        assert gold[step]["gold/gain_stderr"] == pytest.approx(expected[step]["gold/gain_stderr"], abs=1e-9)
        assert gold[step]["gold/score"] == pytest.approx(expected[step]["gold/score"], abs=1e-9)
