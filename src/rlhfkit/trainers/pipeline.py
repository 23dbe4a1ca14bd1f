"""`rlhfkit pipeline`: SFT -> preference pairs -> RM -> PPO -> evaluation -> report, one run folder.

A stage whose output is complete (`final/`, or the pairs file) is skipped and a partial one is
resumed from its latest checkpoint, so rerunning the same command after a crash continues.
Every stage config is loaded (and type-checked) before any work starts: a typo in ppo.yaml fails
in a second, not after the SFT stage.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from rlhfkit.atomic import atomic_write_text
from rlhfkit.config import (
    METHOD_OF_ADVANTAGE,
    METHOD_PRESETS,
    DPOConfig,
    PipelineConfig,
    PPOConfig,
    PrefsConfig,
    RMConfig,
    SFTConfig,
    load_config,
)
from rlhfkit.data.labelling import format_summary, make_preferences
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.evaluate.compare import EvalSettings
from rlhfkit.evaluate.frontier import MethodCurve, best_of_n_points, curve_points
from rlhfkit.evaluate.policies import evaluate_policies
from rlhfkit.evaluate.report import write_report
from rlhfkit.run import metrics as M
from rlhfkit.run.checkpoint import list_checkpoints
from rlhfkit.run.logger import read_metrics
from rlhfkit.trainers.dpo import check_dpo_config, train_dpo
from rlhfkit.trainers.ppo import check_ppo_config, train_ppo
from rlhfkit.trainers.rm import train_rm
from rlhfkit.trainers.sft import train_sft

# Each method of `methods:` (its name there) -> its stage: the folder runs/<name>/<stage>/, the stage prefix
# of its overrides (`grpo.ppo.iterations=5`) and its PipelineConfig key (the stage config file).
METHOD_STAGES = {"ppo": "ppo", "grpo": "grpo", "rloo": "rloo", "reinforce-pp": "reinforce_pp", "dpo": "dpo"}
STAGES = ("sft", "prefs", "rm", *METHOD_STAGES.values())


@dataclass
class PipelinePlan:
    root: Path
    sft: SFTConfig
    prefs: PrefsConfig
    rm: RMConfig
    ppo: PPOConfig
    """The ppo stage's config (wired): the evaluation samples as it does, and a method without a file of its
    own starts from it."""
    methods: dict[str, PPOConfig | DPOConfig] = field(default_factory=dict)
    """Stage name (ppo, grpo, rloo, reinforce_pp, dpo) -> its wired config, in the order they run."""
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Stage -> the one line of the error that stopped it, this run."""


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """`sft.train.lr=1e-4` goes to the sft stage; `eval.prompts=32` or `sft=x.yaml` to the pipeline.
    `reinforce-pp.` is accepted for `reinforce_pp.`."""
    own, staged = [], {stage: [] for stage in STAGES}
    for item in overrides:
        head, dot, rest = item.partition(".")
        head = METHOD_STAGES.get(head, head)
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

    def load(cls, stage: str, wiring: list[str], file: str | None = None, presets=None, extra=()):
        path = here / (file or getattr(cfg, stage))
        if not path.is_file():
            raise ConfigError(
                f"{config_path}: {stage}: {path} not found (stage config paths are relative to the "
                f"pipeline file)"
            )
        return load_config(cls, path, [*extra, *staged.get(stage, []), *wiring], presets=presets)

    sft = load(SFTConfig, "sft", run)
    # Every later stage renders prompts as the SFT model learned them, so the RM is trained on the
    # format the policy samples in and PPO scores.
    template = sft.data.template
    online = [*run, f"model.name={sft_dir}", f"ppo.reward={rm_dir}", f"data.template={template}"]
    plan = PipelinePlan(
        root=root,
        sft=sft,
        prefs=load(PrefsConfig, "prefs", [f"model={sft_dir}", f"out={prefs_file}", f"template={template}"]),
        rm=load(
            RMConfig,
            "rm",
            [*run, f"model.name={sft_dir}", f"data.source={prefs_file}", f"data.template={template}"],
        ),
        ppo=load(PPOConfig, "ppo", online),
    )
    if len(set(cfg.methods)) != len(cfg.methods):
        raise ConfigError(f"{config_path}: methods lists a method twice: {cfg.methods}")
    for method in cfg.methods:
        stage = METHOD_STAGES[method]
        if method == "dpo":
            wiring = [*run, f"model.name={sft_dir}", f"data.source={prefs_file}", f"data.template={template}"]
            plan.methods[stage] = load(DPOConfig, "dpo", wiring)
            check_dpo_config(plan.methods[stage])
        elif method == "ppo":
            plan.methods[stage] = plan.ppo
        else:
            # A method without a file of its own is the ppo stage (its file and ppo.* overrides) under
            # the method's presets, as `rlhfkit grpo --config ppo.yaml` would run it.
            own = getattr(cfg, stage)
            extra = () if own else staged.get("ppo", [])
            plan.methods[stage] = load(PPOConfig, stage, online, own or cfg.ppo, METHOD_PRESETS[stage], extra)
        if stage != "dpo":
            check_online_method(plan.methods[stage], stage, config_path)
    return plan


