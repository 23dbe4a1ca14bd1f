import re
import typing
from pathlib import Path

import pytest
import yaml

from rlhfkit.config import (
    METHOD_OF_ADVANTAGE,
    STAGE_CONFIGS,
    DPOConfig,
    PipelineConfig,
    PPOConfig,
    PrefsConfig,
    RMConfig,
    SFTConfig,
    config_to_dict,
    load_config,
    save_config,
)
from rlhfkit.errors import ConfigError

REPO = Path(__file__).parents[1]
YAML_CLASSES = {
    "sft": SFTConfig,
    "rm": RMConfig,
    "ppo": PPOConfig,
    "dpo": DPOConfig,
    "prefs": PrefsConfig,
    "pipeline": PipelineConfig,
    "overopt": PipelineConfig,
    "grpo": PPOConfig,
    "rloo": PPOConfig,
    "reinforce_pp": PPOConfig,
}
# configs/accelerate/ holds launcher configs, not stage configs (test_accelerate_configs_load).
SHIPPED = sorted(p for p in REPO.glob("configs/**/*.yaml") if p.parent.name != "accelerate")


def recipe_kind(path: Path) -> str:
    """The YAML_CLASSES key of a shipped recipe: its file name, or what comes before a variant's `_`
    (grpo_verifiable.yaml is a grpo recipe)."""
    return path.stem if path.stem in YAML_CLASSES else path.stem.split("_")[0]


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_file_and_overrides_layer(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1.0e-3\n  max_steps: 5\nmodel:\n  lora: false\n")
    cfg = load_config(
        SFTConfig,
        path,
        ["train.lr=2e-4", "run.report_to=tensorboard,wandb", "model.lora_target_modules=[c_attn]"],
    )
    assert cfg.train.lr == pytest.approx(2e-4)
    assert cfg.train.max_steps == 5
    assert cfg.model.lora is False
    assert cfg.train.batch_size == SFTConfig().train.batch_size
    assert cfg.run.report_to == ["tensorboard", "wandb"]
    assert cfg.model.lora_target_modules == ["c_attn"]


def test_int_is_accepted_for_float_but_not_the_reverse(tmp_path):
    assert load_config(SFTConfig, None, ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match=r"train.max_steps must be an integer, got 1.5"):
        load_config(SFTConfig, None, ["train.max_steps=1.5"])


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr'; did you mean 'train.lr'\?"):
        load_config(SFTConfig, write(tmp_path, "train:\n  lrr: 0.1\n"))
    with pytest.raises(ConfigError, match=r"unknown key 'model.max_steps'; did you mean 'train.max_steps'\?"):
        load_config(SFTConfig, None, ["model.max_steps=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'trian'; did you mean 'train'\?"):
        load_config(SFTConfig, None, ["trian.lr=3"])


def test_wrong_types_and_literals():
    with pytest.raises(ConfigError, match=r"model.lora must be true or false, got 'yes please'"):
        load_config(SFTConfig, None, ["model.lora=yes please"])
    with pytest.raises(
        ConfigError, match=r"data.truncation must be one of 'drop', 'error', 'truncate_prompt'"
    ):
        load_config(SFTConfig, None, ["data.truncation=cut"])
    with pytest.raises(ConfigError, match=r"not key=value"):
        load_config(SFTConfig, None, ["train.lr"])


def test_yaml_that_does_not_parse_names_file_and_line(tmp_path):
    path = write(tmp_path, "train:\n  lr: [1, 2\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: line \d+, column \d+: YAML does not parse"):
        load_config(SFTConfig, path)
    with pytest.raises(ConfigError, match=r"config file not found"):
        load_config(SFTConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"expected a mapping"):
        load_config(SFTConfig, write(tmp_path, "- 1\n- 2\n"))


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(SFTConfig, None, ["train.lr=5e-5", "run.name=x"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(SFTConfig, tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["lr"] == 5e-5


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO / "configs")) for p in SHIPPED])
def test_every_shipped_yaml_loads_and_round_trips(path, tmp_path):
    cls = YAML_CLASSES[recipe_kind(path)]
    cfg = load_config(cls, path)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(cls, tmp_path / "config.yaml") == cfg


ONLINE = [p for p in SHIPPED if YAML_CLASSES[recipe_kind(p)] is PPOConfig]


@pytest.mark.parametrize("path", ONLINE, ids=[str(p.relative_to(REPO / "configs")) for p in ONLINE])
def test_every_online_recipe_passes_its_commands_checks(path):
    # What `rlhfkit <method> --config <recipe>` checks before loading a model: the method's presets
    # under the file, the loop's refusals (check_ppo_config), the command's own estimator, and that a
    # function reward (and each extra reward with its weight) imports.
    from rlhfkit.config import METHOD_OF_ADVANTAGE, METHOD_PRESETS
    from rlhfkit.rewards import is_function_reward, load_reward
    from rlhfkit.trainers.ppo import check_ppo_config

    method = recipe_kind(path)
    cfg = load_config(PPOConfig, path, presets=METHOD_PRESETS[method])
    check_ppo_config(cfg)
    assert METHOD_OF_ADVANTAGE[cfg.ppo.advantage] == method
    rewards = [cfg.ppo.reward, *(spec.rpartition("@")[0] or spec for spec in cfg.ppo.extra_rewards)]
    if all(is_function_reward(spec) for spec in rewards):
        load_reward(cfg.ppo.reward, cfg.ppo.normalize_reward, extra=cfg.ppo.extra_rewards)


PIPELINES = [p for p in SHIPPED if YAML_CLASSES.get(p.stem) is PipelineConfig]


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_pipelines_wire_their_stages_without_a_rejected_key(path):
    # The wiring sets model paths, the pairs file, the RM and run.name/dir through load_config, each
    # different from the stage's default: a wired key in a stage's NO_EFFECT would fail here. Every
    # method is planned, so each one's file (or the ppo file under its presets) must wire too.
    from rlhfkit.models.assets import BUILTIN_MODELS
    from rlhfkit.trainers.pipeline import plan_pipeline

    every = "methods=[ppo,grpo,rloo,reinforce-pp,dpo]"
    cfg = load_config(PipelineConfig, path, [every])
    plan = plan_pipeline(cfg, path, {"ppo": ["ppo.iterations=3"], "grpo": ["ppo.iterations=5"]})
    assert plan.ppo.ppo.reward == str(plan.root / "rm") and plan.rm.model.name == str(plan.root / "sft")
    # The first stage starts from a model this offline machine has: a built-in name (a hub name would
    # retry the unreachable hub for a minute, then fail; configs/smollm2-praise once named itself).
    assert plan.sft.model.name in BUILTIN_MODELS, plan.sft.model.name
    assert list(plan.methods) == ["ppo", "grpo", "rloo", "reinforce_pp", "dpo"]
    for stage, method_cfg in plan.methods.items():
        assert method_cfg.model.name == str(plan.root / "sft") and method_cfg.run.name == cfg.name
        assert method_cfg.data.template == plan.sft.data.template
        if stage != "dpo":
            assert method_cfg.ppo.reward == str(plan.root / "rm")
            assert METHOD_OF_ADVANTAGE[method_cfg.ppo.advantage] == stage
    assert plan.methods["dpo"].data.source == str(plan.root / "prefs.jsonl")
    # A method's own overrides reach it; one without a file of its own also takes the ppo file's.
    assert plan.methods["grpo"].ppo.iterations == 5
    if cfg.reinforce_pp is None:
        assert plan.methods["reinforce_pp"].ppo.iterations == 3
    if cfg.grpo is not None:
        assert plan.methods["grpo"].rollout.group_size >= 2


def test_pipeline_stage_override_with_no_effect_names_the_stage_file():
    from rlhfkit.trainers.pipeline import plan_pipeline

    path = REPO / "configs" / "tiny" / "pipeline.yaml"
    with pytest.raises(ConfigError) as e:
        plan_pipeline(load_config(PipelineConfig, path), path, {"ppo": ["train.max_steps=100"]})
    assert str(e.value) == (
        f"{path.parent / 'ppo.yaml'}: train.max_steps=100 has no effect in the ppo stage "
        "(its length is ppo.iterations); remove it"
    )


# ----------------------------------------------------------------------------- bounds


def leaves(cfg) -> dict:
    """dotted key -> value of every non-section field."""
    out = {}
    for key, value in config_to_dict(cfg).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in leaves(getattr(cfg, key)).items()})
        else:
            out[key] = value
    return out


