"""`rlhfkit pipeline`: SFT -> preference pairs -> RM -> PPO -> evaluation -> report, one run folder.

A stage whose output is complete (`final/`, or the pairs file) is skipped and a partial one is
resumed from its latest checkpoint, so rerunning the same command after a crash continues.
Every stage config is loaded (and type-checked) before any work starts: a typo in ppo.yaml fails
in a second, not after the SFT stage.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.atomic import atomic_write_text
from rlhfkit.config import (
    PipelineConfig,
    PPOConfig,
    PrefsConfig,
    RMConfig,
    SFTConfig,
    load_config,
)
from rlhfkit.data.labelling import format_summary, make_preferences
from rlhfkit.errors import ConfigError
from rlhfkit.evaluate.compare import EvalSettings
from rlhfkit.evaluate.policies import evaluate_policies
from rlhfkit.evaluate.report import write_report
from rlhfkit.run.logger import read_metrics
from rlhfkit.trainers.ppo import train_ppo
from rlhfkit.trainers.rm import train_rm
from rlhfkit.trainers.sft import train_sft

STAGES = ("sft", "prefs", "rm", "ppo")


@dataclass
class PipelinePlan:
    root: Path
    sft: SFTConfig
    prefs: PrefsConfig
    rm: RMConfig
    ppo: PPOConfig
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """`sft.train.lr=1e-4` goes to the sft stage; `eval.prompts=32` or `sft=x.yaml` to the pipeline."""
    own, staged = [], {stage: [] for stage in STAGES}
    for item in overrides:
        head, dot, rest = item.partition(".")
        if head in STAGES and dot and "=" in rest and rest.index("=") > 0:
            staged[head].append(rest)
        else:
            own.append(item)
    return own, staged


def plan_pipeline(
    cfg: PipelineConfig, config_path: str | Path | None, staged: dict[str, list[str]]
) -> PipelinePlan:
    """Every stage's config, wired to the previous stage's output (the wiring wins over the files)."""
    here = Path(config_path).parent if config_path else Path(".")
    root = Path(cfg.dir) / cfg.name
    run = [f"run.name={cfg.name}", f"run.dir={cfg.dir}"]
    sft_dir, prefs_file, rm_dir = root / "sft", root / "prefs.jsonl", root / "rm"

    def load(cls, stage: str, wiring: list[str]):
        path = here / getattr(cfg, stage)
        if not path.is_file():
            raise ConfigError(
                f"{config_path}: {stage}: {path} not found (stage config paths are relative to the "
                f"pipeline file)"
            )
        return load_config(cls, path, [*staged.get(stage, []), *wiring])

    sft = load(SFTConfig, "sft", run)
    # Every later stage renders prompts as the SFT model learned them, so the RM is trained on the
    # format the policy samples in and PPO scores.
    template = sft.data.template
    return PipelinePlan(
        root=root,
        sft=sft,
        prefs=load(PrefsConfig, "prefs", [f"model={sft_dir}", f"out={prefs_file}", f"template={template}"]),
        rm=load(
            RMConfig,
            "rm",
            [*run, f"model.name={sft_dir}", f"data.source={prefs_file}", f"data.template={template}"],
        ),
        ppo=load(
            PPOConfig,
            "ppo",
            [*run, f"model.name={sft_dir}", f"ppo.reward={rm_dir}", f"data.template={template}"],
        ),
    )


def run_pipeline(
    cfg: PipelineConfig,
    config_path: str | Path | None = None,
    overrides: list[str] = (),
    overwrite: bool = False,
) -> Path:
    """Run (or continue) every stage, evaluate, and return the path of report.md. `cfg` already holds
    the pipeline's own overrides; `overrides` may still hold stage-prefixed ones (`sft.train.lr=...`)."""

    staged = split_overrides(list(overrides))[1]
    plan = plan_pipeline(cfg, config_path, staged)
    if overwrite and plan.root.exists():
        shutil.rmtree(plan.root)
    plan.root.mkdir(parents=True, exist_ok=True)
    timings_file = plan.root / "pipeline.json"
    previous = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    plan.seconds = dict(previous.get("seconds", {}))

    def stage(name: str, done: bool, work) -> None:
        if done:
            print(f"rlhfkit pipeline: {name}: already complete, skipping", flush=True)
            plan.skipped.append(name)
            return
        # A stage resumed from a checkpoint adds to the time it had already spent.
        before = plan.seconds.get(name, 0.0) if (plan.root / name / "checkpoints").is_dir() else 0.0
        print(f"rlhfkit pipeline: {name}: starting", flush=True)
        started = time.perf_counter()
        work()
        plan.seconds[name] = before + time.perf_counter() - started
        atomic_write_text(timings_file, json.dumps({"seconds": plan.seconds}, indent=1))

    def train(name: str, function, stage_cfg) -> None:
        folder = plan.root / name
        function(stage_cfg, resume=folder.is_dir() and any(folder.iterdir()))

    # 1. SFT on demonstrations
    stage("sft", (plan.root / "sft" / "final").is_dir(), lambda: train("sft", train_sft, plan.sft))
    # 2. preference pairs: two SFT samples per prompt, labelled by the noisy gold judge
    prefs_summary = plan.root / "prefs.json"

    def prefs() -> None:
        summary = make_preferences(plan.prefs)
        atomic_write_text(prefs_summary, json.dumps(summary, indent=1))
        print(f"rlhfkit pipeline: prefs: {format_summary(summary)}", flush=True)

    stage("prefs", Path(plan.prefs.out).is_file() and prefs_summary.is_file(), prefs)
    # 3. reward model on the pairs
    stage("rm", (plan.root / "rm" / "final").is_dir(), lambda: train("rm", train_rm, plan.rm))
    # 4. PPO against the RM
    stage("ppo", (plan.root / "ppo" / "final").is_dir(), lambda: train("ppo", train_ppo, plan.ppo))
    # 5. evaluation and report
    started = time.perf_counter()
    report = evaluate_pipeline(cfg, plan)
    plan.seconds["eval"] = time.perf_counter() - started
    atomic_write_text(timings_file, json.dumps({"seconds": plan.seconds}, indent=1))
    return report


