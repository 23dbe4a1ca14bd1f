"""The evaluation's rewards see what PPO's training gives them: a reward model and best-of-n's
reranking score the sampled ids (issue #15 item 5: decoding, stripping and re-encoding can give other
tokens than were sampled), and a `f(samples)` reward gets each prompt's dataset row and whether each
response finished (design §10.4), in the training-time held-out eval and in the policy comparison."""

import pytest
import torch

from rlhfkit.config import ModelConfig, PPOConfig, load_config
from rlhfkit.data import load_rows, render, render_prompt
from rlhfkit.evaluate.compare import EvalSettings, add_scores, compare_policies, sample_policy
from rlhfkit.models import load_causal_lm
from rlhfkit.rewards import load_reward
from rlhfkit.rewards.verifiable import arithmetic_correct, format_reward
from rlhfkit.rollout.ppo import decode_responses, row_noise, sample_prompts
from rlhfkit.tasks import parse_prompt, task_rows
from rlhfkit.trainers.ppo import held_out_gold
from tests.rewards.test_verifiable import rows_seen


def test_eval_reward_equals_the_training_time_score_of_the_same_samples(tiny_sft_dir, tiny_rm_dir):
    policy, tokenizer = load_causal_lm(ModelConfig(name=str(tiny_sft_dir), lora=False), trainable=False)
    reward_fn = load_reward(str(tiny_rm_dir), normalize=True, policy_tokenizer=tokenizer)
    # 16 draws per prompt: enough that some come out in ids the text path would not re-encode to (about
    # one in ten here), whatever float rounding the fixture's SFT run had.
    prompts = [render_prompt(f"Say something nice about {w}.") for w in ("cats", "rain", "tea", "maps")] * 16
    samples = sample_policy(policy, tokenizer, prompts, 12, 1.0, batch_size=64, noise_seed=3)
    add_scores(samples, gold=False, reward_fn=reward_fn)
    # What PPO's rollout scores: the same draws (same noise), their ids (Rollout.token_rows).
    rollout = sample_prompts(policy, tokenizer, prompts, 12, 1.0, noise=row_noise(3, range(len(prompts)), 12))
    trained = reward_fn(prompts, decode_responses(tokenizer, rollout), rollout.token_rows())
    assert torch.allclose(torch.tensor(samples.reward), trained, atol=1e-5)
    # The text path re-tokenises " " + the stripped response: on some samples it reads other ids.
    text = reward_fn(prompts, samples.responses, None)
    other = [
        ids != render(tokenizer, "human_assistant", p, r).ids
        for p, r, ids in zip(prompts, samples.responses, samples.token_ids)
    ]
    assert any(other) and not torch.allclose(text[other], trained[other], atol=1e-5)


def test_the_held_out_eval_gives_a_rewards_samples_their_rows_and_finished_flags(tiny_sft_dir):
    # A verifiable `f(samples)` reward checks each answer against the prompt's dataset row and a format
    # check reads whether the response finished, in the held-out evals as in training (design §10.4).
    policy, tokenizer = load_causal_lm(ModelConfig(name=str(tiny_sft_dir), lora=False), trainable=False)
    # 6 new tokens: some answers finish ("3 plus 4 is 7."), some are cut off.
    cfg = load_config(PPOConfig, None, ["data.source=builtin:arithmetic", "rollout.max_new_tokens=6"])
    rows = load_rows("builtin:arithmetic", "test")[:24]
    reward_fn = load_reward(
        "tests.rewards.test_verifiable:rows_seen",
        normalize=False,
        extra=[
            "rlhfkit.rewards.verifiable:verifiable_reward@1",
            "rlhfkit.rewards.verifiable:format_reward@0.5",
        ],
    )
    rows_seen.calls = []
    samples = held_out_gold(policy, tokenizer, rows, cfg, reward_fn, batch_size=16)
    seen = [sample for call in rows_seen.calls for sample in call]
    assert [s.metadata for s in seen] == rows  # each prompt's own row, batch after batch
    assert [s.finished for s in seen] == samples.finished
    assert 0 < sum(samples.finished) < len(rows), "want finished and cut-off answers both"
    expected = [
        len(s.token_ids) / 100
        + arithmetic_correct(parse_prompt(row["instruction"])[1], s.response)
        + 0.5 * format_reward([s])[0]
        for s, row in zip(seen, rows)
    ]
    assert samples.reward == pytest.approx(expected, abs=1e-6)
    assert any(
        arithmetic_correct(parse_prompt(r["instruction"])[1], x) for r, x in zip(rows, samples.responses)
    )


def test_the_policy_comparison_gives_every_draw_its_prompts_row(tiny_sft_dir):
    policy = load_causal_lm(ModelConfig(name=str(tiny_sft_dir), lora=False), trainable=False)
    rows = task_rows("arithmetic", "test", 3)
    prompts = [render_prompt(r["instruction"]) for r in rows]
    settings = EvalSettings(max_new_tokens=4, best_of_n=[1, 2], samples_per_prompt=2, batch_size=4)
    reward_fn = load_reward("tests.rewards.test_verifiable:rows_seen", normalize=False)
    rows_seen.calls = []
    compare_policies(
        {"sft": policy}, "sft", prompts, None, settings, gold=True, reward_fn=reward_fn, rows=rows
    )
    seen = [sample for call in rows_seen.calls for sample in call]
    assert len(seen) == 3 * 2  # the reference's 2 draws per prompt, which are also best-of-2's pool
    assert all(s.metadata["instruction"] in s.prompt for s in seen)
    assert [s.metadata for s in seen[:6]] == [r for r in rows for _ in range(2)]
