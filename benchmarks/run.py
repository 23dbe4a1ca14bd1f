#!/usr/bin/env python
"""rlhfkit vs TRL, side by side in one run: SFT with LoRA, reward model, PPO, GRPO and RLOO iterations,
DPO, peak RSS.

    python benchmarks/run.py                          # both shapes, all stages (slow: about an hour)
    python benchmarks/run.py --shapes gpt2-tiny       # the tiny shape only
    python benchmarks/run.py --stages grpo rloo dpo   # some rows only
    python benchmarks/run.py --trl-python none        # rlhfkit alone

Every measurement is a fresh process (benchmarks/side_rlhfkit.py with this python,
benchmarks/side_trl.py with the TRL venv's python), rlhfkit and TRL alternating stage by stage so
both see the same machine load. Prints one table with rlhfkit/TRL ratios and writes
benchmarks/results/<date>-<host>.json. `make bench-setup` builds the TRL venv; TRL is never a
dependency of rlhfkit itself. Method and latest table: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import workload as W  # noqa: E402

# Inside the checkout (ignored by git): `make bench-setup` builds the TRL venv there.
DEFAULT_TRL_VENV = Path(os.environ.get("RLHFKIT_TRL_VENV", HERE.parent / ".bench" / "trl-venv"))
DEFAULT_WORK = HERE.parent / ".bench" / "work"
STAGES = W.STAGES
# Targets on the gpt2-small shape (issues #8, #16, #17): throughput ratio at least this; RSS ratio
# at most 0.7.
SPEED_TARGETS = {"sft": 1.5, "rm": 1.5, "ppo": 2.0, "grpo": 2.0, "rloo": 2.0, "dpo": 1.5}
RSS_TARGET = 0.7
TARGET_SHAPE = "gpt2-small"


# ----------------------------------------------------------------------------- pure: table and file


def speedup(stage_metric: str, ours: float | None, theirs: float | None) -> float | None:
    """rlhfkit's throughput over TRL's: >1 means rlhfkit is faster (s/iter is inverted)."""
    if not ours or not theirs:
        return None
    return theirs / ours if stage_metric == "s/iter" else ours / theirs


def achieved_fraction(
    stage: str, shape: str, result: dict | None, stats: dict, peak_gflops: float | None
) -> float | None:
    """Achieved nominal model FLOP/s (workload.model_flops) as a fraction of the matmul peak.

    Per CPU second where measured (the peak is a best-of-5 over short matmuls, so it is what one
    undisturbed core does; wall-clock throughput on a shared machine would understate the stage)."""
    rate = None if not result else result.get("cpu_value", result.get("value"))
    if rate is None or not peak_gflops:
        return None
    if stage == "sft":
        flops_per_s = W.model_flops("sft", shape, rate)
    elif stage in ("rm", "dpo"):
        flops_per_s = W.model_flops(stage, shape, rate * stats["pair_tokens"])
    else:
        rows = W.PPO_PROMPTS if stage == "ppo" else W.GROUP_PROMPTS * W.GROUP_SIZE
        tokens = rows * (stats["prompt_tokens"] + W.PPO_NEW_TOKENS)
        flops_per_s = W.model_flops(stage, shape, tokens) / rate
    return flops_per_s / (peak_gflops * 1e9)


def build_rows(measurements: list[dict], peak: dict, stats: dict) -> list[dict]:
    """One row per (shape, stage): each side's value, RSS and FLOP fraction, and the ratios."""
    rows = []
    keys = list(dict.fromkeys((m["shape"], m["stage"]) for m in measurements))
    for shape, stage in keys:
        ours = best(
            [m for m in measurements if (m["shape"], m["stage"], m["side"]) == (shape, stage, "rlhfkit")]
        )
        theirs = best(
            [m for m in measurements if (m["shape"], m["stage"], m["side"]) == (shape, stage, "trl")]
        )
        metric = (ours or theirs or {}).get("metric", "")
        peak_gflops = (peak.get(shape) or {}).get("gflops")
        row = {
            "shape": shape,
            "stage": stage,
            "metric": metric,
            "rlhfkit": value(ours),
            "trl": value(theirs),
            "rlhfkit_cpu": (ours or {}).get("cpu_value"),
            "trl_cpu": (theirs or {}).get("cpu_value"),
            "speedup": speedup(metric, value(ours), value(theirs)),
            # The same ratio on CPU seconds (one thread): far less sensitive to other load on a shared
            # machine.
            "speedup_cpu": speedup(metric, (ours or {}).get("cpu_value"), (theirs or {}).get("cpu_value")),
            "rss_rlhfkit_mb": (ours or {}).get("peak_rss_mb"),
            "rss_trl_mb": (theirs or {}).get("peak_rss_mb"),
            "mfu_rlhfkit": achieved_fraction(stage, shape, ours, stats, peak_gflops),
            "mfu_trl": achieved_fraction(stage, shape, theirs, stats, peak_gflops),
            "trl_note": (theirs or {}).get("error") or ("" if theirs else "TRL not measured"),
        }
        rss = row["rss_rlhfkit_mb"], row["rss_trl_mb"]
        row["rss_ratio"] = rss[0] / rss[1] if all(rss) and value(theirs) is not None else None
        if shape == TARGET_SHAPE:
            row["speed_target"], row["rss_target"] = SPEED_TARGETS[stage], RSS_TARGET
        rows.append(row)
    return rows


