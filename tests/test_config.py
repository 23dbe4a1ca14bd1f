import pytest
import yaml

from rlhfkit.config import SFTConfig, load_config, save_config
from rlhfkit.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_file_and_overrides_layer(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1.0e-3\n  max_steps: 5\nmodel:\n  lora: false\n")
    cfg = load_config(SFTConfig, path, ["train.lr=2e-4", "run.report_to=tensorboard,wandb", "model.lora_target_modules=[c_attn]"])
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
    with pytest.raises(ConfigError, match=r"data.truncation must be one of 'drop', 'error', 'truncate_prompt'"):
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


@pytest.mark.parametrize("name", ["tiny", "smollm2", "gpt2-alpaca"])
def test_shipped_recipes_load(name):
    from pathlib import Path

    from rlhfkit.config import PPOConfig, PrefsConfig, RMConfig

    folder = Path(__file__).parents[1] / "configs" / name
    load_config(SFTConfig, folder / "sft.yaml")
    load_config(RMConfig, folder / "rm.yaml")
    load_config(PPOConfig, folder / "ppo.yaml")
    if (folder / "prefs.yaml").exists():
        load_config(PrefsConfig, folder / "prefs.yaml")
