import torch

from rlhfkit.trainers.optim import build_optimizer, warmup_cosine


def test_optimizer_groups_decay_and_head_lr():
    model = torch.nn.ModuleDict({"trunk": torch.nn.Linear(4, 4), "score": torch.nn.Linear(4, 1, bias=False)})
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.1, head="score", head_lr=1e-2)
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert (
        by_param[id(model["trunk"].weight)]["lr"] == 1e-4
        and by_param[id(model["trunk"].weight)]["weight_decay"] == 0.1
    )
    assert by_param[id(model["trunk"].bias)]["weight_decay"] == 0.0
    assert by_param[id(model["score"].weight)]["lr"] == 1e-2
    plain = build_optimizer(model, lr=1e-4, weight_decay=0.1)
    assert {g["lr"] for g in plain.param_groups} == {1e-4}


def test_warmup_then_cosine_to_the_floor():
    multiplier = warmup_cosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert multiplier(0) == 0.1 and multiplier(9) == 1.0
    assert multiplier(10) == 1.0 and abs(multiplier(110) - 0.1) < 1e-12
    assert all(multiplier(s) >= multiplier(s + 1) for s in range(10, 110))


def test_resume_truncates_every_step_log_and_drops_a_line_cut_by_a_kill(tmp_path):
    import json

    from rlhfkit.trainers.checkpoints import truncate_logs

    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (0, 4, 8, 12)) + '{"step": 16, "lo'
    )
    (tmp_path / "samples.jsonl").write_text(
        "".join(json.dumps({"step": s, "response": "x"}) + "\n" for s in (0, 8, 16))
    )
    truncate_logs(tmp_path, 8)
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 4, 8]
    assert [json.loads(x)["step"] for x in (tmp_path / "samples.jsonl").read_text().splitlines()] == [0, 8]
    truncate_logs(tmp_path, -1)  # no checkpoint yet: everything is logged again from step 0
    assert (tmp_path / "metrics.jsonl").read_text() == "" and (tmp_path / "samples.jsonl").read_text() == ""
