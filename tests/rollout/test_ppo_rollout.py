"""Rollout sampling and scoring obey design §6: scores are independent of padding, responses stop
at the first EOS, and a warped sampler shows up as the seed's negative KL, caught by the health check."""

from types import SimpleNamespace

import pytest
import torch

from rlhfkit.config import ModelConfig
from rlhfkit.data.collate import left_pad
from rlhfkit.evaluate.health import health_warnings
from rlhfkit.models import load_causal_lm
from rlhfkit.ops import entropy_from_logits, kl_exact, kl_k1, masked_sum
from rlhfkit.rollout.ppo import Rollout, sample, score
from rlhfkit.run import metrics as M

PROMPTS = [
    "Human: Repeat the word cat 3 times.\n\nAssistant:",
    "Human: What is 2 plus 3?\n\nAssistant:",
    "Human: Say something nice about the ocean, please, in one short sentence.\n\nAssistant:",
    "Human: Name 2 colors.\n\nAssistant:",
]


@pytest.mark.parametrize("lora", [False, True])
def test_scores_do_not_depend_on_padding_and_responses_stop_at_eos(tiny_sft_dir, lora):
    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(ModelConfig(name=str(tiny_sft_dir), lora=lora, lora_r=4))
    if lora:  # a non-zero adapter, so the LoRA path really changes the logits
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.05)
    model.eval()
    query_ids, query_mask = left_pad([tokenizer(p)["input_ids"] for p in PROMPTS], tokenizer.pad_token_id)
    assert (query_mask == 0).any(), "prompts of different lengths must be left-padded"
    rollout = sample(model, query_ids, query_mask, 24, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id)
    lengths = rollout.response_lengths
    assert rollout.finished.any() and (lengths < rollout.response_ids.shape[1]).any(), (
        "need an early EOS in the batch"
    )
    for b in range(len(PROMPTS)):
        if rollout.finished[b]:
            assert rollout.response_ids[b, lengths[b] - 1] == tokenizer.eos_token_id
            assert (rollout.response_ids[b, : lengths[b] - 1] != tokenizer.eos_token_id).all()
    with torch.no_grad():
        batched = score(model, rollout, 1.0)["logprobs"]
        for b in range(len(PROMPTS)):
            # The same row alone: no padding at all, default positions.
            n_query, n_resp = int(query_mask[b].sum()), int(lengths[b])
            alone = Rollout(
                query_ids[b : b + 1, -n_query:],
                query_mask[b : b + 1, -n_query:],
                rollout.response_ids[b : b + 1, :n_resp],
                rollout.response_mask[b : b + 1, :n_resp],
                rollout.finished[b : b + 1],
            )
            single = score(model, alone, 1.0)["logprobs"]
            assert torch.allclose(batched[b, :n_resp], single[0], atol=1e-5), f"row {b} depends on padding"


def test_score_equals_a_full_forward_sliced_to_the_response(tiny_sft_dir):
    # score() asks the model for the response positions' logits only (logits_to_keep).
    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(ModelConfig(name=str(tiny_sft_dir), lora=False))
    model.eval()
    query_ids, query_mask = left_pad([tokenizer(p)["input_ids"] for p in PROMPTS], tokenizer.pad_token_id)
    rollout = sample(model, query_ids, query_mask, 12, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id)
    head = torch.nn.Linear(model.config.n_embd, 1)
    with torch.no_grad():
        got = score(model, rollout, 0.7, with_values=True, value_head=head, entropy=True, logit_rows=2)
        plain = score(model, rollout, 0.7)
        mask = rollout.attention_mask
        full = model(
            input_ids=rollout.input_ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            output_hidden_states=True,
        )
        start = query_ids.shape[1] - 1
        logits = full.logits[:, start:-1]  # (B, R, V)
        want = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, rollout.response_ids[..., None]).squeeze(-1)
    # The full logits of only the rows asked for (the exact KL's), the entropy of every row, and by
    # default neither: a rollout does not keep B x R x V floats per pass (design §6.9).
    assert got["logits"].shape == logits[:2].shape
    assert torch.allclose(got["logits"], logits[:2], atol=1e-5)
    assert torch.allclose(got["entropy"], entropy_from_logits(logits, 0.7), atol=1e-5)
    assert set(plain) == {"logprobs"} and torch.equal(plain["logprobs"], got["logprobs"])
    assert torch.allclose(got["logprobs"], want, atol=1e-5)
    assert torch.allclose(got["values"], head(full.hidden_states[-1][:, start:-1]).squeeze(-1), atol=1e-6)


class Unigram(torch.nn.Module):
    """A context-free toy LM with the interface `sample`/`score` use: fixed next-token logits."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.table = logits

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        use_cache=False,
        output_hidden_states=False,
        **cache,
    ):
        logits = self.table.expand(*input_ids.shape, -1)
        return SimpleNamespace(logits=logits, cache=None, past_key_values=None, hidden_states=None)


def test_top_k_sampling_scored_without_it_gives_negative_kl_and_the_health_warning():
    # The seed's failure (design §6.7): a policy flatter than its reference, sampled with top-k
    # but scored without it. The estimator's samples are not from the policy, so mean k1 < 0 even
    # though the exact KL is positive; the health check names the cause.
    torch.manual_seed(0)
    ref_logits = torch.linspace(4.0, -4.0, 20)
    policy, reference = Unigram(ref_logits / 2), Unigram(ref_logits)
    query_ids, query_mask = torch.ones(256, 2, dtype=torch.long), torch.ones(256, 2, dtype=torch.long)
    history = []
    for top_k in (0, 3):
        rollout = sample(policy, query_ids, query_mask, 8, 1.0, eos_token_id=-1, pad_token_id=0, top_k=top_k)
        new, ref = (score(m, rollout, 1.0, logit_rows=256) for m in (policy, reference))
        k1 = masked_sum(kl_k1(new["logprobs"], ref["logprobs"]), rollout.response_mask, dim=-1).mean().item()
        exact = (
            masked_sum(kl_exact(new["logits"], ref["logits"]), rollout.response_mask, dim=-1).mean().item()
        )
        assert exact > 0.5
        if top_k == 0:
            assert k1 == pytest.approx(exact, rel=0.15)  # honest sampling: k1 estimates the exact KL
        else:
            assert k1 < 0  # warped sampling: the logged KL goes negative
            history = [{M.PPO_KL_K1: k1, M.PPO_KL_EXACT: exact}] * 5
    warnings = health_warnings(history, window=5)
    assert any(w.startswith("negative-kl") and "rollout.top_k" in w for w in warnings)
    assert health_warnings([{M.PPO_KL_K1: exact}] * 5) == []
