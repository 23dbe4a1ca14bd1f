"""sft.packing (data/packing.py): rows that fit, the same targets, and per-token losses equal to the
unpacked ones on GPT-2 (learned absolute positions) and Llama (rotary), with eager and sdpa attention."""

import copy
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhfkit.data import IGNORE, load_rows, tokenize_sft
from rlhfkit.data.batching import global_batch_at
from rlhfkit.data.packing import (
    best_fit_decreasing,
    best_fit_decreasing_reference,
    check_packing_is_exact,
    pack_sft,
)
from rlhfkit.data.sft import completion_tokens
from rlhfkit.errors import ConfigError
from rlhfkit.models import load_tokenizer
from rlhfkit.ops import logprobs_from_logits, masked_nll
from tests.data.tiny_models import tiny_llama, tiny_opt

MAX_LENGTH = 96


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return load_tokenizer(str(tiny_dir))


@pytest.fixture(scope="module")
def examples(tokenizer):
    """24 built-in rows (lengths ~15-60 tokens), tokenized as the sft stage does."""
    rows = load_rows("builtin:default", "train", 24, 0.0)
    return tokenize_sft(rows, tokenizer, "builtin:default", "human_assistant", MAX_LENGTH, "drop")


@pytest.mark.parametrize("seed", range(6))
def test_best_fit_decreasing_fills_rows_and_matches_the_naive_version(seed):
    rng = random.Random(seed)
    capacity = rng.choice([8, 50, 256])
    lengths = [min(capacity, max(1, int(rng.lognormvariate(2.5, 0.9)))) for _ in range(rng.randint(1, 300))]
    bins = best_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    assert bins == best_fit_decreasing_reference(lengths, capacity)
    # No two bins could be merged: BFD leaves at most one bin at most half full.
    assert sum(sum(lengths[i] for i in b) <= capacity / 2 for b in bins) <= 1


def test_packed_rows_hold_exactly_the_unpacked_targets(examples):
    packed = pack_sft(examples, MAX_LENGTH)
    assert len(packed) < len(examples) / 2
    assert sorted(i for row in packed.examples for i in row) == list(range(len(examples)))
    for r, row in enumerate(packed.examples):
        assert len(packed.input_ids[r]) == len(packed.labels[r]) == len(packed.position_ids[r]) <= MAX_LENGTH
        assert packed.input_ids[r] == [t for i in row for t in examples.input_ids[i]]
        assert packed.position_ids[r] == [p for i in row for p in range(len(examples.input_ids[i]))]
    # The loss's normaliser (a step's completion tokens) is the same packed or not.
    assert sum(completion_tokens(labels) for labels in packed.labels) == sum(
        completion_tokens(labels) for labels in examples.labels
    )
    # A completion that starts at an example's first token: unpacked it is never a target, packed it
    # must not become one (predicted from the previous example's last token).
    first, second = packed.examples[0][:2]
    bare = copy.deepcopy(examples)
    bare.labels[second][0] = bare.input_ids[second][0]
    assert pack_sft(bare, MAX_LENGTH).labels[0][len(examples.input_ids[first])] == IGNORE


def test_packed_batches_are_a_pure_function_of_data_and_seed(examples):
    # What exact resume and DDP rely on: a resumed run (or another process) packs the same rows and
    # draws the same rows for every step after the checkpoint as the uninterrupted run.
    a, b = pack_sft(examples, MAX_LENGTH), pack_sft(examples, MAX_LENGTH)
    assert (a.examples, a.input_ids, a.labels, a.position_ids) == (
        b.examples,
        b.input_ids,
        b.labels,
        b.position_ids,
    )
    lengths = tuple(len(ids) for ids in a.input_ids)
    straight = [global_batch_at(s, lengths, 2, 0, True) for s in range(12)]
    resumed = [global_batch_at(s, tuple(len(ids) for ids in b.input_ids), 2, 0, True) for s in range(6, 12)]
    assert resumed == straight[6:]
    assert straight != [global_batch_at(s, lengths, 2, 1, True) for s in range(12)]