# The lower bounds that config.py's MINIMUMS table held before bounds moved onto the fields
# (issue #14): (config, key, bound, strict). Each must still be enforced.
MINIMUMS_BEFORE = [
    *[
        (SFTConfig, f"train.{k}", b, False)
        for k, b in [
            ("lr", 0),
            ("weight_decay", 0),
            ("warmup_steps", 0),
            ("max_steps", 0),
            ("batch_size", 1),
            ("grad_accum", 1),
            ("log_every", 1),
            ("eval_every", 1),
            ("save_every", 1),
            ("keep_last", 0),
            ("threads", 1),
            ("max_nonfinite_steps", 1),
        ]
    ],
    (SFTConfig, "train.max_grad_norm", 0, True),
    *[
        (SFTConfig, f"data.{k}", b, False)
        for k, b in [
            ("max_length", 1),
            ("eval_size", 0),
            ("builtin_size", 1),
            ("eval_fraction", 0),
            ("max_train_rows", 1),
        ]
    ],
    (SFTConfig, "model.lora_r", 1, False),
    (PPOConfig, "rollout.batch_size", 1, False),
    (PPOConfig, "rollout.max_new_tokens", 1, False),
    (PPOConfig, "rollout.temperature", 0, True),
    *[
        (PPOConfig, f"ppo.{k}", b, False)
        for k, b in [
            ("iterations", 0),
            ("epochs", 1),
            ("minibatches", 1),
            ("eval_every", 1),
            ("health_window", 1),
        ]
    ],
    *[(PrefsConfig, k, 1, False) for k in ("n_prompts", "batch_size", "max_new_tokens")],
    *[(PipelineConfig, f"eval.{k}", 1, False) for k in ("prompts", "samples_per_prompt", "batch_size")],
]


