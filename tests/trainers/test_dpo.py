"""DPO stage on the tiny SFT model and the preference fixture: the first step's loss is the value at
policy = reference, the implicit reward learns the training pairs, the reference never moves, every
loss runs, a precomputed reference equals the live one, and resume equals no interruption."""

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from rlhfkit.config import DPOConfig, ModelConfig, PPOConfig, load_config
from rlhfkit.data import load_rows
from rlhfkit.data.preferences import collate_pairs, load_preference_pairs, tokenize_pairs
from rlhfkit.evaluate import compare
from rlhfkit.evaluate.compare import sample_policy
from rlhfkit.evaluate.completions import prompts_and_references
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.ops import dpo_loss, logprobs_from_logits, sequence_logps, simpo_loss
from rlhfkit.rollout.ppo import sample_prompts
from rlhfkit.run import metrics as M
from rlhfkit.trainers.dpo import REFERENCE_TABLE, pair_logps, pairs_batch, sampled_evals, train_dpo
from rlhfkit.trainers.ppo import held_out_gold
from rlhfkit.trainers.rm import load_pair_data
from tests.data.chat import tiny_chat_model, tiny_chat_tokenizer
from tests.trainers.runs import kill_after_checkpoint_then_resume, two_processes_equal_one

FIXTURES = Path(__file__).parents[1] / "fixtures"
# 8 pairs with judge scores: 6 train (one global batch of all of them, so accuracy is on every train pair),
# 2 held out.
QUICK = [
    f"data.source={FIXTURES / 'prefs.jsonl'}",
    "data.eval_fraction=0.25",
    "train.batch_size=3",
    "train.grad_accum=2",
    "train.warmup_steps=0",
    "train.log_every=1",
    "train.eval_every=100",
    "train.save_every=100",
    "dpo.eval_source=builtin:default",
    "dpo.eval_prompts=4",
    "dpo.max_new_tokens=6",
    "dpo.kl_exact_rows=3",
    "dpo.eval_every=100",
    "run.report_to=[]",
    "run.progress=false",
]


def config(tmp_path, sft: Path, *overrides: str) -> DPOConfig:
    return load_config(DPOConfig, None, [f"run.dir={tmp_path}", f"model.name={sft}", *QUICK, *overrides])


def series(result, key: str) -> list[float]:
    return [r[key] for r in result.metrics if key in r]


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def test_dpo_learns_the_train_pairs_from_log2_and_leaves_the_reference_alone(tmp_path, tiny_sft_dir):
    from transformers import AutoModelForCausalLM

    before = folder_hash(tiny_sft_dir / "final")
    result = train_dpo(
        config(tmp_path, tiny_sft_dir, "train.max_steps=8", "train.lr=5e-3", "model.lora_r=8", "dpo.beta=0.5")
    )
    loss, accuracy = series(result, M.DPO_LOSS), series(result, M.DPO_ACCURACY)
    # Step 1 runs the policy before any update: with a zero-initialised LoRA B it is the reference.
    assert loss[0] == pytest.approx(math.log(2), abs=1e-5)
    assert accuracy[0] == 0.5 and series(result, M.DPO_MARGIN)[0] == pytest.approx(0.0, abs=1e-5)
    assert accuracy[-1] == 1.0 and loss[-1] < loss[0]
    assert series(result, M.DPO_CHOSEN_REWARD)[-1] > series(result, M.DPO_REJECTED_REWARD)[-1]
    # Sampled evals at step 0 and the end: gold/score and the KL on the policy's own samples.
    kl = series(result, M.DPO_KL_K1)
    assert len(kl) == 2 and len(series(result, M.GOLD_SCORE)) == 2
    assert kl[0] == pytest.approx(0.0, abs=1e-5) and series(result, M.DPO_KL_EXACT)[0] == pytest.approx(
        0.0, abs=1e-5
    )
    assert series(result, M.DPO_KL_EXACT)[-1] > 0 and M.GOLD_GAIN_STDERR in result.metrics[-1]
    assert {M.DPO_EVAL_ACCURACY, M.DPO_EVAL_MARGIN, M.DPO_GOLD_AGREEMENT} <= set(result.metrics[0])
    assert folder_hash(tiny_sft_dir / "final") == before
    AutoModelForCausalLM.from_pretrained(result.final)  # transformers + peft load the adapter folder


