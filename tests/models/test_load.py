import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from rlhfkit.config import ModelConfig
from rlhfkit.errors import ModelError
from rlhfkit.models import load_causal_lm, load_tokenizer, resolve_model_path
from rlhfkit.models.load import BASE_RECORD, base_reference
from rlhfkit.models.lora import default_target_modules
from rlhfkit.models.tiny import TinyShape, build_tiny_model


def digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def test_tiny_model_is_deterministic_given_seed(tmp_path, tiny_dir):
    shape = TinyShape(n_layer=1, n_embd=32, n_head=2, vocab_size=512)
    a = build_tiny_model(tmp_path / "a", seed=1, shape=shape)
    b = build_tiny_model(tmp_path / "b", seed=1, shape=shape)
    c = build_tiny_model(tmp_path / "c", seed=2, shape=shape)
    assert digest(a)["model.safetensors"] == digest(b)["model.safetensors"]
    assert digest(a)["tokenizer.json"] == digest(b)["tokenizer.json"]
    assert digest(a)["model.safetensors"] != digest(c)["model.safetensors"]


def test_tiny_model_loads_with_from_pretrained_and_pad_is_handled(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.config.model_type == "gpt2"
    assert AutoTokenizer.from_pretrained(tiny_dir).pad_token is None  # like GPT-2 ...
    tokenizer = load_tokenizer(str(tiny_dir))
    assert tokenizer.pad_token == tokenizer.eos_token  # ... which we handle, not refuse
    ids = tokenizer("Human: Say something nice about cats.\n\nAssistant:")["input_ids"]
    assert len(ids) < 20, "the tiny tokenizer should know the task's words"


def test_load_causal_lm_full_and_lora(tiny_dir):
    model, _ = load_causal_lm(ModelConfig(name="tiny", lora=False))
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    lora, _ = load_causal_lm(ModelConfig(name="tiny", lora=True, lora_r=4))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    frozen, _ = load_causal_lm(ModelConfig(name="tiny"), trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_dropout_kept_when_asked(tiny_dir):
    model, _ = load_causal_lm(ModelConfig(name=str(tiny_dir), lora=False, disable_dropout=False))
    assert any(m.p > 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))


def test_default_lora_targets_per_architecture():
    assert default_target_modules("gpt2") == ["c_attn", "c_proj"]
    assert default_target_modules("llama") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    with pytest.raises(ModelError, match="set model.lora_target_modules"):
        default_target_modules("no-such-arch")


def test_lora_on_a_tiny_llama(tmp_path, tiny_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).save_pretrained(tmp_path / "llama")
    load_tokenizer(str(tiny_dir)).save_pretrained(tmp_path / "llama")
    model, _ = load_causal_lm(ModelConfig(name=str(tmp_path / "llama"), lora_r=2))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("q_proj.lora_A" in n for n in names) and any("o_proj.lora_B" in n for n in names)


def test_model_paths_that_do_not_exist(tmp_path):
    with pytest.raises(ModelError, match=r"does-not-exist: model path does not exist"):
        resolve_model_path(str(tmp_path / "does-not-exist"))
    with pytest.raises(ModelError, match=r"runs/x/sft: model path does not exist"):
        resolve_model_path("runs/x/sft")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"no config.json, adapter_config.json or final/"):
        resolve_model_path(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match=r"GGUF file does not exist"):
        resolve_model_path(str(tmp_path / "m.gguf"))
    assert resolve_model_path("gpt2") == "gpt2"  # hub ids pass through to from_pretrained


def test_unreachable_hub_model_is_one_line_error():
    with pytest.raises(ModelError, match=r"nobody-here/no-model: cannot load"):
        load_causal_lm(ModelConfig(name="nobody-here/no-model"))


def test_truncated_gguf_is_one_line_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 20)
    with pytest.raises(ModelError, match=r"broken.gguf: cannot read GGUF file"):
        resolve_model_path(str(bad))


@pytest.mark.slow
def test_smollm2_exports_from_gguf_and_generates():
    pytest.importorskip("gguf", reason="make install puts gguf in the venv")
    from rlhfkit.models.assets import smollm2_dir
    from rlhfkit.rollout import generate

    model, tokenizer = load_causal_lm(ModelConfig(name="smollm2", lora=False), trainable=False)
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (smollm2_dir() / "model.safetensors").is_file()
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2
    out = generate(model, tokenizer, ["Human: What is 2 plus 3?\n\nAssistant:"], max_new_tokens=8)
    assert out.texts[0]


def test_base_reference_survives_a_move(tmp_path, tiny_dir, monkeypatch):
    """An adapter in runs/x/<stage>/final names a base of the same run relative to itself, a built-in
    or hub id by name, anything else by absolute path; peft's field stays an absolute path or hub id."""
    monkeypatch.chdir(tmp_path)
    final = tmp_path / "runs" / "x" / "ppo" / "final"
    shutil.copytree(tiny_dir, tmp_path / "runs" / "x" / "sft" / "final")
    assert base_reference("runs/x/sft", 0, final) == (
        str(tmp_path / "runs" / "x" / "sft" / "final"),
        {"base": "../../sft/final"},
    )
    outside = str(tiny_dir.resolve())
    assert base_reference(str(tiny_dir), 0, final) == (outside, {"base": outside})
    assert base_reference("tiny", 0, final) == (str(tiny_dir.resolve()), {"base": "tiny", "tiny_seed": 0})
    assert base_reference("gpt2", 0, final) == ("gpt2", {"base": "gpt2"})  # was <cwd>/gpt2, which never loads


def test_adapter_base_resolves_from_the_record_relative_to_the_adapter(tmp_path, tiny_dir, monkeypatch):
    run = tmp_path / "moved"
    shutil.copytree(tiny_dir, run / "sft" / "final")
    adapter, _ = load_causal_lm(ModelConfig(name="tiny", lora=True, lora_r=4))
    adapter.save_pretrained(run / "ppo" / "final")
    config_file = run / "ppo" / "final" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "old-place")}))
    (run / "ppo" / "final" / BASE_RECORD).write_text(json.dumps({"base": "../../sft/final"}))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # relative to the adapter folder, not to the working directory
    assert load_causal_lm(ModelConfig(name=str(run / "ppo"), lora=False))[0].config.model_type == "gpt2"
    shutil.rmtree(run / "sft")
    missing = (
        r"ppo/final/rlhfkit_base.json: base \.\./\.\./sft/final: .*moved/sft/final: "
        r"model path does not exist; .*move or copy the whole run folder"
    )
    with pytest.raises(ModelError, match=missing):
        load_causal_lm(ModelConfig(name=str(run / "ppo"), lora=False))
    # An adapter without the record (peft's own, or an older rlhfkit's): peft's field, as peft reads it.
    (run / "ppo" / "final" / BASE_RECORD).unlink()
    config_file.write_text(json.dumps({**config, "base_model_name_or_path": str(tiny_dir)}))
    assert load_causal_lm(ModelConfig(name=str(run / "ppo"), lora=False))[0].config.model_type == "gpt2"
    (run / "ppo" / "final" / BASE_RECORD).write_text("[1, 2]")
    with pytest.raises(ModelError, match=r"rlhfkit_base.json: expected \{\"base\": <model>\}"):
        load_causal_lm(ModelConfig(name=str(run / "ppo"), lora=False))
