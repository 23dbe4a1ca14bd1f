"""PPO scores exactly the ids its reward model was trained on, in the seed's format and with a chat
template (issue #15 item 4): the rm stage's pairs (data/preferences.tokenize_pairs) and a PPO rollout
of the same prompt and response (sample_prompts -> token_rows, and the reward's text path) agree."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.data.labelling import pair_columns
from rlhfkit.data.preferences import load_preference_pairs, tokenize_pairs
from rlhfkit.data.sft import prompt_text
from rlhfkit.data.templates import user_turn
from rlhfkit.errors import RlhfkitError
from rlhfkit.models import load_tokenizer
from rlhfkit.rewards import load_reward
from rlhfkit.rewards import model as reward_module
from rlhfkit.rollout.ppo import decode_responses, sample_prompts
from rlhfkit.tasks import task_rows
from tests.data.chat import smollm2_tokenizer, tiny_chat_tokenizer


class Scripted(torch.nn.Module):
    """A policy that samples a given response for each row (then EOS): the interface `sample` uses,
    with the step count as its cache."""

    def __init__(self, responses: list[list[int]], vocab: int, eos: int):
        super().__init__()
        self.responses, self.vocab, self.eos = responses, vocab, eos

    def forward(
        self, input_ids, attention_mask=None, position_ids=None, use_cache=False, logits_to_keep=0, **cache
    ):
        step = next((v for v in cache.values() if v is not None), 0)
        logits = torch.full((input_ids.shape[0], input_ids.shape[1], self.vocab), -1e4)
        for b, response in enumerate(self.responses):
            logits[b, -1, response[step] if step < len(response) else self.eos] = 0.0
        return SimpleNamespace(logits=logits, cache=step + 1, past_key_values=step + 1)


def reward_model_folder(folder: Path, tokenizer, template: str) -> Path:
    """A small random decoder RM on `tokenizer`, saved as the rm stage saves one (with its stats)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=16,
        n_layer=1,
        n_head=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2ForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "reward_stats.json").write_text(json.dumps({"mean": 0.0, "std": 1.0, "template": template}))
    return folder


def tokenizers(tiny_dir, name: str):
    if name == "smollm2":
        return smollm2_tokenizer()
    return tiny_chat_tokenizer(tiny_dir) if name == "tiny-chat" else load_tokenizer(str(tiny_dir))


@pytest.mark.parametrize(
    "name, template",
    [
        ("tiny", "human_assistant"),
        ("tiny-chat", "chat"),
        pytest.param("smollm2", "chat", marks=pytest.mark.slow),
    ],
)
def test_ppo_scores_exactly_the_ids_the_rm_was_trained_on(tmp_path, monkeypatch, tiny_dir, name, template):
    tokenizer = tokenizers(tiny_dir, name)
    rows = task_rows("default", "train", n=6, seed=0)
    # 1. the rm stage's data: pairs written as the prefs stage writes them, read and tokenised as rm does
    replies = [("Happy days are here.", "No."), ("cat cat cat", "cat"), ("1, 2, 3", "3 2 1")] * 2
    lines = [
        json.dumps(pair_columns(template, user_turn(r["instruction"], r["input"]), chosen, rejected))
        for r, (chosen, rejected) in zip(rows, replies)
    ]
    (tmp_path / "prefs.jsonl").write_text("".join(line + "\n" for line in lines))
    pairs = load_preference_pairs(str(tmp_path / "prefs.jsonl"))
    trained = tokenize_pairs(
        pairs.pairs, tokenizer, "prefs.jsonl", 512, "error", pairs.rows, template=template
    )
    # 2. PPO: the same rows' prompts as load_prompts renders them, a rollout that samples the chosen replies
    prompts = [prompt_text(r, f"builtin: row {i}", template, tokenizer) for i, r in enumerate(rows)]
    # The tokens of each chosen reply as a policy SFT-trained on this template emits them (the seed's
    # format: after a space).
    lead = " " if template == "human_assistant" else ""
    sampled = [tokenizer(lead + chosen, add_special_tokens=False)["input_ids"] for chosen, _ in replies]
    policy = Scripted(sampled, len(tokenizer), tokenizer.eos_token_id)
    rollout = sample_prompts(policy, tokenizer, prompts, 32, 1.0)
    assert rollout.finished.all()
    assert rollout.token_rows() == trained.chosen_ids
    # 3. the reward model reads those ids, from the sampled ids and from the decoded text alike
    seen = []

    def recording(model, input_ids, attention_mask, **extra):
        seen.append([row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)])
        return torch.zeros(input_ids.shape[0])

    monkeypatch.setattr(reward_module, "rewards_at_last_token", recording)
    # Rows that share a prompt run it once (design §3.5): the rows it reads are the batch's whole rows.
    monkeypatch.setattr(
        reward_module, "shared_prompt_rewards", lambda model, batch: recording(model, *batch.full())
    )
    reward = load_reward(
        str(reward_model_folder(tmp_path / "rm", tokenizer, template)),
        normalize=True,
        policy_tokenizer=tokenizer,
        template=template,
    )
    assert reward.scores_token_ids
    responses = decode_responses(tokenizer, rollout)
    assert responses == [chosen for chosen, _ in replies]
    reward(prompts, responses, rollout.token_rows())
    reward(prompts, responses)
    assert seen == [trained.chosen_ids, trained.chosen_ids]


def test_an_rm_trained_on_another_template_is_refused(tmp_path, tiny_dir):
    folder = reward_model_folder(tmp_path / "rm", load_tokenizer(str(tiny_dir)), "human_assistant")
    error = (
        r"rm: this reward model was trained with data.template=human_assistant but the prompts it would "
        r"score are rendered with data.template=chat"
    )
    with pytest.raises(RlhfkitError, match=error):
        load_reward(str(folder), normalize=True, template="chat")
    load_reward(str(folder), normalize=True)  # the same template: accepted
