"""report.md + plots/ for a pipeline run: the headline table, best-of-n, training curves, gold
score against sqrt(KL) (the picture of Gao et al. 2022), the health-check summary and completions.

Training numbers are read from each stage's metrics.jsonl (the test checks the report against them).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt

from rlhfkit.atomic import atomic_write_text
from rlhfkit.evaluate.compare import EvalResult
from rlhfkit.run import metrics as M

HEADLINE = [
    ("gold", "gold score"),
    ("reward", "RM score"),
    ("kl", "KL to SFT (nats)"),
    ("bleu", "BLEU"),
    ("response_len", "length (tokens)"),
    ("eos_rate", "EOS rate"),
]


def series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) for every row that logged `key` with a finite number."""
    return [
        (r["step"], float(r[key]))
        for r in rows
        if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    ]


def first_last(rows: list[dict], key: str) -> tuple[float, float] | None:
    points = series(rows, key)
    return (points[0][1], points[-1][1]) if points else None


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def training_rows(metrics: dict[str, list[dict]]) -> list[tuple[str, str, float | None, float | None]]:
    """(stage, metric, first, last) for the training-summary table, straight from metrics.jsonl."""
    wanted = {
        "sft": [M.EVAL_LOSS, M.GOLD_SCORE_GREEDY, M.EVAL_BLEU],
        "rm": [M.RM_ACCURACY, M.RM_GOLD_AGREEMENT, M.RM_GOLD_CORRELATION, M.RM_GOLD_PAIR_CORRELATION],
        "ppo": [
            M.PPO_REWARD_RM,
            M.PPO_KL_K1,
            M.PPO_KL_K3,
            M.PPO_KL_EXACT,
            M.GOLD_SCORE,
            M.PPO_RATIO_FIRST,
            M.PPO_RESPONSE_LEN,
            M.PPO_EOS_RATE,
        ],
    }
    out = []
    for stage, keys in wanted.items():
        for key in keys:
            pair = first_last(metrics.get(stage, []), key)
            if pair is not None:
                out.append((stage, key, *pair))
    return out


def health_summary(ppo_rows: list[dict]) -> list[str]:
    return [f"iteration {r['step']}: {r[M.HEALTH_WARNING]}" for r in ppo_rows if M.HEALTH_WARNING in r]


def headline_keys(result: EvalResult) -> list[tuple[str, str]]:
    return [(k, name) for k, name in HEADLINE if any(k in m for m in result.metrics.values())]


