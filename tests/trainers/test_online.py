"""The critic-free methods as choices of the one online loop (trainers/ppo.py, design §10): each
advantage estimator trains the tiny model end to end, builds no critic when it needs none, keeps the
first minibatch's ratio exactly 1 and logs PPO's diagnostics under its own prefix; groups keep a
prompt's rows together; the loss weighting of processes holds for every aggregation; bad
combinations fail with one line."""

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.cli import main
from rlhfkit.config import METHOD_PRESETS, PPOConfig, load_config
from rlhfkit.errors import ConfigError
from rlhfkit.rollout.ppo import Rollout
from rlhfkit.run import metrics as M
from rlhfkit.run.logger import read_metrics
from rlhfkit.trainers import ppo
from rlhfkit.trainers.collectives import Shard
from rlhfkit.trainers.ppo import MinibatchShare, check_ppo_config, minibatch_loss, rollout_prompts, train_ppo
from tests.trainers.runs import (
    assert_same_weights,
    kill_after_checkpoint_then_resume,
    losses,
    run_ok,
    two_processes_equal_one,
)
from tests.trainers.test_ppo import QUICK, REPO, TINY

GRPO = str(REPO / "configs" / "tiny" / "grpo.yaml")
RLOO = str(REPO / "configs" / "tiny" / "rloo.yaml")
REINFORCE_PP = str(REPO / "configs" / "tiny" / "reinforce_pp.yaml")
RECIPES = {"grpo": GRPO, "rloo": RLOO, "reinforce_pp": REINFORCE_PP}
# 4 prompts x G = 2 rows per iteration: small enough for CPU, and every group estimator has a group.
GROUPS = ["rollout.batch_size=4", "rollout.group_size=2"]


def online_cfg(tmp_path, sft_dir, *overrides, config=TINY):
    return load_config(
        PPOConfig, config, [f"run.dir={tmp_path}", f"model.name={sft_dir}", *QUICK, *GROUPS, *overrides]
    )


@pytest.mark.parametrize(
    "advantage, method",
    [
        ("gae", "ppo"),
        ("grpo", "grpo"),
        ("dr_grpo", "grpo"),
        ("rloo", "rloo"),
        ("reinforce_pp", "reinforce_pp"),
    ],
)
def test_each_estimator_trains_end_to_end_with_a_critic_only_when_it_needs_one(
    tmp_path, tiny_sft_dir, advantage, method, capsys
):
    result = train_ppo(online_cfg(tmp_path, tiny_sft_dir, f"ppo.advantage={advantage}"))
    assert f"rlhfkit: {method} prompts:" in capsys.readouterr().out  # the method's own name, not "ppo"
    names = M.online(method)
    assert result.dir.name == method  # runs/<name>/<method>/
    records = [r for r in result.metrics if names[M.PPO_RATIO_FIRST] in r]
    assert len(records) == 2
    for record in records:
        assert record[names[M.PPO_RATIO_FIRST]] == pytest.approx(1.0, abs=1e-5)
        assert record[names[M.PPO_LOGRATIO_FIRST]] < 1e-5  # the update's forward is the rollout's
        for suffix in (M.PPO_KL_K1, M.PPO_KL_K3, M.PPO_KL_EXACT, M.PPO_KL_K1_Z, M.PPO_REWARD_RM):
            assert names[suffix] in record
        if method != "ppo":
            assert not any(key.startswith("ppo/") for key in record)
    has_critic = advantage == "gae"
    assert (names[M.PPO_VF_LOSS] in records[0]) == has_critic
    assert (names[M.PPO_VALUE_EXPLAINED_VAR] in records[0]) == has_critic
    assert (result.final / "value_head.safetensors").is_file() == has_critic


def test_grpo_recipe_with_the_kl_in_the_loss(tmp_path, tiny_sft_dir):
    # The shipped GRPO recipe (KL in the loss, corrected k3, per-sequence means) plus clip-higher.
    result = train_ppo(online_cfg(tmp_path, tiny_sft_dir, "ppo.clip_high=0.28", config=GRPO))
    names = M.online("grpo")
    records = [r for r in result.metrics if names[M.PPO_KL_LOSS] in r]
    assert len(records) == 2
    assert records[0][names[M.PPO_KL_K1]] == pytest.approx(0.0, abs=1e-5)  # policy == reference at the start
    assert all(r[names[M.PPO_KL_LOSS]] >= 0 for r in records)  # k3 >= 0 (its mean over the updates)
    assert all(r[names[M.PPO_LOGRATIO_FIRST]] < 1e-5 and names[M.PPO_CLIPFRAC_HIGH] in r for r in records)
    # The KL is not in the reward: the total reward is the score alone.
    assert records[0][names[M.PPO_REWARD_TOTAL]] == pytest.approx(records[0][names[M.PPO_REWARD_RM]], abs=0.2)