def evaluate_pipeline(cfg: PipelineConfig, plan: PipelinePlan) -> Path:
    """Base, SFT and PPO policies sampled on held-out prompts, best-of-n from SFT, then report.md."""

    source = plan.ppo.data.eval_source or plan.ppo.data.source
    settings = EvalSettings(
        max_new_tokens=plan.ppo.rollout.max_new_tokens,
        temperature=plan.ppo.rollout.temperature,
        best_of_n=cfg.eval.best_of_n,
        batch_size=cfg.eval.batch_size,
        seed=cfg.eval.seed,
        samples_per_prompt=cfg.eval.samples_per_prompt,
    )
    models = {"base": plan.sft.model.name, "sft": str(plan.root / "sft"), "ppo": str(plan.root / "ppo")}
    result = evaluate_policies(
        models,
        "sft",
        source,
        cfg.eval.prompts,
        plan.ppo.data.template,
        settings,
        reward=str(plan.root / "rm"),
        normalize_reward=plan.ppo.ppo.normalize_reward,
        progress=plan.ppo.run.progress,
    )
    prompts = result.n_prompts
    metrics = {
        s: read_metrics(plan.root / s / "metrics.jsonl")
        for s in ("sft", "rm", "ppo")
        if (plan.root / s / "metrics.jsonl").is_file()
    }
    write_eval_json(plan.root / "eval.json", result, settings, source)
    facts = report_facts(plan, settings, source, prompts)
    labels = {"base": "base", "sft": "SFT", "ppo": "PPO"}
    report = write_report(
        plan.root,
        f"rlhfkit pipeline report: {cfg.name}",
        result,
        metrics,
        facts,
        labels,
        cfg.eval.show,
        frontier=("sft", "ppo"),
    )
    print(f"rlhfkit pipeline: report: {report}", flush=True)
    return report


def write_eval_json(path: Path, result, settings: EvalSettings, source: str) -> None:
    """eval.json: the headline numbers of the report, for scripts."""
    atomic_write_text(
        path,
        json.dumps(
            {
                "prompts": result.n_prompts,
                "samples_per_prompt": settings.samples_per_prompt,
                "source": source,
                "temperature": settings.temperature,
                "metrics": result.metrics,
                "win_rates": result.win_rates,
                "gold_gains": {
                    pair: {"mean": m, "stderr": se} for pair, (m, se) in result.gold_gains.items()
                },
                "best_of_n": result.best_of_n,
            },
            indent=1,
        ),
    )


def report_facts(plan: PipelinePlan, settings: EvalSettings, source: str, prompts: int) -> list[str]:
    """The report's opening lines: what was evaluated, the pairs, the wall time, how KL is measured."""
    prefs = json.loads((plan.root / "prefs.json").read_text()) if (plan.root / "prefs.json").is_file() else {}
    return [
        f"Base model `{plan.sft.model.name}`; SFT, RM and PPO in `{plan.root}/`; held-out prompts: {prompts} "
        f"from `{source}` (test split), {_samples(settings.samples_per_prompt)} each per policy at T = "
        f"{settings.temperature} (the same random numbers for every policy), "
        f"at most {settings.max_new_tokens} new tokens.",
        f"Preference pairs: {prefs.get('pairs', '?')} (labeller temperature "
        f"{plan.prefs.noise_temperature}; label "
        f"agreement with the noiseless judge {_fmt(prefs.get('label_agreement'))}, expected ceiling "
        f"{_fmt(prefs.get('noise_ceiling'))}).",
        (
            "Wall time (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in plan.seconds.items())
            + f"; total {sum(plan.seconds.values()):.0f}"
            if plan.seconds
            else "Wall time: not recorded (no stage ran in this folder)"
        )
        + (f" (skipped this time: {', '.join(plan.skipped)})" if plan.skipped else ""),
        "KL to SFT: the k1 estimate on the policy's own samples; best-of-n's is estimated from its draws "
        "(the bound log n − (n−1)/n beside it). Gold score in [-1, 1].",
    ]


def _samples(k: int) -> str:
    return "one sample" if k == 1 else f"{k} samples"


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "?"
