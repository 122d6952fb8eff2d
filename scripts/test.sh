#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite: TransformerLens 4 in .venv, then
# the TransformerLens 3 / SAE Lens tests in .venv-tl3.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check itda_lens tests benchmarks
.venv/bin/python -m pytest -q tests "$@"
.venv-tl3/bin/python -m pytest -q -m tl3 tests/test_transformer_lens.py tests/test_saelens.py "$@"
