"""PPO beyond the single-process loop: 2-process DDP, PPO-ptx, a critic initialised from the RM."""

import shutil

import pytest
import torch

from rlhfkit.config import load_config
from rlhfkit.run import metrics as M
from rlhfkit.trainers.ppo import train_ppo
from tests.trainers.runs import assert_same_weights, losses, two_processes_equal_one
from tests.trainers.test_ppo import QUICK, TINY, ppo_cfg


@pytest.mark.slow
def test_two_process_ppo_equals_one_process_with_double_batch(tmp_path, tiny_sft_dir):
    # Rollout rows are a pure function of (seed, iteration, global row), whitening and minibatch
    # losses use the global batch: 2 x 4 rows must train exactly as 1 x 8.
    stdout = two_processes_equal_one(
        tmp_path,
        "ppo",
        TINY,
        [f"model.name={tiny_sft_dir}", *QUICK, "ppo.iterations=3", "ppo.ptx_coef=0.5"],
        batch=8,
        weights=None,
        batch_keys=("rollout.batch_size", "ppo.ptx_batch_size"),
        metric=M.PPO_KL_K1,
        atol=1e-3,
    )
    assert "2 processes agree on the trained weights" in stdout
    # Every weight agrees but GPT-2's attention key bias: its true gradient is exactly zero (softmax
    # ignores a constant per row), so Adam turns float noise there into lr-sized steps. Compared
    # without it, and the function the two policies compute is the same to float precision:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    weights = [load_file(tmp_path / name / "ppo" / "final" / "model.safetensors") for name in ("one", "two")]
    for key, value in weights[0].items():
        other = weights[1][key]
        if key.endswith("attn.c_attn.bias"):
            width = value.shape[0] // 3  # [query | key | value]
            value, other = (
                torch.cat([value[:width], value[2 * width :]]),
                torch.cat([other[:width], other[2 * width :]]),
            )
        assert (value - other).abs().max().item() < 1e-4, key

    one, two = (
        AutoModelForCausalLM.from_pretrained(tmp_path / name / "ppo" / "final") for name in ("one", "two")
    )
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        assert torch.allclose(one(ids).logits, two(ids).logits, atol=1e-4)
    two = tmp_path / "two" / "ppo"
    assert losses(two, M.PPO_RATIO_FIRST) == pytest.approx([1.0] * 3, abs=1e-5)
    for key in (M.PPO_REWARD_RM, M.PPO_PTX_LOSS, "ppo/pg_loss"):
        assert losses(two, key) == pytest.approx(losses(tmp_path / "one" / "ppo", key), rel=1e-3, abs=1e-5)


def sft_nll(policy_dir, tiny_sft_dir, rows: int = 32) -> float:
    from rlhfkit.config import SFTConfig
    from rlhfkit.evaluate.loss import held_out_loss
    from rlhfkit.models import load_causal_lm
    from rlhfkit.trainers.sft import load_sft_data

    model, tokenizer = load_causal_lm(
        load_config(SFTConfig, None, [f"model.name={policy_dir}", "model.lora=false"]).model, trainable=False
    )
    train, _, _ = load_sft_data(
        load_config(SFTConfig, None, ["data.builtin_size=3000", "data.builtin_noise=0.0"]), tokenizer
    )
    train.input_ids, train.labels = train.input_ids[:rows], train.labels[:rows]
    return held_out_loss(model.eval(), train, tokenizer.pad_token_id, 16)


def test_ptx_loss_is_logged_and_keeps_the_sft_likelihood(tmp_path, tiny_sft_dir):
    # Ouyang et al. eq. 2: the SFT NLL mixed into every minibatch. Trained on the prompt source's own
    # completions, the policy keeps a lower NLL on them than plain PPO with the same rollouts does.
    common = ["ppo.iterations=3", "ppo.no_eos_penalty=0", "ppo.reward_clip=100", "ppo.ptx_batch_size=16"]
    plain = train_ppo(ppo_cfg(tmp_path, tiny_sft_dir, *common, "run.name=plain"))
    ptx = train_ppo(ppo_cfg(tmp_path, tiny_sft_dir, *common, "ppo.ptx_coef=2.0", "run.name=ptx"))
    assert plain.last(M.PPO_PTX_LOSS) is None and ptx.last(M.PPO_PTX_LOSS) > 0
    # The first rollout is the same (same weights, same noise); the updates differ by the ptx term.
    assert ptx.first(M.PPO_REWARD_RM) == pytest.approx(plain.first(M.PPO_REWARD_RM), abs=1e-6)
    assert sft_nll(ptx.final, tiny_sft_dir) < sft_nll(plain.final, tiny_sft_dir) - 0.01
    # The logged KL is the KL in the reward (design §6.7, TRL's "logged KL != reward KL"):
    # reward_total = score - kl_coef * k1 exactly, when no penalty or clipping touches the score.
    for record in (r for r in plain.metrics if M.PPO_KL_K1 in r):
        expected = record[M.PPO_REWARD_RM] - record[M.PPO_KL_COEF] * record[M.PPO_KL_K1]
        assert record[M.PPO_REWARD_TOTAL] == pytest.approx(expected, abs=1e-5)


