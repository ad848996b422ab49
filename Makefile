# The two commands (see README.md):
#   make demo  - set up, then show the shop example's allowed and denied flows
#   make test  - install everything the tests need, then run lint, types and the whole suite
.PHONY: demo test setup lint typecheck unit bench clean protos

PY := .venv/bin/python
NM := .venv/bin/nodemesh

setup:
	./scripts/setup.sh dev

demo: setup
	./scripts/demo.sh

lint: setup
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench

typecheck: setup
	.venv/bin/mypy

unit: setup
	$(PY) -m pytest -q

test: setup lint typecheck unit

bench: setup
	$(PY) bench/policy_eval.py

# Regenerate src/nodemesh/protos/gen/ from src/nodemesh/protos/*.proto (needs the dev extra).
protos: setup
	$(PY) -m nodemesh.protos.generate

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
