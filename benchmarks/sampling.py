"""Sampling (decode) speed of SmolLM2-135M: plain, LoRA unmerged, LoRA merged, and where cheap a static
KV cache and torch.compile; with this CPU's matmul peak and copy bandwidth to compare against.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/sampling.py --threads 1 --repeats 5
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/sampling.py --threads 1 --ppo-iterations 4 --repeats 2

Every variant samples the same prompts with the same noise at T=1. Variants are interleaved within
each repeat (A B C A B C ...) so a change in the machine's load hits them alike; the medians are
reported. Time is process CPU time (like benchmarks/peak.py), so other processes' load lowers the
wall-clock rate but much less the CPU-time one; both are printed. Tokens are decode slots: batch x
steps run (rows that ended early still ride along in the batch).

Two samplers: `ppo` is rollout.ppo.sample_prompts (PPO's rollouts, the held-out evals: the one that
matters); `hf` is rollout.generate (transformers' generate: the RM stage's and the CLI's sampling).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from rlhfkit.config import DataConfig, ModelConfig  # noqa: E402
from rlhfkit.data import load_rows  # noqa: E402
from rlhfkit.data.sft import prompt_text  # noqa: E402
from rlhfkit.models import load_causal_lm  # noqa: E402
from rlhfkit.models.shared import adapter_merged  # noqa: E402
from rlhfkit.rollout.ppo import row_noise, sample_prompts  # noqa: E402
from rlhfkit.rollout.sampling import generate  # noqa: E402


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of one big fp32 matmul (best CPU-time repeat)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_cpu(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def copy_bandwidth(mb: int = 512, repeats: int = 5) -> float:
    """GB/s of a big copy (read + write counted: 2 x size)."""
    src = torch.randn(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_cpu(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best / 1e9


def _cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def prompts(tokenizer, n: int) -> list[str]:
    rows = load_rows("builtin:praise", "train", 200)
    template = DataConfig().template
    return [prompt_text(row, f"row {i}", template, tokenizer) for i, row in enumerate(rows[:n])]


def models(r: int, alpha: int):
    plain, tokenizer = load_causal_lm(ModelConfig(name="smollm2", lora=False), trainable=False)
    lora, _ = load_causal_lm(ModelConfig(name="smollm2", lora=True, lora_r=r, lora_alpha=alpha))
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: B = 0 at init would make the merge a no-op
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return plain.eval(), lora.eval(), tokenizer


def ppo_call(model, tokenizer, batch: list[str], new_tokens: int, merge: bool):
    noise = row_noise(0, range(len(batch)), new_tokens)
    rollout = sample_prompts(model, tokenizer, batch, new_tokens, 1.0, noise=noise, merge_lora=merge)
    return rollout.response_ids.shape[1]


class AllLogits(torch.nn.Module):
    """The model with logits_to_keep ignored (the LM head over every prompt position in the prefill) and
    no `disable_adapter`, so sample_prompts cannot merge it: the sampler as it was before the change."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, logits_to_keep=None, **kwargs):
        return self.model(**kwargs)


def hf_call(model, tokenizer, batch: list[str], new_tokens: int, merge: bool):
    torch.manual_seed(0)
    ctx = adapter_merged(model) if merge else contextlib.nullcontext()
    with ctx:
        out = generate(model, tokenizer, batch, new_tokens, greedy=False, batch_size=len(batch))
    return max(len(ids) for ids in out.token_ids)


def hf_static_call(model, tokenizer, batch: list[str], new_tokens: int, compiled: bool = False):
    """transformers' generate with a static KV cache (optionally its compiled decode step)."""
    from rlhfkit.data.collate import left_pad
    from rlhfkit.data.templates import encode_prompt

    torch.manual_seed(0)
    ids, mask = left_pad([encode_prompt(tokenizer, p) for p in batch], tokenizer.pad_token_id)
    extra = {"disable_compile": True}
    if compiled:  # transformers compiles the static-cache decode step on GPUs only unless told
        from transformers import CompileConfig

        config = CompileConfig()
        config._compile_all_devices = True
        extra = {"compile_config": config}
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            do_sample=True,
            top_k=0,
            top_p=1.0,
            pad_token_id=tokenizer.pad_token_id,
            cache_implementation="static",
            **extra,
        )
    return out.shape[1] - ids.shape[1]


def variants(plain, lora, tokenizer, static: bool, compiled: bool) -> dict:
    out = {
        "ppo/plain": lambda b, n: ppo_call(plain, tokenizer, b, n, True),
        "ppo/lora_unmerged": lambda b, n: ppo_call(lora, tokenizer, b, n, False),
        "ppo/lora_merged": lambda b, n: ppo_call(lora, tokenizer, b, n, True),
        "ppo/lora_before": lambda b, n: ppo_call(AllLogits(lora), tokenizer, b, n, True),
        "hf/plain": lambda b, n: hf_call(plain, tokenizer, b, n, False),
        "hf/lora_unmerged": lambda b, n: hf_call(lora, tokenizer, b, n, False),
        "hf/lora_merged": lambda b, n: hf_call(lora, tokenizer, b, n, True),
    }
    if static:
        out["hf/plain_static"] = lambda b, n: hf_static_call(plain, tokenizer, b, n)
    if compiled:
        out["hf/plain_static_compiled"] = lambda b, n: hf_static_call(plain, tokenizer, b, n, True)
    return out


