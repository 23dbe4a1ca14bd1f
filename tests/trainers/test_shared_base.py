"""One copy of the base weights for a LoRA policy, its reference, its reward model and its critic
(docs/design.md §6.9): a LoRA rm stage trained on the policy's base runs as adapters on the policy's
own peft model, and scores, trains and saves as the merged RM path does."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import ModelConfig, RMConfig, load_config
from rlhfkit.data.collate import left_pad, right_pad
from rlhfkit.data.templates import render
from rlhfkit.models import load_causal_lm
from rlhfkit.models.load import BASE_RECORD
from rlhfkit.models.reward import RM_ADAPTER, load_reward_model, rewards_at_last_token
from rlhfkit.models.shared import (
    CRITIC_ADAPTER,
    REWARD_ADAPTER,
    AdapterHead,
    adapter_parameters,
    add_scored_adapter,
)
from rlhfkit.rewards import load_reward, reward_normalisation, shareable_adapter
from rlhfkit.rollout.ppo import critic_values, sample
from rlhfkit.run import metrics as M
from rlhfkit.run.checkpoint import load_checkpoint
from rlhfkit.trainers.ppo import train_ppo
from rlhfkit.trainers.rm import train_rm
from tests.trainers.test_ppo import REPO, ppo_cfg

LORA = ["model.lora=true", "model.lora_r=4"]
PROMPTS = ["Human: Name 2 colors, please.\n\nAssistant:", "Human: What is 2 plus 3?\n\nAssistant:"]
RESPONSES = ["red, blue", "5"]


@pytest.fixture(scope="module")
def run_folder(tiny_sft_dir, tmp_path_factory):
    """(sft, rm): a run folder as the pipeline lays it out, the tiny SFT stage and a LoRA rm stage on
    it (final/ merged; final/adapter/ the adapter and head, naming its base as ../../../sft/final)."""
    run = tmp_path_factory.mktemp("shared") / "run"
    shutil.copytree(tiny_sft_dir / "final", run / "sft" / "final")
    cfg = load_config(
        RMConfig,
        None,
        [
            f"run.dir={run.parent}",
            "run.name=run",
            f"model.name={run / 'sft'}",
            f"data.source={REPO / 'tests' / 'fixtures' / 'prefs.jsonl'}",
            "data.eval_fraction=0.25",
            *LORA,
            "train.lr=1e-2",  # enough for the adapter to move the scores well away from the base's
            "train.max_steps=3",
            "train.batch_size=2",
            "train.eval_every=100",
            "rm.norm_samples=6",
            "rm.max_new_tokens=4",
            "run.report_to=[]",
            "run.progress=false",
        ],
    )
    return run / "sft", train_rm(cfg).dir


def lora_policy(sft_dir):
    return load_causal_lm(ModelConfig(name=str(sft_dir), lora=True, lora_r=4))


def test_reward_as_an_adapter_on_the_policy_base_scores_as_the_merged_rm(run_folder):
    sft_dir, lora_rm_dir = run_folder
    policy, tokenizer = lora_policy(sft_dir)
    adapter, why = shareable_adapter(str(lora_rm_dir), ModelConfig(name=str(sft_dir), lora=True), tokenizer)
    assert adapter == lora_rm_dir / "final" / RM_ADAPTER, why
    assert json.loads((adapter / BASE_RECORD).read_text()) == {"base": "../../../sft/final"}
    # Another base (the tiny model under the SFT one) or a full-weight policy: the merged path.
    assert shareable_adapter(str(lora_rm_dir), ModelConfig(name="tiny", lora=True), tokenizer)[0] is None
    assert (
        shareable_adapter(str(lora_rm_dir), ModelConfig(name=str(sft_dir), lora=False), tokenizer)[0] is None
    )
    ids = torch.tensor([[5, 17, 99, 3, 42]])
    with torch.no_grad():
        logits_before = policy(input_ids=ids).logits
    flags = {name: p.requires_grad for name, p in policy.named_parameters()}
    scorer = add_scored_adapter(policy, REWARD_ADAPTER, adapter, trainable=False)
    shared = load_reward(str(lora_rm_dir), True, tokenizer, scorer=scorer)
    merged = load_reward(str(lora_rm_dir), True, tokenizer)
    token_ids = [render(tokenizer, "human_assistant", p, r).ids for p, r in zip(PROMPTS, RESPONSES)]
    got, expected = shared(PROMPTS, RESPONSES, token_ids), merged(PROMPTS, RESPONSES, token_ids)
    assert torch.allclose(got, expected, atol=1e-5), (got, expected)
    assert torch.allclose(shared(PROMPTS, RESPONSES), expected, atol=1e-5)  # the text path too
    # Two responses per prompt: the adapter runs each prompt once (its KV cache handed on, design
    # §3.5) and scores as it scores the whole rows.
    mean, std = reward_normalisation(str(lora_rm_dir), True)
    twice, answers = PROMPTS * 2, RESPONSES + RESPONSES[::-1]
    rows = [render(tokenizer, "human_assistant", p, r).ids for p, r in zip(twice, answers)]
    with torch.no_grad():
        whole = (rewards_at_last_token(scorer, *right_pad(rows, tokenizer.pad_token_id)) - mean) / std
    assert torch.allclose(shared(twice, answers, rows), whole, atol=1e-5)
    # The reward really ran its adapter: the policy's own (zero-initialised) adapter with the RM's head
    # scores something else.
    input_ids, attention_mask = right_pad(token_ids, tokenizer.pad_token_id)
    own = AdapterHead(policy, "default", scorer.score, {}, trainable=False)
    with torch.no_grad():
        unswitched = (rewards_at_last_token(own, input_ids, attention_mask) - mean) / std
    assert (unswitched - expected).abs().max() > 1e-3
    # The policy is untouched: its adapter active and the only trainable one, the same logits.
    assert policy.active_adapter == "default"
    assert {name: p.requires_grad for name, p in policy.named_parameters() if name in flags} == flags
    assert not any(
        p.requires_grad for p in adapter_parameters(policy, REWARD_ADAPTER) + [scorer.score.weight]
    )
    with torch.no_grad():
        assert torch.equal(policy(input_ids=ids).logits, logits_before)


def test_lora_ppo_with_the_shared_base_trains_as_with_the_merged_rm(tmp_path, run_folder, capsys):
    sft_dir, lora_rm_dir = run_folder
    args = [*LORA, f"ppo.reward={lora_rm_dir}", "train.save_every=1"]
    merged = train_ppo(ppo_cfg(tmp_path, sft_dir, *args, "run.name=merged", "ppo.shared_base=false"))
    shared = train_ppo(ppo_cfg(tmp_path, sft_dir, *args, "run.name=shared"))
    assert "as an adapter on the policy's base weights" in capsys.readouterr().out
    keys = [M.PPO_REWARD_RM, M.PPO_KL_K1, M.PPO_KL_EXACT, "ppo/pg_loss", "ppo/vf_loss", "ppo/approx_kl"]
    for key in keys:
        assert [r[key] for r in shared.metrics if key in r] == pytest.approx(
            [r[key] for r in merged.metrics if key in r], rel=1e-4, abs=1e-6
        ), key
    # The same trainable weights (the policy's adapter and the value head) and optimizer state after
    # iteration 1, to float noise (Adam divides tiny gradients by their own size: a tenth of a step).
    states = [
        load_checkpoint(run.dir / "checkpoints" / "step-1", only=("model", "optimizer"))
        for run in (merged, shared)
    ]
    assert set(states[0]["model"]) == set(states[1]["model"])
    for key, value in states[0]["model"].items():
        assert torch.allclose(value, states[1]["model"][key], atol=1e-4), key
    optimizers = [state["optimizer"] for state in states]
    assert [len(g["params"]) for g in optimizers[0]["param_groups"]] == [
        len(g["params"]) for g in optimizers[1]["param_groups"]
    ]
    assert {k: v["exp_avg"].shape for k, v in optimizers[0]["state"].items()} == {
        k: v["exp_avg"].shape for k, v in optimizers[1]["state"].items()
    }
    # final/ is the policy's adapter alone (no reward/ subfolder), and loads as before.
    assert sorted(p.name for p in shared.final.iterdir()) == sorted(p.name for p in merged.final.iterdir())
    policy, _ = load_causal_lm(ModelConfig(name=str(shared.dir), lora=False), trainable=False)
    reference, _ = load_causal_lm(ModelConfig(name=str(merged.dir), lora=False), trainable=False)
    ids = torch.tensor([[5, 17, 99, 3, 42]])
    with torch.no_grad():
        got, expected = policy(input_ids=ids).logits, reference(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4)


def test_critic_as_a_third_adapter_starts_as_the_rm_and_trains_alone(tmp_path, run_folder, monkeypatch):
    sft_dir, lora_rm_dir = run_folder
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.evaluate.policies import load_checkpoint_policy
    from rlhfkit.trainers import ppo

    # Step 0: the critic adapter + head reads every prefix as the merged RM does (normalised alike).
    policy, tokenizer = lora_policy(sft_dir)
    adapter = lora_rm_dir / "final" / RM_ADAPTER
    add_scored_adapter(policy, REWARD_ADAPTER, adapter, trainable=False)
    critic = add_scored_adapter(policy, CRITIC_ADAPTER, adapter, trainable=True)
    rm, _ = load_reward_model(str(lora_rm_dir))
    norm = reward_normalisation(str(lora_rm_dir), True)
    query_ids, query_mask = left_pad([tokenizer(p)["input_ids"] for p in PROMPTS], tokenizer.pad_token_id)
    torch.manual_seed(0)
    rollout = sample(
        policy.eval(), query_ids, query_mask, 8, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    with torch.no_grad():
        values, expected = critic_values(critic, rollout, *norm), critic_values(rm, rollout, *norm)
    assert torch.allclose(values, expected, atol=1e-5) and values.std() > 0

    # A short run: the critic adapter and head train, the reward adapter and head stay the RM's.
    kept = []
    save = ppo.save_ppo_final
    monkeypatch.setattr(ppo, "save_ppo_final", lambda ctx, s: (kept.append(s), save(ctx, s))[1])
    args = [
        *LORA,
        f"ppo.reward={lora_rm_dir}",
        "ppo.critic=reward_model",
        "ppo.critic_lr=1e-3",
        "train.save_every=1",
    ]
    result = train_ppo(ppo_cfg(tmp_path, sft_dir, *args))
    net, optimizer = kept[0].net, kept[0].optimizer
    rm_weights = load_file(adapter / "adapter_model.safetensors")
    for name, trained in ((REWARD_ADAPTER, False), (CRITIC_ADAPTER, True)):
        state = get_peft_model_state_dict(net.policy, adapter_name=name)
        same = all(torch.equal(value, rm_weights[key]) for key, value in state.items())
        assert same != trained, name
        assert all(p.requires_grad == trained for p in adapter_parameters(net.policy, name)), name
    assert not torch.equal(net.critic.score.weight, rm_weights["base_model.model.score.weight"])
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == trainable
    assert not trainable & {id(p) for p in adapter_parameters(net.policy, REWARD_ADAPTER)}

    # final/critic/ is the critic as a peft SEQ_CLS adapter folder on the policy's base; final/ the policy.
    base = AutoModelForSequenceClassification.from_pretrained(
        sft_dir / "final", num_labels=1, pad_token_id=tokenizer.pad_token_id
    )
    loaded = PeftModel.from_pretrained(base, result.final / "critic").eval()
    ids = torch.tensor([[5, 17, 99, 3, 42]])
    with torch.no_grad():
        got = rewards_at_last_token(loaded, ids, torch.ones_like(ids))
        assert torch.allclose(got, rewards_at_last_token(net.critic, ids, torch.ones_like(ids)), atol=1e-5)
    assert not (result.final / REWARD_ADAPTER).exists()
    load_checkpoint_policy(result.dir / "checkpoints" / "step-1")  # the policy alone, the critic left out

    # Resume from the iteration-1 checkpoint: the critic adapter and head come back exactly.
    straight = load_file(result.final / "critic" / "adapter_model.safetensors")
    shutil.rmtree(result.final)
    resumed = train_ppo(ppo_cfg(tmp_path, sft_dir, *args), resume=True)
    again = load_file(resumed.final / "critic" / "adapter_model.safetensors")
    assert set(again) == set(straight)
    for key, value in straight.items():
        assert torch.allclose(value, again[key], atol=1e-6), key
