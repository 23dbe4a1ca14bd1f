"""Bad input, table-driven: every case must end with ONE line on stderr naming the problem, exit
code 2, and every file that existed before the command byte-for-byte unchanged (sha256 before and
after). docs/reliability.md lists the same cases with the message each one produces."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from rlhfkit.cli import main
from rlhfkit.models import load_tokenizer
from tests.data.chat import tiny_chat_model
from tests.data.tiny_models import tiny_opt as random_opt

REPO = Path(__file__).parents[1]
PREFS = REPO / "tests" / "fixtures" / "prefs.jsonl"
TINY_PIPELINE = REPO / "configs" / "tiny" / "pipeline.yaml"
QUIET = ["run.report_to=[]", "run.progress=false"]
SFT = [
    "sft",
    "sft.eval_generate=0",
    "data.builtin_size=64",
    "data.eval_size=8",
    "train.batch_size=4",
    "train.max_steps=2",
    "model.lora=true",
    "model.lora_r=4",
    *QUIET,
]
RM = [
    "rm",
    f"data.source={PREFS}",
    "data.eval_fraction=0.25",
    "train.batch_size=2",
    "train.max_steps=2",
    "rm.norm_samples=4",
    *QUIET,
]
DPO = [
    "dpo",
    f"data.source={PREFS}",
    "data.eval_fraction=0.25",
    "train.batch_size=2",
    "train.max_steps=2",
    "dpo.eval_prompts=0",
    *QUIET,
]
PPO = [
    "ppo",
    "model.name=tiny",
    "ppo.iterations=1",
    "rollout.batch_size=4",
    "ppo.minibatches=2",
    "rollout.max_new_tokens=4",
    "ppo.eval_prompts=0",
    "data.builtin_size=32",
    *QUIET,
]


# ----------------------------------------------------------------------------- reward plugins for the cases


def nan_reward(prompts, responses):
    return [float("nan")] * len(responses)


def raising_reward(prompts, responses):
    raise RuntimeError("judge service unavailable")


def short_reward(prompts, responses):
    return [0.0]


def nan_samples_reward(samples):
    return [0.0] * (len(samples) - 1) + [float("inf")]


def short_samples_reward(samples):
    return [0.0]


def online(command: str, *more: str) -> list[str]:
    """The PPO case's arguments under another online command (rlhfkit grpo|rloo|reinforce-pp)."""
    return [command, *PPO[1:], *more]


# ----------------------------------------------------------------------------- helpers


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `root`."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def jsonl(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@dataclass
class Case:
    name: str
    argv: Callable[[Path], list[str]]
    """The command line, given the case's folder (run.dir is <folder>/runs, added for stages)."""
    message: str
    """Text the one error line must contain."""
    setup: Callable[[Path, dict], None] | None = None
    """Writes the case's inputs (and pre-existing outputs) into the folder; gets the fixtures."""
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    new_files: bool = False
    """The error comes after the new run folder was opened: new files may appear (old ones may not change)."""


def data_file(name: str, content: str | bytes):
    return lambda tmp, fx: write(tmp / name, content)


def prior_sft(tmp: Path, fx: dict, keep_final: bool = True, damage: str | None = None) -> None:
    """A finished SFT run (LoRA r=4, checkpoint at step 1) at runs/prior/sft; `damage` names a file to
    truncate."""
    out = tmp / "runs" / "prior" / "sft"
    shutil.copytree(fx["prior"], out)
    if not keep_final:
        shutil.rmtree(out / "final")
    if damage:
        truncate(out / damage)


def stage_moved_alone(tmp: Path, fx: dict) -> None:
    """A LoRA stage trained on the SFT stage of its run, copied somewhere without that SFT stage."""
    final = tmp / "moved" / "ppo" / "final"
    shutil.copytree(fx["prior"] / "final", final)
    write(final / "rlhfkit_base.json", json.dumps({"base": "../../sft/final"}))