def headline_table(result: EvalResult, labels: dict[str, str], first_column: str = "policy") -> list[str]:
    """One markdown row per policy: the HEADLINE metrics any policy has (gold only on built-in tasks ...)."""
    keys = headline_keys(result)
    lines = [
        f"| {first_column} | " + " | ".join(name for _, name in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    lines += [
        f"| {labels.get(policy, policy)} | " + " | ".join(fmt(m.get(k)) for k, _ in keys) + " |"
        for policy, m in result.metrics.items()
    ]
    return lines


def gain_line(pair: str, gain: tuple[float, float], prompts: int) -> str:
    mean, stderr = gain
    return (
        f"- Gold gain {pair}: {mean:+.3f} ± {stderr:.3f} (standard error over {prompts} prompts, "
        "paired samples)."
    )


def best_of_n_table(rows: list[dict[str, float]]) -> list[str]:
    """KL: the estimate from the drawn samples (compare.best_of_n_kl) beside the usual bound."""
    return [
        "| n | gold score | RM score | KL (estimate from the draws) | bound log n − (n−1)/n |",
        "|---|---|---|---|---|",
        *[
            f"| {r['n']} | {fmt(r['gold'])} | {fmt(r['reward'])} | {fmt(r['kl'])} | {fmt(r['kl_bound'])} |"
            for r in rows
        ],
    ]


def write_report(
    out_dir: str | Path,
    title: str,
    result: EvalResult,
    metrics: dict[str, list[dict]],
    facts: list[str],
    labels: dict[str, str],
    show: int = 6,
    frontier: tuple[str, ...] = (),
) -> Path:
    """Write out_dir/report.md and out_dir/plots/*.png; `labels` maps policy names to table labels;
    `frontier` names the policies drawn on the gold-against-√KL plot beside best-of-n."""

    out_dir = Path(out_dir)
    plots = plot_all(out_dir / "plots", result, metrics, frontier, labels)
    lines = [f"# {title}", "", *[f"- {fact}" for fact in facts], "", "## Headline", ""]
    keys = headline_keys(result)
    lines += headline_table(result, labels)
    if result.best_of_n:
        best = result.best_of_n[-1]
        lines.append(
            f"| best-of-{best['n']} (SFT samples reranked by the RM) | {fmt(best['gold'])} | "
            f"{fmt(best['reward'])} | "
            f"{fmt(best['kl'])} |" + " – |" * (len(keys) - 3)
        )
    lines.append("")
    for pair, rates in result.win_rates.items():
        lines.append(
            f"- Win rate {pair}: "
            + ", ".join(f"{fmt(v)} by the {'gold judge' if k == 'gold' else 'RM'}" for k, v in rates.items())
            + " (ties count half)."
        )
    lines += [gain_line(pair, gain, result.n_prompts) for pair, gain in result.gold_gains.items()]
    if result.best_of_n:
        lines += [
            "",
            "## Best-of-n from the SFT policy, reranked by the RM",
            "",
            *best_of_n_table(result.best_of_n),
        ]
    lines += [
        "",
        "## Training (first → last logged value, from each stage's metrics.jsonl)",
        "",
        "| stage | metric | first | last |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {stage} | {key} | {fmt(first)} | {fmt(last)} |"
        for stage, key, first, last in training_rows(metrics)
    ]
    lines += ["", *[f"![{p.stem}](plots/{p.name})" for p in plots], "", "## Health check", ""]
    warnings = health_summary(metrics.get("ppo", []))
    lines += (
        [f"- {w}" for w in warnings]
        if warnings
        else ["No warnings: every rule of docs/ppo-health.md stayed quiet."]
    )
    lines += ["", f"## Side by side (first {show} held-out prompts, one sample each)", ""]
    k = result.samples_per_prompt
    names = list(result.samples)
    lines += [
        "| prompt | " + " | ".join(labels.get(n, n) for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    first = result.samples[names[0]]
    for i in range(0, min(show * k, len(first.prompts)), k):
        cells = [_cell(first.prompts[i])] + [_cell(_with_gold(result.samples[n], i)) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report


def plot_all(
    folder: Path,
    result: EvalResult,
    metrics: dict[str, list[dict]],
    frontier: tuple[str, ...] = (),
    labels: dict[str, str] | None = None,
) -> list[Path]:
    """training.png (every stage's curves) and gold_vs_kl.png (best-of-n and the `frontier` policies)."""
    matplotlib.use("Agg")  # files only: no display on a training machine
    folder.mkdir(parents=True, exist_ok=True)
    return [
        plot_training(folder / "training.png", metrics),
        plot_frontier(folder / "gold_vs_kl.png", result, metrics, frontier, labels or {}),
    ]


def plot_training(path: Path, metrics: dict[str, list[dict]]) -> Path:
    """Six panels: SFT loss, RM accuracy, and PPO's reward, KL (k1, k3, exact), gold and length."""
    panels = [
        ("sft", M.EVAL_LOSS, "SFT held-out loss", "loss (nats/token)", "step"),
        ("rm", M.RM_ACCURACY, "RM held-out accuracy", "accuracy vs noisy labels", "step"),
        ("ppo", M.PPO_REWARD_RM, "PPO reward (normalised RM score)", "mean reward", "iteration"),
        ("ppo", M.PPO_KL_K1, "PPO KL to the reference", "KL (nats / sequence)", "iteration"),
        ("ppo", M.GOLD_SCORE, "PPO held-out gold score (sampled)", "gold score [-1, 1]", "iteration"),
        ("ppo", M.PPO_RESPONSE_LEN, "PPO response length", "tokens", "iteration"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (stage, key, title, ylabel, xlabel) in zip(axes.flat, panels):
        rows = metrics.get(stage, [])
        extra = [(M.PPO_KL_K3, "k3"), (M.PPO_KL_EXACT, "exact")] if key == M.PPO_KL_K1 else []
        extra += [(M.RM_GOLD_AGREEMENT, "agreement with the noiseless judge")] if key == M.RM_ACCURACY else []
        for k, label in [(key, key.split("/")[-1] if extra else None), *extra]:
            points = series(rows, k)
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=label)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        if extra:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_frontier(
    path: Path,
    result: EvalResult,
    metrics: dict[str, list[dict]],
    frontier: tuple[str, ...],
    labels: dict[str, str],
) -> Path:
    """Held-out gold against √KL to SFT: best-of-n, PPO's training evals, and the final policies."""
    fig, ax = plt.subplots(figsize=(7, 5))
    if result.best_of_n:
        ns = ", ".join(str(r["n"]) for r in result.best_of_n)
        ax.plot(
            [math.sqrt(r["kl"]) for r in result.best_of_n],
            [r["gold"] for r in result.best_of_n],
            marker="o",
            label=f"best-of-n from SFT (KL estimated from the draws; n = {ns})",
        )
    # PPO's checkpoints: the held-out gold it logs every ppo.eval_every iterations is sampled at the
    # rollout temperature like the points below; its KL is k1 on that iteration's training prompts.
    # The step-0 record (the starting policy, before any update) sits at KL 0.
    checkpoints = [
        (math.sqrt(max(r.get(M.PPO_KL_K1, 0.0), 0.0)), r[M.GOLD_SCORE])
        for r in metrics.get("ppo", [])
        if M.GOLD_SCORE in r and (M.PPO_KL_K1 in r or r.get("step") == 0)
    ]
    if checkpoints:
        ax.plot(
            *zip(*checkpoints),
            marker=".",
            linestyle="--",
            label="PPO during training (every ppo.eval_every iterations)",
        )
    # The base model (KL ~ tens of nats) is left out: it would squash the axis.
    for name in frontier:
        m = result.metrics.get(name, {})
        if "kl" in m and "gold" in m:
            ax.scatter(
                [math.sqrt(max(m["kl"], 0.0))],
                [m["gold"]],
                marker="*",
                s=200,
                zorder=3,
                label=f"{labels.get(name, name)} (KL {m['kl']:.2f} nats)",
            )
    ax.set(
        title="Gold score against KL from the SFT policy", xlabel="√KL (√nats)", ylabel="held-out gold score"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _with_gold(samples, i: int) -> str:
    return samples.responses[i] + (f" [gold {samples.gold[i]:.2f}]" if samples.gold is not None else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:120] or "(empty)"
