"""Reward-model stage on the tiny model: rm-static fixture end to end, saved RM reloads, scoring."""

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from rlhfkit.cli import main
from rlhfkit.config import RMConfig, load_config
from rlhfkit.data.preferences import collate_pairs
from rlhfkit.models.load import BASE_RECORD
from rlhfkit.models.reward import RM_ADAPTER, rewards_at_last_token
from rlhfkit.rewards import REWARD_STATS
from rlhfkit.trainers.rm import train_rm
from tests.trainers.runs import kill_after_checkpoint_then_resume, two_processes_equal_one

REPO = Path(__file__).parents[2]
FIXTURES = REPO / "tests" / "fixtures"
QUICK = [
    "model.name=tiny",
    "train.max_steps=3",
    "train.batch_size=2",
    "train.eval_every=100",
    "train.save_every=100",
    "train.log_every=1",
    "rm.norm_samples=4",
    "rm.max_new_tokens=4",
    "run.report_to=[]",
    "run.progress=false",
]


def test_rm_static_fixture_end_to_end_prints_single_turn_counts(tmp_path, capsys, tiny_dir):
    # The seed's recipe (Dahoas/rm-static, single-turn filter) on a fixture in that dataset's exact schema.
    code = main(
        [
            "rm",
            "--config",
            str(REPO / "configs" / "gpt2-alpaca" / "rm.yaml"),
            f"run.dir={tmp_path}",
            f"data.source={FIXTURES / 'rm_static.jsonl'}",
            "data.eval_source=null",
            "data.eval_fraction=0.4",
            "data.max_length=128",
            *QUICK,
            "train.batch_size=1",
            "train.grad_accum=2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "single-turn filter kept 6 of 10" in out and "1 with chosen == rejected dropped" in out
    final = tmp_path / "gpt2-alpaca" / "rm" / "final"
    stats = __import__("json").loads((final / REWARD_STATS).read_text())
    assert 1 <= stats["n"] <= 4 and stats["std"] >= 0  # one SFT sample per distinct train prompt


def test_saved_rm_loads_as_sequence_classifier_with_the_same_scores(tmp_path, tiny_dir):
    from transformers import AutoModelForSequenceClassification

    cfg = load_config(
        RMConfig,
        None,
        [
            f"run.dir={tmp_path}",
            f"data.source={FIXTURES / 'prefs.jsonl'}",
            "data.eval_fraction=0.25",
            "model.lora=true",
            "model.lora_r=4",
            "train.lr=1e-2",
            *QUICK,
        ],
    )
    result = train_rm(cfg)
    assert {"rm/accuracy", "rm/margin", "rm/loss"} <= set(result.metrics[0])
    assert "rm/gold_agreement" in result.metrics[0]  # prefs.jsonl carries gold scores ...
    families = {k for k in result.metrics[0] if k.startswith("rm/accuracy/")}  # ... and families
    assert families and families <= {
        f"rm/accuracy/{f}" for f in ("sentiment", "count", "repeat", "list", "arithmetic")
    }
    reloaded = AutoModelForSequenceClassification.from_pretrained(result.final).eval()
    assert reloaded.score.weight.abs().sum() > 0, "the trained head must be saved (LoRA modules_to_save)"
    batch = collate_pairs([[5, 6, 7, 8]], [[5, 9, 10]], pad_token_id=0)
    with torch.no_grad():
        scores = reloaded(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits.squeeze(-1)
        # No row ends with the pad id here, so HF's pooling and our mask-end read agree.
        at_last = rewards_at_last_token(reloaded, batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(scores, at_last, atol=1e-5)
    # final/adapter/: the LoRA adapter and head on the base it names, for a policy on the same base
    # (design §6.9): base + adapter scores as the merged RM does; without the adapter it would not.
    adapter_dir = result.final / RM_ADAPTER
    assert json.loads((adapter_dir / BASE_RECORD).read_text()) == {"base": "tiny", "tiny_seed": 0}
    base = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1, pad_token_id=0)
    on_base = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        shared = rewards_at_last_token(on_base, batch["input_ids"], batch["attention_mask"])
        with on_base.disable_adapter():
            trunk_only = rewards_at_last_token(on_base, batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(shared, at_last, atol=1e-5)
    assert not torch.allclose(trunk_only, at_last, atol=1e-3)


def test_rm_requires_a_data_source(tmp_path, capsys, tiny_dir):
    assert main(["rm", f"run.dir={tmp_path}", *QUICK]) == 2
    assert "data.source is required" in capsys.readouterr().err


@pytest.mark.slow
def test_builtin_prefs_are_labelled_by_the_noisy_judge(tmp_path, tiny_dir):
    import json

    from rlhfkit.config import PrefsConfig
    from rlhfkit.data.labelling import make_preferences

    out = tmp_path / "prefs.jsonl"
    # The random tiny model writes word salad; on sentiment, 16 tokens of it often differ in VADER
    # valence (most pairs of 8 tokens tie at the judge's floor and are dropped).
    config = PrefsConfig(model="tiny", task="sentiment", n_prompts=24, max_new_tokens=16, out=str(out))
    summary = make_preferences(config)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == summary["pairs"] and rows
    assert all(
        {"prompt", "chosen", "rejected", "chosen_score", "rejected_score", "noise_temperature"} <= set(r)
        for r in rows
    )
    assert all(r["chosen"] != r["rejected"] and r["chosen_score"] != r["rejected_score"] for r in rows)


RM_ARGS = [
    "model.name=tiny",
    f"data.source={FIXTURES / 'prefs.jsonl'}",
    "data.eval_fraction=0.25",
    "train.lr=1e-2",
    "train.log_every=1",
    "train.eval_every=100",
    "rm.norm_samples=2",
    "rm.max_new_tokens=4",
    "run.report_to=[]",
    "run.progress=false",
]


# The run both SIGKILL tests (this file's and test_kill_resume.py's) compare against, straight once.
KILL_ARGS = [*RM_ARGS, "train.batch_size=2", "train.max_steps=12", "train.save_every=4", "model.lora=false"]


@pytest.mark.slow
def test_rm_sigkill_after_checkpoint_then_resume_equals_uninterrupted(tmp_path, tiny_dir, straight_runs):
    kill_after_checkpoint_then_resume(
        tmp_path,
        "rm",
        "",
        KILL_ARGS,
        checkpoint_step=8,
        weights="model.safetensors",
        straight_runs=straight_runs,
    )


# The DDP test's run; its 2-process half runs in conftest's shared torchrun (`two_process_runs`).
DDP = dict(
    stage="rm", config="", args=[*RM_ARGS, "train.max_steps=3", "model.lora=true", "model.lora_r=4"], batch=4
)


@pytest.mark.slow
def test_rm_two_process_ddp_equals_one_process_with_double_batch(tmp_path, tiny_dir, two_process_runs):
    two_processes_equal_one(tmp_path, **DDP, weights="model.safetensors", two_process_dir=two_process_runs)
