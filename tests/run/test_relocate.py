"""A run folder moved to another place (or machine) loads every stage from there: a LoRA PPO stage
trained on a LoRA SFT stage of the same run gives the same logits after the move, through the CLI,
whatever the working directory, and even when the old place now holds another model."""

import json
import shutil
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from rlhfkit.cli import main
from rlhfkit.config import PPOConfig, SFTConfig, load_config
from rlhfkit.evaluate import policies
from rlhfkit.models import load_causal_lm
from rlhfkit.trainers.ppo import train_ppo
from rlhfkit.trainers.sft import train_sft

REPO = Path(__file__).parents[2]
QUIET = ["run.report_to=[]", "run.progress=false"]
IDS = torch.tensor([[5, 17, 99, 3, 42]])
PROMPT = "Say something nice about cats."


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def by_hand(base: Path, *adapters: Path) -> torch.Tensor:
    """Logits of base + each adapter merged in order, with peft alone: no rlhfkit path resolution."""
    model = AutoModelForCausalLM.from_pretrained(base)
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return logits(model)


def train_lora_sft_then_lora_ppo(run_dir: Path) -> Path:
    """runs/x/sft (LoRA on tiny) and runs/x/ppo (LoRA on the merged SFT model); returns runs/x."""
    sft = train_sft(
        load_config(
            SFTConfig,
            REPO / "configs" / "tiny" / "sft.yaml",
            [
                f"run.dir={run_dir}",
                "run.name=x",
                "model.lora=true",
                "model.lora_r=4",
                "train.max_steps=6",
                "train.eval_every=100",
                "sft.eval_generate=0",
                "data.builtin_size=200",
                "data.eval_size=8",
                *QUIET,
            ],
        )
    )
    train_ppo(
        load_config(
            PPOConfig,
            REPO / "configs" / "tiny" / "ppo.yaml",
            [
                f"run.dir={run_dir}",
                "run.name=x",
                f"model.name={sft.dir}",
                "model.lora=true",
                "model.lora_r=4",
                "ppo.reward=rlhfkit.tasks:gold_scores",
                "ppo.iterations=1",
                "rollout.batch_size=8",
                "rollout.max_new_tokens=8",
                "ppo.eval_prompts=0",
                "data.builtin_size=32",
                "train.lr=1e-3",
                *QUIET,
            ],
        )
    )
    return run_dir / "x"


def test_moved_run_folder_loads_base_sft_and_ppo_adapters_from_the_new_place(
    tmp_path, tiny_dir, monkeypatch, capsys
):
    run = train_lora_sft_then_lora_ppo(tmp_path / "old")
    sft_final, ppo_final = run / "sft" / "final", run / "ppo" / "final"
    original_sft, original_ppo = by_hand(tiny_dir, sft_final), by_hand(tiny_dir, sft_final, ppo_final)
    # The comparison can see a dropped SFT adapter: base + PPO adapter alone is another model.
    assert (by_hand(tiny_dir, ppo_final) - original_ppo).abs().max() > 1e-3
    generate = ["generate", "--prompt", PROMPT, "--max-new-tokens", "8"]
    capsys.readouterr()
    assert main([*generate, "--model", str(run / "ppo")]) == 0
    text_before = capsys.readouterr().out

    # Move the run folder; the old place is gone and the command runs from an unrelated directory.
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(run, moved)
    assert not run.exists()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    loaded = {}

    def spy(cfg, trainable=True):
        model, tokenizer = load_causal_lm(cfg, trainable)
        loaded[cfg.name] = model
        return model, tokenizer

    monkeypatch.setattr(policies, "load_causal_lm", spy)  # every command loads models through it
    code = main([*generate, "--model", str(moved / "ppo")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == text_before
    assert torch.allclose(logits(loaded[str(moved / "ppo")]), original_ppo, atol=1e-5)
    code = main(
        [
            "eval",
            "--model",
            str(moved / "sft"),
            "--model",
            str(moved / "ppo"),
            "--n",
            "4",
            "--max-new-tokens",
            "8",
            "--show",
            "1",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert torch.allclose(logits(loaded[str(moved / "sft")]), original_sft, atol=1e-5)
    assert torch.allclose(logits(loaded[str(moved / "ppo")]), original_ppo, atol=1e-5)

    # A copy whose original place now holds another model (here the bare base) must not load that one.
    shutil.copytree(tiny_dir, sft_final)
    assert main([*generate, "--model", str(moved / "ppo")]) == 0
    assert torch.allclose(logits(loaded[str(moved / "ppo")]), original_ppo, atol=1e-5)

    # What made it work: the PPO stage names its base relative to itself, the SFT stage by name.
    assert json.loads((moved / "ppo" / "final" / "rlhfkit_base.json").read_text()) == {
        "base": "../../sft/final"
    }
    assert json.loads((moved / "sft" / "final" / "rlhfkit_base.json").read_text()) == {
        "base": "tiny",
        "tiny_seed": 0,
    }
