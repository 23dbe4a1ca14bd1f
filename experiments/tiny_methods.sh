#!/usr/bin/env bash
# The tiny recipe's methods side by side: the numbers quoted in configs/tiny/{grpo,rloo,dpo}.yaml and
# docs/design.md §10.6. Runs the tiny pipeline (SFT, pairs, RM, PPO), then GRPO and RLOO on 3 seeds,
# DPO at two learning rates and three betas, and ONE sampled evaluation of every policy against SFT
# (the same 128 held-out prompts x 8 samples, the same random numbers; paired gold gains).
# About 40 minutes on 2 quiet cores. Usage: experiments/tiny_methods.sh [OUT_DIR]   (default runs/methods)
set -euo pipefail
OUT=${1:-runs/methods}
R=${RLHFKIT:-.venv/bin/rlhfkit}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
$R pipeline --config configs/tiny/pipeline.yaml dir="$(dirname "$OUT")" name="$(basename "$OUT")"
T=$OUT  # the pipeline's folder: sft/, prefs.jsonl, rm/, ppo/
for s in 0 1 2; do
  for m in grpo rloo; do
    [ -d "$T/s$s/$m/final" ] || $R $m --config configs/tiny/$m.yaml model.name="$T/sft" ppo.reward="$T/rm" \
      run.dir="$T" run.name=s$s train.seed=$s
  done
done
dpo() { name=$1; shift
  [ -d "$T/$name/dpo/final" ] || $R dpo --config configs/tiny/dpo.yaml model.name="$T/sft" \
    data.source="$T/prefs.jsonl" run.dir="$T" run.name="$name" "$@"; }
dpo dpo_lr5e-5                                   # the recipe as shipped (beta 0.1)
dpo dpo_lr1e-4 train.lr=1e-4                     # beta 0.1 at twice the learning rate
dpo dpo_lr1e-4_beta0.03 train.lr=1e-4 dpo.beta=0.03
dpo dpo_lr1e-4_beta0.3 train.lr=1e-4 dpo.beta=0.3
models=()
for d in sft ppo s0/grpo s1/grpo s2/grpo s0/rloo s1/rloo s2/rloo dpo_lr5e-5/dpo dpo_lr1e-4/dpo \
  dpo_lr1e-4_beta0.03/dpo dpo_lr1e-4_beta0.3/dpo; do models+=(--model "$T/$d"); done
$R eval "${models[@]}" --reference "$T/sft" --reward "$T/rm" --data builtin:sentiment,length --n 128 \
  --samples-per-prompt 8 --max-new-tokens 24 --best-of-n 1,2,4,8,16 --out "$T/methods.md"
echo "table: $T/methods.md"
