"""The generation seam (rollout/backend.py, docs/scaling.md section 4): the loop pushes the weights, then
samples, once per iteration, through whatever backend setup_ppo built; it scores every rollout itself."""

import pytest

from rlhfkit.rollout.backend import InProcessSampler
from rlhfkit.run import metrics as M
from rlhfkit.trainers import ppo
from tests.trainers.test_ppo import ppo_cfg


def test_the_loop_pushes_weights_then_samples_each_iteration(tmp_path, tiny_sft_dir, monkeypatch):
    calls = []

    class Recording(InProcessSampler):
        def load_weights(self, policy):
            calls.append("load_weights")
            super().load_weights(policy)

        def sample(self, prompts, noise):
            calls.append("sample")
            return super().sample(prompts, noise)

    monkeypatch.setattr(ppo, "InProcessSampler", Recording)
    cfg = ppo_cfg(
        tmp_path, tiny_sft_dir, "ppo.iterations=2", "ppo.eval_prompts=0", "rollout.max_new_tokens=6"
    )
    result = ppo.train_ppo(cfg)
    assert calls == ["load_weights", "sample"] * 2
    # The trainer re-scores what the backend sampled: the update's first ratio is exactly 1.
    assert [r[M.PPO_RATIO_FIRST] for r in result.metrics if M.PPO_RATIO_FIRST in r] == pytest.approx(
        [1.0] * 2
    )


def test_the_in_process_sampler_samples_only_with_its_own_module(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    sampler = InProcessSampler(model, None, None)
    sampler.load_weights(model)
    with pytest.raises(ValueError, match="samples with the module it was built with"):
        sampler.load_weights(AutoModelForCausalLM.from_pretrained(tiny_dir))