def check_online_method(stage_cfg: PPOConfig, stage: str, config_path) -> None:
    """Refuse, before any work, a method's config that names another method's estimator or a setting
    the online loop refuses at its start."""
    named = METHOD_OF_ADVANTAGE[stage_cfg.ppo.advantage]
    if named != stage:
        raise ConfigError(
            f"{config_path}: {stage}: ppo.advantage={stage_cfg.ppo.advantage} is a {named} setting; "
            f"give {stage} a config with its own estimator (or none: its presets apply)"
        )
    check_ppo_config(stage_cfg)


def run_pipeline(
    cfg: PipelineConfig,
    config_path: str | Path | None = None,
    overrides: list[str] = (),
    overwrite: bool = False,
) -> Path:
    """Run (or continue) every stage, evaluate, and return the path of report.md. `cfg` already holds
    the pipeline's own overrides; `overrides` may still hold stage-prefixed ones (`sft.train.lr=...`).
    A method that fails is recorded (pipeline.json, the report) and the others still run; the report
    is written, then the run ends with an RlhfkitError naming the failures."""

    staged = split_overrides(list(overrides))[1]
    plan = plan_pipeline(cfg, config_path, staged)
    if overwrite and plan.root.exists():
        shutil.rmtree(plan.root)
    plan.root.mkdir(parents=True, exist_ok=True)
    timings_file = plan.root / "pipeline.json"
    previous = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    plan.seconds = dict(previous.get("seconds", {}))

    def save_timings() -> None:
        atomic_write_text(
            timings_file, json.dumps({"seconds": plan.seconds, "failed": plan.failed}, indent=1)
        )

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
        save_timings()

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
    # 4. each method from the SFT model: the online ones against the RM, DPO on the pairs. One that
    # fails is recorded and the next one runs: hours of another method's training are not lost to it.
    for name, stage_cfg in plan.methods.items():
        trainer = train_dpo if name == "dpo" else train_ppo
        try:
            stage(name, (plan.root / name / "final").is_dir(), partial(train, name, trainer, stage_cfg))
        except Exception as e:  # noqa: BLE001 - any failure of one method must not lose the others
            plan.failed[name] = error_line(e)
            print(f"rlhfkit pipeline: {name}: failed: {plan.failed[name]}", file=sys.stderr, flush=True)
            if not isinstance(e, RlhfkitError):
                traceback.print_exc()  # not a user-fixable input: the trace is for a bug report
            save_timings()
    # 5. evaluation and report
    started = time.perf_counter()
    report = evaluate_pipeline(cfg, plan)
    plan.seconds["eval"] = time.perf_counter() - started
    save_timings()
    if plan.failed:
        raise RlhfkitError(
            f"{', '.join(plan.failed)} failed ({'; '.join(f'{k}: {v}' for k, v in plan.failed.items())}); "
            f"the other methods' results and the report are in {report}"
        )
    return report


def error_line(e: BaseException) -> str:
    """The error's first line, with its type unless it is rlhfkit's own one-line message."""
    text = (str(e).strip().splitlines() or [""])[0][:300]
    return text if isinstance(e, RlhfkitError) else f"{type(e).__name__}: {text}"