def test_critic_from_the_reward_model_starts_as_the_rm_on_every_prefix(tiny_sft_dir, tiny_rm_dir):
    from rlhfkit.config import ModelConfig
    from rlhfkit.data.collate import left_pad
    from rlhfkit.models import load_causal_lm
    from rlhfkit.models.reward import load_reward_model, rewards_at_last_token
    from rlhfkit.rewards import reward_normalisation
    from rlhfkit.rollout.ppo import critic_values, sample

    torch.manual_seed(0)
    policy, tokenizer = load_causal_lm(ModelConfig(name=str(tiny_sft_dir), lora=False), trainable=False)
    rm, _ = load_reward_model(str(tiny_rm_dir))
    mean, std = reward_normalisation(str(tiny_rm_dir), True)
    prompts = ["Human: What is 2 plus 3?\n\nAssistant:", "Human: Name 2 colors, please.\n\nAssistant:"]
    query_ids, query_mask = left_pad([tokenizer(p)["input_ids"] for p in prompts], tokenizer.pad_token_id)
    rollout = sample(
        policy.eval(), query_ids, query_mask, 8, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    with torch.no_grad():
        values = critic_values(rm, rollout, mean, std)
        for b, row in enumerate(rollout.token_rows()):
            n_prompt = int(query_mask[b].sum())
            for t in range(int(rollout.response_lengths[b])):
                ids = torch.tensor([row[: n_prompt + t]])
                expected = (rewards_at_last_token(rm, ids, torch.ones_like(ids)) - mean) / std
                assert values[b, t].item() == pytest.approx(expected.item(), abs=1e-4), (b, t)
    assert values.std() > 0  # a real (trained) RM head, not a zero one


def test_critic_from_the_reward_model_trains_is_saved_and_resumes(tmp_path, tiny_sft_dir, tiny_rm_dir):
    from transformers import AutoModelForSequenceClassification

    args = [
        f"ppo.reward={tiny_rm_dir}",
        "ppo.critic=reward_model",
        "ppo.critic_lr=1e-3",
        "ppo.iterations=2",
        "train.save_every=1",
    ]
    result = train_ppo(ppo_cfg(tmp_path, tiny_sft_dir, *args))
    critic_dir = result.final / "critic"
    assert not (result.final / "value_head.safetensors").exists()
    trained = AutoModelForSequenceClassification.from_pretrained(critic_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_rm_dir / "final")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert not torch.allclose(trained(ids).logits, rm(ids).logits, atol=1e-5), "the critic did not train"
    # Resume from the iteration-1 checkpoint: the critic and its optimizer state come back exactly.
    straight = tmp_path / "straight-critic"
    shutil.copytree(critic_dir, straight)
    shutil.rmtree(result.final)
    train_ppo(ppo_cfg(tmp_path, tiny_sft_dir, *args), resume=True)
    assert_same_weights(straight / "model.safetensors", critic_dir / "model.safetensors", atol=1e-6)


def test_critic_from_a_function_reward_is_a_one_line_error(tmp_path, tiny_sft_dir):
    from rlhfkit.errors import ConfigError

    with pytest.raises(
        ConfigError, match="ppo.critic=reward_model needs ppo.reward to be a reward-model folder"
    ):
        train_ppo(ppo_cfg(tmp_path, tiny_sft_dir, "ppo.critic=reward_model"))
    assert not (tmp_path / "tiny").exists()


@pytest.mark.parametrize("lora", [False, True], ids=["frozen-copy", "adapter-off"])
def test_bf16_autocast_keeps_the_kl_checks_green(tmp_path, tiny_sft_dir, lora):
    # train.mixed_precision=bf16 (docs/scaling.md section 2.4): the scoring pass and the update run the
    # same autocast forward, so the first minibatch's ratio stays 1, and k1 agrees with the exact KL on
    # the same rows. Gradient checkpointing on too: recomputing activations changes no number.
    cfg = ppo_cfg(
        tmp_path,
        tiny_sft_dir,
        "train.mixed_precision=bf16",
        "train.gradient_checkpointing=true",
        "ppo.eval_prompts=0",
        f"model.lora={str(lora).lower()}",
    )
    result = train_ppo(cfg)
    records = [r for r in result.metrics if M.PPO_RATIO_FIRST in r]
    assert len(records) == 2
    for record in records:
        assert abs(record[M.PPO_RATIO_FIRST] - 1.0) < 1e-3
        assert abs(record[M.PPO_KL_K1_Z]) < 4
    # Iteration 1's policy is the reference (the frozen copy, or the adapter off with LoRA's B = 0), and
    # the reference is scored under the policy's autocast: the KL is 0, not bf16 rounding (0.0019 nats
    # when the reference ran in float32).
    for name in (M.PPO_KL_K1, M.PPO_KL_K3, M.PPO_KL_EXACT):
        assert records[0][name] == pytest.approx(0.0, abs=1e-6), name


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir):
    from transformers import AutoModelForCausalLM

    from rlhfkit.models.lora import add_lora
    from rlhfkit.trainers.sharding import use_gradient_checkpointing

    grads = []
    for on in (False, True):
        torch.manual_seed(0)
        model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_dir), 4, 8, 0.0, None, "CAUSAL_LM")
        use_gradient_checkpointing(model, on)
        model.train()
        ids = torch.arange(10, 30).view(2, 10)
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
        assert model.is_gradient_checkpointing == on
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7)