@pytest.mark.parametrize(
    "cls, key, bound, strict", MINIMUMS_BEFORE, ids=[f"{c.__name__}-{k}" for c, k, *_ in MINIMUMS_BEFORE]
)
def test_bounds_of_before_issue_14_are_still_enforced(cls, key, bound, strict):
    below, op = (bound, ">") if strict else (bound - 1, ">=")
    with pytest.raises(ConfigError, match=rf"^defaults: {re.escape(key)} must be {op} {bound}, got "):
        load_config(cls, None, [f"{key}={below}"])
    load_config(cls, None, [f"{key}={bound + 1}"])


@pytest.mark.parametrize(
    "cls, override, message",
    [
        (SFTConfig, "data.builtin_noise=1.5", "data.builtin_noise must be <= 1, got 1.5"),
        (SFTConfig, "data.eval_fraction=2", "data.eval_fraction must be <= 1, got 2.0"),
        (SFTConfig, "model.lora_dropout=-0.1", "model.lora_dropout must be >= 0, got -0.1"),
        (RMConfig, "rm.norm_samples=1", "rm.norm_samples must be >= 2, got 1"),
        (PPOConfig, "ppo.gamma=1.5", "ppo.gamma must be <= 1, got 1.5"),
        (PPOConfig, "ppo.clip_range=0", "ppo.clip_range must be > 0, got 0.0"),
        (PPOConfig, "ppo.target_kl=0", "ppo.target_kl must be > 0, got 0.0"),
        (PPOConfig, "rollout.top_k=-1", "rollout.top_k must be >= 0, got -1"),
        (PrefsConfig, "temperature=0", "temperature must be > 0, got 0.0"),
        (PipelineConfig, "eval.best_of_n=[1,0]", "eval.best_of_n[1] must be >= 1, got 0"),
    ],
)
def test_bounds_added_with_issue_14(cls, override, message):
    with pytest.raises(ConfigError) as e:
        load_config(cls, None, [override])
    assert str(e.value) == f"defaults: {message}"


