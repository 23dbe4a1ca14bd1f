import json

import pytest
import torch

from rlhfkit.config import SFTConfig, load_config
from rlhfkit.errors import RlhfkitError
from rlhfkit.run import MetricsLogger, prepare_stage_dir, read_metrics
from rlhfkit.run.checkpoint import list_checkpoints, load_checkpoint, load_latest_checkpoint, save_checkpoint


def test_stage_dir_writes_config_first_and_protects_existing_runs(tmp_path):
    cfg = load_config(SFTConfig, None, [f"run.dir={tmp_path}", "run.name=r"])
    out = prepare_stage_dir(cfg, "sft")
    assert out == tmp_path / "r" / "sft"
    assert load_config(SFTConfig, out / "config.yaml") == cfg
    (out / "keep.txt").write_text("precious")
    with pytest.raises(RlhfkitError, match=r"already exists; pass --resume .* or --overwrite"):
        prepare_stage_dir(cfg, "sft")
    assert (out / "keep.txt").read_text() == "precious"
    prepare_stage_dir(cfg, "sft", resume=True)
    assert (out / "keep.txt").exists()
    prepare_stage_dir(cfg, "sft", overwrite=True)
    assert not (out / "keep.txt").exists()
    with pytest.raises(RlhfkitError, match="nothing to resume"):
        prepare_stage_dir(
            load_config(SFTConfig, None, [f"run.dir={tmp_path}", "run.name=new"]), "sft", resume=True
        )


def test_metrics_jsonl_and_tensorboard(tmp_path):
    logger = MetricsLogger(tmp_path, ["tensorboard"])
    logger.log(1, {"loss": torch.tensor(2.5), "lr": 1e-3})
    logger.log(2, {"loss": float("nan")})
    logger.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] == 2.5 and records[1]["loss"] == "nan"
    assert any((tmp_path / "tensorboard").iterdir())
    with pytest.raises(RlhfkitError, match="unknown backend 'mlflow'"):
        MetricsLogger(tmp_path, ["mlflow"])


def test_checkpoint_round_trip_keeps_last_k_and_skips_damaged(tmp_path, capsys):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    for step in (10, 20, 30):
        save_checkpoint(
            tmp_path,
            step,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "trainer": {"step": step, "nested": [1, (2, "x")]},
            },
            keep_last=2,
        )
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-20", "step-30"]
    parts = load_checkpoint(tmp_path / "step-30")
    assert torch.equal(parts["model"]["weight"], model.weight)
    assert parts["trainer"] == {"step": 30, "nested": [1, (2, "x")]}
    restored = torch.optim.AdamW(model.parameters())
    restored.load_state_dict(parts["optimizer"])
    assert torch.equal(
        restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )
    # Damage the newest: loading falls back to the previous one with a warning.
    (tmp_path / "step-30" / "model.safetensors").write_bytes(b"garbage")
    step, _ = load_latest_checkpoint(tmp_path)
    assert step == 20
    assert "skipping damaged checkpoint step-30" in capsys.readouterr().out
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
    assert json.loads((tmp_path / "step-20" / "manifest.json").read_text())["step"] == 20