def value(m: dict | None):
    return None if m is None else m.get("value")


def best(runs: list[dict]) -> dict | None:
    """Of repeated runs of one side, the fastest (the least disturbed by other load)."""
    ok = [r for r in runs if r.get("value") is not None]
    if not ok:
        return runs[0] if runs else None
    return (
        min(ok, key=lambda r: r["value"])
        if ok[0]["metric"] == "s/iter"
        else max(ok, key=lambda r: r["value"])
    )


def _num(x, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def _ratio(x, target, higher_is_better: bool) -> str:
    if x is None:
        return "–"
    text = f"{x:.2f}×"
    if target is not None:
        met = x >= target if higher_is_better else x <= target
        text += f" ({'≥' if higher_is_better else '≤'}{target} {'met' if met else 'NOT met'})"
    return text


def _cell(row: dict, side: str) -> str:
    """A side's wall-clock value with its per-CPU-second value in brackets."""
    if row[side] is None:
        return "n/a" if side == "trl" else "–"
    fmt = ".2f" if row["metric"] in ("s/iter", "pairs/s") else ".0f"
    cpu = row.get(f"{side}_cpu")
    return _num(row[side], fmt) + ("" if cpu is None else f" ({_num(cpu, fmt)})")


def format_table(rows: list[dict]) -> str:
    """Markdown table; speed ratio is rlhfkit/TRL throughput (wall clock, then CPU time), RSS ratio
    rlhfkit/TRL peak RSS."""
    lines = [
        "| model | stage | metric, wall (per CPU second) | rlhfkit | TRL | speed rlhfkit/TRL | same, CPU "
        "time "
        "| peak RSS rlhfkit | peak RSS TRL "
        "| RSS rlhfkit/TRL | model FLOP/s of peak: rlhfkit | TRL |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['stage']} | {r['metric']} | {_cell(r, 'rlhfkit')} | {_cell(r, 'trl')} "
            f"| {_ratio(r['speedup'], r.get('speed_target'), True)} "
            f"| {_ratio(r.get('speedup_cpu'), r.get('speed_target'), True)} "
            f"| {_num(r['rss_rlhfkit_mb'], '.0f')} MB | {_num(r['rss_trl_mb'], '.0f')} MB "
            f"| {_ratio(r['rss_ratio'], r.get('rss_target'), False)} "
            f"| {_num(r['mfu_rlhfkit'], '.1%')} | {_num(r['mfu_trl'], '.1%')} |"
        )
    notes = sorted({f"{r['shape']} {r['stage']}: {r['trl_note']}" for r in rows if r["trl_note"]})
    return "\n".join(lines + ([""] + [f"- TRL {n}" for n in notes] if notes else []))


def result_path(out_dir: Path, now: datetime.datetime, host: str) -> Path:
    return out_dir / f"{now.strftime('%Y-%m-%d')}-{host}.json"


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- running


def run_child(cmd: list[str], env: dict, log: Path) -> dict | None:
    """Run one measuring process; its RESULT line, or None (log kept for the reason)."""
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    result = W.parse_result(proc.stdout)
    if result is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        print(
            f"bench: {' '.join(cmd[1:4])} failed (exit {proc.returncode}): {tail[0][:200]}; log {log}",
            flush=True,
        )
        return None
    result["load_avg_1m_before"] = round(load, 2)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(W.SHAPES), choices=list(W.SHAPES))
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument(
        "--trl-python",
        default=str(DEFAULT_TRL_VENV / "bin" / "python"),
        help="python of the TRL venv (make bench-setup); 'none' measures rlhfkit alone",
    )
    ap.add_argument(
        "--trl-ppo-path",
        default=str(DEFAULT_TRL_VENV / "trl112"),
        help="trl 1.12.0 side-installed with --target (the last TRL with PPO)",
    )
    ap.add_argument("--bpe", default=str(DEFAULT_TRL_VENV / "gpt2-bpe"), help="GPT-2 vocab/merges folder")
    ap.add_argument("--work", default=str(DEFAULT_WORK), help="models, data and logs")
    ap.add_argument(
        "--steps", type=int, help="steps per measurement for every stage (default: workload.STEPS)"
    )
    ap.add_argument("--repeats", type=int, default=1, help="runs per side; the fastest is kept")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--note", default="", help="free text stored in the JSON, e.g. 'machine shared with 3 others'"
    )
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument(
        "--retable", metavar="JSON", help="rebuild the table of a results file from its measurements"
    )
    return ap.parse_args(argv)