@pytest.mark.parametrize(
    "overrides, first_loss",
    [
        (
            ["dpo.loss=sigmoid", "dpo.label_smoothing=0.2"],
            math.log(2),
        ),  # cDPO: both labels give log 2 at h = 0
        (
            ["dpo.loss=ipo", "model.lora=false", "dpo.reference=frozen_copy"],
            (1 / (2 * 0.1)) ** 2,
        ),  # (0 - 1/2beta)^2
        (["dpo.loss=simpo", "dpo.beta=2.0", "dpo.simpo_gamma=0.5"], None),
    ],
    ids=["cdpo", "ipo-frozen-copy", "simpo"],
)
def test_each_loss_runs(tmp_path, tiny_sft_dir, overrides, first_loss):
    result = train_dpo(
        config(tmp_path, tiny_sft_dir, "train.max_steps=2", "train.lr=1e-3", "dpo.eval_prompts=0", *overrides)
    )
    loss = series(result, M.DPO_LOSS)
    assert len(loss) == 2 and all(math.isfinite(x) for x in loss)
    if first_loss is not None:
        assert loss[0] == pytest.approx(first_loss, rel=1e-5)


def test_precomputed_reference_gives_the_adapter_off_losses(tmp_path, tiny_sft_dir):
    common = ["train.max_steps=3", "train.lr=5e-3", "dpo.eval_prompts=0"]
    live = train_dpo(config(tmp_path, tiny_sft_dir, "run.name=live", *common))
    stored = train_dpo(
        config(tmp_path, tiny_sft_dir, "run.name=stored", "dpo.reference=precomputed", *common)
    )
    assert (stored.dir / REFERENCE_TABLE).is_file()
    assert series(stored, M.DPO_LOSS) == pytest.approx(series(live, M.DPO_LOSS), abs=1e-5)
    assert series(stored, M.DPO_EVAL_MARGIN) == pytest.approx(series(live, M.DPO_EVAL_MARGIN), abs=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        ["dpo.reference=frozen_copy"],
        # The table and the step in batches of the same shape: bf16 kernels round by the batch's shape.
        ["model.lora=false", "dpo.reference=precomputed", "train.batch_size=6", "train.grad_accum=1"],
    ],
    ids=["frozen-copy", "full-precomputed"],
)
def test_bf16_reference_runs_under_the_policys_autocast(tmp_path, tiny_sft_dir, overrides):
    # train.mixed_precision=bf16 (docs/scaling.md section 2.4): the frozen reference copy (live, or the
    # precomputed table) is scored under the policy's autocast, so at step 1, where policy = reference,
    # the loss is log 2 and every implicit reward and KL 0, not bf16 rounding (chosen reward 0.0015 and
    # k1 -0.0046 when the copy ran in float32).
    result = train_dpo(
        config(tmp_path, tiny_sft_dir, "train.max_steps=1", "train.mixed_precision=bf16", *overrides)
    )
    assert series(result, M.DPO_LOSS) == pytest.approx([math.log(2)], abs=1e-6)
    for name in (M.DPO_CHOSEN_REWARD, M.DPO_REJECTED_REWARD, M.DPO_EVAL_MARGIN, M.DPO_KL_K1, M.DPO_KL_EXACT):
        assert series(result, name)[0] == pytest.approx(0.0, abs=1e-6), name


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_equals_uninterrupted(tmp_path, tiny_sft_dir):
    args = [
        f"model.name={tiny_sft_dir}",
        *QUICK,
        "train.max_steps=4",
        "train.save_every=2",
        "train.lr=5e-3",
        "dpo.eval_every=2",
        "dpo.reference=precomputed",
    ]
    kill_after_checkpoint_then_resume(
        tmp_path, "dpo", "", args, checkpoint_step=2, weights="adapter_model.safetensors", metric=M.DPO_LOSS
    )


