# Two commands for a newcomer: `make serve` and `make test` (both install what they need).
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -euo pipefail -c
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL ?=

.PHONY: serve test lint format gpu-check

serve:
	venv=$$(bash scripts/bootstrap.sh | tail -n1)
	exec "$$venv/bin/crop-server" serve --host "$(HOST)" --port "$(PORT)" $(if $(MODEL),--model "$(MODEL)")

test:
	bash scripts/ci-system-deps.sh
	venv=$$(bash scripts/bootstrap.sh | tail -n1)
	"$$venv/bin/ruff" check .
	"$$venv/bin/ruff" format --check .
	"$$venv/bin/python" -m pytest

format:
	venv=$$(bash scripts/bootstrap.sh | tail -n1)
	"$$venv/bin/ruff" check --fix .
	"$$venv/bin/ruff" format .

# On one CUDA GPU: PLC and ILP on every CUDA attention backend against the fp32 reference, plus a
# short benchmark (report in $(GPU_CHECK_OUT)/report.json). GPU_CHECK_PYTHON: a Python that
# already has vllm==0.32.0 (skips the install); GPU_CHECK_ARGS: e.g. --kv-bench.
GPU_CHECK_OUT ?= gpu-check-report
gpu-check:
	python=$${GPU_CHECK_PYTHON:-$$(CROP_FLAVOR=cuda bash scripts/bootstrap.sh | tail -n1)/bin/python}
	VLLM_USE_V2_MODEL_RUNNER=0 HF_HUB_OFFLINE=1 "$$python" -m tests.gpu.check --out "$(GPU_CHECK_OUT)" $(GPU_CHECK_ARGS)