def ppo_seconds(threads: int, iterations: int, repeats: int, run_dir: Path) -> None:
    """Seconds per iteration of a short LoRA PPO run on SmolLM2 (configs/smollm2/ppo.yaml on the base
    model, the gold judge as reward, no held-out evals), sampling merged vs unmerged, runs interleaved.
    The first iteration is left out of the median (warm-up)."""
    import functools

    from rlhfkit.config import PPOConfig, load_config
    from rlhfkit.rollout import backend
    from rlhfkit.run import metrics as M
    from rlhfkit.trainers.ppo import train_ppo

    config = Path(__file__).resolve().parents[1] / "configs" / "smollm2" / "ppo.yaml"
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for repeat in range(repeats):
        for merge in (True, False):
            backend.sample_prompts = functools.partial(sample_prompts, merge_lora=merge)
            overrides = [
                "model.name=smollm2",
                "ppo.reward=rlhfkit.tasks:gold_scores",
                f"ppo.iterations={iterations}",
                "ppo.eval_prompts=0",
                f"train.threads={threads}",
                "train.save_every=1000",
                f"run.dir={run_dir}",
                f"run.name=merge{int(merge)}-{repeat}",
                "run.report_to=[]",
                "run.progress=false",
            ]
            result = train_ppo(load_config(PPOConfig, config, overrides))
            times = [r[M.PPO_SECONDS] for r in result.metrics if M.PPO_SECONDS in r][1:]
            seconds[merge] += times
            print(f"ppo merge_lora={merge}: s/iteration {[round(t, 2) for t in times]}", flush=True)
    for merge, times in seconds.items():
        median = statistics.median(times)
        print(f"ppo merge_lora={merge}: median {median:.2f} s/iteration ({len(times)} iterations)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    ap.add_argument("--static", action="store_true", help="also transformers' static KV cache")
    ap.add_argument("--compile", action="store_true", help="also the static cache's compiled decode step")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--ppo-iterations", type=int, help="instead: s/iteration of a short LoRA PPO run")
    ap.add_argument("--run-dir", type=Path, default=Path("runs") / "bench-sampling")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.ppo_iterations:
        ppo_seconds(args.threads, args.ppo_iterations, args.repeats, args.run_dir)
        return
    plain, lora, tokenizer = models(16, 32)
    n_params = sum(p.numel() for p in plain.parameters())  # tied embedding counted once
    peak, bandwidth = matmul_peak(), copy_bandwidth()
    print(f"threads {args.threads}: matmul peak {peak:.1f} GFLOP/s, copy bandwidth {bandwidth:.1f} GB/s")
    print(f"SmolLM2 parameters {n_params / 1e6:.1f} M ({n_params * 4 / 1e6:.0f} MB fp32 read per step)")
    runs = variants(plain, lora, tokenizer, args.static, args.compile)
    runs = {k: v for k, v in runs.items() if not args.only or k in args.only}
    all_prompts = prompts(tokenizer, max(args.batches))
    results = {}
    for batch in args.batches:
        chunk = all_prompts[:batch]
        for fn in runs.values():  # warm-up (and compilation, per token count) outside the timing
            fn(chunk, args.new_tokens)
        times: dict[str, list[tuple[float, float, int]]] = {k: [] for k in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                wall, cpu = time.perf_counter(), time.process_time()
                steps = fn(chunk, args.new_tokens)
                times[name].append((time.process_time() - cpu, time.perf_counter() - wall, steps))
        for name, rows in times.items():
            cpu = statistics.median(t for t, _, _ in rows)
            wall = statistics.median(w for _, w, _ in rows)
            steps = statistics.median(s for _, _, s in rows)
            tok_s = batch * steps / cpu
            flops = 2 * n_params * tok_s / 1e9  # GFLOP/s of the decode (prefill included in the time)
            gbs = n_params * 4 * steps / cpu / 1e9  # weights read once per step
            results[f"{name}@{batch}"] = {
                "tokens_per_cpu_s": tok_s,
                "tokens_per_wall_s": batch * steps / wall,
                "steps": steps,
                "gflops": flops,
                "weight_gb_s": gbs,
                "cpu_s": [round(t, 3) for t, _, _ in rows],
            }
            print(
                f"B={batch:3d} {name:28s} {tok_s:7.1f} tok/CPU-s ({batch * steps / wall:7.1f} tok/wall-s) "
                f"steps {steps:4.1f}  {flops:5.1f} GFLOP/s = {flops / peak:4.0%} of peak  "
                f"{gbs:5.1f} GB/s weights = {gbs / bandwidth:4.0%} of copy bw",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps({"peak_gflops": peak, "copy_gb_s": bandwidth, **results}, indent=1))


if __name__ == "__main__":
    main()
