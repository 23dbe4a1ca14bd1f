import torch

from rlhfkit.trainers.common import build_optimizer, warmup_cosine


def test_optimizer_groups_decay_and_head_lr():
    model = torch.nn.ModuleDict({"trunk": torch.nn.Linear(4, 4), "score": torch.nn.Linear(4, 1, bias=False)})
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.1, head="score", head_lr=1e-2)
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert by_param[id(model["trunk"].weight)]["lr"] == 1e-4 and by_param[id(model["trunk"].weight)]["weight_decay"] == 0.1
    assert by_param[id(model["trunk"].bias)]["weight_decay"] == 0.0
    assert by_param[id(model["score"].weight)]["lr"] == 1e-2
    plain = build_optimizer(model, lr=1e-4, weight_decay=0.1)
    assert {g["lr"] for g in plain.param_groups} == {1e-4}


def test_warmup_then_cosine_to_the_floor():
    multiplier = warmup_cosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert multiplier(0) == 0.1 and multiplier(9) == 1.0
    assert multiplier(10) == 1.0 and abs(multiplier(110) - 0.1) < 1e-12
    assert all(multiplier(s) >= multiplier(s + 1) for s in range(10, 110))