def ddp(sft: Path) -> dict:
    """The DDP test's run; its 2-process half runs in conftest's shared torchrun (`two_process_runs`)."""
    args = [
        f"model.name={sft}",
        *QUICK,
        "train.grad_accum=1",
        "train.max_steps=3",
        "train.lr=1e-4",
        "train.eval_every=2",
        "dpo.eval_prompts=0",
    ]
    return dict(stage="dpo", config="", args=args, batch=6)


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_double_batch(tmp_path, tiny_sft_dir, two_process_runs):
    # The live adapter-off reference and the held-out evals (rank 0 alone) included.
    two_processes_equal_one(
        tmp_path,
        **ddp(tiny_sft_dir),
        weights="adapter_model.safetensors",
        metric=M.DPO_LOSS,
        two_process_dir=two_process_runs,
    )


def test_a_sampled_eval_draws_once_and_measures_what_two_samplings_did(tmp_path, tiny_sft_dir, monkeypatch):
    # Gold and the KL come from the same draws (held_out_gold hands its batches to the KL): one
    # generation per batch, and the numbers of gold sampled alone and of a KL on its own samples.
    policy, tokenizer = load_causal_lm(ModelConfig(name=str(tiny_sft_dir), lora=False), trainable=False)
    frozen = load_causal_lm(ModelConfig(name=str(tiny_sft_dir), lora=False), trainable=False)[0]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a policy that has moved away from its reference
        for weight in policy.parameters():
            weight.add_(torch.randn(weight.shape, generator=generator) * 0.02)
    cfg = config(tmp_path, tiny_sft_dir, "dpo.max_new_tokens=8", "dpo.kl_exact_rows=3")
    rows = load_rows("builtin:default", "test")[:8]
    prompts = prompts_and_references(rows, "builtin:default", "human_assistant", tokenizer)[0]
    calls = []
    monkeypatch.setattr(
        compare, "sample_prompts", lambda *a, **kw: calls.append(1) or sample_prompts(*a, **kw)
    )
    gold, stats = sampled_evals(policy, frozen, tokenizer, rows, prompts, cfg, batch_size=4)
    assert len(calls) == 2  # 8 prompts in batches of 4, sampled once
    as_ppo = load_config(PPOConfig, None, ["data.source=builtin:default", "rollout.max_new_tokens=8"])
    assert gold == held_out_gold(policy, tokenizer, rows, as_ppo, None, batch_size=4).gold
    alone = sample_policy(policy, tokenizer, prompts, 8, 1.0, batch_size=4, reference=frozen, noise_seed=-1)
    assert stats[M.DPO_KL_K1] == pytest.approx(sum(alone.kl) / len(alone.kl), rel=1e-5)
    assert stats[M.DPO_KL_K1] > 0.01 and {M.DPO_KL_EXACT, M.DPO_KL_K1_Z, M.DPO_KL_K1_STDERR} <= set(stats)
    # Without built-in rows (the held-out pairs' prompts) the same draws give the KL alone.
    no_gold, kl_only = sampled_evals(policy, frozen, tokenizer, [], prompts, cfg, batch_size=4)
    assert no_gold is None and kl_only == pytest.approx(stats, rel=1e-6)