def checkpoint_of_another_model(tmp: Path, fx: dict) -> None:
    """A LoRA stage's checkpoint whose config.yaml was edited to full weights: its adapter weights have no
    place in the model that config builds."""
    stage = tmp / "edited" / "sft"
    shutil.copytree(fx["prior"] / "checkpoints", stage / "checkpoints")
    config = (fx["prior"] / "config.yaml").read_text()
    write(stage / "config.yaml", config.replace("lora: true", "lora: false"))


def tiny_copy(tmp: Path, fx: dict) -> None:
    shutil.copytree(fx["tiny"], tmp / "model")
    truncate(tmp / "model" / "model.safetensors")


def custom_code_model(tmp: Path, fx: dict) -> None:
    """The tiny model re-labelled as an unknown architecture whose code ships in the folder; that
    code would leave a file behind if it ever ran (the no-new-files check then fails)."""
    shutil.copytree(fx["tiny"], tmp / "remote")
    config = json.loads((tmp / "remote" / "config.json").read_text())
    config.update(
        model_type="evil",
        auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"},
    )
    (tmp / "remote" / "config.json").write_text(json.dumps(config))
    write(
        tmp / "remote" / "evil.py",
        "from pathlib import Path\nPath(__file__).with_name('RAN').write_text('x')\n",
    )


def tiny_opt(tmp: Path, fx: dict) -> None:
    """A random 2-layer OPT with the tiny tokenizer: OPT takes positions from the attention mask, so
    position ids cannot keep packed examples apart."""
    tokenizer = load_tokenizer(str(fx["tiny"]))
    random_opt(len(tokenizer), 128).save_pretrained(tmp / "opt")
    tokenizer.save_pretrained(tmp / "opt")


def gguf_truncated(tmp: Path, fx: dict) -> None:
    # A real GGUF header (magic, version 3, counts) cut off before the metadata it announces.
    header = b"GGUF" + (3).to_bytes(4, "little") + (10).to_bytes(8, "little") + (5).to_bytes(8, "little")
    write(tmp / "model.gguf", header + b"\x07\x00\x00\x00\x00\x00\x00\x00gene")


def yaml_file(text: str | bytes):
    return data_file("cfg.yaml", text)


def chat_model(tmp: Path, fx: dict) -> None:
    """The tiny model with a chat template, at <tmp>/chat."""
    tiny_chat_model(fx["tiny"], tmp / "chat")


def rm_on_seed_format(tmp: Path, fx: dict) -> None:
    """Where an rm stage trained with data.template=human_assistant records it: beside its score stats."""
    stats = {"mean": 0.0, "std": 1.0, "template": "human_assistant"}
    write(tmp / "rm" / "reward_stats.json", json.dumps(stats))


USER, REPLY = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
OTHER_USER, OTHER_REPLY = {"role": "user", "content": "yo"}, {"role": "assistant", "content": "hey"}


def messages_file(bad: list):
    """An SFT file of two conversational rows, the second one's `messages` being `bad` (row 0 is
    held out, so the training split names row 1)."""
    return data_file("d.jsonl", jsonl({"messages": [USER, REPLY]}, {"messages": bad}))


def transcript_prefs(tmp: Path, fx: dict) -> None:
    chat_model(tmp, fx)
    not_a_transcript = "Context.\n\nHuman: a\n\nAssistant:"
    write(
        tmp / "p.jsonl",
        jsonl(
            {"prompt": "a", "chosen": "x", "rejected": "y"},
            {"prompt": not_a_transcript, "chosen": "x", "rejected": "y"},
        ),
    )


def sft_on(name: str):
    return lambda t: [*SFT, f"data.source={t}/{name}"]


def rm_on(name: str, *more: str):
    return lambda t: [*RM, f"data.source={t}/{name}", *(m.replace("<tmp>", str(t)) for m in more)]


