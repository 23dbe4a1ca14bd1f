"""The seed's ways to a negative KL (design §6.7), each reproduced where our code can reproduce it and
then refused by config validation or caught by the health check; where our design rules a way out
by construction, a test shows why. (Top-k sampling is in test_ppo_rollout.py.)"""

import pytest
import torch

from rlhfkit.config import ModelConfig, PPOConfig, load_config
from rlhfkit.data.collate import left_pad
from rlhfkit.errors import ConfigError
from rlhfkit.evaluate.health import health_warnings
from rlhfkit.models import load_causal_lm
from rlhfkit.ops import kl_exact, kl_k1, masked_sum, ppo_policy_loss
from rlhfkit.rollout.ppo import position_ids, sample, score
from rlhfkit.run import metrics as M
from tests.rollout.test_ppo_rollout import PROMPTS, Unigram


def test_repetition_penalty_at_sampling_scored_without_it_gives_negative_kl_and_the_health_warning():
    # The seed sampled at temperature 0.8 with repetition_penalty 1.2 and scored without the penalty.
    # A policy sharper than its reference repeats its favourite tokens; the penalty moves the
    # samples to tokens the policy likes less than the reference does, so mean k1 < 0.
    torch.manual_seed(0)
    ref_logits = torch.linspace(4.0, -4.0, 20)
    policy, reference = Unigram(ref_logits * 2), Unigram(ref_logits)
    query = torch.ones(512, 2, dtype=torch.long)
    for penalty in (1.0, 1.2):
        rollout = sample(
            policy, query, query, 8, 0.8, eos_token_id=-1, pad_token_id=0, repetition_penalty=penalty
        )
        new, ref = (score(m, rollout, 0.8, logit_rows=512) for m in (policy, reference))
        k1 = masked_sum(kl_k1(new["logprobs"], ref["logprobs"]), rollout.response_mask, dim=-1).mean().item()
        exact = (
            masked_sum(kl_exact(new["logits"], ref["logits"], temperature=0.8), rollout.response_mask, dim=-1)
            .mean()
            .item()
        )
        assert exact > 1.0
        if penalty == 1.0:
            assert k1 == pytest.approx(exact, rel=0.1)  # temperature is in both passes: honest
        else:
            assert k1 < 0
    warnings = health_warnings([{M.PPO_KL_K1: k1, M.PPO_KL_EXACT: exact}] * 5, window=5)
    assert any(w.startswith("negative-kl") and "repetition penalty" in w for w in warnings)


def test_warping_options_are_refused_with_one_line_and_min_length_does_not_exist():
    with pytest.raises(ConfigError, match="rollout.repetition_penalty warps sampling"):
        from rlhfkit.trainers.ppo import train_ppo

        train_ppo(load_config(PPOConfig, None, ["rollout.repetition_penalty=1.2"]))
    # min_length / min_new_tokens force tokens the policy would not pick (TRL's tracker): no such key.
    with pytest.raises(ConfigError, match="unknown key 'rollout.min_new_tokens'"):
        load_config(PPOConfig, None, ["rollout.min_new_tokens=8"])


