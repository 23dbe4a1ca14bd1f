"""The command line: every listed command exists, errors are one line with exit code 2."""

import re
import subprocess
import sys

import pytest

from rlhfkit.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rlhfkit.cli", *args], capture_output=True, text=True)


def test_help_lists_every_stage():
    done = run_cli("--help")
    assert done.returncode == 0
    for command in ("sft", "rm", "ppo", "data", "pipeline", "generate", "eval", "tiny-model", "bench"):
        assert command in done.stdout
    assert "not built yet" not in done.stdout


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lrr=1"], "unknown key 'train.lrr'; did you mean 'train.lr'?"),
        (["train.max_steps=ten"], "train.max_steps must be an integer, got 'ten'"),
        (["model.name=/nonexistent/model"], "/nonexistent/model: model path does not exist"),
        (["data.source=/nonexistent/data.jsonl"], "/nonexistent/data.jsonl: data file does not exist"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, capsys, overrides, message, tiny_dir):
    code = main(["sft", f"run.dir={tmp_path}", "run.report_to=[]", *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1, err


def test_yaml_that_does_not_parse(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: 1\n")
    assert main(["sft", "--config", str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err


def test_missing_columns_name_file_and_row(tmp_path, capsys, tiny_dir):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    code = main(
        ["sft", f"run.dir={tmp_path}", f"data.source={data}", f"data.eval_source={data}", "run.report_to=[]"]
    )
    assert code == 2
    assert f"{data}: row 1: missing or non-string column 'output'" in capsys.readouterr().err


def test_existing_run_is_left_alone(tmp_path, capsys, tiny_dir):
    stage = tmp_path / "default" / "sft"
    stage.mkdir(parents=True)
    (stage / "metrics.jsonl").write_text("precious\n")
    assert main(["sft", f"run.dir={tmp_path}"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (stage / "metrics.jsonl").read_text() == "precious\n"


def test_tiny_model_command(tmp_path, capsys):
    assert main(["tiny-model", "--out", str(tmp_path / "m"), "--seed", "3"]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()


def test_generate_and_eval_commands(tmp_path, capsys, tiny_dir):
    assert (
        main(
            [
                "generate",
                "--model",
                "tiny",
                "--prompt",
                "Repeat the word cat 3 times.",
                "--max-new-tokens",
                "4",
            ]
        )
        == 0
    )
    assert "Human: Repeat the word cat 3 times." in capsys.readouterr().out
    out = tmp_path / "eval.md"
    assert (
        main(
            [
                "eval",
                "--model",
                "tiny",
                "--model",
                str(tiny_dir),
                "--n",
                "8",
                "--max-new-tokens",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = out.read_text()
    assert "| model | eval/loss" in table and "gold/score_greedy" in table
    rows = [line for line in table.splitlines() if line.startswith("| tiny |")]
    assert len(rows) == 1 and len(rows[0].split("|")) == 9  # name + 6 metrics


def test_overrides_may_follow_the_resume_and_overwrite_flags(tmp_path, capsys):
    # The override after --overwrite must reach the config: here it is the bad key that errors.
    assert main(["sft", f"run.dir={tmp_path}", "--overwrite", "train.lrr=1"]) == 2
    assert "did you mean 'train.lr'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sft", "--overwrite", "--bogus-flag"])


def test_eval_sampled_comparison_with_reference_reward_and_best_of_n(tmp_path, capsys, tiny_dir):
    out = tmp_path / "eval.md"
    assert (
        main(
            [
                "eval",
                "--model",
                "tiny",
                "--model",
                str(tiny_dir),
                "--reference",
                str(tiny_dir),
                "--reward",
                "rlhfkit.tasks:gold_scores",
                "--best-of-n",
                "1,2,4",
                "--n",
                "8",
                "--max-new-tokens",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = out.read_text()
    assert "KL to SFT (nats)" in table and f"win rate tiny vs {tiny_dir}" in table
    reference_row = next(
        line
        for line in table.splitlines()
        if line.startswith(f"| {tiny_dir} | ") and "KL" not in line and line.count("|") == 8
    )
    assert "| 0.000 |" in reference_row  # KL of the reference to itself
    assert [line.split("|")[1].strip() for line in table.splitlines() if re.match(r"\| [124] \|", line)] == [
        "1",
        "2",
        "4",
    ]
    # The check runs after the greedy table: 1 row and 1 token keep that part short.
    refused = [
        "--reference",
        "nope",
        "--reward",
        "rlhfkit.tasks:gold_scores",
        "--n",
        "1",
        "--max-new-tokens",
        "1",
    ]
    assert main(["eval", "--model", "tiny", *refused]) == 2
    assert "--reference nope must be one of the --model values" in capsys.readouterr().err