@pytest.fixture(scope="module", params=["gpt2-sdpa", "gpt2-eager", "llama-sdpa", "llama-eager"])
def model(request, tiny_dir, tokenizer):
    arch, attn = request.param.split("-")
    if arch == "gpt2":
        built = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation=attn)
    else:
        built = tiny_llama(len(tokenizer), attn, MAX_LENGTH)
    return built.eval()


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(-log p of each next token (B, T-1), whether it is a target)."""
    targets = labels[:, 1:]
    return -logprobs_from_logits(logits[:, :-1], targets.clamp(min=0)), targets != IGNORE


def per_example(nll, valid, rows) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each example's (token losses, target mask); rows: per batch row, its examples' (index, length)."""
    out = {}
    for r, members in enumerate(rows):
        start = 0
        for i, n in members:
            out[i] = (nll[r, start : start + n - 1], valid[r, start : start + n - 1])
            start += n
    return [out[i] for i in sorted(out)]


@torch.no_grad()
def test_packed_loss_equals_unpacked_per_token(model, examples, tokenizer):
    pad = tokenizer.pad_token_id
    everything = list(range(len(examples)))
    unpacked = examples.collate(everything, pad)
    logits_u = model(input_ids=unpacked["input_ids"], attention_mask=unpacked["attention_mask"]).logits
    nll_u, valid_u = token_nll(logits_u, unpacked["labels"])
    packed = pack_sft(examples, MAX_LENGTH)
    batch = packed.collate(range(len(packed)), pad)
    assert "attention_mask" not in batch and batch["input_ids"].shape[1] <= MAX_LENGTH
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    nll_p, valid_p = token_nll(logits, batch["labels"])

    lengths = [len(ids) for ids in examples.input_ids]
    members = [[(i, lengths[i]) for i in row] for row in packed.examples]
    u = per_example(nll_u, valid_u, [[(i, n)] for i, n in enumerate(lengths)])
    p = per_example(nll_p, valid_p, members)
    for (loss_u, mask_u), (loss_p, mask_p) in zip(u, p):
        assert torch.equal(mask_u, mask_p)
        assert torch.allclose(loss_p[mask_p], loss_u[mask_u], atol=1e-5, rtol=0)
    # The step's loss is the mean over tokens, not rows: packing changes the layout, not the objective.
    loss_u, stats_u = masked_nll(logits_u, unpacked["labels"])
    loss_p, stats_p = masked_nll(logits, batch["labels"])
    assert stats_p["tokens"] == stats_u["tokens"]
    assert loss_p.item() == pytest.approx(loss_u.item(), abs=1e-5)

    # Without the block-diagonal mask, the same rows give other losses: examples see each other.
    # (a) an explicit all-ones mask: plain causal attention over the whole row (positions restarted);
    # (b) a KV cache (the config's use_cache=True): transformers then does not look for packing;
    # (c) no restarted positions: transformers sees one sequence per row.
    ids, positions = batch["input_ids"], batch["position_ids"]
    crossed = model(
        input_ids=ids, position_ids=positions, attention_mask=torch.ones_like(ids), use_cache=False
    )
    cached = model(input_ids=ids, position_ids=positions)
    one_sequence = model(input_ids=ids, use_cache=False)
    for wrong in (crossed.logits, cached.logits, one_sequence.logits):
        nll_w = per_example(*token_nll(wrong, batch["labels"]), members)
        worst = max((w[m] - ref[m]).abs().max().item() for (w, m), (ref, _) in zip(nll_w, u) if m.any())
        assert worst > 1e-2


def test_models_whose_mask_ignores_position_ids_are_refused(tiny_dir, tokenizer):
    check_packing_is_exact(AutoModelForCausalLM.from_pretrained(tiny_dir), "tiny")  # passes
    check_packing_is_exact(tiny_llama(len(tokenizer), "sdpa", MAX_LENGTH).to(torch.bfloat16), "llama-bf16")
    opt = tiny_opt(64, 64)
    with pytest.raises(
        ConfigError,
        match=r"^model.name=opt: sft.packing=true cannot keep packed examples apart: a 'opt' model "
        r"with attention '\w+' does not build its mask from restarted position ids \(logits moved by "
        r"[0-9.e-]+\); set sft.packing=false$",
    ):
        check_packing_is_exact(opt, "opt")
    assert opt.training  # the check leaves the training mode as it found it
