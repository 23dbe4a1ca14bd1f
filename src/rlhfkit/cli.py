"""Command line: parsing and dispatch only. Every stage is a library function the CLI calls."""

from __future__ import annotations

import argparse
import errno
import subprocess
import sys
from pathlib import Path

from rlhfkit.errors import RlhfkitError

DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class OneLineParser(argparse.ArgumentParser):
    """argparse prints its usage block before an error; ours is one line, like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _stage_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("--config", help="YAML recipe, e.g. configs/tiny/sft.yaml (defaults when omitted)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-4")
    p.add_argument("--resume", action="store_true", help="continue the run folder from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run folder and start over")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rlhfkit", description="SFT -> reward model -> PPO for causal LMs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _stage_parser(sub, "sft", "supervised fine-tuning (completion-only loss, LoRA or full)")
    _stage_parser(sub, "rm", "reward model: Bradley-Terry on preference pairs (prompt, chosen, rejected)")
    _stage_parser(
        sub, "ppo", "PPO against a reward model or a reward function, with KL diagnostics and a health check"
    )
    _stage_parser(
        sub,
        "dpo",
        "DPO, IPO, cDPO or SimPO on preference pairs from an SFT policy, measured like PPO "
        "(held-out gold, KL to SFT)",
    )
    # The critic-free methods run the same online loop (the PPO stage with presets, docs/design.md §10).
    _stage_parser(
        sub,
        "grpo",
        "GRPO: the online loop with G samples per prompt, group-normalised "
        "advantages, KL in the loss, no critic",
    )
    _stage_parser(
        sub,
        "rloo",
        "RLOO: the online loop with a leave-one-out baseline over G samples per prompt, no critic",
    )
    _stage_parser(
        sub, "reinforce-pp", "REINFORCE++: the online loop with globally whitened returns, no critic"
    )
    pipe = _stage_parser(
        sub,
        "pipeline",
        "sft -> preference pairs -> rm -> ppo -> eval -> report.md, in one run folder; "
        "a rerun skips finished stages and resumes a partial one (--resume is implied)",
    )
    pipe.epilog = (
        "stage keys take the stage as prefix: sft.train.max_steps=100 prefs.n_prompts=500 eval.prompts=32"
    )

    _generate_parser(sub)
    _eval_parser(sub)
    _data_parser(sub)
    # Listed for --help only: main() hands `bench ...` to benchmarks/run.py before parsing.
    sub.add_parser(
        "bench",
        help="speed and memory against TRL: runs benchmarks/run.py of a source checkout "
        "(options pass through; `rlhfkit bench --help`)",
    )
    return parser


def _generate_parser(sub) -> None:
    g = sub.add_parser("generate", help="complete prompts with any model or run folder")
    g.add_argument(
        "--model", required=True, help="run stage folder, HF folder, .gguf, hub id, tiny or smollm2"
    )
    g.add_argument(
        "--prompt",
        action="append",
        required=True,
        help="instruction (wrapped as Human/Assistant); repeatable",
    )
    g.add_argument(
        "--raw", action="store_true", help="use --prompt text as is, without the Human/Assistant template"
    )
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--seed", type=int, default=0)


def _eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="held-out metrics (eval loss, BLEU, gold score) of models, side by side")
    e.add_argument("--model", action="append", required=True, help="model or run folder; repeat to compare")
    e.add_argument(
        "--data", default="builtin:default:test", help="held-out source (default builtin:default:test)"
    )
    e.add_argument("--n", type=int, default=64, help="held-out rows")
    e.add_argument("--max-new-tokens", type=int, default=48)
    e.add_argument("--show", type=int, default=5, help="side-by-side completions to print")
    e.add_argument("--out", help="also write the table and completions to this markdown file")
    e.add_argument(
        "--reward", help="RM run folder or module:function: adds sampled RM scores, win rates and best-of-n"
    )
    e.add_argument(
        "--reference",
        help="which --model is the reference (e.g. the SFT run): KL to it, win rates, best-of-n",
    )
    e.add_argument(
        "--best-of-n", default="1,2,4,8,16", help="n values for best-of-n from --reference (needs --reward)"
    )
    e.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature of the sampled comparison"
    )
    e.add_argument(
        "--samples-per-prompt",
        type=int,
        default=1,
        help="samples per held-out prompt and model for the sampled comparison (more = smaller error)",
    )
    e.add_argument("--seed", type=int, default=0)


def _data_parser(sub) -> None:
    d = sub.add_parser(
        "data", help="make data: `data prefs` samples and labels preference pairs for a built-in task"
    )
    prefs = d.add_subparsers(dest="what", metavar="WHAT", required=True).add_parser(
        "prefs", help="two samples per prompt from a model, labelled by the noisy gold judge"
    )
    prefs.add_argument(
        "--config", help="YAML with PrefsConfig fields (model, task, n_prompts, noise_temperature, out ...)"
    )
    prefs.add_argument("overrides", nargs="*", metavar="key=value")

    t = sub.add_parser(
        "tiny-model", help="build the tiny GPT-2 + BPE tokenizer used by tests and tiny configs"
    )
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # Everything after `bench` belongs to benchmarks/run.py, which parses (and documents) it.
        return bench_command(argv[1:])
    parser = build_parser()
    # `--overwrite` may sit between overrides (`... --overwrite train.lr=1e-4`); argparse alone
    # would stop the positional list at the flag, so leftovers that look like key=value join it.
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return _dispatch(args)
    except RlhfkitError as e:
        print(f"rlhfkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # A full disk, quota or read-only folder anywhere (logs, config.yaml ...): the user fixes it.
        if e.errno not in DISK_ERRORS:
            raise
        print(
            f"rlhfkit {args.command}: error: {e.filename or 'write'}: {e.strerror}; nothing written so far "
            "was lost: fix it, then continue with --resume",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"rlhfkit {args.command}: interrupted", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    # start-up: the commands load torch, transformers and every trainer (about 5 s, measured);
    # parsing, --help and argument errors stay instant without them.
    from rlhfkit import commands

    commands.quiet_libraries()
    return commands.COMMANDS[args.command](args)


def bench_command(rest: list[str]) -> int:
    """Run the repository's benchmarks/run.py. The benchmarks stay out of the package: TRL, what
    they compare against, must never become a dependency of rlhfkit."""
    runner = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
    if not runner.is_file():
        print(
            "rlhfkit bench: the benchmark runner is part of the source repository, not the package: "
            "in a checkout, run `python benchmarks/run.py` (see docs/benchmarks.md)",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, str(runner), *rest])


if __name__ == "__main__":
    sys.exit(main())
