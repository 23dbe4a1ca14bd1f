"""The evaluation's RM score and best-of-n reranking score the sampled ids, as PPO's training does
(issue #15 item 5): decoding, stripping and re-encoding can give other tokens than were sampled."""

import torch

from rlhfkit.config import ModelConfig
from rlhfkit.data import render_prompt
from rlhfkit.evaluate.compare import add_scores, sample_policy
from rlhfkit.models import load_causal_lm
from rlhfkit.rewards import load_reward
from rlhfkit.rollout.ppo import decode_responses, row_noise, sample_prompts


def test_eval_reward_equals_the_training_time_score_of_the_same_samples(tiny_sft_dir, tiny_rm_dir):
    policy, tokenizer = load_causal_lm(ModelConfig(name=str(tiny_sft_dir), lora=False), trainable=False)
    reward_fn = load_reward(str(tiny_rm_dir), normalize=True, policy_tokenizer=tokenizer)
    prompts = [render_prompt(f"Say something nice about {w}.") for w in ("cats", "rain", "tea", "maps")] * 4
    samples = sample_policy(policy, tokenizer, prompts, 12, 1.0, batch_size=64, noise_seed=3)
    add_scores(samples, gold=False, reward_fn=reward_fn)
    # What PPO's rollout scores: the same draws (same noise), their ids (Rollout.token_rows).
    rollout = sample_prompts(policy, tokenizer, prompts, 12, 1.0, noise=row_noise(3, range(len(prompts)), 12))
    trained = reward_fn(prompts, decode_responses(tokenizer, rollout), rollout.token_rows())
    assert torch.allclose(torch.tensor(samples.reward), trained, atol=1e-5)
    # The text path re-tokenises " " + the stripped response: on these samples it reads other ids.
    text = reward_fn(prompts, samples.responses, None)
    assert not torch.allclose(text, trained, atol=1e-5)
