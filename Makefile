# Two commands on a fresh machine: `make run` and `make test`.
PY      := .venv/bin/python
VENV    := .venv/.installed
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export OMP_NUM_THREADS ?= 2

.PHONY: venv run test test-all pretrain clean

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

test: $(VENV)
	$(PY) -m pytest -q -x

test-all: $(VENV)
	$(PY) -m pytest -q -m "slow or not slow"

# Rebuild the committed base checkpoints (deterministic on CPU, see README).
pretrain: $(VENV)
	.venv/bin/rlzoo-pretrain task=toy2d
	.venv/bin/rlzoo-pretrain task=shapes

clean:
	rm -rf runs outputs multirun wandb
