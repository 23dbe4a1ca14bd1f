"""Reward models on the policy's tokenizer score the sampled token ids; any other sequence classifier
(a foreign tokenizer, e.g. OpenAssistant's DeBERTa RM) scores the decoded text in its own tokens."""

import pytest
import torch

from rlhfkit.config import ModelConfig
from rlhfkit.data.collate import right_pad
from rlhfkit.models import load_causal_lm, prefix
from rlhfkit.models.reward import load_reward_model, rewards_at_last_token
from rlhfkit.rewards import load_reward
from rlhfkit.rewards.model import shared_prefix_lengths

PROMPTS = [
    "Human: What is 2 plus 3?\n\nAssistant:",
    "Human: Name 2 colors.\n\nAssistant:",
    "Human: Repeat the word cat 3 times.\n\nAssistant:",
]
RESPONSES = ["5", "red, blue", "cat cat cat"]


def policy_tokenizer(tiny_sft_dir):
    return load_causal_lm(ModelConfig(name=str(tiny_sft_dir), lora=False), trainable=False)[1]


def test_same_tokenizer_rm_scores_ids_exactly_as_it_scores_text(tiny_sft_dir, tiny_rm_dir):
    tokenizer = policy_tokenizer(tiny_sft_dir)
    reward = load_reward(str(tiny_rm_dir), normalize=True, policy_tokenizer=tokenizer)
    assert reward.scores_token_ids
    # The rm stage's format: prompt ids + " " + response ids, no EOS. Rollouts of a policy trained on
    # the same template produce exactly these ids, so both paths must agree.
    ids = [
        tokenizer(p)["input_ids"] + tokenizer(" " + r, add_special_tokens=False)["input_ids"]
        for p, r in zip(PROMPTS, RESPONSES)
    ]
    from_ids, from_text = reward(PROMPTS, RESPONSES, ids), reward(PROMPTS, RESPONSES)
    assert torch.allclose(from_ids, from_text, atol=1e-6)
    assert from_text.std() > 0
    # The ids path really reads the ids: a non-canonical tokenisation of the same text (one token
    # per character) is scored as what the policy sampled, not as its decoded text.
    spelled = [
        tokenizer(p)["input_ids"]
        + [tokenizer.convert_tokens_to_ids(c) for c in tokenizer.tokenize(" " + r) for c in c]
        for p, r in zip(PROMPTS, RESPONSES)
    ]
    assert [tokenizer.decode(s) for s in spelled] == [tokenizer.decode(i) for i in ids]
    assert not torch.allclose(reward(PROMPTS, RESPONSES, spelled), from_text, atol=1e-4)


def test_same_tokenizer_rm_on_real_rollouts_agrees_with_the_text_path(tiny_sft_dir, tiny_rm_dir):
    from rlhfkit.data.collate import left_pad
    from rlhfkit.rollout.ppo import sample

    torch.manual_seed(0)
    policy, tokenizer = load_causal_lm(ModelConfig(name=str(tiny_sft_dir), lora=False), trainable=False)
    reward = load_reward(str(tiny_rm_dir), normalize=True, policy_tokenizer=tokenizer)
    prompts = PROMPTS * 4
    query_ids, query_mask = left_pad([tokenizer(p)["input_ids"] for p in prompts], tokenizer.pad_token_id)
    rollout = sample(
        policy.eval(), query_ids, query_mask, 16, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    rows = rollout.token_rows()
    responses = [
        tokenizer.decode(ids[m.bool()], skip_special_tokens=True).strip()
        for ids, m in zip(rollout.response_ids, rollout.response_mask)
    ]
    from_ids, from_text = reward(prompts, responses, rows), reward(prompts, responses)
    canonical = [
        row == tokenizer(p)["input_ids"] + tokenizer(" " + r, add_special_tokens=False)["input_ids"]
        for row, p, r in zip(rows, prompts, responses)
    ]
    assert sum(canonical) >= len(prompts) // 2, "the SFT policy should mostly sample canonical tokenisations"
    for b, same in enumerate(canonical):
        if same:
            assert from_ids[b].item() == pytest.approx(from_text[b].item(), abs=1e-5)


def test_rows_of_one_prompt_score_as_whole_rows(tiny_sft_dir, tiny_rm_dir):
    # A prompt's k samples (RLOO, GRPO) or n draws (best-of-n): what the rows share runs once, and each
    # row scores as the whole row did (rewards_at_last_token on right-padded prompt + response ids).
    tokenizer = policy_tokenizer(tiny_sft_dir)
    reward = load_reward(str(tiny_rm_dir), normalize=False, policy_tokenizer=tokenizer)
    prompts = [PROMPTS[0]] * 4 + [PROMPTS[1]] + [PROMPTS[2]] * 2
    responses = ["5", "5 apples", "five", "", "red, blue", "cat cat cat", "cat"]
    ids = [
        tokenizer(p)["input_ids"] + (tokenizer(" " + r, add_special_tokens=False)["input_ids"] if r else [])
        for p, r in zip(prompts, responses)
    ]
    prompt_lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    lengths = shared_prefix_lengths(prompts, ids)
    assert lengths[:4] == [prompt_lengths[0]] * 4  # one response is empty: the prompt alone
    assert lengths[4] == len(ids[4]) and lengths[5] > prompt_lengths[5]  # alone; "cat" begins both
    model, _ = load_reward_model(str(tiny_rm_dir))
    with torch.no_grad():
        whole = rewards_at_last_token(model, *right_pad(ids, tokenizer.pad_token_id))
    assert torch.allclose(reward(prompts, responses, ids), whole, atol=1e-5)
    assert whole.std() > 0


def test_kept_prompts_score_every_later_call_without_running_a_prompt_again(
    tiny_sft_dir, tiny_rm_dir, monkeypatch
):
    # The evaluation keeps the RM's pass over the held-out prompts (reward.keep_prompts) and scores every
    # policy's samples from it: same scores as the whole rows, and no forward sees a prompt token again.
    tokenizer = policy_tokenizer(tiny_sft_dir)
    reward = load_reward(str(tiny_rm_dir), normalize=False, policy_tokenizer=tokenizer)
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[2]]
    responses = ["5 apples", "red", "", "cat cat"]
    ids = [
        tokenizer(p)["input_ids"] + (tokenizer(" " + r, add_special_tokens=False)["input_ids"] if r else [])
        for p, r in zip(prompts, responses)
    ]
    model, _ = load_reward_model(str(tiny_rm_dir))
    with torch.no_grad():
        whole = rewards_at_last_token(model, *right_pad(ids, tokenizer.pad_token_id))
    reward.keep_prompts([tokenizer(p)["input_ids"] for p in PROMPTS])
    calls = []
    for name in ("prompt_pass", "continuation_pass"):
        original = getattr(prefix, name)
        monkeypatch.setattr(
            prefix, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k)
        )
    kept = reward(prompts, responses, ids)
    assert torch.allclose(kept, whole, atol=1e-5) and whole.std() > 0
    assert calls == ["continuation_pass"], "the kept prompt pass serves the call"
    # A row whose prompt is not kept: the call falls back to the rows' own pass, same scores.
    other = tokenizer("Human: Name a fruit.\n\nAssistant:")["input_ids"] + tokenizer(" pear")["input_ids"]
    mixed = reward(prompts[:1] + ["x"], responses[:1] + ["pear"], ids[:1] + [other])
    assert torch.allclose(mixed[0], whole[0], atol=1e-5)