CASES = [
    # --- data files
    Case(
        "empty data file",
        lambda t: [*SFT, f"data.source={t}/d.jsonl"],
        "d.jsonl: dataset is empty",
        data_file("d.jsonl", ""),
    ),
    Case(
        "non-UTF-8 bytes",
        lambda t: [*SFT, f"data.source={t}/d.jsonl"],
        "d.jsonl: line 2: not UTF-8 text",
        data_file(
            "d.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n'
        ),
    ),
    Case(
        "invalid JSON line",
        lambda t: [*SFT, f"data.source={t}/d.jsonl"],
        "d.jsonl: line 2: not valid JSON",
        data_file("d.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a", \n'),
    ),
    Case(
        "row is not an object",
        lambda t: [*SFT, f"data.source={t}/d.jsonl"],
        "d.jsonl: row 0: expected a JSON object, got list",
        data_file("d.jsonl", "[1, 2]\n"),
    ),
    Case(
        "JSON file is not a list",
        lambda t: [*SFT, f"data.source={t}/d.json"],
        "d.json: expected a JSON list of rows",
        data_file("d.json", '{"instruction": "a"}'),
    ),
    Case(
        "wrong column type",
        lambda t: [*SFT, f"data.source={t}/d.jsonl"],
        "d.jsonl: row 1: missing or non-string column 'output'",
        data_file("d.jsonl", jsonl({"instruction": "a", "output": "b"}, {"instruction": "a", "output": 5})),
    ),
    Case(
        "missing column (rm)",
        lambda t: [*RM, f"data.source={t}/p.jsonl"],
        "p.jsonl: row 1: missing column 'rejected'",
        data_file(
            "p.jsonl", jsonl({"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"})
        ),
    ),
    Case(
        "missing column (dpo)",
        lambda t: [*DPO, f"data.source={t}/p.jsonl"],
        "p.jsonl: row 1: missing column 'rejected'",
        data_file(
            "p.jsonl", jsonl({"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"})
        ),
    ),
    Case(
        "dpo.reference=adapter_off with full weights",
        lambda t: [*DPO, "model.lora=false"],
        "dpo.reference=adapter_off needs model.lora=true",
    ),
    Case(
        "wrong column type (rm)",
        lambda t: [*RM, f"data.source={t}/p.jsonl"],
        "p.jsonl: row 0: column 'chosen' must be a string, got list",
        data_file("p.jsonl", jsonl({"prompt": "a", "chosen": ["b"], "rejected": "c"})),
    ),
    Case(
        "chosen == rejected in every pair",
        lambda t: [*RM, f"data.source={t}/p.jsonl"],
        "p.jsonl: dataset is empty after filtering (2 rows, 2 with chosen == rejected)",
        data_file(
            "p.jsonl",
            jsonl(
                {"prompt": "a", "chosen": "b", "rejected": "b"},
                {"prompt": "c", "chosen": "d ", "rejected": "d"},
            ),
        ),
    ),
    Case(
        "1 MB prompt",
        lambda t: [*SFT, f"data.source={t}/d.jsonl", "data.truncation=error"],
        "d.jsonl: row 1: ",
        data_file(
            "d.jsonl",
            jsonl({"instruction": "a", "output": "b"}, {"instruction": "word " * 200_000, "output": "b"}),
        ),
    ),
    Case(
        "unsupported data file type",
        lambda t: [*SFT, f"data.source={t}/d.csv"],
        "d.csv: unsupported data file type",
        data_file("d.csv", "instruction,output\na,b\n"),
    ),
    Case(
        "PPO prompt row without instruction or prompt",
        lambda t: [*PPO, f"data.source={t}/d.jsonl", "ppo.reward=rlhfkit.tasks:gold_scores"],
        "d.jsonl: row 0: missing columns",
        data_file("d.jsonl", jsonl({"question": "a"})),
    ),
    # --- conversational data and templates
    Case(
        "conversational row with an empty message list",
        sft_on("d.jsonl"),
        "d.jsonl: row 1: column 'messages' must be a non-empty list of {role, content} messages, got an "
        "empty list",
        messages_file([]),
    ),
    Case(
        "message without a role",
        sft_on("d.jsonl"),
        "d.jsonl: row 1: 'messages' message 0 has no 'role'",
        messages_file([{"content": "hi"}, REPLY]),
    ),
    Case(
        "message with an unknown role",
        sft_on("d.jsonl"),
        "d.jsonl: row 1: 'messages' message 0 has unknown role 'bot'",
        messages_file([{"role": "bot", "content": "hi"}, REPLY]),
    ),
    Case(
        "message content not a string",
        sft_on("d.jsonl"),
        "d.jsonl: row 1: 'messages' message 1: 'content' must be a string, got list",
        messages_file([USER, {"role": "assistant", "content": ["hello"]}]),
    ),
    Case(
        "conversation not ending with the assistant",
        sft_on("d.jsonl"),
        "d.jsonl: row 1: 'messages' must end with an assistant turn, but its last message is 'user'",
        messages_file([USER, REPLY, USER]),
    ),
    Case(
        "conversational rows with the seed's template",
        sft_on("d.jsonl"),
        "d.jsonl: row 1: conversational rows (role/content messages) are rendered with the model's chat "
        "template: set data.template=chat",
        messages_file([USER, REPLY]),
    ),
    Case(
        "data.template=chat on a model without a chat template",
        lambda t: [*SFT, "data.template=chat"],
        "builtin:default: row 0: data.template=chat (or conversational rows) needs a chat template, and "
        "the tokenizer",
    ),
    Case(
        "conversational pair not ending with the assistant (rm)",
        rm_on("p.jsonl"),
        "p.jsonl: row 1: 'rejected' must end with an assistant turn",
        data_file(
            "p.jsonl",
            jsonl(
                {"prompt": [USER], "chosen": [REPLY], "rejected": [OTHER_REPLY]},
                {"prompt": [USER], "chosen": [REPLY], "rejected": [USER]},
            ),
        ),
    ),
    Case(
        "conversational pair differing before the reply (rm)",
        rm_on("p.jsonl"),
        "p.jsonl: row 0: 'chosen' and 'rejected' conversations differ before the final assistant turn",
        data_file("p.jsonl", jsonl({"chosen": [USER, REPLY], "rejected": [OTHER_USER, REPLY]})),
    ),
    Case(
        "prompt that is not a Human/Assistant transcript, data.template=chat (rm)",
        rm_on("p.jsonl", "model.name=<tmp>/chat", "data.template=chat"),
        "p.jsonl: row 1: prompt is not a 'Human: ...\\n\\nAssistant:' transcript, so it cannot be rendered "
        "with data.template=chat",
        transcript_prefs,
    ),
    Case(
        "reward model trained on another template",
        lambda t: [*PPO, f"ppo.reward={t}/rm", "data.template=chat"],
        "rm: this reward model was trained with data.template=human_assistant but the prompts it would "
        "score are rendered with data.template=chat",
        rm_on_seed_format,
    ),
    # --- configs
    Case(
        "config is not a mapping",
        lambda t: ["sft", "--config", f"{t}/cfg.yaml"],
        "expected a mapping of sections",
        yaml_file("- a\n- b\n"),
    ),
    Case(
        "config is not UTF-8",
        lambda t: ["sft", "--config", f"{t}/cfg.yaml"],
        "cfg.yaml: not UTF-8 text",
        yaml_file(b"train:\n  lr: 1\n# \xff\xfe\n"),
    ),
    Case(
        "config value of the wrong type",
        lambda t: ["sft", "--config", f"{t}/cfg.yaml"],
        "train.lr must be a number, got 'fast'",
        yaml_file("train:\n  lr: fast\n"),
    ),
    Case(
        "unknown section in config",
        lambda t: ["sft", "--config", f"{t}/cfg.yaml"],
        "unknown key 'trian'",
        yaml_file("trian:\n  lr: 1\n"),
    ),
    Case(
        "config file missing",
        lambda t: ["sft", "--config", f"{t}/none.yaml"],
        "none.yaml: config file not found",
    ),
    Case(
        "choice not allowed",
        lambda t: [*SFT, "data.truncation=cut"],
        "data.truncation must be one of 'drop', 'error', 'truncate_prompt', got 'cut'",
    ),
    Case("override without =", lambda t: [*SFT, "train.lr"], "override 'train.lr' is not key=value"),
    Case("batch size 0", lambda t: [*SFT, "train.batch_size=0"], "train.batch_size must be >= 1, got 0"),
    Case("save_every 0", lambda t: [*SFT, "train.save_every=0"], "train.save_every must be >= 1, got 0"),
    Case("negative learning rate", lambda t: [*SFT, "train.lr=-0.1"], "train.lr must be >= 0, got -0.1"),
    Case(
        "minibatches do not divide the batch",
        lambda t: [*PPO, "rollout.batch_size=5", "ppo.reward=rlhfkit.tasks:gold_scores"],
        "rollout.batch_size=5 must be divisible by ppo.minibatches=2",
    ),
    Case("rm without data.source", lambda t: ["rm", *QUIET], "data.source is required for the rm stage"),
    # --- run folders and the CLI
    Case(
        "existing run without --resume/--overwrite",
        lambda t: [*SFT, "run.name=prior"],
        "prior/sft already exists; pass --resume to continue it or --overwrite to start over",
        prior_sft,
    ),
    Case(
        "unknown flag",
        lambda t: ["sft", "--bogus-flag"],
        "rlhfkit: error: unrecognized arguments: --bogus-flag",
    ),
    Case("--resume with nothing to resume", lambda t: [*SFT, "--resume"], "nothing to resume"),
    Case(
        "--resume and --overwrite together",
        lambda t: [*SFT, "run.name=prior", "--resume", "--overwrite"],
        "--resume and --overwrite contradict each other",
        prior_sft,
    ),
    Case(
        "--resume with an incompatible model config",
        lambda t: [*SFT, "run.name=prior", "--resume", "model.lora_r=8", "train.max_steps=3"],
        "checkpoint step-1 does not fit this model",
        prior_sft,
    ),
    # --- models and prior stages
    Case(
        "prior stage without final/",
        lambda t: [*RM, f"model.name={t}/runs/prior/sft"],
        "prior/sft: no final/ yet",
        lambda t, fx: prior_sft(t, fx, keep_final=False),
    ),
    Case(
        "rm folder without final/ as ppo.reward",
        lambda t: [*PPO, f"ppo.reward={t}/runs/prior/sft"],
        "prior/sft: no final/ yet",
        lambda t, fx: prior_sft(t, fx, keep_final=False),
    ),
    Case("truncated safetensors", lambda t: [*SFT, f"model.name={t}/model"], "model.safetensors", tiny_copy),
    Case(
        "truncated adapter safetensors",
        lambda t: [*RM, f"model.name={t}/runs/prior/sft"],
        "adapter_model.safetensors",
        lambda t, fx: prior_sft(t, fx, damage="final/adapter_model.safetensors"),
    ),
    Case(
        "model that ships its own code",
        lambda t: [*SFT, f"model.name={t}/remote"],
        "remote: cannot load model (it ships its own Python code, which runs only with "
        "model.trust_remote_code=true",
        custom_code_model,
    ),
    Case(
        "truncated GGUF",
        lambda t: [*SFT, f"model.name={t}/model.gguf"],
        "model.gguf: cannot read GGUF file",
        gguf_truncated,
    ),
    Case(
        "generate with a missing model",
        lambda t: ["generate", "--model", f"{t}/nope", "--prompt", "hi"],
        "nope: model path does not exist",
    ),
    Case(
        "eval on a missing data file",
        lambda t: ["eval", "--model", "tiny", "--data", f"{t}/nope.jsonl"],
        "nope.jsonl: data file does not exist",
    ),
    # --- rewards
    Case(
        "reward function returns NaN",
        lambda t: [*PPO, "ppo.reward=tests.test_bad_input:nan_reward"],
        "ppo.reward=tests.test_bad_input:nan_reward returned a non-finite score (nan)",
        new_files=True,
    ),
    Case(
        "reward function raises",
        lambda t: [*PPO, "ppo.reward=tests.test_bad_input:raising_reward"],
        "raised RuntimeError: judge service unavailable",
        new_files=True,
    ),
    Case(
        "reward function returns too few scores",
        lambda t: [*PPO, "ppo.reward=tests.test_bad_input:short_reward"],
        "returned 1 scores for 4 responses",
        new_files=True,
    ),
    Case(
        "reward is neither a folder nor module:function",
        lambda t: [*PPO, "ppo.reward=no_such_module:f"],
        "ppo.reward=no_such_module:f: cannot import",
    ),
    Case(
        "PPO with an absurd learning rate",
        lambda t: [*PPO, "ppo.reward=rlhfkit.tasks:gold_scores", "train.lr=1e30", "ppo.iterations=3"],
        "rollout: the policy's next-token probabilities are not finite (its weights diverged); likely cause: "
        "train.lr too high",
        new_files=True,
    ),
    # --- disk
    Case(
        "full disk while writing a checkpoint",
        lambda t: [*SFT, "train.save_every=1"],
        "cannot write checkpoint step-1",
        patch=lambda mp: mp.setattr("rlhfkit.run.checkpoint.save_file", disk_full),
        new_files=True,
    ),
    Case(
        "full disk while writing final/",
        lambda t: [*SFT, "train.max_steps=1"],
        "cannot write",
        patch=lambda mp: mp.setattr("rlhfkit.trainers.final.atomic_dir", _failing_atomic_dir),
        new_files=True,
    ),
    Case(
        "full disk while appending to metrics.jsonl",
        lambda t: [*SFT],
        "metrics.jsonl: No space left on device",
        patch=lambda mp: mp.setattr("rlhfkit.run.logger.open", _failing_open, raising=False),
        new_files=True,
    ),
    # --- config keys a stage never reads (its NO_EFFECT) and bounds declared on the fields
    Case(
        "PPO config sets a key PPO never reads",
        lambda t: ["ppo", "--config", f"{t}/cfg.yaml"],
        "cfg.yaml: train.max_steps=100 has no effect in the ppo stage (its length is ppo.iterations)",
        yaml_file("train:\n  lr: 1.0e-5\n  max_steps: 100\n"),
    ),
    Case(
        "sft.packing with a model that cannot keep examples apart",
        lambda t: [*SFT, "sft.packing=true", "model.lora=false", f"model.name={t}/opt"],
        "/opt: sft.packing=true cannot keep packed examples apart: a 'opt' model with attention '",
        tiny_opt,
    ),
    Case(
        "RM data key RM never reads",
        lambda t: [*RM, "data.builtin_noise=0.5"],
        "data.builtin_noise=0.5 has no effect in the rm stage (it reads preference pairs",
    ),
    Case(
        "pipeline stage override PPO never reads",
        lambda t: ["pipeline", "--config", str(TINY_PIPELINE), f"dir={t}/runs", "ppo.train.warmup_steps=0"],
        "ppo.yaml: train.warmup_steps=0 has no effect in the ppo stage (it runs a constant learning rate)",
    ),
    Case(
        "probability above 1",
        lambda t: [*SFT, "data.builtin_noise=1.5"],
        "data.builtin_noise must be <= 1, got 1.5",
    ),
    # --- issue #15: PPO refuses LoRA dropout (its update pass would not score what the rollout sampled)
    Case(
        "LoRA dropout in PPO",
        lambda t: [*PPO, "ppo.reward=rlhfkit.tasks:gold_scores", "model.lora_dropout=0.1"],
        "model.lora_dropout=0.1: PPO needs the rollout's and the update's forwards to agree",
    ),
    # --- the critic-free methods: what the one online loop refuses (design §10.1), their rewards (§10.4)
    Case(
        "group estimator with one sample per prompt",
        lambda t: online("rloo", "rollout.group_size=1"),
        "ppo.advantage=rloo baselines each sample against the other samples of its prompt: set "
        "rollout.group_size >= 2 (got 1)",
    ),
    Case(
        "critic key with a critic-free estimator",
        lambda t: online("grpo", "ppo.critic_lr=1e-3"),
        "ppo.advantage=grpo uses no critic, so ppo.critic and ppo.critic_lr have no effect: remove them",
    ),
    Case(
        "KL-loss estimator with the KL in the reward",
        lambda t: online("rloo", "ppo.kl_loss_estimator=k1"),
        "ppo.kl_loss_estimator=k1 has no effect with ppo.kl_in=reward (the reward's KL penalty is k1)",
    ),
    Case(
        "minibatches do not divide the groups' rows",
        lambda t: online("grpo", "rollout.batch_size=3", "ppo.minibatches=8"),
        "rollout.batch_size=3 x rollout.group_size=4 = 12 rows must be divisible by ppo.minibatches=8",
    ),
    Case(
        "command given another method's config",
        lambda t: ["rloo", "--config", str(REPO / "configs" / "tiny" / "grpo.yaml")],
        "ppo.advantage=grpo is a grpo setting, not rloo: run `rlhfkit grpo` (the method names the run's "
        "stage folder)",
    ),
    Case(
        "extra reward with a weight that is not a number",
        lambda t: online(
            "grpo",
            "ppo.reward=rlhfkit.tasks:gold_scores",
            "ppo.extra_rewards=[rlhfkit.rewards.verifiable:format_reward@heavy]",
        ),
        "ppo.extra_rewards: 'rlhfkit.rewards.verifiable:format_reward@heavy': the weight after @ must be a "
        "number",
    ),
    Case(
        "verifiable reward on a family without a checkable answer",
        lambda t: online(
            "grpo", "data.source=builtin:sentiment", "ppo.reward=rlhfkit.rewards.verifiable:verifiable_reward"
        ),
        "ppo.reward=rlhfkit.rewards.verifiable:verifiable_reward raised ValueError: sentiment prompts have "
        "no checkable answer",
        new_files=True,
    ),
    Case(
        "samples reward returns a non-finite score",
        lambda t: online("reinforce-pp", "ppo.reward=tests.test_bad_input:nan_samples_reward"),
        "ppo.reward=tests.test_bad_input:nan_samples_reward returned a non-finite score (inf) for response 3",
        new_files=True,
    ),
    Case(
        "samples reward returns too few scores",
        lambda t: online("grpo", "ppo.reward=tests.test_bad_input:short_samples_reward"),
        "ppo.reward=tests.test_bad_input:short_samples_reward returned 1 scores for 16 responses",
        new_files=True,
    ),
    # --- DPO's own keys and pairs
    Case("dpo without data.source", lambda t: ["dpo", *QUIET], "data.source is required for the dpo stage"),
    Case(
        "unknown dpo key",
        lambda t: [*DPO, "dpo.betta=0.5"],
        "unknown key 'dpo.betta'; did you mean 'dpo.beta'?",
    ),
    Case("dpo.beta of 0", lambda t: [*DPO, "dpo.beta=0"], "dpo.beta must be > 0, got 0.0"),
    Case(
        "label smoothing of a half or more",
        lambda t: [*DPO, "dpo.label_smoothing=0.5"],
        "dpo.label_smoothing must be < 0.5 (a flip rate of 0.5 carries no preference), got 0.5",
    ),
    Case(
        "label smoothing with another loss",
        lambda t: [*DPO, "dpo.loss=ipo", "dpo.label_smoothing=0.1"],
        "dpo.label_smoothing (conservative DPO) applies to dpo.loss=sigmoid, not ipo",
    ),
    Case(
        "DPO data key DPO never reads",
        lambda t: [*DPO, "data.builtin_noise=0.5"],
        "data.builtin_noise=0.5 has no effect in the dpo stage",
    ),
    Case(
        "chosen == rejected in every pair (dpo)",
        lambda t: [*DPO, f"data.source={t}/p.jsonl"],
        "p.jsonl: dataset is empty after filtering (2 rows, 2 with chosen == rejected)",
        data_file(
            "p.jsonl",
            jsonl(
                {"prompt": "a", "chosen": "b", "rejected": "b"},
                {"prompt": "c", "chosen": "d ", "rejected": "d"},
            ),
        ),
    ),
    Case(
        "conversational pair not ending with the assistant (dpo)",
        lambda t: [*DPO, f"data.source={t}/p.jsonl"],
        "p.jsonl: row 1: 'rejected' must end with an assistant turn",
        data_file(
            "p.jsonl",
            jsonl(
                {"prompt": [USER], "chosen": [REPLY], "rejected": [OTHER_REPLY]},
                {"prompt": [USER], "chosen": [REPLY], "rejected": [USER]},
            ),
        ),
    ),
    # --- issue #18: the pipeline's methods, and training checkpoints evaluated as policies
    Case(
        "pipeline method listed twice",
        lambda t: ["pipeline", "--config", str(TINY_PIPELINE), f"dir={t}/runs", "methods=[ppo,dpo,ppo]"],
        "methods lists a method twice: ['ppo', 'dpo', 'ppo']",
    ),
    Case(
        "pipeline method config naming another method's estimator",
        lambda t: [
            "pipeline",
            "--config",
            str(TINY_PIPELINE),
            f"dir={t}/runs",
            "methods=[grpo]",
            "grpo.ppo.advantage=rloo",
        ],
        "grpo: ppo.advantage=rloo is a rloo setting; give grpo a config with its own estimator",
    ),
    Case(
        "checkpoint that does not fit its stage's config.yaml",
        lambda t: ["generate", "--model", f"{t}/edited/sft/checkpoints/step-1", "--prompt", "hi"],
        "step-1: weight base_model.model.",
        checkpoint_of_another_model,
    ),
    # --- launchers (docs/scaling.md): an engine or precision that would silently not be what was asked
    Case(
        "launcher's mixed precision differs from the config's",
        lambda t: SFT,
        "the launcher asks for mixed precision fp16, the config for train.mixed_precision=no",
        patch=lambda mp: mp.setenv("ACCELERATE_MIXED_PRECISION", "fp16"),
    ),
    Case(
        "DeepSpeed on a machine without a GPU",
        lambda t: SFT,
        "DeepSpeed needs a GPU: accelerate ignores it on CPU",
        patch=lambda mp: mp.setenv("ACCELERATE_USE_DEEPSPEED", "true"),
    ),
    Case(
        "FSDP1 on CPU",
        lambda t: SFT,
        "FSDP1 cannot run on CPU",
        patch=lambda mp: mp.setenv("ACCELERATE_USE_FSDP", "true"),
    ),
    Case(
        "merged LoRA save under FSDP",
        lambda t: [*SFT, "sft.save_merged=true"],
        "sft.save_merged=true is not supported under FSDP",
        patch=lambda mp: (mp.setenv("ACCELERATE_USE_FSDP", "true"), mp.setenv("FSDP_VERSION", "2")),
    ),
    # --- moved run folders
    Case(
        "stage moved without the stage it was trained on",
        lambda t: ["generate", "--model", f"{t}/moved/ppo", "--prompt", "hi"],
        "ppo/final/rlhfkit_base.json: base ../../sft/final: ",
        stage_moved_alone,
    ),
]


def _failing_atomic_dir(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _failing_open(path, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.fixture(scope="module")
def fixtures(tiny_dir, tmp_path_factory) -> dict:
    """The tiny model and a finished 2-step LoRA SFT run with a checkpoint at step 1."""
    runs = tmp_path_factory.mktemp("prior")
    assert main([*SFT, f"run.dir={runs}", "run.name=prior", "train.save_every=1"]) == 0
    return {"tiny": tiny_dir, "prior": runs / "prior" / "sft"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    case: Case, fixtures, tmp_path, capsys, monkeypatch
):
    if case.setup:
        case.setup(tmp_path, fixtures)
    before, shared_before = tree(tmp_path), tree(fixtures["prior"])
    argv = case.argv(tmp_path)
    if argv[0] in ("sft", "rm", "ppo", "dpo", "grpo", "rloo", "reinforce-pp"):
        argv = [*argv, f"run.dir={tmp_path / 'runs'}"]
    if case.patch:
        case.patch(monkeypatch)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors exit from inside the parser
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err[-2000:]
    assert len(err.splitlines()) == 1, f"expected one line, got:\n{err[-2000:]}"
    assert case.message in err, err
    after = tree(tmp_path)
    changed = [p for p, digest in before.items() if after.get(p) != digest]
    assert not changed, f"pre-existing files changed or removed: {changed}"
    if not case.new_files:
        assert after.keys() == before.keys(), f"new files: {sorted(set(after) - set(before))}"
    assert not [p for p in after if "/.tmp-" in p or p.startswith(".tmp-")], "a temp folder was left behind"
    assert tree(fixtures["prior"]) == shared_before


def test_there_are_at_least_twenty_cases():
    assert len(CASES) >= 20
