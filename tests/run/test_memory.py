"""The memory model of docs/scaling.md (run/memory.py): its parts by hand, and the choices it tells apart."""

import pytest

from rlhfkit.run.memory import GB, SHAPES, Run, estimate, fits, with_shards

SMALL = SHAPES["tiny"]


def test_parts_by_hand_for_full_sft():
    run = Run("sft", SMALL, rows=2, tokens=10)
    parts = estimate(run)
    assert parts["weights"] == SMALL.params * 4
    assert parts["gradients_adam"] == 12 * SMALL.params  # float32 gradient + two AdamW moments
    values = (6 * SMALL.hidden + 4 * SMALL.intermediate) * 20 * SMALL.layers
    assert parts["activations"] == values * 4
    assert parts["logits"] == 3 * 20 * SMALL.vocab * 4
    assert parts["kv_cache"] == parts["sharded_layer"] == 0
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))


def test_lora_ppo_shares_its_base_and_full_ppo_does_not():
    lora = Run("ppo", SMALL, rows=4, tokens=20, lora_r=8, response=8, rollout_rows=8)
    full = Run("ppo", SMALL, rows=4, tokens=20, response=8, rollout_rows=8)
    # policy + reward model; full fine-tuning adds the frozen reference copy
    assert estimate(lora)["weights"] == 2 * SMALL.params * 4
    assert estimate(full)["weights"] == 3 * SMALL.params * 4
    assert estimate(lora)["gradients_adam"] == 12 * SMALL.lora_params(8)
    critic = Run("ppo", SMALL, rows=4, tokens=20, lora_r=8, response=8, rollout_rows=8, critic="reward_model")
    assert estimate(critic)["gradients_adam"] == 12 * (SMALL.lora_params(8) + SMALL.params)
    assert estimate(lora)["kv_cache"] == 2 * SMALL.layers * SMALL.kv_width * 8 * 20 * 4


def test_sharding_divides_states_and_checkpointing_keeps_layer_inputs():
    run = Run("sft", SHAPES["llama-7b"], rows=4, tokens=512, weight_bytes=2, activation_bytes=2)
    one, eight = estimate(run), estimate(with_shards(run, 8))
    assert eight["weights"] == one["weights"] / 8 and eight["gradients_adam"] == one["gradients_adam"] / 8
    assert eight["sharded_layer"] > 0
    checkpointed = estimate(
        Run("sft", run.shape, 4, 512, weight_bytes=2, activation_bytes=2, gradient_checkpointing=True)
    )
    assert checkpointed["activations"] < one["activations"] / 5


def test_what_fits_on_80_gb():
    seven = SHAPES["llama-7b"]
    lora_ppo = Run(
        "ppo",
        seven,
        rows=8,
        tokens=512,
        lora_r=16,
        weight_bytes=2,
        activation_bytes=2,
        gradient_checkpointing=True,
        response=256,
        rollout_rows=32,
    )
    full_sft = Run(
        "sft", seven, rows=4, tokens=512, weight_bytes=2, activation_bytes=2, gradient_checkpointing=True
    )
    assert fits(lora_ppo, 80 * GB)
    assert not fits(full_sft, 80 * GB)  # 16 bytes per trained parameter: ~108 GB before activations
    assert fits(with_shards(full_sft, 8), 80 * GB)
