# Two commands for a newcomer: `make serve` and `make test` (both install what they need).
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -euo pipefail -c
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL ?=

.PHONY: serve test lint format

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
