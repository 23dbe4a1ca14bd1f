"""report.md for a pipeline run: the headline table, best-of-n, the frontier of every method (gold
against sqrt(KL), the picture of Gao et al. 2022, with the fitted forms, the gold each method reaches
within a KL budget and its cost), over-optimisation in the online methods' training-time evals, training
curves, the health-check summary and completions. The plots are evaluate/plots.py's.

Training numbers are read from each stage's metrics.jsonl (the test checks the report against them).
"""

from __future__ import annotations

import math
from pathlib import Path

from rlhfkit.atomic import atomic_write_text
from rlhfkit.evaluate.compare import EvalResult
from rlhfkit.evaluate.frontier import KL_BUDGETS, MIN_FIT_POINTS, MethodCurve, best_within, gold_peak
from rlhfkit.evaluate.health import HACKING_DROP_Z
from rlhfkit.evaluate.plots import online_stages, plot_all, series
from rlhfkit.run import metrics as M

HEADLINE = [
    ("gold", "gold score"),
    ("reward", "RM score"),
    ("kl", "KL to SFT (nats)"),
    ("bleu", "BLEU"),
    ("response_len", "length (tokens)"),
    ("eos_rate", "EOS rate"),
]


def first_last(rows: list[dict], key: str) -> tuple[float, float] | None:
    points = series(rows, key)
    return (points[0][1], points[-1][1]) if points else None


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


ONLINE_TRAINING_KEYS = [
    M.PPO_REWARD_RM,
    M.PPO_KL_K1,
    M.PPO_KL_K3,
    M.PPO_KL_EXACT,
    M.GOLD_SCORE,
    M.PPO_RATIO_FIRST,
    M.PPO_RESPONSE_LEN,
    M.PPO_EOS_RATE,
]


def training_rows(metrics: dict[str, list[dict]]) -> list[tuple[str, str, float | None, float | None]]:
    """(stage, metric, first, last) for the training-summary table, straight from metrics.jsonl; an online
    method's names carry its own prefix (grpo/kl_k1)."""
    wanted = {
        "sft": [M.EVAL_LOSS, M.GOLD_SCORE_GREEDY, M.EVAL_BLEU],
        "rm": [M.RM_ACCURACY, M.RM_GOLD_AGREEMENT, M.RM_GOLD_CORRELATION, M.RM_GOLD_PAIR_CORRELATION],
        "dpo": [M.DPO_LOSS, M.DPO_EVAL_ACCURACY, M.DPO_KL_K1, M.GOLD_SCORE],
    }
    for stage in online_stages(metrics):
        names = M.online(stage)
        wanted[stage] = [names.get(key, key) for key in ONLINE_TRAINING_KEYS]
    out = []
    for stage, keys in wanted.items():
        for key in keys:
            pair = first_last(metrics.get(stage, []), key)
            if pair is not None:
                out.append((stage, key, *pair))
    return out


def health_summary(rows: list[dict], stage: str = "ppo") -> list[str]:
    return [f"{stage}, iteration {r['step']}: {r[M.HEALTH_WARNING]}" for r in rows if M.HEALTH_WARNING in r]


def headline_keys(result: EvalResult) -> list[tuple[str, str]]:
    return [(k, name) for k, name in HEADLINE if any(k in m for m in result.metrics.values())]