def fake_shard(rank: int, world: int, rows: int) -> Shard:
    return Shard(SimpleNamespace(process_index=rank, num_processes=world), rows)


def test_a_prompts_rows_stay_together_on_one_process_with_their_own_noise():
    cfg = load_config(PPOConfig, None, ["rollout.group_size=3", "rollout.max_new_tokens=5"])
    prompts = [f"prompt {i}" for i in range(50)]
    whole, whole_noise = rollout_prompts(prompts, cfg, 7, fake_shard(0, 1, 12))
    assert len(whole) == 12 and len(set(whole)) == 4
    assert all(whole[i] == whole[i - i % 3] for i in range(12))  # row i answers prompt i // G
    assert len({tuple(row.tolist()) for row in whole_noise}) == 12  # each row its own sampling noise
    parts = [rollout_prompts(prompts, cfg, 7, fake_shard(rank, 2, 6)) for rank in range(2)]
    assert parts[0][0] + parts[1][0] == whole  # 2 processes x 2 prompts hold what 1 x 4 does
    assert torch.equal(torch.cat([parts[0][1], parts[1][1]]), whole_noise)


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
@pytest.mark.parametrize("kl_in", ["reward", "loss"])
def test_processes_losses_average_to_the_whole_minibatchs_loss(aggregation, kl_in):
    # What ppo_update hands each process: DDP averages the processes' gradients, so the mean of the
    # processes' losses must be the loss of the whole minibatch on one process, for every aggregation.
    cfg = load_config(
        PPOConfig,
        None,
        [
            f"ppo.loss_aggregation={aggregation}",
            f"ppo.kl_in={kl_in}",
            "ppo.clip_low=0.1",
            "ppo.clip_high=0.3",
        ],
    )
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    keys = ("logprobs", "ref_logprobs", "advantages", "returns", "values")
    rows = {key: torch.randn(4, 5) * 0.3 for key in keys}
    new = {"logprobs": rows["logprobs"] + torch.randn(4, 5) * 0.1, "values": torch.randn(4, 5)}
    from rlhfkit.ops import aggregation_count

    total = aggregation_count(mask, aggregation).item()

    def loss(index, world):
        part = Rollout(
            torch.zeros(len(index), 1),
            torch.ones(len(index), 1),
            torch.zeros(len(index), 5),
            mask[index],
            torch.ones(len(index), dtype=torch.bool),
        )
        share = MinibatchShare(mask[index].sum().item() / mask.sum().item(), total, 0.0, world, True)
        mine = {k: v[index] for k, v in rows.items()}
        return minibatch_loss({k: v[index] for k, v in new.items()}, mine, part, cfg, share, kl_coef=0.3)

    whole, whole_stats, _ = loss(torch.arange(4), 1)
    halves = [loss(torch.tensor(index), 2) for index in ([0, 1], [2, 3])]
    assert (halves[0][0] + halves[1][0]) / 2 == pytest.approx(whole.item(), rel=1e-5)
    for key in whole_stats:
        summed = halves[0][1][key] + halves[1][1][key]
        assert summed == pytest.approx(whole_stats[key].item(), rel=1e-5, abs=1e-7)
    assert ("kl_loss" in whole_stats) == (kl_in == "loss")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["ppo.advantage=rloo"], "set rollout.group_size >= 2"),
        (["ppo.advantage=grpo", "rollout.group_size=1"], "set rollout.group_size >= 2"),
        (["ppo.advantage=grpo", "rollout.group_size=4", "ppo.critic=reward_model"], "uses no critic"),
        (["ppo.advantage=reinforce_pp", "ppo.critic_lr=1e-3"], "uses no critic"),
        (["ppo.kl_loss_estimator=k1"], "has no effect with ppo.kl_in=reward"),
    ],
)
def test_combinations_that_mean_nothing_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_ppo_config(load_config(PPOConfig, None, overrides))


def test_minibatches_must_divide_the_rows_of_all_groups(tmp_path, tiny_sft_dir):
    with pytest.raises(
        ConfigError,
        match=r"x rollout.group_size=2 = 6 rows must be divisible by "
        r"ppo.minibatches=4",
    ):
        train_ppo(online_cfg(tmp_path, tiny_sft_dir, "rollout.batch_size=3", "ppo.minibatches=4"))


