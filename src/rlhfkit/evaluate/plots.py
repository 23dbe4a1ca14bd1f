"""The pipeline report's plots (files only, no display): training curves, the gold-against-√KL frontier
of every method, and the over-optimisation picture of the online methods' training-time evals."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt

from rlhfkit.evaluate.frontier import MethodCurve, gao_curve, gold_peak
from rlhfkit.run import metrics as M

OFFLINE = ("sft", "rm", "dpo")
"""Stages of a pipeline's metrics that are not online methods (every other one is: ppo, grpo, ...)."""


def series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) for every row that logged `key` with a finite number."""
    return [
        (r["step"], float(r[key]))
        for r in rows
        if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    ]


def online_stages(metrics: dict[str, list[dict]]) -> list[str]:
    return [stage for stage in metrics if stage not in OFFLINE]


def plot_all(
    folder: Path, metrics: dict[str, list[dict]], curves: list[MethodCurve], sft_gold: float | None
) -> list[Path]:
    """training.png, gold_vs_kl.png and, when an online method logged held-out evals,
    overoptimisation.png."""
    matplotlib.use("Agg")  # files only: no display on a training machine
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_training(folder / "training.png", metrics, curves, sft_gold),
        plot_frontier(folder / "gold_vs_kl.png", curves, sft_gold),
    ]
    peaks = {s: p for s in online_stages(metrics) if (p := gold_peak(metrics[s], M.online(s)[M.PPO_KL_K1]))}
    if peaks:
        paths.append(plot_overoptimisation(folder / "overoptimisation.png", metrics, peaks))
    return paths


def plot_training(
    path: Path, metrics: dict[str, list[dict]], curves: list[MethodCurve] = (), sft_gold: float | None = None
) -> Path:
    """Six panels: SFT loss, RM accuracy, and each method's reward, KL, held-out gold and length. When
    no stage evaluated held-out gold while training (the demo leaves that to the pipeline), the gold
    panel shows the pipeline's one evaluation of each method's checkpoints by step instead."""
    panels = [
        (M.EVAL_LOSS, "SFT held-out loss", "loss (nats/token)", "step"),
        (M.RM_ACCURACY, "RM held-out accuracy", "accuracy vs noisy labels", "step"),
        (M.PPO_REWARD_RM, "Online reward (normalised RM score)", "mean reward", "iteration"),
        (M.PPO_KL_K1, "KL to the SFT policy (k1)", "KL (nats / sequence)", "iteration / step"),
        (M.GOLD_SCORE, "Held-out gold score (sampled)", "gold score [-1, 1]", "iteration / step"),
        (M.PPO_RESPONSE_LEN, "Response length", "tokens", "iteration"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (key, title, ylabel, xlabel) in zip(axes.flat, panels):
        lines = panel_lines(metrics, key)
        if key == M.GOLD_SCORE and not lines:
            lines = checkpoint_gold_lines(curves, sft_gold)
            title = "Held-out gold of each checkpoint (the pipeline's evaluation)"
        for label, points in lines:
            ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=label)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def panel_lines(metrics: dict[str, list[dict]], key: str) -> list[tuple[str, list]]:
    """(label, points) of every stage that logged `key` (an online method under its own prefix; DPO's
    KL as dpo/kl_k1)."""
    if key == M.EVAL_LOSS:
        wanted = [("sft", "sft", M.EVAL_LOSS)]
    elif key == M.RM_ACCURACY:
        wanted = [
            ("rm", "accuracy", M.RM_ACCURACY),
            ("rm", "agreement with the noiseless judge", M.RM_GOLD_AGREEMENT),
        ]
    else:
        stages = online_stages(metrics)
        wanted = [(s, s, M.online(s).get(key, key)) for s in stages]
        if key == M.PPO_KL_K1 and len(stages) == 1:  # one method: its k1 beside its k3 and exact KL
            names = M.online(stages[0])
            wanted += [
                (stages[0], f"{stages[0]} {k.split('_')[-1]}", names[k])
                for k in (M.PPO_KL_K3, M.PPO_KL_EXACT)
            ]
        if key == M.PPO_KL_K1:
            wanted.append(("dpo", "dpo", M.DPO_KL_K1))
        if key == M.GOLD_SCORE:
            wanted.append(("dpo", "dpo", M.GOLD_SCORE))
    lines = [(label, series(metrics.get(stage, []), k)) for stage, label, k in wanted]
    return [(label, points) for label, points in lines if points]


def checkpoint_gold_lines(curves: list[MethodCurve], sft_gold: float | None) -> list[tuple[str, list]]:
    """(label, (step, gold) points) per method from the one evaluation, starting at SFT (step 0)."""
    lines = []
    for curve in curves:
        points = [(p.step, p.gold) for p in curve.points if p.step is not None]
        if points:
            lines.append((curve.label, ([(0, sft_gold)] if sft_gold is not None else []) + points))
    return lines


def plot_frontier(path: Path, curves: list[MethodCurve], sft_gold: float | None) -> Path:
    """Held-out gold against √KL to SFT, from the one evaluation: best-of-n and each method's curve from
    SFT through its kept checkpoints to its final policy (a star), each with its fitted Gao et al. form."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, curve in enumerate(c for c in curves if c.points):
        colour = colours[i % len(colours)]
        ds, golds = [p.d for p in curve.points], [p.gold for p in curve.points]
        if curve.form == "rl" and sft_gold is not None:
            ds, golds = [0.0, *ds], [sft_gold, *golds]  # every method starts at the SFT policy
        ax.plot(ds, golds, marker="o", markersize=4, color=colour, label=curve.label)
        for p in curve.points:
            if p.final:
                ax.scatter([p.d], [p.gold], marker="*", s=220, color=colour, edgecolor="black", zorder=3)
        fit = curve.fit
        if fit is not None and sft_gold is not None:
            top = max(ds) * 1.1
            grid = [top * j / 60 for j in range(61)]
            ax.plot(
                grid,
                [sft_gold + gao_curve(d, *fit, curve.form) for d in grid],
                linestyle="--",
                linewidth=1,
                color=colour,
                label=f"{curve.label} fit: α {fit[0]:.3f}, β {fit[1]:.3f}",
            )
    if sft_gold is not None:
        ax.scatter([0.0], [sft_gold], marker="X", s=90, color="black", zorder=4, label="SFT")
    ax.set(
        title="Gold score against KL from the SFT policy (★ final policy)",
        xlabel="√KL to SFT (√nats; best-of-n: KL estimated from the draws)",
        ylabel="held-out gold score",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def warning_lines(steps: list[int]) -> list[tuple[int, str]]:
    """(iteration, legend label) per reward-hacking warning: one legend entry for all of them (a lasting
    symptom repeats every health window, and one entry per repeat buried the plot's own lines)."""
    if not steps:
        return []
    first = (
        f"reward-hacking warning (iteration {steps[0]})"
        if len(steps) == 1
        else (f"reward-hacking warnings ({len(steps)}, from iteration {steps[0]})")
    )
    return [(step, first if i == 0 else "_nolegend_") for i, step in enumerate(steps)]


def plot_overoptimisation(path: Path, metrics: dict[str, list[dict]], peaks: dict[str, dict]) -> Path:
    """Per online method, its training-time held-out evals: gold (left axis) and the RM's reward of the
    same samples (right axis) against the iteration; the gold peak starred, each reward-hacking warning
    of the health check a vertical line."""
    fig, axes = plt.subplots(1, len(peaks), figsize=(7 * len(peaks), 4.5), squeeze=False)
    for ax, (stage, peak) in zip(axes[0], peaks.items()):
        rows = metrics[stage]
        gold, reward = series(rows, M.GOLD_SCORE), series(rows, M.HELDOUT_REWARD_RM)
        ax.plot(*zip(*gold), marker="o", markersize=4, color="tab:blue", label="held-out gold")
        p = peak["peak"]
        ax.scatter([p["step"]], [p["gold"]], marker="*", s=250, color="tab:blue", edgecolor="black", zorder=3)
        ax.annotate(
            f"peak: iteration {p['step']}\ngold {p['gold']:.3f}, KL {p['kl']:.2f}",
            (p["step"], p["gold"]),
            textcoords="offset points",
            xytext=(10, -24),
            fontsize=8,
        )
        for step, label in warning_lines(peak["warnings"]):
            ax.axvline(step, color="tab:red", linestyle=":", label=label)
        ax.set(
            title=f"{stage}: gold and RM reward on held-out prompts", xlabel="iteration", ylabel="gold score"
        )
        right = ax.twinx()
        right.plot(*zip(*reward), linestyle="--", color="tab:orange", label="held-out RM reward")
        right.set_ylabel("RM reward (normalised)")
        handles = ax.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