def headline_table(
    result: EvalResult, labels: dict[str, str], first_column: str = "policy", names: list[str] | None = None
) -> list[str]:
    """One markdown row per policy (`names`, default all): the HEADLINE metrics any policy has (gold only
    on built-in tasks ...)."""
    keys = headline_keys(result)
    lines = [
        f"| {first_column} | " + " | ".join(name for _, name in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    lines += [
        f"| {labels.get(policy, policy)} | " + " | ".join(fmt(m.get(k)) for k, _ in keys) + " |"
        for policy, m in result.metrics.items()
        if names is None or policy in names
    ]
    return lines


def gain_line(pair: str, gain: tuple[float, float], prompts: int) -> str:
    mean, stderr = gain
    return (
        f"- Gold gain {pair}: {mean:+.3f} ± {stderr:.3f} (standard error over {prompts} prompts, "
        "paired samples)."
    )


def best_of_n_table(rows: list[dict[str, float]]) -> list[str]:
    """KL: the estimate from the drawn samples (compare.best_of_n_kl) beside the usual bound; the gold gain
    over the reference is paired by prompt when the evaluation computed it."""
    gains = any("gain" in r for r in rows)
    return [
        "| n | gold score | RM score | KL (estimate from the draws) | bound log n − (n−1)/n |"
        + (" gold gain over SFT ± s.e. |" if gains else ""),
        "|---|---|---|---|---|" + ("---|" if gains else ""),
        *[
            f"| {r['n']} | {fmt(r['gold'])} | {fmt(r['reward'])} | {fmt(r['kl'])} | {fmt(r['kl_bound'])} |"
            + (f" {_gain(r.get('gain'), r.get('gain_stderr'))} |" if gains else "")
            for r in rows
        ],
    ]


def rm_agreement_line(agreement: dict[str, float] | None) -> list[str]:
    if not agreement or not agreement["pairs"]:
        return []
    return [
        "",
        f"- The RM orders two of these SFT draws of a held-out prompt as the noiseless gold judge does "
        f"in {fmt(agreement['agreement'])} ± {fmt(agreement['stderr'])} of {agreement['pairs']} pairs that "
        f"the judge does not tie ({agreement['prompts']} prompts; an RM tie counts half): the reward "
        "model's accuracy on the responses best-of-n and RL rank.",
    ]


def write_report(
    out_dir: str | Path,
    title: str,
    result: EvalResult,
    metrics: dict[str, list[dict]],
    facts: list[str],
    labels: dict[str, str],
    show: int = 6,
    curves: list[MethodCurve] = (),
    headline: list[str] | None = None,
    failed: dict[str, str] | None = None,
) -> Path:
    """Write out_dir/report.md and out_dir/plots/*.png; `labels` maps policy names to table labels;
    `headline` names the policies of the headline table (default all); `curves` are the frontier's
    (best-of-n and each method's points); `failed` maps a method that failed to its error line."""

    out_dir = Path(out_dir)
    sft_gold = result.metrics.get("sft", {}).get("gold")
    plots = plot_all(out_dir / "plots", metrics, list(curves), sft_gold)
    names = headline if headline is not None else list(result.metrics)
    lines = [f"# {title}", "", *[f"- {fact}" for fact in facts], ""]
    if failed:
        lines += ["## Failed methods", ""]
        lines += [f"- **{labels.get(m, m)} failed**: {error}" for m, error in failed.items()]
        lines += ["", "Every table below has the methods that finished; the run exited non-zero.", ""]
    lines += ["## Headline", "", *headline_table(result, labels, names=names)]
    if result.best_of_n:
        best, keys = result.best_of_n[-1], headline_keys(result)
        lines.append(
            f"| best-of-{best['n']} (SFT samples reranked by the RM) | {fmt(best['gold'])} | "
            f"{fmt(best['reward'])} | {fmt(best['kl'])} |" + " – |" * (len(keys) - 3)
        )
    lines.append("")
    for pair, rates in result.win_rates.items():
        if pair.split(" vs ")[0] in names:
            lines.append(
                f"- Win rate {pair}: "
                + ", ".join(
                    f"{fmt(v)} by the {'gold judge' if k == 'gold' else 'RM'}" for k, v in rates.items()
                )
                + " (ties count half)."
            )
    lines += [
        gain_line(pair, gain, result.n_prompts)
        for pair, gain in result.gold_gains.items()
        if pair.split(" vs ")[0] in names
    ]
    if result.best_of_n:
        lines += [
            "",
            "## Best-of-n from the SFT policy, reranked by the RM",
            "",
            *best_of_n_table(result.best_of_n),
            *rm_agreement_line(result.rm_agreement),
        ]
    lines += frontier_section(list(curves), labels, plots)
    lines += overoptimisation_section(metrics, labels)
    lines += training_section(metrics, plots)
    lines += side_by_side(result, labels, [n for n in names if n in result.samples], show)
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report


def frontier_section(curves: list[MethodCurve], labels: dict[str, str], plots: list[Path]) -> list[str]:
    """The gold_vs_kl plot, every point, the fitted forms, gold within KL budgets and each method's cost."""
    if not curves:
        return []
    lines = ["", "## Frontier: gold against √KL, every method on the same prompts and random numbers", ""]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots if p.stem == "gold_vs_kl"]
    lines += [
        "",
        "| method | point | KL to SFT | √KL | gold | gold gain over SFT ± s.e. |",
        "|---|---|---|---|---|---|",
    ]
    for c in curves:
        lines += [
            f"| {c.label} | {p.label}{' ★' if p.final else ''} | {fmt(p.kl)} | {fmt(p.d)} | {fmt(p.gold)} | "
            f"{_gain(p.gain, p.stderr)} |"
            for p in c.points
        ]
    lines += [
        "",
        "Gao et al. 2022's forms fitted by least squares to the gain R over SFT, d = √KL: best-of-n "
        "R(d) = d(α − βd), RL methods R(d) = d(α − β log d) (R(0) = 0 by form).",
        "",
        "| method | form | points (d > 0) | α | β |",
        "|---|---|---|---|---|",
    ]
    for c in curves:
        fit, used = c.fit, sum(1 for p in c.points if p.d > 0)
        shown = f"{fmt(fit[0])} | {fmt(fit[1])}" if fit else f"not enough points (< {MIN_FIT_POINTS}) | –"
        form = "d(α − βd)" if c.form == "best_of_n" else "d(α − β log d)"
        lines.append(f"| {c.label} | {form} | {used} | {shown} |")
    lines += [
        "",
        "Gold reached within a KL budget: the best *measured* point with KL ≤ the budget (not interpolated; "
        "the best of a few noisy points leans a little high), SFT itself (KL 0) when no point is within it.",
        "",
        "| method | " + " | ".join(f"KL ≤ {b:g}" for b in KL_BUDGETS) + " |",
        "|---" * (len(KL_BUDGETS) + 1) + "|",
    ]
    for c in curves:
        cells = []
        for budget in KL_BUDGETS:
            p = best_within(c.points, budget)
            cells.append("SFT" if p is None else f"{fmt(p.gold)} ({p.label}, KL {p.kl:.2f})")
        lines.append(f"| {c.label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cost: wall seconds of training (pipeline.json), samples the policy generated in training (rollouts) "
        "and in its own held-out evals during training. Best-of-n draws its samples at evaluation time.",
        "",
        "| method | wall s | training samples | held-out eval samples | note |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {c.label} | {'–' if c.seconds is None else f'{c.seconds:.0f}'} | {fmt(c.train_samples)} | "
        f"{fmt(c.eval_samples)} | {c.note} |"
        for c in curves
        if c.stage != "best_of_n"
    ]
    return lines


def overoptimisation_section(metrics: dict[str, list[dict]], labels: dict[str, str]) -> list[str]:
    """One sentence per online method on its training-time held-out evals: gold's peak against the RM's
    reward of the same samples, and the health check's reward-hacking warnings."""
    lines = []
    for stage in online_stages(metrics):
        peak = gold_peak(metrics[stage], M.online(stage)[M.PPO_KL_K1])
        if peak is not None:
            lines.append(f"- {overoptimisation_sentence(labels.get(stage, stage), peak)}")
    if not lines:
        return []
    return [
        "",
        "## Over-optimisation (the online methods' held-out evals during training)",
        "",
        "![overoptimisation](plots/overoptimisation.png)",
        "",
        *lines,
    ]


def overoptimisation_sentence(label: str, peak: dict) -> str:
    """Gold's peak and what the RM reward did before and after it, in one sentence (frontier.gold_peak)."""
    first, top, last = peak["first"], peak["peak"], peak["last"]
    text = (
        f"{label}: held-out gold peaked at iteration {top['step']} (gold {top['gold']:.3f}, KL "
        f"{top['kl']:.2f} nats, RM reward {top['reward']:.3f}), from gold {first['gold']:.3f} and RM reward "
        f"{first['reward']:.3f} at iteration {first['step']}"
    )
    if peak["fell"]:
        drop, error = top["gold"] - last["gold"], peak["drop_stderr"]
        text += (
            f"; by iteration {last['step']} gold fell {drop:.3f}"
            + (f" ± {error:.3f}" if error is not None else "")
            + f" to {last['gold']:.3f} (KL {last['kl']:.2f}) while the RM reward went {top['reward']:.3f} → "
            f"{last['reward']:.3f}"
        )
        # The health check's threshold for a real fall from the best of several evals (evaluate/health.py).
        real = error is not None and drop > HACKING_DROP_Z * error
        if not real:
            text += f" (within {HACKING_DROP_Z:g} standard errors: not a fall this run can tell from noise)."
        elif last["reward"] > top["reward"]:
            text += ": the RM kept rising after gold peaked (over-optimisation)."
        else:
            text += "."
    else:
        text += "; the peak is the last eval: no fall of gold within this run."
    if peak["warnings"]:
        steps = ", ".join(map(str, peak["warnings"]))
        text += f" The health check's reward-hacking warning fired at iteration {steps}."
    return text


def training_section(metrics: dict[str, list[dict]], plots: list[Path]) -> list[str]:
    lines = [
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
    lines += ["", *[f"![{p.stem}](plots/{p.name})" for p in plots if p.stem == "training"]]
    lines += ["", "## Health check", ""]
    warnings = [w for stage in online_stages(metrics) for w in health_summary(metrics[stage], stage)]
    lines += (
        [f"- {w}" for w in warnings]
        if warnings
        else ["No warnings: every rule of docs/ppo-health.md stayed quiet."]
    )
    return lines


def side_by_side(result: EvalResult, labels: dict[str, str], names: list[str], show: int) -> list[str]:
    """The first `show` held-out prompts, each policy's first draw."""
    lines = ["", f"## Side by side (first {show} held-out prompts, one sample each)", ""]
    lines += [
        "| prompt | " + " | ".join(labels.get(n, n) for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    first = result.samples[names[0]]
    k = result.draws.get(names[0], result.samples_per_prompt)
    for i in range(min(show, len(first.prompts) // k)):
        cells = [_cell(first.prompts[i * k])]
        cells += [_cell(_with_gold(result.samples[n], i * result.draws.get(n, k))) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _gain(mean, stderr) -> str:
    if mean is None or not math.isfinite(mean):
        return "–"
    return f"{mean:+.3f} ± {stderr:.3f}" if stderr is not None and math.isfinite(stderr) else f"{mean:+.3f}"


def _with_gold(samples, i: int) -> str:
    return samples.responses[i] + (f" [gold {samples.gold[i]:.2f}]" if samples.gold is not None else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:120] or "(empty)"