def test_a_methods_presets_sit_under_the_yaml_and_the_overrides():
    grpo = METHOD_PRESETS["grpo"]
    cfg = load_config(PPOConfig, TINY, presets=grpo)  # ppo.yaml sets none of them
    assert (cfg.ppo.advantage, cfg.rollout.group_size, cfg.ppo.kl_in) == ("grpo", 4, "loss")
    assert cfg.rollout.batch_size == 64  # the YAML's own keys stay
    cfg = load_config(PPOConfig, RLOO, ["rollout.group_size=8"], presets=METHOD_PRESETS["rloo"])
    assert (cfg.ppo.advantage, cfg.rollout.group_size, cfg.ppo.kl_in) == ("rloo", 8, "reward")
    cfg = load_config(PPOConfig, None, presets=METHOD_PRESETS["reinforce_pp"])
    assert (cfg.ppo.advantage, cfg.rollout.group_size, cfg.ppo.whiten_advantages) == ("reinforce_pp", 1, None)


def test_a_command_refuses_another_methods_estimator(capsys, tmp_path):
    assert main(["rloo", "--config", GRPO, f"run.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run `rlhfkit grpo`" in err
    assert not any(tmp_path.iterdir())


def test_ppo_metric_names_are_unchanged_and_other_methods_share_their_suffixes():
    assert M.online("ppo") == {name: name for name in M.ONLINE_METRICS}
    names = M.online("grpo")
    assert names[M.PPO_KL_K1] == "grpo/kl_k1" and names[M.PPO_KL_K1_Z] == "grpo/kl_k1_z"
    assert M.online("reinforce_pp")[M.PPO_REWARD_RM] == "reinforce_pp/reward_rm"


@pytest.mark.slow
def test_grpo_sigkill_after_checkpoint_then_resume_equals_uninterrupted(tmp_path, tiny_sft_dir):
    # No value head in the checkpoint, the KL in the loss: resume must still equal no interruption.
    kill_after_checkpoint_then_resume(
        tmp_path,
        "grpo",
        GRPO,
        [
            f"model.name={tiny_sft_dir}",
            *QUICK,
            *GROUPS,
            "ppo.iterations=6",
            "train.save_every=2",
            "model.lora=true",
            "model.lora_r=4",
        ],
        checkpoint_step=4,
        weights="adapter_model.safetensors",
        metric="grpo/kl_k1",
    )


class Stop(Exception):
    pass


@pytest.mark.parametrize("method, groups", [("rloo", GROUPS), ("reinforce_pp", ["rollout.batch_size=4"])])
def test_stopped_after_a_checkpoint_then_resumed_equals_uninterrupted(
    tmp_path, tiny_sft_dir, monkeypatch, method, groups
):
    # In process, the run stops right after writing checkpoints/step-2 (as a kill there would leave it)
    # and --resume finishes it: no value head in the checkpoint, RLOO's KL-shaped group baseline,
    # REINFORCE++'s global whitening (G = 1). The subprocess SIGKILL of the same checkpoints is GRPO's
    # test below (and PPO's in test_kill_resume.py); what differs between methods is in the loop.
    args = [*groups, "ppo.iterations=4", "train.save_every=2", "model.lora=true", "model.lora_r=4"]
    straight = train_ppo(
        online_cfg(tmp_path, tiny_sft_dir, "run.name=straight", *args, config=RECIPES[method])
    )
    save = ppo.save_training_state

    def save_then_stop(ctx, step, *a, **kw):
        save(ctx, step, *a, **kw)
        raise Stop

    cfg = online_cfg(tmp_path, tiny_sft_dir, "run.name=resumed", *args, config=RECIPES[method])
    monkeypatch.setattr(ppo, "save_training_state", save_then_stop)
    with pytest.raises(Stop):
        train_ppo(cfg)
    monkeypatch.setattr(ppo, "save_training_state", save)
    resumed = train_ppo(cfg, resume=True)

    assert straight.dir.name == resumed.dir.name == method
    weights = "adapter_model.safetensors"
    assert_same_weights(straight.final / weights, resumed.final / weights, atol=1e-6)
    seconds = M.online(method)[M.PPO_SECONDS]
    ours, theirs = (
        [
            {k: v for k, v in r.items() if k not in (seconds, "time")}
            for r in read_metrics(run.dir / "metrics.jsonl")
        ]
        for run in (resumed, straight)
    )
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == [0, 1, 2, 3, 4]
    for mine, expected in zip(ours, theirs):
        assert mine.keys() == expected.keys()
        assert mine == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_two_process_grpo_equals_one_process_with_double_batch(tmp_path, tiny_sft_dir):
    # Groups stay on one process and each loss divides by the whole minibatch's count: 2 processes x 2
    # prompts x G = 2 must train like 1 x 4 prompts, here with per-sequence token sums (Dr. GRPO's).
    args = [
        f"model.name={tiny_sft_dir}",
        *QUICK,
        *GROUPS,
        "ppo.iterations=3",
        "ppo.advantage=dr_grpo",
        "ppo.loss_aggregation=seq-mean-token-sum",
    ]
    stdout = two_processes_equal_one(
        tmp_path,
        "grpo",
        GRPO,
        args,
        batch=4,
        weights=None,
        batch_keys=("rollout.batch_size",),
        metric="grpo/kl_k1",
        atol=1e-3,
    )
    assert "2 processes agree on the trained weights" in stdout
    one, two = tmp_path / "one" / "grpo", tmp_path / "two" / "grpo"
    assert losses(two, "grpo/ratio_first") == pytest.approx([1.0] * 3, abs=1e-5)
    for key in ("grpo/reward_rm", "grpo/pg_loss", "grpo/kl_loss"):
        assert losses(two, key) == pytest.approx(losses(one, key), rel=1e-3, abs=1e-5)


@pytest.mark.slow
def test_two_process_rloo_and_reinforce_pp_equal_one_process_with_double_batch(tmp_path, tiny_sft_dir):
    # RLOO (groups on one process, the KL in the reward) and REINFORCE++ (G = 1, whitened over the
    # gathered global batch, a process holding no row of some minibatches): 2 processes x 2 prompts
    # must train like 1 x 4. One torchrun runs both commands (tests/trainers/run_commands.py: the
    # imports once), the 1-process runs go in process: the same CLI for a third of the time.
    small = ["ppo.iterations=2", "rollout.max_new_tokens=8", "ppo.eval_prompts=0"]
    commands = {
        "rloo": ["rloo", "--config", RLOO, "rollout.group_size=2"],
        "reinforce_pp": ["reinforce-pp", "--config", REINFORCE_PP],
    }
    for command in commands.values():
        command += [f"run.dir={tmp_path}", f"model.name={tiny_sft_dir}", *QUICK, *small]
        assert main([*command, "run.name=one", "rollout.batch_size=4"]) == 0
    two = [[*command, "run.name=two", "rollout.batch_size=2"] for command in commands.values()]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    launch = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "tests.trainers.run_commands"]
    stdout = run_ok([*launch, *two[0], "--then", *two[1]]).stdout
    assert stdout.count("2 processes agree on the trained weights") == 2
    for method in commands:
        one, two = tmp_path / "one" / method, tmp_path / "two" / method
        assert losses(two, f"{method}/ratio_first") == pytest.approx([1.0] * 2, abs=1e-5)
        for name in ("kl_k1", "reward_rm", "reward_total", "pg_loss", "approx_kl"):
            key = f"{method}/{name}"
            assert len(losses(one, key)) == 2
            assert losses(two, key) == pytest.approx(losses(one, key), rel=1e-3, abs=1e-5), key


def test_grpo_on_verifiable_rewards_sees_each_rows_dataset_row(tmp_path, tiny_sft_dir):
    # A `f(samples)` reward gets the ids, the finished flags and the prompt's row; extra rewards add up.
    from tests.rewards.test_verifiable import rows_seen

    rows_seen.calls = []
    result = train_ppo(
        online_cfg(
            tmp_path,
            tiny_sft_dir,
            "ppo.advantage=grpo",
            "ppo.iterations=1",
            "data.source=builtin:arithmetic,repeat,list",
            "ppo.reward=tests.rewards.test_verifiable:rows_seen",
            "ppo.extra_rewards=[rlhfkit.rewards.verifiable:verifiable_reward@0.5]",
        )
    )
    assert result.last(M.online("grpo")[M.PPO_REWARD_RM]) is not None
    # The held-out eval at step 0, the iteration's rollout, the held-out eval at the end: each call
    # with its prompts' dataset rows (the evals': the held-out split's).
    assert len(rows_seen.calls) == 3 and all(len(call) == 8 for call in rows_seen.calls)
    assert [s.metadata["id"] for s in rows_seen.calls[0]] == [s.metadata["id"] for s in rows_seen.calls[2]]
    train = rows_seen.calls[1:2]  # 4 prompts x G = 2
    assert not {s.metadata["id"] for s in train[0]} & {s.metadata["id"] for s in rows_seen.calls[0]}
    for i, row in enumerate(train[0]):
        assert row.metadata["family"] in ("arithmetic", "repeat", "list")
        assert row.metadata["instruction"] in row.prompt and isinstance(row.finished, bool)
        assert row.token_ids and row.prompt == train[0][i - i % 2].prompt  # a group shares its prompt
