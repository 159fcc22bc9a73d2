# Two commands on a fresh machine:  make run  (every notebook, headless, digits)  and  make test.
# Both create .venv themselves. torch is pinned to the CPU build that lies on this machine's disk
# (TORCH_SPEC); nothing here can pull a multi-GB CUDA build. On a GPU machine, install your CUDA
# torch first and run `make TORCH_SPEC=torch ...`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
RUN_DIR ?= runs/latest
PARAMS ?=

.PHONY: venv run test test-browser test-fast lint lab benchmarks docs clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,lab,slurm,diffusers]"
	$(BIN)/python -m pip install -q --no-deps torchattacks==3.5.1
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (rdc)" >/dev/null
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/rdc run-notebooks --out $(RUN_DIR) $(if $(PARAMS),--params $(PARAMS),)

test: $(STAMP)
	bash scripts/install_browser.sh || echo "WARNING: browser install failed; browser tests will be skipped"
	$(BIN)/python -m pytest -ra

test-browser: $(STAMP)
	bash scripts/install_browser.sh
	RDC_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -ra -m browser tests/browser

lint: $(STAMP)
	$(BIN)/ruff check rdc_lib benchmarks tests scripts
	$(BIN)/ruff format --check rdc_lib benchmarks tests scripts

test-fast: $(STAMP)
	$(BIN)/python -m pytest -ra -m "not browser and not slow"

lab: $(STAMP)
	bash scripts/lab.sh

docs: $(STAMP)
	$(BIN)/python benchmarks/regenerate_docs.py   # docs/*.md and docs/figures/*.svg from docs/raw (byte-for-byte, tested)

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/timing/bench_classifier.py
	$(BIN)/python benchmarks/timing/bench_rdc.py
	$(BIN)/python benchmarks/timing/bench_lm.py
	$(BIN)/python benchmarks/timing/bench_optimal.py
	$(BIN)/python benchmarks/timing/bench_autoattack.py   # 200-image AutoAttack-style RDC evaluation, ~15 min

clean-venv:
	rm -rf $(VENV)