def retable(path: Path) -> int:
    """Rebuild the rows and table of a results file from its stored measurements."""
    payload = json.loads(path.read_text())
    payload["rows"] = build_rows(payload["measurements"], payload["matmul_peak"], payload["data_stats"])
    payload["table"] = format_table(payload["rows"])
    write_json(path, payload)
    print(payload["table"])
    return 0


def measure(
    args: argparse.Namespace, assets: Path, logs: Path, env: dict, trl_python: str | None
) -> list[dict]:
    """Every (shape, stage, side, repeat) in a fresh process; the measurements that came back."""
    measurements = []
    for shape in args.shapes:
        for stage in args.stages:
            steps = args.steps or W.STEPS[shape][stage]
            common = [
                "--assets",
                str(assets),
                "--shape",
                shape,
                "--stage",
                stage,
                "--steps",
                str(steps),
                "--threads",
                str(args.threads),
            ]
            for rep in range(args.repeats):
                sides = [("rlhfkit", [sys.executable, str(HERE / "side_rlhfkit.py"), *common], env)]
                if trl_python:
                    trl_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
                    if stage == "ppo":  # trl 1.12.0 first on the path: 1.13+ has no PPO
                        trl_env["PYTHONPATH"] = args.trl_ppo_path
                    sides.append(("trl", [trl_python, str(HERE / "side_trl.py"), *common], trl_env))
                for side, cmd, side_env in sides:
                    print(
                        f"bench: {shape} {stage} {side} ({steps} steps, run {rep + 1}/{args.repeats}) ...",
                        flush=True,
                    )
                    result = run_child(cmd, side_env, logs / f"{shape}-{stage}-{side}-{rep}.log")
                    if result is not None:
                        measurements.append(result)
                        shown = result.get("value")
                        print(
                            f"bench:   {result['metric']} {shown if shown is None else round(shown, 3)}, "
                            f"peak RSS {result['peak_rss_mb']:.0f} MB",
                            flush=True,
                        )
    return measurements


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.retable:
        return retable(Path(args.retable))
    work = Path(args.work)
    assets, logs = work / "assets", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    repo_src = HERE.parent / "src"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(repo_src), os.environ.get("PYTHONPATH", "")) if p),
    }
    trl_python = None if args.trl_python == "none" else args.trl_python
    if trl_python and not Path(trl_python).is_file():
        print(
            f"bench: no TRL python at {trl_python} (run `make bench-setup`); measuring rlhfkit alone",
            flush=True,
        )
        trl_python = None

    subprocess.run(
        [
            sys.executable,
            str(HERE / "make_assets.py"),
            "--bpe",
            args.bpe,
            "--out",
            str(assets),
            "--shapes",
            *args.shapes,
        ],
        check=True,
        env=env,
    )
    stats = json.loads((assets / "stats.json").read_text())
    peak_run = run_child(
        [sys.executable, str(HERE / "peak.py"), "--threads", str(args.threads), "--shapes", *args.shapes],
        env,
        logs / "peak.log",
    )
    peak = (peak_run or {}).get("peak", {})
    measurements = measure(args, assets, logs, env, trl_python)
    write_results(args, argv, measurements, peak, stats, trl_python)
    return 0


def write_results(
    args: argparse.Namespace,
    argv: list[str] | None,
    measurements: list[dict],
    peak: dict,
    stats: dict,
    trl_python: str | None,
) -> Path:
    """results/<date>-<host>.json with the table, and the table on stdout."""
    rows = build_rows(measurements, peak, stats)
    table = format_table(rows)
    now = datetime.datetime.now(datetime.timezone.utc)
    host = socket.gethostname()
    loads = [m["load_avg_1m_before"] for m in measurements]
    workload = (
        "WARMUP",
        "MAX_LENGTH",
        "SFT_BATCH",
        "RM_BATCH",
        "PPO_PROMPTS",
        "PPO_NEW_TOKENS",
        "PPO_EPOCHS",
        "GROUP_PROMPTS",
        "GROUP_SIZE",
        "GRPO_BETA",
        "RLOO_BETA",
        "DPO_BATCH",
        "DPO_BETA",
        "LORA",
        "LR",
    )
    payload = {
        "date": now.isoformat(timespec="seconds"),
        "host": host,
        "note": args.note,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "load_avg_1m_before_runs": [min(loads, default=0), max(loads, default=0)],
        },
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "trl_python": trl_python,
        "workload": {k: getattr(W, k) for k in workload},
        "data_stats": stats,
        "matmul_peak": peak,
        "rows": rows,
        "measurements": measurements,
        "table": table,
    }
    path = result_path(Path(args.out), now, host)
    write_json(path, payload)
    print()
    print(table)
    print(
        f"\nmatmul peak (fp32, {args.threads} threads): "
        + ", ".join(f"{s} {p['gflops']:.1f} GFLOP/s" for s, p in peak.items())
        + f"; load average before runs {payload['machine']['load_avg_1m_before_runs']}"
    )
    print(f"bench: wrote {path}")
    return path


if __name__ == "__main__":
    sys.exit(main())