def test_attended_padding_changes_the_scores_ours_mask_it_and_a_mismatch_trips_ratio_first(tiny_sft_dir):
    # The seed generated from unpadded prompts and scored padded batches with pads attended.
    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(ModelConfig(name=str(tiny_sft_dir), lora=False), trainable=False)
    model.eval()
    query_ids, query_mask = left_pad([tokenizer(p)["input_ids"] for p in PROMPTS], tokenizer.pad_token_id)
    rollout = sample(model, query_ids, query_mask, 12, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id)
    with torch.no_grad():
        ours = score(model, rollout, 1.0)["logprobs"]
        attended = torch.ones_like(rollout.attention_mask)  # every pad/EOS filler attended, default positions
        logits = model(
            input_ids=rollout.input_ids, attention_mask=attended, position_ids=position_ids(attended)
        ).logits[:, query_ids.shape[1] - 1 : -1]
        seed_way = (
            torch.log_softmax(logits.float(), -1).gather(-1, rollout.response_ids[..., None]).squeeze(-1)
        )
    padded = (query_mask == 0).any(-1)
    mask = rollout.response_mask.bool()
    gap = ((ours - seed_way).abs() * mask)[padded].max().item()
    assert gap > 0.05, "attending the pads should change a padded row's log-probs"
    assert torch.allclose((ours * mask)[~padded], (seed_way * mask)[~padded], atol=1e-4)
    # Old log-probs from one pass, new from the other: the first ratio is not 1 and the check fires.
    _, stats = ppo_policy_loss(ours, seed_way, torch.zeros_like(ours), rollout.response_mask)
    assert abs(stats["ratio_mean"].item() - 1) > 1e-3
    warnings = health_warnings([{M.PPO_RATIO_FIRST: stats["ratio_mean"].item()}])
    assert any(w.startswith("ratio-first") for w in warnings)


def test_rm_rewards_are_normalised_with_fixed_stats_not_per_batch(tiny_sft_dir, tiny_rm_dir):
    # The seed z-scored rewards within batches of 4: a response's reward then depends on its 3
    # companions, and the score stops being a steady signal. Ours uses stats stored with the RM.
    from rlhfkit.rewards import load_reward

    tokenizer = load_causal_lm(ModelConfig(name=str(tiny_sft_dir), lora=False), trainable=False)[1]
    reward = load_reward(str(tiny_rm_dir), normalize=True, policy_tokenizer=tokenizer)
    responses = ["7", "red, green", "cat cat cat", "The ocean is calm and blue."]
    batched = reward(PROMPTS, responses)
    alone = torch.cat([reward([p], [r]) for p, r in zip(PROMPTS, responses)])
    assert torch.allclose(batched, alone, atol=1e-5)
    swapped = reward(PROMPTS, responses[:2] + ["cat"] + responses[3:])
    assert torch.allclose(swapped[[0, 1, 3]], batched[[0, 1, 3]], atol=1e-5)  # per-batch z-scores would move
    z = (batched - batched.mean()) / batched.std()
    z_swapped = (swapped - swapped.mean()) / swapped.std()
    assert not torch.allclose(z[[0, 1, 3]], z_swapped[[0, 1, 3]], atol=1e-3)


def test_reference_of_a_lora_sft_checkpoint_is_the_sft_model_not_the_base(tmp_path, tiny_dir):
    # The seed loaded a LoRA SFT checkpoint so that "the reference" was silently the base model.
    # Ours merges the SFT adapter on load; PPO's own adapter goes on top, and disabling it gives SFT.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhfkit.config import SFTConfig
    from rlhfkit.trainers.sft import train_sft

    sft = train_sft(
        load_config(
            SFTConfig,
            None,
            [
                f"run.dir={tmp_path}",
                "model.name=tiny",
                "model.lora=true",
                "model.lora_r=4",
                "train.max_steps=4",
                "train.lr=1e-2",
                "train.batch_size=4",
                "train.eval_every=1000",
                "train.save_every=1000",
                "data.builtin_size=64",
                "sft.eval_generate=0",
                "run.report_to=[]",
                "run.progress=false",
            ],
        )
    )
    assert (sft.final / "adapter_config.json").is_file()
    policy, _ = load_causal_lm(ModelConfig(name=str(sft.dir), lora=True, lora_r=4))
    for name, param in policy.named_parameters():
        if "lora_B" in name:  # PPO's adapter after some updates
            torch.nn.init.normal_(param, std=0.05)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    sft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_dir), sft.final
    ).merge_and_unload()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad(), policy.disable_adapter():
        reference = policy(ids).logits
    with torch.no_grad():
        assert torch.allclose(reference, sft_model(ids).logits, atol=1e-5)
        assert not torch.allclose(reference, base(ids).logits, atol=1e-3)
        assert not torch.allclose(reference, policy(ids).logits, atol=1e-3)
