#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite: TransformerLens 4 in .venv, then
# the TransformerLens 3 / SAE Lens tests in .venv-tl3. Extra arguments go to pytest.
#   bash scripts/test.sh                              # the tested versions (requirements/*.txt)
#   ITDA_LENS_VERSIONS=latest bash scripts/test.sh    # the newest releases, in .venv-latest / .venv-tl3-latest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SUFFIX=""
if [ "${ITDA_LENS_VERSIONS:-tested}" = latest ]; then SUFFIX="-latest"; fi
".venv$SUFFIX/bin/ruff" check itda_lens tests benchmarks
".venv$SUFFIX/bin/python" -m pytest -q tests "$@"
".venv-tl3$SUFFIX/bin/python" -m pytest -q -m tl3 tests/test_transformer_lens.py tests/test_saelens.py tests/test_generation.py tests/test_evaluate_continued.py "$@"