@pytest.mark.parametrize("fixture", ["prefs_ultrafeedback.jsonl", "prefs_conversational.jsonl"])
def test_dpo_trains_on_conversational_pairs_and_learns_the_final_assistant_turn(tmp_path, tiny_dir, fixture):
    # Both conversational schemas the rm stage reads (chosen/rejected as whole conversations; a prompt
    # of messages + the continuations), rendered with the chat template; DPO's log-probs cover the final
    # assistant turn and EOS, never the conversation before it.
    model = tiny_chat_model(tiny_dir, tmp_path / "chat")
    cfg = config(
        tmp_path,
        model,
        f"data.source={FIXTURES / fixture}",
        "data.template=chat",
        "data.eval_fraction=0.34",  # 2 pairs to train on, 1 held out
        "train.batch_size=2",
        "train.grad_accum=1",
        "train.max_steps=2",
        "dpo.eval_source=null",  # the sampled KL eval on the held-out pair's conversation
        "dpo.eval_prompts=1",
        "dpo.max_new_tokens=4",
    )
    train, held_out, _, _ = load_pair_data(cfg, load_tokenizer(str(model)), "dpo", eos=True)
    tokenizer = tiny_chat_tokenizer(tiny_dir)
    rows = [json.loads(line) for line in (FIXTURES / fixture).read_text().splitlines()]
    replies = {
        row["chosen"] if isinstance(row["chosen"], str) else row["chosen"][-1]["content"] for row in rows
    }
    for tokens in (train, held_out):
        for start, chosen, rejected in zip(tokens.prompt_lengths, tokens.chosen_ids, tokens.rejected_ids):
            assert chosen[:start] == rejected[:start]  # the shared conversation: scored by neither side
            assert chosen[-1] == rejected[-1] == tokenizer.eos_token_id
            assert tokenizer.decode(chosen[start:-1]) in replies  # exactly the final assistant turn
            assert tokenizer.decode(chosen[:start]).endswith("<|assistant|>\n")
    result = train_dpo(cfg)
    loss = series(result, M.DPO_LOSS)
    assert len(loss) == 2 and loss[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    assert all(math.isfinite(x) for x in loss) and series(result, M.DPO_KL_K1)


def whole_row_logps(model, pairs, ids, pad_token_id, average):
    """(chosen, rejected) log-probs as the stage computed them before shared prompts: one forward over
    the whole right-padded rows, the LM head at every position, the responses cut at the prompt length."""
    chosen, rejected = [pairs.chosen_ids[i] for i in ids], [pairs.rejected_ids[i] for i in ids]
    batch = collate_pairs(chosen, rejected, pad_token_id)
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    logprobs = logprobs_from_logits(model(**batch).logits[:, :-1].float(), input_ids[:, 1:])
    starts = torch.tensor([pairs.prompt_lengths[i] for i in ids]).repeat(2)
    response = (torch.arange(input_ids.shape[1])[None, :] >= starts[:, None]) & attention_mask.bool()
    logps = sequence_logps(logprobs, response[:, 1:], average=average)
    return logps[: len(ids)], logps[len(ids) :]


@pytest.mark.parametrize("average", [False, True], ids=["dpo", "simpo"])
def test_pair_logps_on_shared_prompts_equal_the_whole_rows(tiny_dir, average):
    # The policy's log-probs, the loss and the LoRA gradients of a step from one prompt pass per pair
    # and response-only logits are the whole-row forward's, up to float rounding.
    policy, tokenizer = load_causal_lm(ModelConfig(name="tiny", lora=True, lora_r=4))
    policy.eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a policy that has moved: LoRA B starts at zero
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    source = str(FIXTURES / "prefs.jsonl")
    pairs = tokenize_pairs(load_preference_pairs(source).pairs, tokenizer, source, 128, "drop", eos=True)
    ids, pad = list(range(len(pairs))), tokenizer.pad_token_id
    with torch.no_grad(), policy.disable_adapter():
        reference = pair_logps(policy, pairs_batch(pairs, ids, pad), False)

    def step(logps):
        policy.zero_grad()
        loss, _ = dpo_loss(*logps, *reference, 0.1) if not average else simpo_loss(*logps, 2.0, 0.5)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        return logps, loss.item(), grads

    theirs, loss, grads = step(whole_row_logps(policy, pairs, ids, pad, average))
    ours, shared_loss, shared_grads = step(pair_logps(policy, pairs_batch(pairs, ids, pad), average))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-6)  # sums of ~15 log-probs of ~-7
    assert abs(shared_loss - loss) < 1e-6 and shared_grads.keys() == grads.keys() and grads
    for name, grad in grads.items():
        assert (shared_grads[name] - grad).abs().max() <= 1e-5 * max(1.0, grad.abs().max().item()), name