@pytest.mark.parametrize("cls", YAML_CLASSES.values(), ids=YAML_CLASSES)
def test_defaults_load_and_round_trip(cls, tmp_path):
    # Every default must satisfy its own bound, and a default config.yaml must load back as it was.
    cfg = load_config(cls)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(cls, tmp_path / "config.yaml") == cfg == cls()


def test_a_section_keeps_the_stage_defaults_of_the_keys_it_does_not_set():
    rm = load_config(RMConfig, None, ["data.source=p.jsonl", "train.max_steps=5"])
    assert (rm.train.lr, rm.train.batch_size, rm.data.max_length) == (1e-4, 8, 128)
    ppo = load_config(PPOConfig, None, ["train.lr=1e-3"])
    assert (ppo.train.max_steps, ppo.train.log_every, ppo.train.save_every) == (0, 1, 20)


# ----------------------------------------------------------------------------- keys a stage never reads


def other_value(cls, key):
    """A valid value of `key` that differs from `cls`'s default."""
    *path, name = key.split(".")
    section = cls
    for part in path:
        section = typing.get_type_hints(section)[part]
    hint = typing.get_type_hints(section)[name]
    default = leaves(cls())[key]
    if typing.get_origin(hint) is typing.Literal:
        return next(choice for choice in typing.get_args(hint) if choice != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default / 2 if default else 0.5
    return "other"


NO_EFFECT = [(cls, key) for cls in STAGE_CONFIGS.values() for key in cls.NO_EFFECT]


def test_no_effect_keys_name_fields_of_their_stage():
    for cls in STAGE_CONFIGS.values():
        assert set(cls.NO_EFFECT) <= set(leaves(cls())), cls.__name__


@pytest.mark.parametrize("cls, key", NO_EFFECT, ids=[f"{c.STAGE}-{k}" for c, k in NO_EFFECT])
def test_a_key_the_stage_never_reads_is_rejected_unless_it_is_the_default(cls, key, tmp_path):
    value = other_value(cls, key)
    shown = str(value).lower() if isinstance(value, bool) else str(value)
    with pytest.raises(ConfigError) as e:
        load_config(cls, None, [f"{key}={shown}"])
    reason = cls.NO_EFFECT[key]
    assert str(e.value) == (
        f"defaults: {key}={shown} has no effect in the {cls.STAGE} stage ({reason}); remove it"
    )
    # The default itself, written out (as in a run's resolved config.yaml), loads.
    section, name = key.rsplit(".", 1)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({section: {name: leaves(cls())[key]}}))
    assert load_config(cls, path) == cls()


def test_sft_packing_is_a_setting_of_the_sft_stage():
    assert load_config(SFTConfig, None, ["sft.packing=true"]).sft.packing is True
    assert "sft.packing" not in SFTConfig.NO_EFFECT


def test_ppo_file_setting_train_max_steps_names_file_key_and_stage(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1.0e-5\n  max_steps: 100\n")
    with pytest.raises(ConfigError) as e:
        load_config(PPOConfig, path)
    assert str(e.value) == (
        f"{path}: train.max_steps=100 has no effect in the ppo stage (its length is "
        "ppo.iterations); remove it"
    )


@pytest.mark.parametrize("cls", STAGE_CONFIGS.values(), ids=STAGE_CONFIGS)
def test_a_resolved_config_with_every_key_loads_back(cls, tmp_path):
    # What a run writes as config.yaml: every key, the unread ones at the stage's default.
    cfg = load_config(cls, None, ["train.seed=3", "model.lora=false", "train.lr=1e-3"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(cls, tmp_path / "config.yaml") == cfg


def test_accelerate_configs_load_with_accelerates_own_reader():
    # configs/accelerate/*.yaml are what `accelerate launch --config_file` reads (docs/scaling.md).
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for path in sorted((REPO / "configs" / "accelerate").glob("*.yaml")):
        config = load_config_from_file(str(path))
        kinds[path.stem] = str(config.distributed_type).split(".")[-1]
        assert config.mixed_precision == "no", "precision is the stage config's train.mixed_precision"
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}
    fsdp = load_config_from_file(str(REPO / "configs" / "accelerate" / "fsdp.yaml"))
    assert fsdp.fsdp_config["fsdp_version"] == 2