METHOD_LABELS = {"ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "reinforce_pp": "REINFORCE++", "dpo": "DPO"}


def evaluate_pipeline(cfg: PipelineConfig, plan: PipelinePlan) -> Path:
    """Base, SFT, every finished method's final policy and kept checkpoints sampled on the same held-out
    prompts with the same random numbers, best-of-n from SFT, then report.md (design §10.3)."""

    source = plan.ppo.data.eval_source or plan.ppo.data.source
    settings = EvalSettings(
        max_new_tokens=plan.ppo.rollout.max_new_tokens,
        temperature=plan.ppo.rollout.temperature,
        best_of_n=cfg.eval.best_of_n,
        batch_size=cfg.eval.batch_size,
        seed=cfg.eval.seed,
        samples_per_prompt=cfg.eval.samples_per_prompt,
    )
    finished = [m for m in plan.methods if (plan.root / m / "final").is_dir()]
    models = {"base": plan.sft.model.name, "sft": str(plan.root / "sft")}
    models |= {m: str(plan.root / m) for m in finished}
    entries = {m: [(final_step(plan.methods[m]), m)] for m in finished}
    draws_of = {}
    for m in finished if cfg.eval.checkpoints else []:
        for path in list_checkpoints(plan.root / m / "checkpoints"):
            name = f"{m}/{path.name}"
            models[name] = str(path)
            entries[m].append((int(path.name.split("-")[1]), name))
            draws_of[name] = cfg.eval.checkpoint_samples_per_prompt or cfg.eval.samples_per_prompt
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
        draws_of=draws_of,
    )
    metrics = {
        s: read_metrics(plan.root / s / "metrics.jsonl")
        for s in ("sft", "rm", *plan.methods)
        if (plan.root / s / "metrics.jsonl").is_file()
    }
    curves = [
        MethodCurve("best_of_n", "best-of-n", "best_of_n", best_of_n_points(result.best_of_n)),
        *[
            method_curve(plan, m, curve_points(result, "sft", entries[m], m), metrics.get(m, []))
            for m in finished
        ],
    ]
    write_eval_json(plan.root / "eval.json", result, settings, source, curves, plan.failed)
    labels = {"base": "base", "sft": "SFT", **{m: METHOD_LABELS[m] for m in plan.methods}}
    report = write_report(
        plan.root,
        f"rlhfkit pipeline report: {cfg.name}",
        result,
        metrics,
        report_facts(plan, settings, source, result.n_prompts, draws_of),
        labels,
        cfg.eval.show,
        curves=curves,
        headline=["base", "sft", *finished],
        failed=plan.failed,
    )
    print(f"rlhfkit pipeline: report: {report}", flush=True)
    return report


def final_step(stage_cfg: PPOConfig | DPOConfig) -> int:
    """The training step of a method's final/: its last iteration or optimizer step."""
    return stage_cfg.train.max_steps if isinstance(stage_cfg, DPOConfig) else stage_cfg.ppo.iterations


def method_curve(plan: PipelinePlan, stage: str, points: list, rows: list[dict]) -> MethodCurve:
    """A method's points with its cost: wall seconds from pipeline.json, and the samples it drew, counted
    from its metrics.jsonl (iterations run x rows per iteration; evals x held-out prompts)."""
    stage_cfg = plan.methods[stage]
    evals = sum(1 for r in rows if M.GOLD_SCORE in r)
    if isinstance(stage_cfg, DPOConfig):
        steps = max((r["step"] for r in rows if M.DPO_LOSS in r), default=0)
        pairs = steps * stage_cfg.train.batch_size * stage_cfg.train.grad_accum
        train_samples, eval_prompts = 0, stage_cfg.dpo.eval_prompts
        note = f"offline: {pairs} pair comparisons from prefs.jsonl"
    else:
        kl_key = M.online(stage)[M.PPO_KL_K1]
        iterations = sum(1 for r in rows if kl_key in r)
        train_samples = iterations * stage_cfg.rollout.batch_size * stage_cfg.rollout.group_size
        eval_prompts, note = stage_cfg.ppo.eval_prompts, f"{iterations} iterations"
    return MethodCurve(
        stage,
        METHOD_LABELS[stage],
        "rl",
        points,
        seconds=plan.seconds.get(stage),
        train_samples=train_samples,
        eval_samples=evals * eval_prompts,
        note=note,
    )


def write_eval_json(
    path: Path, result, settings: EvalSettings, source: str, curves: list = (), failed: dict | None = None
) -> None:
    """eval.json: the report's numbers, for scripts: every evaluated policy's metrics and gain over SFT,
    best-of-n, and per method its frontier points, fit, cost; the methods that failed."""
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
                "rm_gold_agreement": result.rm_agreement,
                "draws_per_prompt": result.draws,
                "frontier": {c.stage: c.as_json() for c in curves},
                "failed": failed or {},
            },
            indent=1,
        ),
    )


def report_facts(
    plan: PipelinePlan, settings: EvalSettings, source: str, prompts: int, draws_of: dict | None = None
) -> list[str]:
    """The report's opening lines: what was evaluated, the pairs, the wall time, how KL is measured."""
    prefs = json.loads((plan.root / "prefs.json").read_text()) if (plan.root / "prefs.json").is_file() else {}
    checkpoint_draws = sorted(set((draws_of or {}).values()))
    methods = ", ".join(METHOD_LABELS[m] for m in plan.methods)
    return [
        f"Base model `{plan.sft.model.name}`; SFT, RM and {methods} in `{plan.root}/`; held-out prompts: "
        f"{prompts} from `{source}` (test split), {_samples(settings.samples_per_prompt)} each per policy "
        + (
            f"({_samples(checkpoint_draws[0])} per training checkpoint, the first draws' random numbers) "
            if checkpoint_draws and checkpoint_draws != [settings.samples_per_prompt]
            else ""
        )
        + f"at T = {settings.temperature} (the same random numbers for every policy), "
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
