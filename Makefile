# Two commands on a fresh machine: `make run` and `make test`.
PY      := .venv/bin/python
VENV    := .venv/.installed
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export OMP_NUM_THREADS ?= 2

.PHONY: venv run test lint test-fast test-faults test-all bench sweep report results pretrain features clean

$(VENV): pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q torch==2.13.0 || .venv/bin/pip install -q 'torch>=2.4,<2.14'
	.venv/bin/pip install -q -e '.[test]'
	touch $(VENV)

venv: $(VENV)

# The main job: the default recipe (Paper A: EPG + ELBO + DPM2) on the shapes task.
run: $(VENV)
	.venv/bin/rlzoo-train $(ARGS)

# The suite in TEST_JOBS processes (pytest-xdist): every test is isolated in its own tmp_path.
TEST_JOBS ?= 2
test: lint
	$(PY) -m pytest -q -x -n $(TEST_JOBS) -m "not slow" tests

# ruff (pyflakes, import order, complexity) over everything; pyright's basic checks over rlzoo/
lint: $(VENV)
	.venv/bin/ruff check rlzoo tests scripts
	.venv/bin/basedpyright --project .

# The unit tier (tests/unit): math, components, validation, no end-to-end run or fault case.
test-fast: $(VENV)
	$(PY) -m pytest -q -n $(TEST_JOBS) tests/unit

# The fault suite alone (README, Reliability): bad input and faults, nothing lost.
test-faults: $(VENV)
	$(PY) -m pytest -q -m "not slow" -n $(TEST_JOBS) tests/faults

test-all: $(VENV)
	$(PY) -m pytest -q -n $(TEST_JOBS) tests

# A named sweep from conf/sweep/<NAME>.yaml; JOBS > 1 runs jobs in parallel (joblib), each with
# an equal share of the cores. Rerunning the same command skips finished runs, resumes the rest.
NAME    ?= smoke
JOBS    ?= 1
CORES   := $(shell nproc 2>/dev/null || echo 2)
LAUNCH  := $(if $(filter-out 1,$(JOBS)),hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS),)
sweep: $(VENV)
	.venv/bin/rlzoo-train -m +sweep=$(NAME) threads=$$(( $(CORES) / $(JOBS) > 0 ? $(CORES) / $(JOBS) : 1 )) progress_bar=false $(LAUNCH) $(ARGS)

# The ablation table and plots of a sweep: multirun/$(NAME)/report/
report: $(VENV)
	.venv/bin/rlzoo report multirun/$(NAME) $(ARGS)

# Copy a finished sweep's JSONL/summaries (no checkpoints) to experiments/results/$(NAME) and
# render its report there, for committing.
results: $(VENV)
	.venv/bin/rlzoo report multirun/$(NAME) --export experiments/results/$(NAME) $(ARGS)

# Estimator benchmark: time and peak memory per iteration, elbo vs trajectory, 10/20/40 steps.
bench: $(VENV)
	$(PY) -m rlzoo.commands.bench threads=2 $(ARGS)

# Rebuild the committed base checkpoints (deterministic on CPU, see README).
pretrain: $(VENV)
	.venv/bin/rlzoo-pretrain task=toy2d
	.venv/bin/rlzoo-pretrain task=shapes

# Rebuild shapes' FID/KID feature network (a render classifier; deterministic on CPU) and its accuracy.
features: $(VENV)
	$(PY) -m rlzoo.tasks.shapes.features --out rlzoo/tasks/base_models/shapes_features.pt \
		--report experiments/results/base_models/shapes_features.txt

clean:
	rm -rf runs outputs multirun wandb