def word_tokenizer(texts: list[str], kind: str):
    """A tokenizer unlike the policy's: WordPiece (BERT-style, with [SEP]) or a 300-token byte BPE."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    from rlhfkit.models.tiny import train_tokenizer

    if kind == "gpt2":
        return train_tokenizer(texts, 300)
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.train_from_iterator(
        texts,
        trainers.WordPieceTrainer(
            vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False
        ),
    )
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return BertTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )


def foreign_rm(folder, kind: str):
    """A tiny sequence classifier with its own tokenizer, saved as any local HF RM folder would be."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2ForSequenceClassification,
    )

    from rlhfkit.tasks import corpus

    tokenizer = word_tokenizer(list(corpus(seed=0))[:500] + PROMPTS + RESPONSES, kind)
    torch.manual_seed(0)
    if kind == "bert":
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = BertForSequenceClassification(config)
    else:
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=32,
            n_layer=1,
            n_head=2,
            num_labels=1,
            pad_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        model = GPT2ForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.eval(), tokenizer


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_foreign_tokenizer_rm_scores_the_decoded_text_in_its_own_tokens(tmp_path, tiny_sft_dir, kind):
    model, tokenizer = foreign_rm(tmp_path / "rm", kind)
    policy_tok = policy_tokenizer(tiny_sft_dir)
    reward = load_reward(str(tmp_path / "rm"), normalize=False, policy_tokenizer=policy_tok)
    assert not reward.scores_token_ids
    policy_ids = [policy_tok(p + " " + r)["input_ids"] for p, r in zip(PROMPTS, RESPONSES)]
    scores = reward(PROMPTS, RESPONSES, policy_ids)  # policy ids are meaningless to this RM: ignored
    if kind == "bert":  # an encoder RM reads (question, answer) pairs, as OpenAssistant's RMs expect
        batch = tokenizer(PROMPTS, RESPONSES, padding=True, return_tensors="pt")
        assert (batch["token_type_ids"] == 1).any()
        with torch.no_grad():
            expected = model(**batch).logits.squeeze(-1)
    else:
        with torch.no_grad():
            expected = torch.stack(
                [
                    model(torch.tensor([tokenizer(p)["input_ids"] + tokenizer(" " + r)["input_ids"]])).logits[
                        0, 0
                    ]
                    for p, r in zip(PROMPTS, RESPONSES)
                ]
            )
    assert torch.allclose(scores, expected, atol=1e-5)
    assert scores.std() > 0


def test_ppo_runs_with_a_foreign_tokenizer_rm(tmp_path, tiny_sft_dir):
    from rlhfkit.trainers.ppo import train_ppo
    from tests.trainers.test_ppo import ppo_cfg

    foreign_rm(tmp_path / "rm", "bert")
    result = train_ppo(
        ppo_cfg(
            tmp_path,
            tiny_sft_dir,
            f"ppo.reward={tmp_path / 'rm'}",
            "ppo.normalize_reward=false",
            "ppo.iterations=1",
        )
    )
    assert result.last("ppo/reward_rm") is not None
    assert result.last("ppo/ratio_first") == pytest.approx(1.0, abs=1e-5)
