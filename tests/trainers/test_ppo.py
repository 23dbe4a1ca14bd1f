"""PPO on the tiny SFT model: ratio is exactly 1 before the first update, the policy moves and the
reference does not, RM rewards are normalised, and a killed run resumes exactly."""

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import PPOConfig, load_config
from rlhfkit.errors import ConfigError
from rlhfkit.trainers.ppo import train_ppo
from tests.trainers.runs import kill_after_checkpoint_then_resume

REPO = Path(__file__).parents[2]
TINY = str(REPO / "configs" / "tiny" / "ppo.yaml")
QUICK = [
    "ppo.reward=rlhfkit.tasks:gold_scores",
    "ppo.iterations=2",
    "rollout.batch_size=8",
    "rollout.max_new_tokens=12",
    "ppo.eval_every=100",
    "ppo.eval_prompts=8",
    "train.lr=1e-3",
    "run.report_to=[]",
    "run.progress=false",
]


def ppo_cfg(tmp_path, sft_dir, *overrides):
    return load_config(PPOConfig, TINY, [f"run.dir={tmp_path}", f"model.name={sft_dir}", *QUICK, *overrides])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("lora", [False, True])
def test_ratio_is_one_before_the_update_and_the_policy_moves_but_not_the_reference(
    tmp_path, tiny_sft_dir, lora
):
    from transformers import AutoModelForCausalLM

    sft_weights = tiny_sft_dir / "final" / "model.safetensors"
    before = sha(sft_weights)
    result = train_ppo(ppo_cfg(tmp_path, tiny_sft_dir, f"model.lora={str(lora).lower()}", "model.lora_r=4"))
    records = [r for r in result.metrics if "ppo/ratio_first" in r]
    assert len(records) == 2
    for record in records:
        assert record["ppo/ratio_first"] == pytest.approx(1.0, abs=1e-5)
        assert record["ppo/logratio_first"] < 1e-5  # the update's forward is the rollout's
        assert record["ppo/kl_k3"] >= 0 and record["ppo/kl_exact"] >= 0
        assert abs(record["ppo/kl_k1_z"]) < 4  # honest sampling: k1 agrees with the exact KL on the same rows
    assert records[0]["ppo/kl_k1"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at the start
    gold = [r for r in result.metrics if "gold/score" in r]
    assert gold[0]["step"] == 0 and "ppo/kl_k1" not in gold[0]  # measured before any update, logged at step 0
    assert sha(sft_weights) == before, "the reference (the SFT model) must never change"
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    sft = AutoModelForCausalLM.from_pretrained(tiny_sft_dir / "final")
    trained = AutoModelForCausalLM.from_pretrained(result.final)  # adapter folders load through peft
    with torch.no_grad():
        assert not torch.allclose(sft(ids).logits, trained(ids).logits, atol=1e-4), "the policy did not move"
    assert set(load_file(result.final / "value_head.safetensors")) == {"weight", "bias"}


def test_warped_sampling_is_refused_unless_asked_for(tmp_path, tiny_sft_dir):
    with pytest.raises(ConfigError, match="rollout.top_k warps sampling"):
        train_ppo(ppo_cfg(tmp_path, tiny_sft_dir, "rollout.top_k=5"))


def test_reward_model_reward_is_normalised_with_its_stored_stats(tmp_path, tiny_sft_dir):
    import json

    from rlhfkit.config import RMConfig
    from rlhfkit.rewards import load_reward
    from rlhfkit.trainers.rm import train_rm

    rm = train_rm(
        load_config(
            RMConfig,
            None,
            [
                f"run.dir={tmp_path}",
                f"model.name={tiny_sft_dir}",
                f"data.source={REPO / 'tests' / 'fixtures' / 'prefs.jsonl'}",
                "data.eval_fraction=0.25",
                "train.max_steps=2",
                "train.batch_size=2",
                "rm.norm_samples=6",
                "run.report_to=[]",
                "run.progress=false",
            ],
        )
    )
    stats = json.loads((rm.final / "reward_stats.json").read_text())
    raw, normalised = load_reward(str(rm.dir), normalize=False), load_reward(str(rm.dir), normalize=True)
    prompts, responses = ["Human: Name 2 colors.\n\nAssistant:"] * 2, ["red, blue", "cats"]
    expected = (raw(prompts, responses) - stats["mean"]) / stats["std"]
    assert torch.allclose(normalised(prompts, responses), expected, atol=1e-5)
    result = train_ppo(ppo_cfg(tmp_path, tiny_sft_dir, f"ppo.reward={rm.dir}", "ppo.iterations=1"))
    assert result.last("ppo/reward_rm") is not None


def test_reward_function_errors_are_one_line(tmp_path, tiny_sft_dir):
    from rlhfkit.errors import RlhfkitError

    with pytest.raises(RlhfkitError, match="ppo.reward=no_such_module:f: cannot import"):
        train_ppo(ppo_cfg(tmp_path, tiny_sft_dir, "ppo.reward=no_such_module:f"))
    with pytest.raises(RlhfkitError, match=r"ppo.reward=math:sqrt raised TypeError"):
        train_ppo(ppo_cfg(tmp_path, tiny_sft_dir, "ppo.reward=math:sqrt", "run.name=b"))


@pytest.mark.slow
def test_ppo_sigkill_after_checkpoint_then_resume_equals_uninterrupted(tmp_path, tiny_sft_dir, straight_runs):
    kill_after_checkpoint_then_resume(
        tmp_path,
        "ppo",
        TINY,
        [
            f"model.name={tiny_sft_dir}",
            *QUICK,
            "ppo.iterations=6",
            "train.save_every=2",
            "model.lora=true",
            "model.lora_r=4",
            "ppo.target_kl=0.5",
        ],
        checkpoint_step=4,
        weights="adapter_model.safetensors",
        metric="ppo/kl_coef",
        straight_runs=straight_runs,  # the straight run test_kill_resume.py's PPO test compares against
    )


def length_reward(prompts, responses):
    """A reward plugin for tests: shorter answers are better."""
    return [-len(r.split()) / 10 for r in responses]


def test_gpt2_alpaca_recipe_runs_on_alpaca_prompts(tmp_path, tiny_sft_dir):
    # The seed's PPO recipe needs the hub; its prompt path runs here on a fixture in Alpaca's schema.
    cfg = load_config(
        PPOConfig,
        REPO / "configs" / "gpt2-alpaca" / "ppo.yaml",
        [
            f"run.dir={tmp_path}",
            f"model.name={tiny_sft_dir}",
            f"data.source={REPO / 'tests' / 'fixtures' / 'alpaca.json'}",
            "ppo.reward=tests.trainers.test_ppo:length_reward",
            "ppo.iterations=1",
            "rollout.batch_size=4",
            "ppo.minibatches=2",
            "rollout.max_new_tokens=8",
            "run.report_to=[]",
            "run.progress=false",
        ],
    )
    result = train_ppo(cfg)
    assert result.last("ppo/ratio_first") == pytest.approx(1.0, abs=1e-5)
    assert "gold/score" not in result.metrics[-1]  # Alpaca prompts have no gold judge


def test_lora_ppo_on_a_lora_sft_run_loads_back_with_the_sft_weights(tmp_path, tiny_dir):
    """final/ of a LoRA PPO run on a LoRA SFT run = SFT adapter merged, then PPO adapter merged;
    not the original base + PPO adapter (which silently drops the SFT weights)."""
    from peft import PeftModel

    from rlhfkit.config import ModelConfig, SFTConfig
    from rlhfkit.models import load_causal_lm
    from rlhfkit.trainers.sft import train_sft

    sft = train_sft(
        load_config(
            SFTConfig,
            str(REPO / "configs" / "tiny" / "sft.yaml"),
            [
                f"run.dir={tmp_path}",
                "run.name=s",
                "model.lora=true",
                "model.lora_r=4",
                "train.max_steps=6",
                "train.eval_every=100",
                "sft.eval_generate=0",
                "run.report_to=[]",
                "run.progress=false",
            ],
        )
    ).dir
    ppo = train_ppo(ppo_cfg(tmp_path, sft, "run.name=p", "model.lora=true", "model.lora_r=4")).dir
    loaded, _ = load_causal_lm(ModelConfig(name=str(ppo), lora=False), trainable=False)
    by_hand = PeftModel.from_pretrained(
        load_causal_lm(ModelConfig(name=str(sft), lora=False), trainable=False)[0], ppo / "final"
    ).merge_and_unload()
    base_plus_ppo = PeftModel.from_pretrained(
        load_causal_lm(ModelConfig(name=str(tiny_dir), lora=False), trainable=False)[0], ppo / "final"
    ).merge_and_unload()
    ids = torch.tensor([[5, 17, 99, 3, 42]])
    with torch.no_grad():
        expected, got, wrong = (m(input_ids=ids).logits for m in (by_hand, loaded, base_plus_ppo))
    assert torch.allclose(got, expected, atol=1e-5)
    assert (got - wrong).abs().max() > 1e-3  # the SFT adapter did change the model


def test_dropout_in_the_update_pass_fires_the_ratio_warning(tmp_path, tiny_sft_dir):
    """Issue #15 item 2: sampled from the old policy, E[ratio] = 1 whatever the update pass does, so
    ppo/ratio_first stays ~1 with dropout on; ppo/logratio_first sees it and the health check warns."""
    # The SFT run saved its config with dropout 0: LoRA's dropout is the one left to switch on. It acts
    # from the second iteration (LoRA's B starts at zero, so at first the dropped path adds nothing).
    result = train_ppo(
        ppo_cfg(
            tmp_path,
            tiny_sft_dir,
            "model.disable_dropout=false",
            "model.lora=true",
            "model.lora_r=4",
            "model.lora_dropout=0.1",
            "ppo.iterations=2",
        )
    )
    record = [r for r in result.metrics if "ppo/logratio_first" in r][-1]
    assert record["ppo/logratio_first"] > 1e-2
    warnings = [r["health/warning"] for r in result.metrics if "health/warning" in r]
    assert any(w.startswith("ratio-first:") for w in warnings), warnings
